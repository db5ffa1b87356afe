/**
 * The crypto backends, primitive by primitive: node:crypto (OpenSSL) and the libsecp256k1 binding
 * are the baselines, @noble and OpenSSL's generic secp256k1 are compared with them. The inputs are
 * fixed (derived from constant seeds) so runs are comparable; shapes follow
 * ../shared/spec/crypto-hsm-baseline.md (64-byte messages, 64 KiB bulk data).
 */
import { createHash } from 'node:crypto';
import { createNobleBackend, createNodeBackend, type CryptoBackend } from '../src/crypto/index.js';
import { registerBench, type BenchGroup } from './lib.js';

const KIB64 = 64 * 1024;

/** Deterministic bytes: SHA-512 in counter mode over a label. */
function fixedBytes(label: string, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0, off = 0; off < length; i++, off += 64) {
    const block = createHash('sha512').update(`${label}/${i}`).digest();
    out.set(block.subarray(0, Math.min(64, length - off)), off);
  }
  return out;
}

function groups(): BenchGroup[] {
  const node = createNodeBackend(); // node:crypto + libsecp256k1
  const openssl = createNodeBackend({ secp256k1: 'openssl' });
  const noble = createNobleBackend();
  if (openssl.secp256k1Impl !== 'openssl') throw new Error(`OpenSSL here has no secp256k1 (got ${openssl.secp256k1Impl}); the comparison would be meaningless`);

  // Ed25519: one signing key, a 64-byte message (a SHA-512 digest is what DIME signs most).
  const seed = fixedBytes('bench ed25519 seed', 32);
  const msg = fixedBytes('bench ed25519 message', 64);
  const pub = node.ed25519PublicKey(seed);
  const sig = node.ed25519Sign(seed, msg);
  const nodeSigner = node.ed25519Signer(seed);
  const nobleSigner = noble.ed25519Signer(seed);
  const check = (b: CryptoBackend): void => {
    if (!b.ed25519Verify(pub, msg, sig)) throw new Error(`${b.name}: the bench signature does not verify`);
  };
  check(node);
  check(noble);

  // secp256k1 ECDH as a DIME recipient does it: own scalar × the sender's (ephemeral) compressed point.
  const scalar = fixedBytes('bench secp256k1 scalar', 32); // < n with probability 1 − 2^-128
  const peer = node.secp256k1PublicKey(fixedBytes('bench secp256k1 peer', 32));
  const x = node.secp256k1Ecdh(scalar, peer);
  for (const b of [openssl, noble]) {
    if (Buffer.compare(b.secp256k1Ecdh(scalar, peer), x) !== 0) throw new Error(`${b.secp256k1Impl}: ECDH disagrees with libsecp256k1`);
  }

  // Bulk symmetric work: 64 KiB.
  const key = fixedBytes('bench aes key', 32);
  const iv16 = fixedBytes('bench aes iv', 16);
  const data = fixedBytes('bench 64 KiB', KIB64);
  const cbcCiphertext = node.aes256CbcEncrypt(key, iv16, data);

  return [
    {
      name: 'Ed25519 sign, 64 B, key imported once (Signer)',
      baseline: 'node:crypto',
      cases: [
        { name: 'node:crypto', fn: () => nodeSigner.sign(msg) },
        { name: 'noble', fn: () => nobleSigner.sign(msg) },
      ],
    },
    {
      name: 'Ed25519 sign, 64 B, from the seed every time (ed25519Sign)',
      baseline: 'node:crypto',
      cases: [
        { name: 'node:crypto', fn: () => node.ed25519Sign(seed, msg) },
        { name: 'noble', fn: () => noble.ed25519Sign(seed, msg) },
      ],
    },
    {
      name: 'Ed25519 verify, 64 B',
      baseline: 'node:crypto',
      cases: [
        { name: 'node:crypto', fn: () => node.ed25519Verify(pub, msg, sig) },
        { name: 'noble', fn: () => noble.ed25519Verify(pub, msg, sig) },
      ],
    },
    {
      name: 'secp256k1 ECDH (validation included)',
      baseline: 'libsecp256k1',
      cases: [
        { name: 'libsecp256k1', fn: () => node.secp256k1Ecdh(scalar, peer) },
        { name: 'openssl', fn: () => openssl.secp256k1Ecdh(scalar, peer) },
        { name: 'noble', fn: () => noble.secp256k1Ecdh(scalar, peer) },
      ],
    },
    {
      name: 'AES-256-CBC encrypt, 64 KiB',
      baseline: 'node:crypto',
      bytesPerOp: KIB64,
      cases: [
        { name: 'node:crypto', fn: () => node.aes256CbcEncrypt(key, iv16, data) },
        { name: 'noble', fn: () => noble.aes256CbcEncrypt(key, iv16, data) },
      ],
    },
    {
      name: 'AES-256-CBC decrypt, 64 KiB',
      baseline: 'node:crypto',
      bytesPerOp: KIB64,
      cases: [
        { name: 'node:crypto', fn: () => node.aes256CbcDecrypt(key, iv16, cbcCiphertext) },
        { name: 'noble', fn: () => noble.aes256CbcDecrypt(key, iv16, cbcCiphertext) },
      ],
    },
    {
      name: 'AES-256-GCM encrypt, 64 KiB, 16-byte IV',
      baseline: 'node:crypto',
      bytesPerOp: KIB64,
      cases: [
        { name: 'node:crypto', fn: () => node.aes256GcmEncrypt(key, iv16, data) },
        { name: 'noble', fn: () => noble.aes256GcmEncrypt(key, iv16, data) },
      ],
    },
    {
      name: 'SHA-512, 64 KiB',
      baseline: 'node:crypto',
      bytesPerOp: KIB64,
      cases: [
        { name: 'node:crypto', fn: () => node.sha512(data) },
        { name: 'noble', fn: () => noble.sha512(data) },
      ],
    },
  ];
}

registerBench({ name: 'crypto', groups });
