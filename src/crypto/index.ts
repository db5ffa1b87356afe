/**
 * Backend selection. The default is node:crypto with libsecp256k1, created once per process.
 * DIME_CRYPTO=noble selects the portable backend; DIME_SECP256K1=openssl|noble opts out of the
 * native binding explicitly (it never happens silently).
 */
import { DimeError } from '../errors.js';
import type { CryptoBackend } from './backend.js';
import { createNobleBackend } from './noble.js';
import { createNodeBackend, type Secp256k1Choice } from './node.js';

export type { CryptoBackend, Signer } from './backend.js';
export { createNobleBackend } from './noble.js';
export { createNodeBackend } from './node.js';

let defaultBackend: CryptoBackend | undefined;

export function defaultCrypto(env: NodeJS.ProcessEnv = process.env): CryptoBackend {
  if (!defaultBackend) {
    const which = env.DIME_CRYPTO ?? 'node';
    const secp = env.DIME_SECP256K1 ?? 'libsecp256k1';
    if (which !== 'node' && which !== 'noble') throw new DimeError('USAGE', `DIME_CRYPTO must be node or noble, not ${which}`);
    if (!['libsecp256k1', 'openssl', 'noble'].includes(secp)) throw new DimeError('USAGE', `DIME_SECP256K1 must be libsecp256k1, openssl or noble, not ${secp}`);
    defaultBackend = which === 'noble' ? createNobleBackend() : createNodeBackend({ secp256k1: secp as Secp256k1Choice });
  }
  return defaultBackend;
}
