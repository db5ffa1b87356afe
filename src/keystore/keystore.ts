/**
 * The organisation's keystore: where the primary organisational key (POK), the secondary keys
 * (SOKs), the organisation's secp256k1 encryption key and the wrapping key for users' sealed keys
 * live. Two backends behind one interface (docs/keystore.md):
 *
 *  - `file`   (file.ts): a libdime org keys file plus two companion files, mode 0600. For development:
 *             it warns that it is not an HSM.
 *  - `pkcs11` (pkcs11.ts): keys generated inside an HSM (non-extractable), used through graphene-pk11.
 *
 * Labels name keys the same way in both: `pok/<n>` (POK generations, the highest is current, older
 * ones are kept so old mail stays verifiable), `sok/<n>` (with permission bits), `enc`, `wrap`.
 * Every private operation is async, so callers never know whether an HSM stands behind it.
 */
import type { Logger } from '../log.js';
import type { KeystoreConfig } from '../config/config.js';
import type { CryptoBackend, Signer } from '../crypto/backend.js';
import { defaultCrypto } from '../crypto/index.js';
import type { ActorKeys } from '../dime/message/open.js';
import { SOK_PERMISSIONS } from '../dime/signet/fields.js';
import { concatBytes, readUint, utf8 } from '../dime/bytes.js';
import { DimeError } from '../errors.js';
import { meteredKeystore } from './metered.js';

export { SOK_PERMISSIONS };

/** A signing key of the organisation, named by its label. */
export interface KeystoreSigner extends Signer {
  /** `pok/<n>` or `sok/<n>`. */
  readonly label: string;
}

/** A secondary organisational key and what it may sign (SOK_PERMISSIONS bits). */
export interface SokSigner extends KeystoreSigner {
  readonly permissions: number;
}

export interface OrgKeystore {
  readonly kind: 'file' | 'pkcs11';
  /** The current POK (the newest generation). */
  readonly pok: KeystoreSigner;
  /** Every POK generation, oldest first; the last is `pok`. */
  readonly poks: readonly KeystoreSigner[];
  readonly soks: readonly SokSigner[];
  /** Compressed (33-byte) secp256k1 public key of the organisation (signet field 3). */
  readonly encryptionPublicKey: Uint8Array;
  /** ECDH with the organisation's encryption key, as the DMTP relay and the milter need it. */
  readonly actorKeys: ActorKeys;
  /** The signer with this label; HSM_KEY_NOT_FOUND when there is none. */
  signer(label: string): KeystoreSigner;
  /**
   * The key that should sign for `permission`: the newest SOK that has the permission bit, else the
   * current POK. Using SOKs for daily work keeps the POK's use (and exposure) minimal.
   */
  signerFor(permission: number): KeystoreSigner;
  /** 32-byte x-coordinate of ECDH(organisation key, publicKey); publicKey is a compressed point. */
  ecdh(publicKey: Uint8Array): Promise<Uint8Array>;
  /**
   * Seal `plaintext` with AES-256-GCM under the keystore's wrapping key. `context` (who and what the
   * blob is for, e.g. a user's address) is authenticated, so a blob cannot be moved to another user.
   */
  wrap(plaintext: Uint8Array, context: string): Promise<Uint8Array>;
  /** Open a wrap() blob; SEALED_KEY_CORRUPT when it is damaged or was sealed for another context. */
  unwrap(blob: Uint8Array, context: string): Promise<Uint8Array>;
  /** A new POK generation inside the same keystore; the previous ones are kept. */
  rotatePok(): Promise<KeystoreSigner>;
  /** A new SOK with these SOK_PERMISSIONS bits. */
  addSok(permissions: number): Promise<SokSigner>;
  close(): Promise<void>;
}

export interface KeystoreOptions {
  crypto?: CryptoBackend;
  logger?: Logger;
  /** pkcs11: sessions in the pool (concurrent operations). */
  sessions?: number;
  /** pkcs11: after a failed reconnect, operations fail fast with HSM_UNAVAILABLE for this long. */
  reconnectBackoffMs?: number;
}

export const POK_PREFIX = 'pok/';
export const SOK_PREFIX = 'sok/';
export const ENC_LABEL = 'enc';
export const WRAP_LABEL = 'wrap';

export function pokLabel(n: number): string {
  return `${POK_PREFIX}${n}`;
}
export function sokLabel(n: number): string {
  return `${SOK_PREFIX}${n}`;
}

/** The generation number of a `pok/<n>` or `sok/<n>` label. */
export function labelNumber(label: string): number {
  const m = /^(?:pok|sok)\/([1-9][0-9]{0,5})$/.exec(label);
  if (!m) throw new DimeError('KEYSTORE_CORRUPT', `${JSON.stringify(label)} is not a pok/<n> or sok/<n> label`);
  return Number(m[1]);
}

export function checkPermissions(permissions: number): void {
  const all = Object.values(SOK_PERMISSIONS).reduce((a, b) => a | b, 0);
  if (!Number.isInteger(permissions) || permissions < 0 || (permissions & ~all) !== 0) {
    throw new DimeError('USAGE', `SOK permissions must combine ${Object.entries(SOK_PERMISSIONS).map(([n, b]) => `${n} (${b})`).join(', ')}; got ${permissions}`);
  }
}

/** Parse `signets,messages` (or `none`) into SOK_PERMISSIONS bits. */
export function parsePermissions(text: string): number {
  let bits = 0;
  for (const p of text.split(',').map((x) => x.trim()).filter(Boolean)) {
    if (p === 'none') continue;
    const bit = SOK_PERMISSIONS[p as keyof typeof SOK_PERMISSIONS];
    if (bit === undefined) throw new DimeError('USAGE', `unknown SOK permission ${JSON.stringify(p)} (signets, messages, tls, software, none)`);
    bits |= bit;
  }
  return bits;
}

export function permissionNames(bits: number): string[] {
  return Object.entries(SOK_PERMISSIONS)
    .filter(([, b]) => (bits & b) !== 0)
    .map(([n]) => n);
}

/** Shared signerFor(): newest SOK with the bit, else the POK. */
export function chooseSigner(pok: KeystoreSigner, soks: readonly SokSigner[], permission: number): KeystoreSigner {
  for (let i = soks.length - 1; i >= 0; i--) {
    const s = soks[i] as SokSigner;
    if ((s.permissions & permission) !== 0) return s;
  }
  return pok;
}

export function findSigner(pok: readonly KeystoreSigner[], soks: readonly SokSigner[], label: string): KeystoreSigner {
  const s = [...pok, ...soks].find((k) => k.label === label);
  if (!s) throw new DimeError('HSM_KEY_NOT_FOUND', `no key labelled ${JSON.stringify(label)}`);
  return s;
}

// ---- the wrapped-blob format, shared by both backends ------------------------------------------

/**
 * `DKW1 ‖ label length(1) ‖ wrapping key label ‖ IV(12) ‖ AES-256-GCM ciphertext ‖ tag(16)`.
 * The header names the wrapping key so it can be rotated later; the AAD binds the header and the
 * caller's context. A 96-bit random IV per blob: GCM's bound of 2^32 random IVs under one key is
 * far above the number of keys a sidecar ever seals.
 */
export const WRAP_MAGIC = utf8.encode('DKW1');
export const WRAP_IV_LENGTH = 12;
export const WRAP_TAG_LENGTH = 16;
/** A wrapped user key is ~100 bytes; anything this large is not ours. */
export const MAX_WRAPPED_BLOB = 64 * 1024;
const WRAP_AAD_PREFIX = utf8.encode('dime-sidecar wrapped key v1\0');

export function wrapHeader(label: string): Uint8Array {
  const l = utf8.encode(label);
  if (l.length === 0 || l.length > 255) throw new DimeError('KEYSTORE_CORRUPT', 'wrapping key label must be 1 to 255 bytes');
  return concatBytes(WRAP_MAGIC, Uint8Array.of(l.length), l);
}

export function wrapAad(header: Uint8Array, context: string): Uint8Array {
  if (typeof context !== 'string' || context.length === 0) throw new DimeError('USAGE', 'the wrap context must be a non-empty string');
  return concatBytes(WRAP_AAD_PREFIX, header, Uint8Array.of(0), utf8.encode(context));
}

export interface ParsedWrap {
  label: string;
  header: Uint8Array;
  iv: Uint8Array;
  /** Ciphertext followed by the tag, as PKCS#11 CKM_AES_GCM takes it. */
  sealed: Uint8Array;
}

export function parseWrapped(blob: Uint8Array): ParsedWrap {
  if (!(blob instanceof Uint8Array)) throw new DimeError('SEALED_KEY_CORRUPT', 'the sealed key must be bytes');
  if (blob.length > MAX_WRAPPED_BLOB) throw new DimeError('SEALED_KEY_CORRUPT', `${blob.length} bytes, limit ${MAX_WRAPPED_BLOB}`);
  if (blob.length < WRAP_MAGIC.length + 1 || !WRAP_MAGIC.every((b, i) => blob[i] === b)) throw new DimeError('SEALED_KEY_CORRUPT', 'no DKW1 header');
  const n = readUint(blob, WRAP_MAGIC.length, 1);
  const headerLength = WRAP_MAGIC.length + 1 + n;
  if (n === 0 || blob.length < headerLength + WRAP_IV_LENGTH + WRAP_TAG_LENGTH + 1) throw new DimeError('SEALED_KEY_CORRUPT', 'truncated');
  let label: string;
  try {
    label = new TextDecoder('utf-8', { fatal: true }).decode(blob.subarray(WRAP_MAGIC.length + 1, headerLength));
  } catch (err) {
    throw new DimeError('SEALED_KEY_CORRUPT', 'the wrapping key label is not UTF-8', { cause: err });
  }
  return {
    label,
    header: blob.subarray(0, headerLength),
    iv: blob.subarray(headerLength, headerLength + WRAP_IV_LENGTH),
    sealed: blob.subarray(headerLength + WRAP_IV_LENGTH),
  };
}

// ---- compressing a secp256k1 point from an HSM -------------------------------------------------

/**
 * The point inside a CKA_EC_POINT value. PKCS#11 says DER OCTET STRING (`04 len ‖ point`), some
 * modules return the bare point; both are accepted. The expected point lengths decide, never a
 * guess from the first bytes: a bare uncompressed point also starts with 04, and its next byte can
 * equal "length − 2".
 */
export function ecPointContent(value: Uint8Array, pointLengths: readonly number[]): Uint8Array {
  if (value.length >= 2 && value[0] === 0x04 && value[1] === value.length - 2 && pointLengths.includes(value.length - 2)) return value.subarray(2);
  if (pointLengths.includes(value.length)) return value;
  throw new DimeError('KEYSTORE_CORRUPT', `the HSM returned a ${value.length}-byte EC point; expected ${pointLengths.join(' or ')} bytes, bare or DER-wrapped`);
}

/**
 * HSMs return secp256k1 points uncompressed (04 ‖ X ‖ Y). DIME stores the compressed form: 02/03
 * by the parity of Y, then X (SEC1 §2.3.3, an encoding, no arithmetic). The caller checks that the
 * result is on the curve with its backend.
 */
export function compressSecp256k1Point(value: Uint8Array): Uint8Array {
  const p = ecPointContent(value, [65, 33]);
  if (p.length === 33) {
    if (p[0] !== 2 && p[0] !== 3) throw new DimeError('KEYSTORE_CORRUPT', 'the HSM returned a 33-byte EC point without a 02/03 prefix');
    return p.slice();
  }
  if (p[0] !== 4) throw new DimeError('KEYSTORE_CORRUPT', 'the HSM returned a 65-byte EC point without the 04 prefix');
  const out = new Uint8Array(33);
  out[0] = ((p[64] as number) & 1) === 1 ? 3 : 2;
  out.set(p.subarray(1, 33), 1);
  return out;
}

// ---- the factory -------------------------------------------------------------------------------

/** Open an existing keystore as the configuration describes it (timed on /metrics: metered.ts). */
export async function openKeystore(config: KeystoreConfig, options: KeystoreOptions = {}): Promise<OrgKeystore> {
  const crypto = options.crypto ?? defaultCrypto();
  if (config.type === 'file') {
    const { FileKeystore } = await import('./file.js');
    return meteredKeystore(FileKeystore.open(config, { ...options, crypto }));
  }
  if (config.type === 'pkcs11') {
    const { Pkcs11Keystore } = await import('./pkcs11.js');
    return meteredKeystore(await Pkcs11Keystore.open(config, { ...options, crypto }));
  }
  throw new DimeError('CONFIG_INVALID', `keystore.type ${JSON.stringify((config as { type: unknown }).type)} is neither file nor pkcs11`);
}

/**
 * Create a keystore with fresh organisation keys (POK pok/1, the encryption key, the wrapping key),
 * generated inside the HSM for pkcs11. Refuses (KEYSTORE_EXISTS) when keys are already there.
 */
export async function createKeystore(config: KeystoreConfig, options: KeystoreOptions = {}): Promise<OrgKeystore> {
  const crypto = options.crypto ?? defaultCrypto();
  if (config.type === 'file') {
    const { FileKeystore } = await import('./file.js');
    return meteredKeystore(FileKeystore.create(config, { ...options, crypto }));
  }
  if (config.type === 'pkcs11') {
    const { Pkcs11Keystore } = await import('./pkcs11.js');
    return meteredKeystore(await Pkcs11Keystore.create(config, { ...options, crypto }));
  }
  throw new DimeError('CONFIG_INVALID', `keystore.type ${JSON.stringify((config as { type: unknown }).type)} is neither file nor pkcs11`);
}

/**
 * Remove everything createKeystore made (used by `dime init` to undo a half-done bootstrap). Only
 * ever called on a keystore this process has just created.
 */
export async function discardKeystore(config: KeystoreConfig, options: KeystoreOptions = {}): Promise<void> {
  if (config.type === 'file') {
    const { FileKeystore } = await import('./file.js');
    FileKeystore.discard(config);
    return;
  }
  const { Pkcs11Keystore } = await import('./pkcs11.js');
  await Pkcs11Keystore.discard(config, { ...options, crypto: options.crypto ?? defaultCrypto() });
}
