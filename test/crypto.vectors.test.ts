/**
 * Known-answer tests for every CryptoBackend: magma's Ed25519 and secp256k1 fixtures, the DIME
 * Appendix B KEK/keyslot example confirmed against the libdime C build, magma's real encrypted user
 * key (AES-256-GCM with a 16-byte IV), NIST/RFC vectors for AES, SHA-2 and HMAC-SHA-512, and the
 * error codes callers key on. Each backend must reproduce the exact bytes; comparisons are done on
 * hex strings so a failure shows both values.
 */
import { strict as assert } from 'node:assert';
import * as crypto from 'node:crypto';
import { describe, it } from 'node:test';
import { createNobleBackend, createNodeBackend, type CryptoBackend } from '../src/crypto/index.js';
import { isDimeError, type ErrorCode } from '../src/errors.js';
import { vectorJson, vectorText } from './helpers/vectors.js';

// The three configurations a deployment can run: default node + libsecp256k1, node with OpenSSL's
// secp256k1 (DIME_SECP256K1=openssl) and all-noble (DIME_CRYPTO=noble).
const BACKENDS: { label: string; impl: CryptoBackend['secp256k1Impl']; make: () => CryptoBackend }[] = [
  { label: 'node + libsecp256k1', impl: 'libsecp256k1', make: () => createNodeBackend() },
  { label: 'node + openssl secp256k1', impl: 'openssl', make: () => createNodeBackend({ secp256k1: 'openssl' }) },
  { label: 'noble', impl: 'noble', make: () => createNobleBackend() },
];

const hex = (s: string): Uint8Array => {
  assert.match(s, /^(?:[0-9a-f]{2})*$/, 'test vector is not lowercase hex');
  return new Uint8Array(Buffer.from(s, 'hex'));
};
const toHex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const fill = (byte: number, length: number): Uint8Array => new Uint8Array(length).fill(byte);
const concat = (...parts: Uint8Array[]): Uint8Array => new Uint8Array(Buffer.concat(parts));
const xor = (a: Uint8Array, b: Uint8Array): Uint8Array => {
  assert.equal(a.length, b.length);
  return a.map((v, i) => v ^ b[i]!);
};
const flipBit = (b: Uint8Array, bit: number): Uint8Array => {
  const c = Uint8Array.from(b);
  c[bit >> 3]! ^= 1 << (bit & 7);
  return c;
};

/** Asserts that fn throws a DimeError with exactly this code (codes are API, see errors.ts). */
function throwsCode(fn: () => unknown, code: ErrorCode, what: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(isDimeError(err, code), `${what}: expected DimeError ${code}, got ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
    return true;
  }, `${what}: expected DimeError ${code}, nothing was thrown`);
}

/** `name = hex` line of a libdime tool's output (appendix-b-check/*.stdout). */
function stdoutValue(file: string, name: string): string {
  const text = vectorText('libdime', 'appendix-b-check', file);
  const m = new RegExp(`^${name.replace('.', '\\.')}\\s*=\\s*([0-9a-f]+)\\s*$`, 'm').exec(text);
  assert.ok(m, `${file} has no "${name} =" line`);
  return m[1]!;
}

/** Minimal dearmor (body lines up to the =CRC line); the armor codec itself is tested elsewhere. */
function dearmorBody(text: string): Uint8Array {
  const lines = text.split(/\r?\n/);
  const body: string[] = [];
  for (const line of lines.slice(1)) {
    if (line.startsWith('=') || line.startsWith('-----END')) break;
    body.push(line.trim());
  }
  return new Uint8Array(Buffer.from(body.join(''), 'base64'));
}

/**
 * DIME's KEK derivation (dime-formats.md §2.3): H = SHA-512(ECDH x); iv[i] = H[i] ^ H[i+16];
 * key = H[32..64]. A local copy so that the backends' SHA-512/ECDH are checked against the C build
 * now; the real one will live in the message module.
 */
function deriveKek(backend: CryptoBackend, x: Uint8Array): { iv: Uint8Array; key: Uint8Array } {
  const h = backend.sha512(x);
  return { iv: xor(h.subarray(0, 16), h.subarray(16, 32)), key: h.slice(32, 64) };
}

interface Ed25519Vectors {
  fixed: { name: string; seed_hex: string; public_hex: string; message_hex: string; signature_hex: string }[];
  private_seed_import: { hex: string; accept: boolean; reason: string }[];
  public_key_import: { hex: string; accept: boolean; reason: string }[];
  derived: { zero_seed_public_hex: string; zero_seed_signature_hello_world_hex: string; hello_world_message: string; ff_seed_public_hex: string };
}
interface Secp256k1Vectors {
  fixed_keys: { private_hex: string; public_compressed_hex: string }[];
  kek: { kek_hex: string; private_a_hex: string; public_b_hex: string; private_b_hex: string; public_a_hex: string };
  private_key_import: { hex: string; accept: boolean; reason: string }[];
  public_key_import: { hex: string; accept: boolean; reason: string }[];
  generator: { compressed_hex: string; uncompressed_hex: string; private_hex: string };
}

const ed = vectorJson<Ed25519Vectors>('magma', 'ed25519.json');
const secp = vectorJson<Secp256k1Vectors>('magma', 'secp256k1.json');
const org = vectorJson('magma', 'org.json');
const stacie = vectorJson('magma', 'stacie.json');
const users = vectorJson('magma', 'users.json');

// An Ed25519 "signature" of "Hello world!" under the all-zero public key (a point of order 4),
// built as R = [3]B + T with T chosen so that [s]B − [k]A = R holds: OpenSSL's raw equation accepts
// it (asserted below), so rejecting it shows the small-order-key refusal (backend.ts) is in force.
// magma's importer takes any 32 bytes (ed25519.json public_key_import); we decide otherwise on purpose.
const ZERO_KEY_FORGERY_HEX =
  '9d7343a2d9e5d12de3965c79889ef8e2a8e08c6bc30c02fd47a891ff1a5c3a100300000000000000000000000000000000000000000000000000000000000000';

for (const { label, impl, make } of BACKENDS) {
  const backend = make();

  describe(`crypto vectors: ${label}`, () => {
    it('selects the secp256k1 implementation it was asked for (no silent fallback)', () => {
      assert.equal(backend.secp256k1Impl, impl);
    });

    describe('Ed25519 (magma ed25519.json, RFC 8032)', () => {
      for (const v of ed.fixed) {
        const seed = hex(v.seed_hex);
        const pub = hex(v.public_hex);
        const msg = hex(v.message_hex);
        const sig = hex(v.signature_hex);

        it(`${v.name}: seed → public key, exact signature, verifies`, async () => {
          assert.equal(toHex(backend.ed25519PublicKey(seed)), v.public_hex);
          assert.equal(toHex(backend.ed25519Sign(seed, msg)), v.signature_hex);
          assert.equal(backend.ed25519Verify(pub, msg, sig), true);
          const signer = backend.ed25519Signer(seed);
          assert.equal(toHex(signer.publicKey), v.public_hex);
          assert.equal(toHex(await signer.sign(msg)), v.signature_hex);
        });

        it(`${v.name}: every single-bit flip of the signature fails`, () => {
          const accepted: number[] = [];
          for (let bit = 0; bit < 512; bit++) if (backend.ed25519Verify(pub, msg, flipBit(sig, bit))) accepted.push(bit);
          assert.deepEqual(accepted, [], 'bits whose flip still verified');
        });

        it(`${v.name}: truncated (0–63 bytes) and extended signatures are rejected`, () => {
          for (let n = 0; n < 64; n++) assert.equal(backend.ed25519Verify(pub, msg, sig.subarray(0, n)), false, `length ${n}`);
          assert.equal(backend.ed25519Verify(pub, msg, concat(sig, new Uint8Array(1))), false, 'length 65');
        });

        it(`${v.name}: S + L (non-canonical S, same point equation) is rejected`, () => {
          // RFC 8032 §5.1.7 requires 0 ≤ S < L; S + L satisfies the group equation, so only that check rejects it.
          const L = 2n ** 252n + 27742317777372353535851937790883648493n;
          let s = 0n;
          for (let i = 63; i >= 32; i--) s = (s << 8n) | BigInt(sig[i]!);
          s += L;
          const bumped = Uint8Array.from(sig);
          for (let i = 32; i < 64; i++, s >>= 8n) bumped[i] = Number(s & 0xffn);
          assert.equal(backend.ed25519Verify(pub, msg, bumped), false);
        });
      }

      it('private_seed_import: any 32-byte seed (incl. all-zero, all-ff) is accepted, other lengths are CRYPTO_BAD_KEY', () => {
        for (const c of ed.private_seed_import) {
          const seed = hex(c.hex);
          if (c.accept) {
            assert.equal(backend.ed25519PublicKey(seed).length, 32, c.reason);
          } else {
            throwsCode(() => backend.ed25519PublicKey(seed), 'CRYPTO_BAD_KEY', `ed25519PublicKey ${c.reason}`);
            throwsCode(() => backend.ed25519Sign(seed, utf8('x')), 'CRYPTO_BAD_KEY', `ed25519Sign ${c.reason}`);
            throwsCode(() => backend.ed25519Signer(seed), 'CRYPTO_BAD_KEY', `ed25519Signer ${c.reason}`);
          }
        }
      });

      it('derived known answers: all-zero and all-ff seeds, "Hello world!" signature', () => {
        const zero = fill(0x00, 32);
        const hello = utf8(ed.derived.hello_world_message);
        assert.equal(toHex(backend.ed25519PublicKey(zero)), ed.derived.zero_seed_public_hex);
        assert.equal(toHex(backend.ed25519PublicKey(fill(0xff, 32))), ed.derived.ff_seed_public_hex);
        assert.equal(toHex(backend.ed25519Sign(zero, hello)), ed.derived.zero_seed_signature_hello_world_hex);
        const pub = hex(ed.derived.zero_seed_public_hex);
        const sig = hex(ed.derived.zero_seed_signature_hello_world_hex);
        assert.equal(backend.ed25519Verify(pub, hello, sig), true);
        // message_change_rule: the same signature must not cover "Hello world!!".
        assert.equal(backend.ed25519Verify(pub, utf8('Hello world!!'), sig), false);
      });

      it('magma org signet self-signature (org.json) verifies and is reproduced byte for byte', () => {
        const seed = hex(org.org_key.fields[0].payload_hex);
        const pub = hex(org.org_signet.signing_public_key_hex);
        const signed = hex(org.org_signet.self_signature.signed_bytes_hex);
        const sig = hex(org.org_signet.self_signature.signature_hex);
        assert.equal(toHex(backend.ed25519PublicKey(seed)), org.org_signet.signing_public_key_hex);
        assert.equal(toHex(backend.ed25519Sign(seed, signed)), org.org_signet.self_signature.signature_hex);
        assert.equal(backend.ed25519Verify(pub, signed, sig), true);
        assert.equal(backend.ed25519Verify(pub, flipBit(signed, 0), sig), false, 'a flipped bit of the signed bytes');
      });

      it('public_key_import: wrong lengths give false, and the all-zero (small-order) key is refused on purpose', () => {
        const hello = utf8('Hello world!');
        const sig = hex(ed.derived.zero_seed_signature_hello_world_hex);
        for (const c of ed.public_key_import.filter((c) => !c.accept)) {
          assert.equal(backend.ed25519Verify(hex(c.hex), hello, sig), false, c.reason);
        }
        const zeroKey = fill(0x00, 32);
        const forgery = hex(ZERO_KEY_FORGERY_HEX);
        // The forgery is real: OpenSSL without our key check accepts it.
        const raw = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(zeroKey).toString('base64url') }, format: 'jwk' });
        assert.equal(crypto.verify(null, hello, raw, forgery), true, 'precondition: raw OpenSSL verifies the forgery');
        assert.equal(backend.ed25519Verify(zeroKey, hello, forgery), false);
      });
    });

    describe('secp256k1 (magma secp256k1.json)', () => {
      it('fixed keys derive their compressed public keys (leading zero bytes of the scalar kept)', () => {
        for (const k of secp.fixed_keys) {
          assert.equal(toHex(backend.secp256k1PublicKey(hex(k.private_hex))), k.public_compressed_hex);
        }
        assert.equal(toHex(backend.secp256k1PublicKey(hex(secp.generator.private_hex))), secp.generator.compressed_hex);
      });

      it('KEK (raw ECDH x) comes out in both directions', () => {
        const k = secp.kek;
        assert.equal(toHex(backend.secp256k1Ecdh(hex(k.private_a_hex), hex(k.public_b_hex))), k.kek_hex);
        assert.equal(toHex(backend.secp256k1Ecdh(hex(k.private_b_hex), hex(k.public_a_hex))), k.kek_hex);
      });

      it('magma user↔org KEK (users.json kek_user_org_hex) from the user side', () => {
        const user = users.users.find((u: any) => u.derived)!;
        const userScalar = user.derived.user_key_fields.find((f: any) => f.type === 2).payload_hex as string;
        assert.equal(
          toHex(backend.secp256k1Ecdh(hex(userScalar), hex(org.org_signet.encryption_public_key_hex))),
          user.derived.kek_user_org_hex,
        );
        assert.equal(
          toHex(backend.secp256k1Ecdh(hex(org.org_key.fields[1].payload_hex), hex(user.derived.derived_encryption_public_key_hex))),
          user.derived.kek_user_org_hex,
        );
      });

      it('private_key_import: only 32-byte scalars in [1, n−1]; rejected ones are CRYPTO_BAD_KEY', () => {
        for (const c of secp.private_key_import) {
          assert.equal(backend.secp256k1IsValidPrivateKey(hex(c.hex)), c.accept, c.reason);
          if (!c.accept) {
            throwsCode(() => backend.secp256k1PublicKey(hex(c.hex)), 'CRYPTO_BAD_KEY', `secp256k1PublicKey ${c.reason}`);
            throwsCode(() => backend.secp256k1Ecdh(hex(c.hex), hex(secp.generator.compressed_hex)), 'CRYPTO_BAD_KEY', `secp256k1Ecdh ${c.reason}`);
          }
        }
      });

      it('public_key_import: only 33-byte compressed points (uncompressed rejected); rejected ones are CRYPTO_BAD_KEY in ECDH', () => {
        const priv = hex(secp.fixed_keys[0]!.private_hex);
        for (const c of secp.public_key_import) {
          assert.equal(backend.secp256k1IsValidPublicKey(hex(c.hex)), c.accept, c.reason);
          if (!c.accept) throwsCode(() => backend.secp256k1Ecdh(priv, hex(c.hex)), 'CRYPTO_BAD_KEY', c.reason);
        }
        // The uncompressed generator is the same point as the compressed one (generator section).
        assert.equal(backend.secp256k1IsValidPublicKey(hex(secp.generator.compressed_hex)), true);
        assert.equal(backend.secp256k1IsValidPublicKey(hex(secp.generator.uncompressed_hex)), false);
      });
    });

    describe('DIME Appendix B (dime-formats.md, confirmed by libdime: appendix-b-check)', () => {
      const seed = hex(org.org_key.fields[0].payload_hex);
      const orgScalar = hex(org.org_key.fields[1].payload_hex);
      const ephemeral = Uint8Array.from({ length: 32 }, (_, i) => i + 1); // 01 02 … 20
      const EPHEMERAL_PUB = '0284bf7562262bbd6940085748f3be6afa52ae317155181ece31b66351ccffa4b0';
      const ECDH_X = '0edae9a73ec86a7ce95e8af924699656973c70d7798e4e7e2bcebf593464de71';

      it('appB-org.keys holds the magma org key, and it gives the POK and encryption key of appB-keys.stdout', () => {
        const keys = toHex(dearmorBody(vectorText('libdime', 'appendix-b-check', 'appB-org.keys')));
        assert.ok(keys.includes(toHex(seed)) && keys.includes(toHex(orgScalar)), 'appB-org.keys does not contain the org.json keys');
        assert.equal(toHex(backend.ed25519PublicKey(seed)), stdoutValue('appB-keys.stdout', 'ed25519 public'));
        assert.equal(toHex(backend.secp256k1PublicKey(orgScalar)), stdoutValue('appB-keys.stdout', 'secp256k1 public'));
      });

      it('org signet fingerprint: SHA-512 of the fields after the 5-byte header (appB-verify.stdout)', () => {
        const signet = dearmorBody(vectorText('libdime', 'appendix-b-check', 'appB-org.signet'));
        const fp = /^fp crypto\s*:\s*(\S+)\s*$/m.exec(vectorText('libdime', 'appendix-b-check', 'appB-verify.stdout'))![1]!;
        assert.equal(Buffer.from(backend.sha512(signet.subarray(5))).toString('base64').replace(/=+$/, ''), fp);
      });

      it('ECDH x is 0edae9a7… from either side', () => {
        assert.equal(toHex(backend.secp256k1PublicKey(ephemeral)), EPHEMERAL_PUB);
        const orgPub = backend.secp256k1PublicKey(orgScalar);
        assert.equal(toHex(backend.secp256k1Ecdh(ephemeral, orgPub)), ECDH_X);
        assert.equal(toHex(backend.secp256k1Ecdh(orgScalar, hex(EPHEMERAL_PUB))), ECDH_X);
      });

      it('KEK = SHA-512(x) folded: iv and key of appB-kek.stdout and appB-kek-reverse.stdout', () => {
        const kek = deriveKek(backend, hex(ECDH_X));
        for (const file of ['appB-kek.stdout', 'appB-kek-reverse.stdout']) {
          assert.equal(toHex(kek.iv), stdoutValue(file, 'kek.iv'), file);
          assert.equal(toHex(kek.key), stdoutValue(file, 'kek.key'), file);
        }
      });

      it('keyslot: AES-256-CBC (no padding) of aa×16 ‖ bb×16 ‖ 22×32 gives appB-keyslot.stdout, and decrypts back', () => {
        const kek = deriveKek(backend, hex(ECDH_X));
        const rnd = fill(0xaa, 16);
        const chunkIv = fill(0x11, 16);
        const slot = concat(rnd, xor(chunkIv, rnd), fill(0x22, 32)); // rnd ‖ (iv ^ rnd) ‖ key
        assert.equal(toHex(slot.subarray(16, 32)), 'bb'.repeat(16));
        const expected = stdoutValue('appB-keyslot.stdout', 'ciphertext');
        assert.equal(expected.length, 128);
        assert.equal(toHex(backend.aes256CbcEncrypt(kek.key, kek.iv, slot)), expected);
        assert.equal(toHex(backend.aes256CbcDecrypt(kek.key, kek.iv, hex(expected))), toHex(slot));
      });
    });

    describe('AES-256-GCM', () => {
      it('16-byte IV: magma encrypted user key (users.json, ciphertext from Data.sql) decrypts and re-encrypts exactly', () => {
        const u = users.users.find((x: any) => x.derived)!;
        const d = u.derived;
        const shard = hex(u.encrypted_key.vector_shard_hex);
        // Tie the derived IV and tag to magma's stored vector shard and masked tag.
        const iv = xor(hex(d.realm_vector_key_hex), shard);
        const tag = xor(hex(u.encrypted_key.masked_tag_hex), hex(d.realm_tag_key_hex));
        assert.equal(toHex(iv), d.gcm_iv_hex);
        assert.equal(toHex(tag), d.gcm_tag_hex);
        const key = hex(d.realm_cipher_key_hex);
        const ct = hex(u.encrypted_key.ciphertext_hex);
        assert.equal(toHex(backend.aes256GcmDecrypt(key, iv, ct, tag)), d.plaintext_hex);
        const sealed = backend.aes256GcmEncrypt(key, iv, hex(d.plaintext_hex));
        assert.equal(toHex(sealed.ciphertext), u.encrypted_key.ciphertext_hex);
        assert.equal(toHex(sealed.tag), d.gcm_tag_hex);
        // The legacy (S = shard) realm key must fail the tag check (magma README §2, negative checks).
        const legacy = hex(d.legacy_realm_key_hex);
        throwsCode(
          () => backend.aes256GcmDecrypt(legacy.slice(32), xor(legacy.slice(0, 16), shard), ct, xor(hex(u.encrypted_key.masked_tag_hex), legacy.slice(16, 32))),
          'CRYPTO_AUTH_FAILED',
          'legacy realm key',
        );
      });

      it('16-byte IV: STACIE envelope example (stacie.json) decrypts, re-encrypts, and a changed last byte fails', () => {
        const realm = hex(stacie.primary.expected.realm_key_hex);
        const ex = stacie.primary.derived.envelope_example;
        const env = hex(ex.envelope_hex);
        assert.equal(env.length, ex.envelope_length);
        const shard = env.subarray(2, 18);
        assert.equal(toHex(shard), ex.vector_shard_hex);
        assert.equal(toHex(xor(realm.subarray(0, 16), shard)), ex.gcm_iv_hex);
        assert.equal(toHex(xor(env.subarray(18, 34), realm.subarray(16, 32))), ex.gcm_tag_hex);
        const key = realm.slice(32);
        const iv = hex(ex.gcm_iv_hex);
        const tag = hex(ex.gcm_tag_hex);
        const ct = env.slice(34);
        const inner = backend.aes256GcmDecrypt(key, iv, ct, tag);
        assert.equal(toHex(inner), ex.inner_plaintext_hex);
        assert.equal(Buffer.from(inner.subarray(4, 4 + 15)).toString('utf8'), ex.plaintext);
        const sealed = backend.aes256GcmEncrypt(key, iv, inner);
        assert.equal(toHex(sealed.ciphertext), toHex(ct));
        assert.equal(toHex(sealed.tag), ex.gcm_tag_hex);
        const tampered = Uint8Array.from(ct);
        tampered[tampered.length - 1]! ^= 0x01;
        throwsCode(() => backend.aes256GcmDecrypt(key, iv, tampered, tag), 'CRYPTO_AUTH_FAILED', 'changed last byte');
      });

      // McGrew & Viega, "The Galois/Counter Mode of Operation", AES-256 test cases 13, 14, 16 (96-bit
      // IV) and 18 (60-byte IV, which takes GCM's GHASH(IV) path like PRIME's 16-byte IVs).
      const K16 = 'feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308';
      const P16 = 'd9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39';
      const A16 = 'feedfacedeadbeeffeedfacedeadbeefabaddad2';
      const gcmCases = [
        { name: 'TC13 (empty)', key: '00'.repeat(32), iv: '00'.repeat(12), pt: '', aad: '', ct: '', tag: '530f8afbc74536b9a963b4f1c4cb738b' },
        { name: 'TC14', key: '00'.repeat(32), iv: '00'.repeat(12), pt: '00'.repeat(16), aad: '', ct: 'cea7403d4d606b6e074ec5d3baf39d18', tag: 'd0d1c8a799996bf0265b98b5d48ab919' },
        {
          name: 'TC16 (AAD)', key: K16, iv: 'cafebabefacedbaddecaf888', pt: P16, aad: A16,
          ct: '522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662',
          tag: '76fc6ece0f4e1768cddf8853bb2d551b',
        },
        {
          name: 'TC18 (60-byte IV, AAD)', key: K16,
          iv: '9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b',
          pt: P16, aad: A16,
          ct: '5a8def2f0c9e53f1f75d7853659e2a20eeb2b22aafde6419a058ab4f6f746bf40fc0c3b780f244452da3ebf1c5d82cdea2418997200ef82e44ae7e3f',
          tag: 'a44a8266ee1c8eb0c8b5d4cf5ae9f19a',
        },
      ];
      for (const c of gcmCases) {
        it(`GCM spec ${c.name}: exact ciphertext and tag, decrypts back`, () => {
          const aad = c.aad ? hex(c.aad) : undefined;
          const sealed = backend.aes256GcmEncrypt(hex(c.key), hex(c.iv), hex(c.pt), aad);
          assert.equal(toHex(sealed.ciphertext), c.ct);
          assert.equal(toHex(sealed.tag), c.tag);
          assert.equal(toHex(backend.aes256GcmDecrypt(hex(c.key), hex(c.iv), hex(c.ct), hex(c.tag), aad)), c.pt);
        });
      }

      it('tampering with the tag, the ciphertext or the AAD is CRYPTO_AUTH_FAILED; a truncated tag is never accepted', () => {
        const c = gcmCases[2]!;
        const key = hex(c.key);
        const iv = hex(c.iv);
        const ct = hex(c.ct);
        const tag = hex(c.tag);
        const aad = hex(c.aad);
        for (const bit of [0, 7, 64, 127]) {
          throwsCode(() => backend.aes256GcmDecrypt(key, iv, ct, flipBit(tag, bit), aad), 'CRYPTO_AUTH_FAILED', `tag bit ${bit}`);
        }
        throwsCode(() => backend.aes256GcmDecrypt(key, iv, flipBit(ct, 0), tag, aad), 'CRYPTO_AUTH_FAILED', 'ciphertext bit 0');
        throwsCode(() => backend.aes256GcmDecrypt(key, iv, ct, tag, flipBit(aad, 0)), 'CRYPTO_AUTH_FAILED', 'AAD bit 0');
        throwsCode(() => backend.aes256GcmDecrypt(key, iv, ct, tag), 'CRYPTO_AUTH_FAILED', 'AAD omitted');
        // OpenSSL would check a 12-byte prefix as a shorter tag if asked; the backends require 16 bytes.
        throwsCode(() => backend.aes256GcmDecrypt(key, iv, ct, tag.slice(0, 12), aad), 'CRYPTO_BAD_KEY', '12-byte tag');
      });

      it('bad key and IV lengths are CRYPTO_BAD_KEY', () => {
        const pt = new Uint8Array(16);
        for (const n of [0, 16, 24, 31, 33]) {
          throwsCode(() => backend.aes256GcmEncrypt(new Uint8Array(n), new Uint8Array(12), pt), 'CRYPTO_BAD_KEY', `key ${n} bytes`);
          throwsCode(() => backend.aes256GcmDecrypt(new Uint8Array(n), new Uint8Array(12), pt, new Uint8Array(16)), 'CRYPTO_BAD_KEY', `key ${n} bytes (decrypt)`);
        }
        for (const n of [0, 8, 11, 65]) {
          throwsCode(() => backend.aes256GcmEncrypt(new Uint8Array(32), new Uint8Array(n), pt), 'CRYPTO_BAD_KEY', `iv ${n} bytes`);
        }
      });
    });

    describe('AES-256-CBC without padding', () => {
      // NIST SP 800-38A F.2.5/F.2.6 (CBC-AES256).
      const key = hex('603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4');
      const iv = hex('000102030405060708090a0b0c0d0e0f');
      const pt = '6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710';
      const ct = 'f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b';

      it('SP 800-38A CBC-AES256: exact ciphertext (no padding block added) and decrypts back', () => {
        assert.equal(toHex(backend.aes256CbcEncrypt(key, iv, hex(pt))), ct);
        assert.equal(toHex(backend.aes256CbcDecrypt(key, iv, hex(ct))), pt);
      });

      it('non-block lengths are CRYPTO_BAD_INPUT', () => {
        for (const n of [1, 15, 17, 63]) {
          throwsCode(() => backend.aes256CbcEncrypt(key, iv, new Uint8Array(n)), 'CRYPTO_BAD_INPUT', `encrypt ${n} bytes`);
          throwsCode(() => backend.aes256CbcDecrypt(key, iv, new Uint8Array(n)), 'CRYPTO_BAD_INPUT', `decrypt ${n} bytes`);
        }
      });

      it('bad key and IV lengths are CRYPTO_BAD_KEY', () => {
        const data = new Uint8Array(32);
        for (const n of [0, 16, 24, 31, 33]) {
          throwsCode(() => backend.aes256CbcEncrypt(new Uint8Array(n), iv, data), 'CRYPTO_BAD_KEY', `key ${n} bytes`);
          throwsCode(() => backend.aes256CbcDecrypt(new Uint8Array(n), iv, data), 'CRYPTO_BAD_KEY', `key ${n} bytes (decrypt)`);
        }
        for (const n of [0, 12, 15, 17, 32]) {
          throwsCode(() => backend.aes256CbcEncrypt(key, new Uint8Array(n), data), 'CRYPTO_BAD_KEY', `iv ${n} bytes`);
          throwsCode(() => backend.aes256CbcDecrypt(key, new Uint8Array(n), data), 'CRYPTO_BAD_KEY', `iv ${n} bytes (decrypt)`);
        }
      });
    });

    describe('SHA-2 and HMAC-SHA-512', () => {
      it('FIPS 180 "abc" and empty-string digests; magma org signet fingerprint (org.json)', () => {
        assert.equal(toHex(backend.sha256(utf8('abc'))), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
        assert.equal(
          toHex(backend.sha512(utf8('abc'))),
          'ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f',
        );
        assert.equal(
          toHex(backend.sha512(new Uint8Array(0))),
          'cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e',
        );
        const fields = hex(org.org_signet.binary_hex).subarray(org.org_signet.header_length);
        assert.equal(toHex(backend.sha512(fields)), org.org_signet.fingerprint_sha512_hex);
      });

      // RFC 4231 §4.2–4.8, HMAC-SHA-512 column (test case 5 is truncated to 128 bits by the RFC).
      const hmacCases: { tc: number; key: Uint8Array; data: Uint8Array; mac: string }[] = [
        { tc: 1, key: fill(0x0b, 20), data: utf8('Hi There'), mac: '87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854' },
        { tc: 2, key: utf8('Jefe'), data: utf8('what do ya want for nothing?'), mac: '164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737' },
        { tc: 3, key: fill(0xaa, 20), data: fill(0xdd, 50), mac: 'fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb' },
        { tc: 4, key: Uint8Array.from({ length: 25 }, (_, i) => i + 1), data: fill(0xcd, 50), mac: 'b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3dba91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd' },
        { tc: 5, key: fill(0x0c, 20), data: utf8('Test With Truncation'), mac: '415fad6271580a531d4179bc891d87a6' },
        { tc: 6, key: fill(0xaa, 131), data: utf8('Test Using Larger Than Block-Size Key - Hash Key First'), mac: '80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598' },
        {
          tc: 7,
          key: fill(0xaa, 131),
          data: utf8('This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.'),
          mac: 'e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58',
        },
      ];
      for (const c of hmacCases) {
        it(`RFC 4231 test case ${c.tc}`, () => {
          const mac = backend.hmacSha512(c.key, c.data);
          assert.equal(mac.length, 64);
          assert.equal(toHex(c.tc === 5 ? mac.subarray(0, 16) : mac), c.mac);
        });
      }
    });

    it('randomBytes returns the requested length and is not constant', () => {
      const a = backend.randomBytes(32);
      const b = backend.randomBytes(32);
      assert.equal(a.length, 32);
      assert.equal(backend.randomBytes(0).length, 0);
      assert.notEqual(toHex(a), toHex(b)); // 2^-256 chance of a false failure
    });
  });
}

describe('aes256CbcEncryptInto', () => {
  for (const backend of [createNodeBackend(), createNobleBackend()]) {
    it(`${backend.name}: equals aes256CbcEncrypt at an offset, across slice boundaries, and refuses a short buffer`, () => {
      const key = backend.randomBytes(32);
      const iv = backend.randomBytes(16);
      for (const size of [16, 4096, 1024 * 1024 + 48, 3 * 1024 * 1024]) {
        const data = backend.randomBytes(size);
        const out = new Uint8Array(size + 10).fill(0xee);
        backend.aes256CbcEncryptInto(key, iv, data, out, 7);
        assert.deepEqual(out.subarray(7, 7 + size), backend.aes256CbcEncrypt(key, iv, data), `${size}`);
        assert.deepEqual([...out.subarray(0, 7), ...out.subarray(7 + size)], new Array(10).fill(0xee));
      }
      assert.throws(() => backend.aes256CbcEncryptInto(key, iv, new Uint8Array(32), new Uint8Array(40), 16), (e: unknown) => isDimeError(e, 'CRYPTO_BAD_INPUT'));
    });
  }
});
