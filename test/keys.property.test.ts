/**
 * Property and fuzz tests for keys files (dime-formats.md §2.4, prime-and-stacie.md §1.4): the
 * codec round trip in both dialects, exact errors for every structural corruption, typed errors
 * only for any input, the armor round trip, and the libdime and magma vectors against the public
 * keys libdime printed for them.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { defaultCrypto } from '../src/crypto/index.js';
import { dearmor } from '../src/dime/armor.js';
import { concatBytes, fromHex, toHex } from '../src/dime/bytes.js';
import { armorKeys, dearmorKeys, decodeKeys, encodeKeys, generateKeys, type DimeKeys, type KeysDialect, type KeysType } from '../src/dime/keys.js';
import { MAGIC } from '../src/dime/magic.js';
import { dearmorSignet, encryptionKeyOf, keysMatchSignet, signingKeyOf } from '../src/dime/signet/index.js';
import { type ErrorCode } from '../src/errors.js';
import { vectorText } from './helpers/vectors.js';
import { attempt, expectCode, withFixedHeader } from './helpers/typed-errors.js';

const crypto = defaultCrypto();
const hex = toHex;

const keysArb: fc.Arbitrary<DimeKeys> = fc.record({
  type: fc.constantFrom<KeysType>('org', 'user'),
  dialect: fc.constantFrom<KeysDialect>('libdime', 'magma'),
  signingKey: fc.uint8Array({ minLength: 32, maxLength: 32 }),
  encryptionKey: fc.uint8Array({ minLength: 32, maxLength: 32 }),
});

/** Offset of the encryption key: after the u16 (libdime) or u8 (magma) length. */
const encAt = (d: KeysDialect): number => (d === 'libdime' ? 42 : 41);

describe('keys codec', () => {
  it('encode/decode round trip for both types and both dialects, with the exact layout', () => {
    const seen = new Set<string>();
    fc.assert(
      fc.property(keysArb, (k) => {
        seen.add(`${k.type}/${k.dialect}`);
        const bytes = encodeKeys(k);
        const total = k.dialect === 'libdime' ? 74 : 73;
        assert.equal(bytes.length, total);
        const expected = concatBytes(
          Uint8Array.of(...(k.type === 'org' ? [0x07, 0xa0] : [0x07, 0xdd]), 0, 0, total - 5, 0x01, 0x20),
          k.signingKey,
          Uint8Array.of(k.type === 'org' ? 3 : 2, ...(k.dialect === 'libdime' ? [0x00, 0x20] : [0x20])),
          k.encryptionKey,
        );
        assert.equal(hex(bytes), hex(expected));
        const d = decodeKeys(bytes);
        assert.deepEqual({ ...d, signingKey: hex(d.signingKey), encryptionKey: hex(d.encryptionKey) }, { ...k, signingKey: hex(k.signingKey), encryptionKey: hex(k.encryptionKey) });
        assert.equal(hex(encodeKeys(d)), hex(bytes));
        // The decoded keys are copies, not views into the input.
        const copy = Uint8Array.from(bytes);
        const d2 = decodeKeys(copy);
        copy.fill(0);
        assert.equal(hex(d2.signingKey), hex(k.signingKey));
      }),
      { numRuns: 300 },
    );
    assert.equal(seen.size, 4);
    // The dialect defaults to libdime.
    const k = { type: 'user' as const, signingKey: new Uint8Array(32).fill(1), encryptionKey: new Uint8Array(32).fill(2) };
    assert.equal(encodeKeys(k).length, 74);
    expectCode(() => encodeKeys({ ...k, signingKey: new Uint8Array(31) }), 'KEYS_BAD_FIELD', '31-byte seed');
    expectCode(() => encodeKeys({ ...k, encryptionKey: new Uint8Array(33) }), 'KEYS_BAD_FIELD', '33-byte scalar');
  });

  it('armorKeys / dearmorKeys round trip with the tag of the type', () => {
    fc.assert(
      fc.property(keysArb, (k) => {
        const text = armorKeys(k);
        const tag = k.type === 'org' ? 'ORGANIZATIONAL KEY' : 'USER KEY';
        assert.ok(text.startsWith(`-----BEGIN ${tag}-----\n`));
        assert.ok(text.endsWith(`\n-----END ${tag}-----\n`));
        const d = dearmorKeys(text);
        assert.equal(d.type, k.type);
        assert.equal(d.dialect, k.dialect);
        assert.equal(hex(d.signingKey), hex(k.signingKey));
        assert.equal(hex(d.encryptionKey), hex(k.encryptionKey));
        assert.equal(hex(dearmor(text, [tag]).data), hex(encodeKeys(k)));
      }),
      { numRuns: 200 },
    );
  });

  it('every byte value at every position of every layout: key bytes decode, anything else fails with its exact code', () => {
    for (const type of ['org', 'user'] as const) {
      for (const dialect of ['libdime', 'magma'] as const) {
        const k: DimeKeys = { type, dialect, signingKey: new Uint8Array(32).fill(0x11), encryptionKey: new Uint8Array(32).fill(0x22) };
        const bytes = encodeKeys(k);
        const at = encAt(dialect);
        for (let i = 0; i < bytes.length; i++) {
          for (let v = 0; v < 256; v++) {
            if (v === bytes[i]) continue;
            const m = Uint8Array.from(bytes);
            m[i] = v;
            const what = `${type}/${dialect}: byte ${i} = ${v}`;
            if ((i >= 7 && i < 39) || i >= at) {
              // Keys carry no integrity check: a changed key byte decodes, and only that byte differs.
              const d = decodeKeys(m);
              assert.equal(d.type, type, what);
              assert.equal(d.dialect, dialect, what);
              assert.equal(hex(concatBytes(d.signingKey, d.encryptionKey)), hex(concatBytes(m.subarray(7, 39), m.subarray(at))), what);
              continue;
            }
            let code: ErrorCode;
            if (i < 2) {
              const magic = (m[0]! << 8) | m[1]!;
              // The other keys magic passes the magic check but then the encryption field id is wrong.
              code = magic === MAGIC.orgKeys || magic === MAGIC.userKeys ? 'KEYS_BAD_FIELD' : 'OBJECT_BAD_MAGIC';
            } else if (i < 5) {
              code = 'OBJECT_LENGTH_MISMATCH';
            } else if (dialect === 'libdime' && i === 40 && v === 0x20) {
              // `03 20 20 …`: reads as the magma layout, and then one byte is left over.
              code = 'KEYS_TRAILING_DATA';
            } else {
              code = 'KEYS_BAD_FIELD';
            }
            expectCode(() => decodeKeys(m), code, what);
          }
        }
      }
    }
  });

  it('truncation at every length, raw and with a consistent header', () => {
    for (const type of ['org', 'user'] as const) {
      for (const dialect of ['libdime', 'magma'] as const) {
        const bytes = encodeKeys({ type, dialect, signingKey: crypto.randomBytes(32), encryptionKey: crypto.randomBytes(32) });
        for (let n = 0; n < bytes.length; n++) {
          expectCode(() => decodeKeys(bytes.subarray(0, n)), n < 5 ? 'OBJECT_TRUNCATED' : 'OBJECT_LENGTH_MISMATCH', `${type}/${dialect} cut to ${n}`);
          if (n >= 5) {
            const fixed = withFixedHeader(bytes.subarray(0, n));
            const r = attempt(() => decodeKeys(fixed));
            // Nothing shorter than a whole file decodes, even with the header made consistent.
            assert.equal(r.ok, false, `${type}/${dialect} cut to ${n} with a fixed header decoded`);
            if (!r.ok) assert.equal(r.code, 'KEYS_BAD_FIELD', `${type}/${dialect} cut to ${n}`);
          }
        }
      }
    }
  });

  it('random extensions: OBJECT_LENGTH_MISMATCH raw, KEYS_TRAILING_DATA with a consistent header', () => {
    fc.assert(
      fc.property(keysArb, fc.uint8Array({ minLength: 1, maxLength: 64 }), (k, extra) => {
        const m = concatBytes(encodeKeys(k), extra);
        expectCode(() => decodeKeys(m), 'OBJECT_LENGTH_MISMATCH', 'raw extension');
        expectCode(() => decodeKeys(withFixedHeader(m)), 'KEYS_TRAILING_DATA', 'extension with fixed header');
      }),
      { numRuns: 300 },
    );
  });

  it('random multi-byte mutations, insertions, deletions and garbage throw only DimeErrors', () => {
    const mutant = fc.oneof(
      fc.tuple(keysArb, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 6 }), fc.boolean()).map(([k, flips, fix]) => {
        const m = Uint8Array.from(encodeKeys(k));
        for (const [p, x] of flips) m[p % m.length] = (m[p % m.length] as number) ^ x;
        return fix ? withFixedHeader(m) : m;
      }),
      fc.tuple(keysArb, fc.nat(), fc.nat(6), fc.uint8Array({ maxLength: 6 })).map(([k, at, del, ins]) => {
        const b = encodeKeys(k);
        const p = at % b.length;
        return withFixedHeader(concatBytes(b.subarray(0, p), ins, b.subarray(Math.min(b.length, p + del))));
      }),
      fc.uint8Array({ maxLength: 120 }),
      fc.tuple(fc.constantFrom(MAGIC.orgKeys, MAGIC.userKeys), fc.uint8Array({ maxLength: 90 })).map(([magic, rest]) => withFixedHeader(concatBytes(Uint8Array.of(magic >> 8, magic & 0xff, 0, 0, 0), rest))),
    );
    let decoded = 0;
    fc.assert(
      fc.property(mutant, (m) => {
        const r = attempt(() => decodeKeys(m));
        if (r.ok) {
          decoded++;
          // Whatever decodes is a well-formed keys file that re-encodes to exactly the input.
          assert.equal(hex(encodeKeys(r.value)), hex(m));
        }
        // The armored form behaves the same way.
        const text = `-----BEGIN USER KEY-----\n${Buffer.from(m).toString('base64')}\n=${Buffer.from(crc(m)).toString('base64')}\n-----END USER KEY-----\n`;
        const a = attempt(() => dearmorKeys(text));
        assert.equal(a.ok, r.ok);
      }),
      { numRuns: 2000 },
    );
    assert.ok(decoded > 100, `only ${decoded} mutants decoded`);
  });
});

/** Bitwise CRC-24 straight from the spec (§1.3), independent of src/dime/crc24.ts. */
function crc(data: Uint8Array): Uint8Array {
  let c = 0xb704ce;
  for (const b of data) {
    c ^= b << 16;
    for (let i = 0; i < 8; i++) {
      c <<= 1;
      if (c & 0x1000000) c ^= 0x1864cfb;
    }
  }
  c &= 0xffffff;
  return Uint8Array.of(c >> 16, (c >> 8) & 0xff, c & 0xff);
}

/** `dimevec keys` output: seed, Ed25519 public key (hex and pok= base64), compressed secp256k1 public key. */
function parseStdout(text: string): { seed: string; ed25519: string; pok: string; secp256k1: string } {
  const get = (label: string): string => {
    const m = new RegExp(`^${label.replace(/[()=]/g, '\\$&')}\\s*=\\s*(\\S+)$`, 'm').exec(text);
    assert.ok(m, `no "${label}" line`);
    return m[1]!;
  };
  return { seed: get('ed25519 seed'), ed25519: get('ed25519 public'), pok: get('ed25519 public b64 (DIME record pok=)'), secp256k1: get('secp256k1 public') };
}

describe('keys vectors', () => {
  const libdimeKeys: Array<{ file: string; dir: string; stdout: string; type: KeysType; signet?: string }> = [
    { dir: 'libdime/keys', file: 'example.com.keys', stdout: 'example.com.keys.stdout', type: 'org', signet: 'libdime/signets/example.com.signet' },
    { dir: 'libdime/keys', file: 'example.org.keys', stdout: 'example.org.keys.stdout', type: 'org', signet: 'libdime/signets/example.org.signet' },
    { dir: 'libdime/keys', file: 'alice-example.com.keys', stdout: 'alice-example.com.keys.stdout', type: 'user', signet: 'libdime/signets/alice@example.com.signet' },
    { dir: 'libdime/keys', file: 'bob-example.org.keys', stdout: 'bob-example.org.keys.stdout', type: 'user', signet: 'libdime/signets/bob@example.org.signet' },
    { dir: 'libdime/keys', file: 'alice-rotated.keys', stdout: 'alice-rotated.keys.stdout', type: 'user', signet: 'libdime/signets/alice-rotated.signet' },
    { dir: 'libdime/appendix-b-check', file: 'appB-org.keys', stdout: 'appB-keys.stdout', type: 'org', signet: 'libdime/appendix-b-check/appB-org.signet' },
  ];

  for (const v of libdimeKeys) {
    it(`${v.file}: libdime layout, and the public keys libdime printed`, () => {
      const text = vectorText(v.dir, v.file);
      const keys = dearmorKeys(text);
      assert.equal(keys.type, v.type);
      assert.equal(keys.dialect, 'libdime');
      const out = parseStdout(vectorText(v.dir, v.stdout));
      assert.equal(hex(keys.signingKey), out.seed);
      const ed = crypto.ed25519PublicKey(keys.signingKey);
      assert.equal(hex(ed), out.ed25519);
      assert.equal(Buffer.from(ed).toString('base64').replace(/=+$/, ''), out.pok);
      assert.equal(hex(crypto.secp256k1PublicKey(keys.encryptionKey)), out.secp256k1);
      // Byte-exact re-encoding, and the pair with its signet.
      assert.equal(hex(encodeKeys(keys)), hex(dearmor(text, [v.type === 'org' ? 'ORGANIZATIONAL KEY' : 'USER KEY']).data));
      assert.equal(armorKeys(keys), text);
      if (v.signet) {
        const signet = dearmorSignet(vectorText(v.signet));
        assert.ok(keysMatchSignet(crypto, signet, keys), `${v.file} matches ${v.signet}`);
        assert.equal(hex(signingKeyOf(signet)!), out.ed25519);
        assert.equal(hex(encryptionKeyOf(signet)!), out.secp256k1);
      }
    });
  }

  it('the magma sandbox org key: magma layout, matching the sandbox signet and org.json', () => {
    const text = vectorText('magma/sandbox/dime.localhost.localdomain.key');
    const keys = dearmorKeys(text);
    assert.equal(keys.type, 'org');
    assert.equal(keys.dialect, 'magma');
    const raw = dearmor(text, ['ORGANIZATIONAL KEY']).data;
    assert.equal(raw.length, 73);
    assert.equal(hex(encodeKeys(keys)), hex(raw));
    assert.equal(armorKeys(keys), `${text}\n`);
    const signet = dearmorSignet(vectorText('magma/sandbox/dime.localhost.localdomain.signet'));
    assert.equal(signet.dialect, 'prime');
    assert.ok(keysMatchSignet(crypto, signet, keys));
    // The same key pair as the Appendix B libdime signet (the spec built it from the sandbox keys).
    const appB = parseStdout(vectorText('libdime/appendix-b-check/appB-keys.stdout'));
    assert.equal(hex(keys.signingKey), appB.seed);
    assert.equal(hex(crypto.ed25519PublicKey(keys.signingKey)), '878e24038017cb68059e517ea2cb9c1b6b7848e05ebbc080dd65b1a3a44b7c80');
    assert.equal(hex(crypto.secp256k1PublicKey(keys.encryptionKey)), '02ff5d28d73031b7f56b6558d42586080e0eabe4cf8a6b485c211bb30ea254e211');
    // Re-encoded in the libdime layout it is the Appendix B keys file, byte for byte.
    assert.equal(armorKeys({ ...keys, dialect: 'libdime' }), vectorText('libdime/appendix-b-check/appB-org.keys'));
  });

  it('generateKeys output round-trips and has a valid scalar', () => {
    for (const type of ['org', 'user'] as const) {
      const k = generateKeys(type, crypto);
      assert.equal(k.dialect, 'libdime');
      assert.ok(crypto.secp256k1IsValidPrivateKey(k.encryptionKey));
      const d = decodeKeys(encodeKeys(k));
      assert.equal(hex(d.signingKey), hex(k.signingKey));
      assert.equal(hex(d.encryptionKey), hex(k.encryptionKey));
      assert.equal(d.type, type);
    }
    // An out-of-range scalar is redrawn.
    let calls = 0;
    const n = fromHex('fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141');
    const k = generateKeys('user', {
      randomBytes: (len) => (calls++ === 0 ? n : crypto.randomBytes(len)),
      secp256k1IsValidPrivateKey: (x) => crypto.secp256k1IsValidPrivateKey(x),
    });
    assert.notEqual(hex(k.encryptionKey), hex(n));
    assert.ok(calls >= 3);
  });
});
