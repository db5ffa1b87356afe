/**
 * Standard payloads, KEKs and keyslots (dime-formats.md §2.3, §5.4, §5.6).
 *
 * Standard payload plaintext: `signature[64] ‖ data_len:u24 ‖ flags ‖ pad_byte ‖ data ‖ pad_byte × padlen`,
 * a whole number of AES blocks, the signature by the author over everything after it.
 */
import type { CryptoBackend } from '../../crypto/backend.js';
import { DimeError } from '../../errors.js';
import { readUint } from '../bytes.js';
import { KEYSLOT_LENGTH } from './chunks.js';

export const PAYLOAD_SIGNATURE_LENGTH = 64;
/** Signature, u24 length, flags and pad byte. */
export const PAYLOAD_OVERHEAD = 69;
/** Padding is 1 to 256 bytes; libdime pads short payloads up to at least 256 bytes. */
const MAX_PADDING = 256;
/** payload_len is a u24 and a whole number of blocks: at most 0xFFFFF0 bytes. */
const MAX_PAYLOAD_LENGTH = 0xfffff0;
/** The most data one chunk can carry whatever padding is drawn; larger parts continue in the next chunk. */
export const MAX_CHUNK_DATA = MAX_PAYLOAD_LENGTH - PAYLOAD_OVERHEAD - MAX_PADDING;

export const PAYLOAD_FLAGS = {
  /** libdime's "alternate padding": its own decoder cannot read it. Never set, always refused. */
  alternatePadding: 0x01,
  /** Defined, unused, changes nothing we decode: tolerated. */
  alternateUserKey: 0x02,
  /** gzip-compressed data: not implemented anywhere, refused rather than delivered as garbage. */
  gzip: 0x04,
  /** The data continues in the next chunk of the same type (how parts above MAX_CHUNK_DATA travel). */
  continuation: 0x80,
} as const;

const REFUSED_FLAGS = PAYLOAD_FLAGS.alternatePadding | PAYLOAD_FLAGS.gzip | 0x78;

/** libdime's default padding (§5.4) for `dataLength` bytes and one random byte `r`. */
export function paddingLength(dataLength: number, r: number): number {
  const d = dataLength + PAYLOAD_OVERHEAD;
  return d < 256 ? 256 - d + 16 * (r % (Math.floor(d / 16) + 1)) : 16 - (d % 16) + 16 * (r % 16);
}

export function standardPayloadLength(dataLength: number, r: number): number {
  return dataLength + PAYLOAD_OVERHEAD + paddingLength(dataLength, r);
}

/**
 * Write the unsigned plaintext payload (everything after the signature) into `out`, which must be
 * `standardPayloadLength(data.length, r)` bytes; the caller signs `out[64..]` and stores the
 * signature in `out[0..64]`. Writing in place keeps a large part to one copy.
 */
export function writeStandardPayload(out: Uint8Array, data: Uint8Array, flags: number): void {
  const padlen = out.length - PAYLOAD_OVERHEAD - data.length;
  if (padlen < 1 || padlen > MAX_PADDING || out.length % 16 !== 0) throw new DimeError('MESSAGE_BAD_PAYLOAD', `no valid padding for ${data.length} bytes in ${out.length}`);
  const padByte = padlen & 0xff;
  out[64] = (data.length >>> 16) & 0xff;
  out[65] = (data.length >>> 8) & 0xff;
  out[66] = data.length & 0xff;
  out[67] = flags;
  out[68] = padByte;
  out.set(data, PAYLOAD_OVERHEAD);
  out.fill(padByte, PAYLOAD_OVERHEAD + data.length);
}

export interface StandardPayload {
  signature: Uint8Array;
  /** What the signature covers: bytes 64 to the end. */
  signed: Uint8Array;
  flags: number;
  data: Uint8Array;
}

/** Parse a decrypted standard payload with libdime's checks, made strict: every pad byte is checked. */
export function readStandardPayload(plain: Uint8Array): StandardPayload {
  if (plain.length < PAYLOAD_OVERHEAD + 1 || plain.length % 16 !== 0) throw new DimeError('MESSAGE_BAD_PAYLOAD', `length ${plain.length}`);
  const dataLength = readUint(plain, 64, 3);
  const flags = plain[67] as number;
  const padByte = plain[68] as number;
  const padlen = plain.length - PAYLOAD_OVERHEAD - dataLength;
  if (padlen < 1 || padlen > MAX_PADDING) throw new DimeError('MESSAGE_BAD_PAYLOAD', `data length ${dataLength} leaves ${padlen} bytes of padding`);
  if ((padlen & 0xff) !== padByte) throw new DimeError('MESSAGE_BAD_PAYLOAD', `pad byte ${padByte} does not match ${padlen} bytes of padding`);
  for (let i = plain.length - padlen; i < plain.length; i++) {
    if (plain[i] !== padByte) throw new DimeError('MESSAGE_BAD_PAYLOAD', 'padding bytes differ from the pad byte');
  }
  if ((flags & REFUSED_FLAGS) !== 0) throw new DimeError('MESSAGE_UNSUPPORTED', `payload flags 0x${flags.toString(16)} (alternate padding or compression) cannot be decoded`);
  return {
    signature: plain.subarray(0, PAYLOAD_SIGNATURE_LENGTH),
    signed: plain.subarray(PAYLOAD_SIGNATURE_LENGTH),
    flags,
    data: plain.subarray(PAYLOAD_OVERHEAD, PAYLOAD_OVERHEAD + dataLength),
  };
}

/** A key-encryption key: AES-256-CBC key and IV derived from one actor's ECDH secret. */
export interface Kek {
  iv: Uint8Array;
  key: Uint8Array;
}

/** SHA-512 of the ECDH x-coordinate; iv = h[0..16] ⊕ h[16..32], key = h[32..64] (§2.3). */
export function deriveKek(crypto: CryptoBackend, sharedX: Uint8Array): Kek {
  const h = crypto.sha512(sharedX);
  const iv = new Uint8Array(16);
  for (let i = 0; i < 16; i++) iv[i] = (h[i] as number) ^ (h[i + 16] as number);
  return { iv, key: h.slice(32, 64) };
}

/** One chunk's own AES key and IV, fresh for every chunk. */
export interface ChunkKey {
  iv: Uint8Array;
  key: Uint8Array;
}

/** Keyslot = AES-256-CBC under the KEK of `rnd ‖ (iv ⊕ rnd) ‖ key`, with a fresh `rnd` per slot. */
export function wrapKeyslot(crypto: CryptoBackend, kek: Kek, chunkKey: ChunkKey, rnd: Uint8Array): Uint8Array {
  const plain = new Uint8Array(KEYSLOT_LENGTH);
  plain.set(rnd, 0);
  for (let i = 0; i < 16; i++) plain[16 + i] = (chunkKey.iv[i] as number) ^ (rnd[i] as number);
  plain.set(chunkKey.key, 32);
  return crypto.aes256CbcEncrypt(kek.key, kek.iv, plain);
}

export function unwrapKeyslot(crypto: CryptoBackend, kek: Kek, slot: Uint8Array): ChunkKey {
  const plain = crypto.aes256CbcDecrypt(kek.key, kek.iv, slot);
  const iv = new Uint8Array(16);
  for (let i = 0; i < 16; i++) iv[i] = (plain[16 + i] as number) ^ (plain[i] as number);
  return { iv, key: plain.slice(32, 64) };
}
