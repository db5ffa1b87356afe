import { DimeError, assertBytes } from '../errors.js';

export function checkSeed(seed: unknown): asserts seed is Uint8Array {
  assertBytes('seed', seed, 32);
}
export function checkAesKey(key: unknown, iv: unknown, ivLengths: number[]): void {
  assertBytes('key', key, 32);
  assertBytes('iv', iv, ...ivLengths);
}
export function checkBlocks(data: Uint8Array): void {
  if (data.length % 16 !== 0) throw new DimeError('CRYPTO_BAD_INPUT', `AES-CBC without padding needs whole 16-byte blocks, got ${data.length} bytes`);
}
export function checkGcm(key: unknown, iv: unknown): void {
  assertBytes('key', key, 32);
  if (!(iv instanceof Uint8Array) || iv.length < 12 || iv.length > 64) {
    throw new DimeError('CRYPTO_BAD_KEY', 'iv must be 12 to 64 bytes');
  }
}
