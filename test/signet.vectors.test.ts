/**
 * Every libdime and magma signet vector: decoding, dialects, byte-exact reproduction from the
 * vectors' keys and field values, fingerprints, and every verification outcome.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createNobleBackend, createNodeBackend, type CryptoBackend } from '../src/crypto/index.js';
import { base64DecodeStrict, base64Encode } from '../src/dime/base64.js';
import { fromHex, toHex } from '../src/dime/bytes.js';
import { dearmorKeys } from '../src/dime/keys.js';
import {
  armorSignet,
  createOrgSignet,
  createSigningRequest,
  dearmorSignet,
  decodeSignet,
  encryptionKeyOf,
  fingerprints,
  identifierOf,
  keysMatchSignet,
  signUserSignet,
  signingKeyOf,
  splitSignet,
  structuralState,
  validateSignet,
  type Signet,
  type SignetInfo,
  type ValidationContext,
} from '../src/dime/signet/index.js';
import { isDimeError } from '../src/errors.js';
import { vectorBytes, vectorJson, vectorText } from './helpers/vectors.js';

const backends: CryptoBackend[] = [createNodeBackend(), createNobleBackend()];

const signet = (name: string): Signet => dearmorSignet(vectorText('libdime/signets', name));
const keys = (name: string) => dearmorKeys(vectorText('libdime/keys', name));

/** The field values the vector README says were typed into libdime's `signet` wizard. */
const info = (name: string, address: string, country: string, postal: string, phone: string): SignetInfo => ({
  text: [
    { id: 16, value: name },
    { id: 17, value: address },
    { id: 19, value: country },
    { id: 20, value: postal },
    { id: 21, value: phone },
  ],
});
const EXAMPLE_COM = info('Example Organization', '1 Example Way, Springfield', 'US', '12345', '+1-555-0100');
const EXAMPLE_ORG = info('Example Org Two', '9 Other Road', 'CA', 'H0H0H0', '+1-555-0200');
const ALICE = info('Alice Example', '2 Example Way, Springfield', 'US', '12345', '+1-555-0101');
const BOB = info('Bob Example', '10 Other Road', 'CA', 'H0H0H0', '+1-555-0201');

/** Fingerprints printed by libdime's `signet -d` (vectors README). */
const FINGERPRINTS: Record<string, Record<string, string>> = {
  'example.com.signet': {
    crypto: 'Lovgxei7k5rhbjSA3MQ+v4Wz14jS69PpF5BSCRMQyB6oK8a+r4hQ7LWKneZb5JNPBZZeidTQwFmrey3kzAyd1Q',
    full: 'tZC6uc2dIKKZWHJeCakaqBxu/AeveKcBXNgWz6xuCCt5udDCzwlbsRpQo/BKAqfBKly1fWxaQ508sQ5Rxl0Jyg',
    id: 'TBXiOFpkK88BclzYXjv9uWUitxVYnVPC0YiqlFXfzW8ntZgJNSSTBlyfeLJzKvO+3LOhTpKGsGYywHToqM4SOg',
  },
  'example.org.signet': {
    crypto: 'IZGFez0dqaIzYhviVY1OYH7SiiNeZ2WueCz+aAmGu4VpRR7UnI/eBQ0FG/ThJzcN4TRzoBnbvwWSURcACHuT8Q',
    full: 'P3tSaquviiVxmHxzqRUv13JpOAMZqV5pnD/+JKUUIok9K3iszOgGsQUWJcifAy3tTeFqvuUhXNhjxRSjU8pIlA',
    id: 'iUmEfKUfVwjTkFaSUocOFGHUPo4zyaa0d1nDnuL5oB1GKz7Y2yM4Gs374G/2yyqI1E/hV6XUvC+FH1F943Pd0Q',
  },
  'alice-example.com.ssr': { ssr: 'mnFjTPLxA0fF99+cvQkUbPbFhJJAgbNFejcgCkhcLVaWiV+hIdN7waF0sEXRSbwelqfqcHi3qCugoK0tJqeoWQ' },
  'alice@example.com.signet': {
    ssr: 'mnFjTPLxA0fF99+cvQkUbPbFhJJAgbNFejcgCkhcLVaWiV+hIdN7waF0sEXRSbwelqfqcHi3qCugoK0tJqeoWQ',
    crypto: 'O1FJrDhlPPG5mEYpaYZnmZ6K9OyuSrB/llzEcKQrOj1d876FSDn+KLvRkz4bGvt7TiEZ3O+blsHmjfPeWJfI5w',
    full: 'mS2VO9049BOByDbGgOx6Vavo5sUQSmjkuMctvwTz4oj9YJYho8zff/xp9CYV5shZJLCeB9rWb9C7Gpmxuw2ELA',
    id: 'cYd2JF4agrpWBx6fiRJiJAP+arJLQ1hShnuRHgwnwHN4MSy0UYtzZsCUsg8Xw8YHirUkQM1ZlwrEZQxpXIanIQ',
  },
  'bob@example.org.signet': {
    ssr: 'NnYTLYb1bPrqOxADO/dM4G/zj3RKAahwS0g2ZshA4Iqo93ICNij4MspshbHD4Vt7DtWeD8tUdvfSdHtuNVeIhg',
    crypto: 'BY4tjwTB0gCEeGZLHFXF1+s+sAtq1kjitN6/+la5JmmX0e+/Tr2IG9KkuWZePKCXpWSGuaMnSwjx5K98kY48wQ',
    full: 'tZjQ/cJ9UYC6J/a5lcvOpsrrta+8Il3Fj/wmJvBtDto2ilGzib8eQPgzh9k/iInmmRxZKSgXnq7NoVw3Irp3iw',
    id: 'AlY0sU2IQNLS97HEViSBSmqUpamY9OV1+lCFvb4O2e9HCI54sRcN6dGrRjST33e4TOAkALx/p6bDOSygAivzow',
  },
  'alice-rotated.ssr': { ssr: 'DtELkrNnfEHELrf1kB2ZBzbjC66gsVUukObUfT6OA2qhASGgv2wQiitbjPLaFJAIQMykK+npaAcQRM8dkJv7Tg' },
  'alice-rotated.signet': {
    ssr: 'DtELkrNnfEHELrf1kB2ZBzbjC66gsVUukObUfT6OA2qhASGgv2wQiitbjPLaFJAIQMykK+npaAcQRM8dkJv7Tg',
    crypto: 'Cf5O22NNhLX/2iVp9FLSNNQcKfXCMW79OsEhmnZOccZkToxVZgWdOKKXowo27NHmOSE/J9Buqn71RphpV31RrQ',
    full: 'YIBayWswrnOjuT9c5CQxlTsc49Ug4dHh4QNjnZF6rTS5nF9KznkkSjASowqOTX6CrZtP5gSxEIi3H7w0jPrsyw',
    id: 'gl0KqhhF6eTU5zjljSj3/1eTr0LmstM73AOJNh6O72E60kD0xuJ17Hy9RTAAgrY/L9dxa+YIFaHLqrIfNTZQRA',
  },
  // Tampered vectors: fingerprints printed by libdime's verifier (verify/*.out).
  'alice-tampered-name.signet': {
    ssr: 'mnFjTPLxA0fF99+cvQkUbPbFhJJAgbNFejcgCkhcLVaWiV+hIdN7waF0sEXRSbwelqfqcHi3qCugoK0tJqeoWQ',
    crypto: 'O1FJrDhlPPG5mEYpaYZnmZ6K9OyuSrB/llzEcKQrOj1d876FSDn+KLvRkz4bGvt7TiEZ3O+blsHmjfPeWJfI5w',
    full: 'vG7lmoRzLA60/jgJ15Y7Tjp4VutTYTi//YL9nB4V1mCjUMT+Zi+NYwuXMXancPdXd1dUNaIkxTbKI+nF6mW4HQ',
    id: 'QifR/Xk+AScrEpN+PMHIQTCSY8irsaF83B0+WnQek1aEIJ0lifvzJ5b6FMKxo6RTx+5TI5rmBnmXmQWQ6Qyz6A',
  },
  'alice-tampered-cryptosig.signet': {
    ssr: 'mnFjTPLxA0fF99+cvQkUbPbFhJJAgbNFejcgCkhcLVaWiV+hIdN7waF0sEXRSbwelqfqcHi3qCugoK0tJqeoWQ',
    crypto: 'M7TFkmXVNr49BOdxq4iUdLXjLtbkHaJe2j0AXJ8SZ3Ip+NQKeBsnfvs4fzC4Ix99wSg0ulOizUgPD6YqkeB5Ag',
    full: 'TDkUfuDsdtUiAjoYrGWXHLwqfl2HzaNm3nhz9WdMMONGw5bz+bC3pTl2/KesnjMJB2/H6PoUXlqy3H9rCqWhUw',
    id: 'cvYuoFS1EocUGcZhn6LSQQ1AlLvZ5iNyptecDy2J74dRocH6/Oyd2wz160AP0PYWhK6qMuoUdjpo52PXsoC7pg',
  },
};

describe('libdime signet vectors', () => {
  it('armored files and their .bin twins decode to the same bytes, and re-armor byte-exactly', () => {
    for (const name of ['example.com.signet', 'example.org.signet', 'alice-example.com.ssr', 'alice@example.com.signet', 'bob-example.org.ssr', 'bob@example.org.signet', 'alice-rotated.ssr', 'alice-rotated.signet']) {
      const s = signet(name);
      assert.deepEqual(s.bytes, vectorBytes('libdime/signets', `${name}.bin`), name);
      assert.equal(s.dialect, 'libdime', name);
      assert.equal(armorSignet(s), vectorText('libdime/signets', name), name);
      assert.deepEqual(decodeSignet(s.bytes).fields, s.fields);
    }
  });

  it('decodes the documented sizes, types and field ids', () => {
    const org = signet('example.com.signet');
    assert.equal(org.type, 'org');
    assert.equal(org.bytes.length, 358);
    assert.deepEqual(org.fields.map((f) => f.id), [1, 3, 4, 16, 17, 19, 20, 21, 253, 254, 255]);
    assert.equal(identifierOf(org), 'example.com');
    assert.equal(signet('alice@example.com.signet').bytes.length, 422);
    assert.equal(signet('alice-example.com.ssr').type, 'ssr');
    assert.equal(signet('alice-example.com.ssr').bytes.length, 141);
    assert.equal(signet('alice-rotated.ssr').bytes.length, 206);
    assert.equal(signet('alice-rotated.signet').bytes.length, 487);
    assert.equal(signet('bob@example.org.signet').bytes.length, 406);
    assert.equal(signet('example.org.signet').bytes.length, 340);
  });

  for (const crypto of backends) {
    describe(`with the ${crypto.name} backend`, () => {
      it('computes the fingerprints libdime printed', () => {
        for (const [name, expected] of Object.entries(FINGERPRINTS)) assert.deepEqual(fingerprints(crypto, signet(name)), expected, name);
      });

      it('reproduces the org signets byte for byte from keys and wizard input', async () => {
        for (const [domain, values] of [['example.com', EXAMPLE_COM], ['example.org', EXAMPLE_ORG]] as const) {
          const k = keys(`${domain}.keys`);
          const made = await createOrgSignet({ signer: crypto.ed25519Signer(k.signingKey), encryptionKey: crypto.secp256k1PublicKey(k.encryptionKey), info: values, domain });
          assert.equal(armorSignet(made), vectorText('libdime/signets', `${domain}.signet`), domain);
        }
      });

      it('reproduces SSRs, including the rotation SSR with its custody signature', async () => {
        const alice = keys('alice-example.com.keys');
        const rotated = keys('alice-rotated.keys');
        const bob = keys('bob-example.org.keys');
        const req = (k: typeof alice, prev?: typeof alice) =>
          createSigningRequest({ signer: crypto.ed25519Signer(k.signingKey), encryptionKey: crypto.secp256k1PublicKey(k.encryptionKey), ...(prev ? { previousSigner: crypto.ed25519Signer(prev.signingKey) } : {}) });
        assert.equal(armorSignet(await req(alice)), vectorText('libdime/signets', 'alice-example.com.ssr'));
        assert.equal(armorSignet(await req(bob)), vectorText('libdime/signets', 'bob-example.org.ssr'));
        assert.equal(armorSignet(await req(rotated, alice)), vectorText('libdime/signets', 'alice-rotated.ssr'));
      });

      it('reproduces user signets from the SSRs with the org key', async () => {
        const cases = [
          ['alice-example.com.ssr', 'example.com.keys', 'alice@example.com', ALICE, 'alice@example.com.signet'],
          ['bob-example.org.ssr', 'example.org.keys', 'bob@example.org', BOB, 'bob@example.org.signet'],
          ['alice-rotated.ssr', 'example.com.keys', 'alice@example.com', ALICE, 'alice-rotated.signet'],
        ] as const;
        for (const [ssr, orgKeys, address, values, out] of cases) {
          const k = keys(orgKeys);
          const made = await signUserSignet(crypto, signet(ssr), { orgSigner: crypto.ed25519Signer(k.signingKey), address, info: values });
          assert.equal(armorSignet(made), vectorText('libdime/signets', out), out);
        }
      });

      it('pairs keys files with their signets', () => {
        assert.ok(keysMatchSignet(crypto, signet('example.com.signet'), keys('example.com.keys')));
        assert.ok(keysMatchSignet(crypto, signet('alice@example.com.signet'), keys('alice-example.com.keys')));
        assert.ok(!keysMatchSignet(crypto, signet('alice@example.com.signet'), keys('alice-rotated.keys')));
        assert.ok(!keysMatchSignet(crypto, signet('example.org.signet'), keys('example.com.keys')));
      });

      // Each case is one file in verify/: libdime's verdict, mapped to our state names.
      const pokCom = base64DecodeStrict('9/GgKfjc+40UhLxLbu3xockoxkWicFPEzIaxMVrSqsw');
      const verdicts: [string, string, () => ValidationContext, string][] = [
        ['verify-org-self', 'example.com.signet', () => ({ poks: [signingKeyOf(signet('example.com.signet'))!] }), 'id'],
        ['verify-org-pok', 'example.com.signet', () => ({ poks: [pokCom] }), 'id'],
        ['verify-org2-self', 'example.org.signet', () => ({ poks: [signingKeyOf(signet('example.org.signet'))!] }), 'id'],
        ['verify-org2-wrongpok', 'example.org.signet', () => ({ poks: [pokCom] }), 'unknown-pok'],
        ['verify-user-alice', 'alice@example.com.signet', () => ({ org: signet('example.com.signet') }), 'id'],
        ['verify-user-bob', 'bob@example.org.signet', () => ({ org: signet('example.org.signet') }), 'id'],
        ['verify-user-alice-wrongorg', 'alice@example.com.signet', () => ({ org: signet('example.org.signet') }), 'invalid'],
        ['verify-tampered-name', 'alice-tampered-name.signet', () => ({ org: signet('example.com.signet') }), 'invalid'],
        ['verify-tampered-cryptosig', 'alice-tampered-cryptosig.signet', () => ({ org: signet('example.com.signet') }), 'invalid'],
        ['verify-ssr', 'alice-example.com.ssr', () => ({}), 'ssr'],
        ['verify-ssr-rotated', 'alice-rotated.ssr', () => ({}), 'broken-custody'],
        ['verify-rotated-with-prev', 'alice-rotated.signet', () => ({ org: signet('example.com.signet'), previous: signet('alice@example.com.signet') }), 'id'],
        ['verify-rotated-no-prev', 'alice-rotated.signet', () => ({ org: signet('example.com.signet') }), 'broken-custody'],
        ['verify-rotated-wrong-prev', 'alice-rotated.signet', () => ({ org: signet('example.com.signet'), previous: signet('bob@example.org.signet') }), 'broken-custody'],
      ];
      for (const [file, name, ctx, expected] of verdicts) {
        it(`${file}: ${expected}`, () => {
          assert.equal(validateSignet(crypto, signet(name), ctx()).state, expected);
          // The libdime verdict text in the vector agrees in direction (exit 0 ⇔ valid).
          assert.match(vectorText('libdime/verify', `${file}.out`), expected === 'id' || expected === 'ssr' ? /exit=0/ : /exit=1/);
        });
      }

      it('verify-ssr-rotated-prev: the custody signature checks out (libdime says broken: its §9.4 bug)', () => {
        // libdime verifies field 5 with the previous key here; field 4 is what the previous key signed.
        assert.match(vectorText('libdime/verify', 'verify-ssr-rotated-prev.out'), /4 broken chain of custody/);
        assert.equal(validateSignet(crypto, signet('alice-rotated.ssr'), { previous: signet('alice@example.com.signet') }).state, 'ssr');
        assert.equal(validateSignet(crypto, signet('alice-rotated.ssr'), { previous: signet('bob@example.org.signet') }).state, 'broken-custody');
      });

      it('a user signet checked without its org signet is only SSR-verified', () => {
        assert.equal(validateSignet(crypto, signet('alice@example.com.signet')).state, 'ssr');
      });
    });
  }

  it('validates the split forms: crypto and full (id-stripped) signets', () => {
    const crypto = backends[0]!;
    const user = signet('alice@example.com.signet');
    const org = signet('example.com.signet');
    assert.equal(validateSignet(crypto, splitSignet(user, 'crypto'), { org }).state, 'crypto');
    assert.equal(validateSignet(crypto, splitSignet(user, 'full'), { org }).state, 'full');
    assert.equal(validateSignet(crypto, splitSignet(org, 'full'), { poks: [signingKeyOf(org)!] }).state, 'full');
    // A crypto signet's fingerprint is the crypto fingerprint of the whole signet.
    assert.equal(fingerprints(crypto, splitSignet(user, 'crypto')).crypto, FINGERPRINTS['alice@example.com.signet']!.crypto);
  });

  it('reports a signet missing required fields as incomplete', () => {
    const crypto = backends[0]!;
    const org = signet('example.com.signet');
    const without254 = { ...org, fields: org.fields.filter((f) => f.id !== 254) };
    assert.equal(structuralState(without254), 'incomplete');
    assert.equal(validateSignet(crypto, without254, { poks: [signingKeyOf(org)!] }).state, 'incomplete');
  });
});

describe('Appendix B (confirmed against the C build)', () => {
  it('crypto-only org signet: CRYPTO state and the documented fingerprint', () => {
    const s = dearmorSignet(vectorText('libdime/appendix-b-check/appB-org.signet'));
    assert.deepEqual(s.fields.map((f) => f.id), [1, 3, 4]);
    const crypto = backends[0]!;
    const pok = base64DecodeStrict('h44kA4AXy2gFnlF+osucG2t4SOBeu8CA3WWxo6RLfIA');
    assert.equal(validateSignet(crypto, s, { poks: [pok] }).state, 'crypto');
    const fp = 'WMiy57w0snt8kX19nelWE0QimcG33qnZrqbyGABFyMFBrGw5NOF5bWNeIe1LPtdrJMVA9kShTpdDmYS5Wt/siw';
    assert.deepEqual(fingerprints(crypto, s), { crypto: fp, full: fp, id: fp });
  });

  it('is reproduced from the magma sandbox keys in libdime layout', async () => {
    const crypto = backends[0]!;
    const k = dearmorKeys(vectorText('libdime/appendix-b-check/appB-org.keys'));
    const made = await createOrgSignet({ signer: crypto.ed25519Signer(k.signingKey), encryptionKey: crypto.secp256k1PublicKey(k.encryptionKey), cryptoOnly: true });
    assert.equal(armorSignet(made), vectorText('libdime/appendix-b-check/appB-org.signet'));
  });
});

describe('magma PRIME signets', () => {
  const org = vectorJson('magma/org.json');
  const users = vectorJson('magma/users.json');

  it('reads the sandbox org signet as PRIME and validates it at CRYPTO level', () => {
    const crypto = backends[0]!;
    const s = dearmorSignet(vectorText('magma/sandbox/dime.localhost.localdomain.signet'));
    assert.equal(s.dialect, 'prime');
    assert.equal(s.type, 'org');
    assert.equal(s.bytes.length, 139);
    assert.equal(toHex(signingKeyOf(s)!), '878e24038017cb68059e517ea2cb9c1b6b7848e05ebbc080dd65b1a3a44b7c80');
    assert.equal(toHex(encryptionKeyOf(s)!), '02ff5d28d73031b7f56b6558d42586080e0eabe4cf8a6b485c211bb30ea254e211');
    assert.equal(validateSignet(crypto, s, { poks: [signingKeyOf(s)!] }).state, 'crypto');
    // PRIME's single fingerprint is SHA-512 over all fields: our crypto fingerprint of a 1,3,4 signet.
    assert.equal(toHex(base64DecodeStrict(fingerprints(crypto, s).crypto!)), JSON.stringify(org).match(/"fingerprint_sha512_hex":\s*"([0-9a-f]+)"/)![1]);
  });

  it('reads every sandbox user signet as PRIME and validates it against the org signet', () => {
    const crypto = backends[0]!;
    const orgSignet = dearmorSignet(vectorText('magma/sandbox/dime.localhost.localdomain.signet'));
    const list: any[] = users.users;
    assert.equal(list.length, 9, 'nine users with keys');
    for (const u of list) {
      const bytes = Uint8Array.from(Buffer.from(u.signet_base64, 'base64'));
      const s = decodeSignet(bytes);
      assert.equal(s.dialect, 'prime', u.username);
      assert.equal(s.type, 'user');
      assert.equal(s.bytes.length, 204);
      assert.equal(validateSignet(crypto, s, { org: orgSignet }).state, 'crypto', u.username);
      assert.equal(base64Encode(s.bytes), u.signet_base64);
    }
  });

  it('reads the libdime-style blobs of primitives.json as such (0x40 keys), not as PRIME, and validates them', () => {
    const crypto = backends[0]!;
    const blobs = new Map<string, Signet>();
    for (const blob of vectorJson('magma/primitives.json').unpacker as { name: string; base64: string }[]) {
      if (!['user_signing_request', 'user_signet', 'org_signet'].includes(blob.name)) continue;
      const s = decodeSignet(Uint8Array.from(Buffer.from(blob.base64, 'base64')));
      assert.notEqual(s.dialect, 'prime', blob.name);
      blobs.set(blob.name, s);
    }
    const orgBlob = blobs.get('org_signet')!;
    assert.equal(validateSignet(crypto, orgBlob, { poks: [signingKeyOf(orgBlob)!] }).state, 'id');
    assert.equal(validateSignet(crypto, blobs.get('user_signing_request')!).state, 'ssr');
    assert.equal(validateSignet(crypto, blobs.get('user_signet')!, { org: orgBlob }).state, 'id');
  });
});

describe('dialects', () => {
  it('reads the magma dialect (u8 encryption-key length) and reports it', () => {
    const crypto = backends[0]!;
    const lib = signet('example.com.signet');
    // Rewrite the encryption-key prefix 00 21 → 21 and fix the header: the magma copy's layout.
    const area = lib.bytes.subarray(5);
    const i = area.indexOf(3, 35); // field 3 follows the 35 bytes of field 1
    assert.equal(i, 35);
    const magmaArea = new Uint8Array([...area.subarray(0, 36), ...area.subarray(37)]);
    const bytes = new Uint8Array([0x06, 0xf0, 0, (magmaArea.length >> 8) & 0xff, magmaArea.length & 0xff, ...magmaArea]);
    const s = decodeSignet(bytes);
    assert.equal(s.dialect, 'magma');
    assert.deepEqual(encryptionKeyOf(s), encryptionKeyOf(lib));
    // Its signatures were made over the libdime bytes, so they no longer verify: not silently "fixed".
    assert.equal(validateSignet(crypto, s, { poks: [signingKeyOf(s)!] }).state, 'invalid');
  });

  it('refuses a layout that fits no dialect', () => {
    // PRIME's bare key with libdime's u16 encryption-key length.
    const bytes = fromHex('06f0000046' + '0120' + '11'.repeat(32) + '030021' + '02' + '22'.repeat(32));
    assert.throws(() => decodeSignet(bytes), (e: unknown) => isDimeError(e, 'SIGNET_DIALECT_UNKNOWN'));
  });
});
