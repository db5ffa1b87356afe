/**
 * The fast backend: node:crypto (OpenSSL) for Ed25519, SHA-2 and AES, and libsecp256k1 through the
 * `secp256k1` native binding for secp256k1, which OpenSSL does ~15× slower
 * (../shared/spec/crypto-hsm-baseline.md). The `secp256k1` package silently degrades to pure-JS
 * `elliptic` when its binding does not load; we load the binding directly so that failure is loud.
 */
import * as crypto from 'node:crypto';
import { createRequire } from 'node:module';
import { DimeError, assertBytes } from '../errors.js';
import type { CryptoBackend, Signer } from './backend.js';
import { checkAesKey, checkBlocks, checkGcm, checkSeed } from './checks.js';
import { createNobleBackend } from './noble.js';

/** PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410): the only raw-seed import OpenSSL offers. */
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

/**
 * Ed25519 public-key encodings that OpenSSL verifies against but the node and noble backends both
 * refuse (backend.ts): the 8 points of small order (any key among them makes forged signatures
 * easy: with A = identity, every (R = [s]B, s) verifies) and the two "negative zero" encodings
 * (x = 0 with the sign bit set) of the identity and of the order-2 point.
 */
const ED25519_WEAK_PUBLIC_KEYS = new Set([
  '0100000000000000000000000000000000000000000000000000000000000000',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
  '0000000000000000000000000000000000000000000000000000000000000080',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85',
  '0000000000000000000000000000000000000000000000000000000000000000',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa',
  '0100000000000000000000000000000000000000000000000000000000000080',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff',
]);

/**
 * RFC 8032 §5.1.3 decoding rules that OpenSSL skips (it reduces y mod p and ignores a sign bit on
 * x = 0), plus the small-order refusal; the curve equation itself is left to OpenSSL.
 */
function isAcceptableEd25519PublicKey(pub: Uint8Array): boolean {
  // y ≥ p = 2^255 − 19 ⇔ (little-endian, sign bit masked) ed ff … ff 7f or above.
  let yAtLeastP = pub[0]! >= 0xed && (pub[31]! & 0x7f) === 0x7f;
  for (let i = 1; yAtLeastP && i < 31; i++) if (pub[i] !== 0xff) yAtLeastP = false;
  if (yAtLeastP) return false;
  return !ED25519_WEAK_PUBLIC_KEYS.has(Buffer.from(pub.buffer, pub.byteOffset, pub.length).toString('hex'));
}

/** Slice size for in-place encryption: a multiple of the block size, small next to a large part. */
const CBC_SLICE = 1024 * 1024;

/** Without padding final() is empty: skip the concatenation, which would copy a large output again. */
function withoutEmptyFinal(main: Buffer, final: Buffer): Buffer {
  return final.length === 0 ? main : Buffer.concat([main, final]);
}

/** Verification keys are imported once and reused; bounded so hostile input cannot grow it. */
const PUBLIC_KEY_CACHE_SIZE = 1024;

interface NativeSecp256k1 {
  privateKeyVerify(key: Uint8Array): boolean;
  publicKeyVerify(key: Uint8Array): boolean;
  publicKeyCreate(key: Uint8Array, compressed: boolean, out?: Uint8Array): Uint8Array;
  ecdh(pub: Uint8Array, priv: Uint8Array, opts: { hashfn: (x: Uint8Array, y: Uint8Array) => Uint8Array; xbuf: Uint8Array; ybuf: Uint8Array }, out: Uint8Array): Uint8Array;
}

export type Secp256k1Choice = 'libsecp256k1' | 'openssl' | 'noble';

export interface NodeBackendOptions {
  /**
   * libsecp256k1 (default) fails loudly if the binding is missing. `openssl` uses node:crypto's
   * ECDH (slower) and falls back, with a process warning, to @noble where OpenSSL lacks the curve.
   * `noble` is pure JS (slowest).
   */
  secp256k1?: Secp256k1Choice;
}

function loadNativeSecp256k1(): NativeSecp256k1 {
  try {
    return createRequire(import.meta.url)('secp256k1/bindings') as NativeSecp256k1;
  } catch (err) {
    throw new DimeError(
      'CRYPTO_NATIVE_UNAVAILABLE',
      `${(err as Error).message}; reinstall with a C++ toolchain (npm rebuild secp256k1) or set crypto secp256k1 to "openssl" or "noble" explicitly`,
      { cause: err },
    );
  }
}

function u8(b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}

function b64url(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('base64url');
}

function importEd25519Private(seed: Uint8Array): crypto.KeyObject {
  checkSeed(seed);
  return crypto.createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

function publicFromPrivate(key: crypto.KeyObject): Uint8Array {
  const jwk = crypto.createPublicKey(key).export({ format: 'jwk' });
  return u8(Buffer.from(jwk.x as string, 'base64url'));
}

export function createNodeBackend(options: NodeBackendOptions = {}): CryptoBackend {
  const choice = options.secp256k1 ?? 'libsecp256k1';
  const publicKeys = new Map<string, crypto.KeyObject | null>();

  function ed25519PublicKeyObject(pub: Uint8Array): crypto.KeyObject | null {
    const id = b64url(pub);
    let key = publicKeys.get(id);
    if (key === undefined) {
      try {
        key = isAcceptableEd25519PublicKey(pub) ? crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: id }, format: 'jwk' }) : null;
      } catch {
        key = null; // not a point on the curve: every signature under it is invalid
      }
      if (publicKeys.size >= PUBLIC_KEY_CACHE_SIZE) publicKeys.delete(publicKeys.keys().next().value as string);
      publicKeys.set(id, key);
    }
    return key;
  }

  const secp = selectSecp256k1(choice);

  return {
    name: 'node',
    secp256k1Impl: secp.impl,

    ed25519PublicKey: (seed) => publicFromPrivate(importEd25519Private(seed)),
    ed25519Sign: (seed, message) => u8(crypto.sign(null, message, importEd25519Private(seed))),
    ed25519Verify(publicKey, message, signature) {
      if (publicKey.length !== 32 || signature.length !== 64) return false;
      const key = ed25519PublicKeyObject(publicKey);
      if (!key) return false;
      try {
        return crypto.verify(null, message, key, signature);
      } catch {
        return false;
      }
    },
    ed25519Signer(seed): Signer {
      const key = importEd25519Private(seed);
      const publicKey = publicFromPrivate(key);
      return {
        publicKey,
        sign: async (message) => u8(crypto.sign(null, message, key)),
      };
    },

    ...secp.ops,

    sha256: (data) => u8(crypto.createHash('sha256').update(data).digest()),
    sha512: (data) => u8(crypto.createHash('sha512').update(data).digest()),
    hmacSha512: (key, data) => u8(crypto.createHmac('sha512', key).update(data).digest()),

    aes256CbcEncrypt(key, iv, data) {
      checkAesKey(key, iv, [16]);
      checkBlocks(data);
      const c = crypto.createCipheriv('aes-256-cbc', key, iv).setAutoPadding(false);
      return u8(withoutEmptyFinal(c.update(data), c.final()));
    },
    aes256CbcDecrypt(key, iv, data) {
      checkAesKey(key, iv, [16]);
      checkBlocks(data);
      const d = crypto.createDecipheriv('aes-256-cbc', key, iv).setAutoPadding(false);
      return u8(withoutEmptyFinal(d.update(data), d.final()));
    },
    aes256CbcEncryptInto(key, iv, data, out, offset) {
      checkAesKey(key, iv, [16]);
      checkBlocks(data);
      if (offset < 0 || offset + data.length > out.length) throw new DimeError('CRYPTO_BAD_INPUT', 'output buffer too small');
      const c = crypto.createCipheriv('aes-256-cbc', key, iv).setAutoPadding(false);
      // Slices keep the transient ciphertext small whatever the payload size.
      for (let at = 0; at < data.length; at += CBC_SLICE) out.set(c.update(data.subarray(at, at + CBC_SLICE)), offset + at);
      c.final();
    },
    aes256GcmEncrypt(key, iv, data, aad) {
      checkGcm(key, iv);
      const c = crypto.createCipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
      if (aad) c.setAAD(aad);
      const ciphertext = u8(Buffer.concat([c.update(data), c.final()]));
      return { ciphertext, tag: u8(c.getAuthTag()) };
    },
    aes256GcmDecrypt(key, iv, ciphertext, tag, aad) {
      checkGcm(key, iv);
      assertBytes('tag', tag, 16);
      const d = crypto.createDecipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
      if (aad) d.setAAD(aad);
      d.setAuthTag(tag);
      try {
        return u8(Buffer.concat([d.update(ciphertext), d.final()]));
      } catch (err) {
        throw new DimeError('CRYPTO_AUTH_FAILED', undefined, { cause: err });
      }
    },

    randomBytes: (length) => u8(crypto.randomBytes(length)),
  };
}

type SecpOps = Pick<CryptoBackend, 'secp256k1IsValidPrivateKey' | 'secp256k1IsValidPublicKey' | 'secp256k1PublicKey' | 'secp256k1Ecdh'>;

function selectSecp256k1(choice: Secp256k1Choice): { impl: Secp256k1Choice; ops: SecpOps } {
  if (choice === 'libsecp256k1') return { impl: choice, ops: nativeSecpOps(loadNativeSecp256k1()) };
  if (choice === 'openssl') {
    if (crypto.getCurves().includes('secp256k1')) return { impl: choice, ops: opensslSecpOps() };
    process.emitWarning('OpenSSL lacks secp256k1; using the pure-JS @noble implementation (slow)', { code: 'DIME_SECP256K1_FALLBACK' });
  }
  return { impl: 'noble', ops: createNobleBackend() };
}

function isCompressedPointEncoding(key: Uint8Array): boolean {
  return key.length === 33 && (key[0] === 0x02 || key[0] === 0x03);
}

function nativeSecpOps(native: NativeSecp256k1): SecpOps {
  const keep = (x: Uint8Array): Uint8Array => x;
  const isValidPrivate = (key: Uint8Array): boolean => key instanceof Uint8Array && key.length === 32 && native.privateKeyVerify(key);
  const isValidPublic = (key: Uint8Array): boolean => key instanceof Uint8Array && isCompressedPointEncoding(key) && native.publicKeyVerify(key);
  return {
    secp256k1IsValidPrivateKey: isValidPrivate,
    secp256k1IsValidPublicKey: isValidPublic,
    secp256k1PublicKey(privateKey) {
      if (!isValidPrivate(privateKey)) throw new DimeError('CRYPTO_BAD_KEY', 'privateKey is not a secp256k1 scalar in [1, n-1]');
      return native.publicKeyCreate(privateKey, true, new Uint8Array(33));
    },
    secp256k1Ecdh(privateKey, publicKey) {
      if (!isValidPrivate(privateKey)) throw new DimeError('CRYPTO_BAD_KEY', 'privateKey is not a secp256k1 scalar in [1, n-1]');
      if (!isValidPublic(publicKey)) throw new DimeError('CRYPTO_BAD_KEY', 'publicKey is not a compressed secp256k1 point');
      return native.ecdh(publicKey, privateKey, { hashfn: keep, xbuf: new Uint8Array(32), ybuf: new Uint8Array(32) }, new Uint8Array(32));
    },
  };
}

function opensslSecpOps(): SecpOps {
  const noble = createNobleBackend();
  return {
    // Validation is point arithmetic, which node:crypto does not expose; noble does it exactly.
    secp256k1IsValidPrivateKey: noble.secp256k1IsValidPrivateKey,
    secp256k1IsValidPublicKey: noble.secp256k1IsValidPublicKey,
    secp256k1PublicKey(privateKey) {
      if (!noble.secp256k1IsValidPrivateKey(privateKey)) throw new DimeError('CRYPTO_BAD_KEY', 'privateKey is not a secp256k1 scalar in [1, n-1]');
      const ecdh = crypto.createECDH('secp256k1');
      ecdh.setPrivateKey(privateKey);
      return u8(ecdh.getPublicKey(null, 'compressed'));
    },
    secp256k1Ecdh(privateKey, publicKey) {
      if (!noble.secp256k1IsValidPrivateKey(privateKey)) throw new DimeError('CRYPTO_BAD_KEY', 'privateKey is not a secp256k1 scalar in [1, n-1]');
      if (!noble.secp256k1IsValidPublicKey(publicKey)) throw new DimeError('CRYPTO_BAD_KEY', 'publicKey is not a compressed secp256k1 point');
      const ecdh = crypto.createECDH('secp256k1');
      ecdh.setPrivateKey(privateKey);
      return u8(ecdh.computeSecret(publicKey));
    },
  };
}
