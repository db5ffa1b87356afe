/** Typed views of a decoded signet's keys and text fields. */
import { base64EncodeNoPad } from '../base64.js';
import { utf8 } from '../bytes.js';
import { getField, getFields, type Signet } from './codec.js';
import { ENCRYPTION_KEY_FIELD, IDENTIFIER_FIELD, SIGNING_KEY_FORMAT, SOK_PERMISSIONS } from './fields.js';

/** The raw 32-byte Ed25519 key of field 1 (POK or user signing key), without the 0x40 format byte. */
export function signingKeyOf(signet: Signet): Uint8Array | undefined {
  const v = getField(signet, 1)?.value;
  if (!v) return undefined;
  return signet.dialect === 'prime' ? v : v.subarray(1);
}

export function encryptionKeyOf(signet: Signet): Uint8Array | undefined {
  return getField(signet, ENCRYPTION_KEY_FIELD[signet.type])?.value;
}

export interface SecondaryKey {
  permissions: number;
  publicKey: Uint8Array;
}

export function secondaryKeysOf(signet: Signet): SecondaryKey[] {
  if (signet.type !== 'org') return [];
  return getFields(signet, 2).map((f) => ({ permissions: f.value[0] as number, publicKey: f.value.subarray(2) }));
}

/**
 * Keys allowed to sign for the organisation with the given permission: the POK always, plus every
 * SOK whose permission byte has the bit (§3.10).
 */
export function orgKeysWithPermission(org: Signet, permission: number): Uint8Array[] {
  const pok = signingKeyOf(org);
  const keys = pok ? [pok] : [];
  for (const sok of secondaryKeysOf(org)) if ((sok.permissions & permission) !== 0) keys.push(sok.publicKey);
  return keys;
}

export function signetSigningKeys(org: Signet): Uint8Array[] {
  return orgKeysWithPermission(org, SOK_PERMISSIONS.signets);
}

export function identifierOf(signet: Signet): string | null {
  const v = getField(signet, IDENTIFIER_FIELD)?.value;
  return v ? utf8.decode(v) : null;
}

/** The signing key as stored in field 1 for a dialect: 0x40 ‖ key, or the bare key for PRIME. */
export function storedSigningKey(publicKey: Uint8Array, prime = false): Uint8Array {
  if (prime) return Uint8Array.from(publicKey);
  const v = new Uint8Array(publicKey.length + 1);
  v[0] = SIGNING_KEY_FORMAT;
  v.set(publicKey, 1);
  return v;
}

/** `pok=` form of a signing key: unpadded base64 of the raw 32 bytes. */
export function pokText(publicKey: Uint8Array): string {
  return base64EncodeNoPad(publicKey);
}
