/**
 * The portable backend on audited pure-JS @noble libraries: 3–60× slower than node:crypto here,
 * used where OpenSSL lacks a primitive and as the independent second implementation that the
 * differential tests compare the fast backend against.
 */
import { cbc, gcm } from '@noble/ciphers/aes.js';
import { ed25519 } from '@noble/curves/ed25519.js';
import { secp256k1 } from '@noble/curves/secp256k1.js';
import { hmac } from '@noble/hashes/hmac.js';
import { sha256, sha512 } from '@noble/hashes/sha2.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { DimeError, assertBytes } from '../errors.js';
import type { CryptoBackend, Signer } from './backend.js';
import { checkAesKey, checkBlocks, checkGcm, checkSeed } from './checks.js';

function isCompressedPoint(key: Uint8Array): boolean {
  return key instanceof Uint8Array && key.length === 33 && (key[0] === 0x02 || key[0] === 0x03) && secp256k1.utils.isValidPublicKey(key, true);
}

function isScalar(key: Uint8Array): boolean {
  return key instanceof Uint8Array && key.length === 32 && secp256k1.utils.isValidSecretKey(key);
}

/**
 * The key policy of backend.ts, through noble's own point decoding: a non-canonical encoding
 * (y ≥ p, x = 0 with the sign bit) throws, and the eight small-order points are refused.
 */
function isAcceptableEd25519PublicKey(publicKey: Uint8Array): boolean {
  try {
    return !ed25519.Point.fromBytes(publicKey, false).isSmallOrder();
  } catch {
    return false;
  }
}

/** WebCrypto's getRandomValues limit per call. */
const RANDOM_CHUNK = 65_536;

export function createNobleBackend(): CryptoBackend {
  const sign = (seed: Uint8Array, message: Uint8Array): Uint8Array => {
    checkSeed(seed);
    return ed25519.sign(message, seed);
  };
  return {
    name: 'noble',
    secp256k1Impl: 'noble',

    ed25519PublicKey: (seed) => {
      checkSeed(seed);
      return ed25519.getPublicKey(seed);
    },
    ed25519Sign: sign,
    ed25519Verify(publicKey, message, signature) {
      if (publicKey.length !== 32 || signature.length !== 64) return false;
      if (!isAcceptableEd25519PublicKey(publicKey)) return false;
      try {
        return ed25519.verify(signature, message, publicKey, { zip215: false });
      } catch {
        return false;
      }
    },
    ed25519Signer(seed): Signer {
      checkSeed(seed);
      const key = Uint8Array.from(seed);
      return { publicKey: ed25519.getPublicKey(key), sign: async (message) => sign(key, message) };
    },

    secp256k1IsValidPrivateKey: isScalar,
    secp256k1IsValidPublicKey: isCompressedPoint,
    secp256k1PublicKey(privateKey) {
      if (!isScalar(privateKey)) throw new DimeError('CRYPTO_BAD_KEY', 'privateKey is not a secp256k1 scalar in [1, n-1]');
      return secp256k1.getPublicKey(privateKey, true);
    },
    secp256k1Ecdh(privateKey, publicKey) {
      if (!isScalar(privateKey)) throw new DimeError('CRYPTO_BAD_KEY', 'privateKey is not a secp256k1 scalar in [1, n-1]');
      if (!isCompressedPoint(publicKey)) throw new DimeError('CRYPTO_BAD_KEY', 'publicKey is not a compressed secp256k1 point');
      return secp256k1.getSharedSecret(privateKey, publicKey, true).slice(1);
    },

    sha256: (data) => sha256(data),
    sha512: (data) => sha512(data),
    hmacSha512: (key, data) => hmac(sha512, key, data),

    aes256CbcEncrypt(key, iv, data) {
      checkAesKey(key, iv, [16]);
      checkBlocks(data);
      return cbc(key, iv, { disablePadding: true }).encrypt(data);
    },
    aes256CbcDecrypt(key, iv, data) {
      checkAesKey(key, iv, [16]);
      checkBlocks(data);
      return cbc(key, iv, { disablePadding: true }).decrypt(data);
    },
    aes256CbcEncryptInto(key, iv, data, out, offset) {
      checkAesKey(key, iv, [16]);
      checkBlocks(data);
      if (offset < 0 || offset + data.length > out.length) throw new DimeError('CRYPTO_BAD_INPUT', 'output buffer too small');
      out.set(cbc(key, iv, { disablePadding: true }).encrypt(data), offset);
    },
    aes256GcmEncrypt(key, iv, data, aad) {
      checkGcm(key, iv);
      const sealed = gcm(key, iv, aad).encrypt(data);
      return { ciphertext: sealed.slice(0, -16), tag: sealed.slice(-16) };
    },
    aes256GcmDecrypt(key, iv, ciphertext, tag, aad) {
      checkGcm(key, iv);
      assertBytes('tag', tag, 16);
      const sealed = new Uint8Array(ciphertext.length + 16);
      sealed.set(ciphertext);
      sealed.set(tag, ciphertext.length);
      try {
        return gcm(key, iv, aad).decrypt(sealed);
      } catch (err) {
        throw new DimeError('CRYPTO_AUTH_FAILED', undefined, { cause: err });
      }
    },

    randomBytes(length) {
      // getRandomValues, under noble's randomBytes, refuses more than 64 KiB per call.
      const out = new Uint8Array(length);
      for (let at = 0; at < length; at += RANDOM_CHUNK) out.set(randomBytes(Math.min(RANDOM_CHUNK, length - at)), at);
      return out;
    },
  };
}
