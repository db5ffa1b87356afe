/**
 * Keys files: an organisation's or a user's private keys (dime-formats.md §2.4). Unencrypted by
 * design of the format; the CLI writes them with mode 0600. Pure codec, no I/O.
 *
 * libdime HEAD (what we write): magic, u24 length 69, `01 20 <ed25519 seed>`, `<03|02> 00 20 <scalar>`.
 * magma's libdime copy and PRIME (read only): the same with a one-byte `20` length on the scalar.
 */
import { DimeError } from '../errors.js';
import { ARMOR_TAGS, armor, dearmor } from './armor.js';
import { concatBytes, readUint, uintBytes } from './bytes.js';
import { MAGIC } from './magic.js';

export type KeysType = 'org' | 'user';
/** `magma` covers both magma's libdime copy and PRIME: their keys files are identical. */
export type KeysDialect = 'libdime' | 'magma';

export interface DimeKeys {
  type: KeysType;
  dialect: KeysDialect;
  /** Ed25519 32-byte seed (RFC 8032 secret key). */
  signingKey: Uint8Array;
  /** secp256k1 32-byte big-endian scalar. */
  encryptionKey: Uint8Array;
}

const ENCRYPTION_FIELD: Record<KeysType, number> = { org: 3, user: 2 };
const KEY_LENGTH = 32;

export function decodeKeys(bytes: Uint8Array): DimeKeys {
  if (bytes.length < 5) throw new DimeError('OBJECT_TRUNCATED', `${bytes.length} bytes`);
  const magic = readUint(bytes, 0, 2);
  const type: KeysType | undefined = magic === MAGIC.orgKeys ? 'org' : magic === MAGIC.userKeys ? 'user' : undefined;
  if (!type) throw new DimeError('OBJECT_BAD_MAGIC', `${magic} is not a keys file (1952 or 2013)`);
  const length = readUint(bytes, 2, 3);
  if (length !== bytes.length - 5) throw new DimeError('OBJECT_LENGTH_MISMATCH', `header says ${length}, object has ${bytes.length - 5}`);
  if (bytes[5] !== 1 || bytes[6] !== KEY_LENGTH || bytes.length < 7 + KEY_LENGTH) {
    throw new DimeError('KEYS_BAD_FIELD', 'the first field must be id 1 with a 32-byte signing key');
  }
  const signingKey = bytes.slice(7, 7 + KEY_LENGTH);
  let at = 7 + KEY_LENGTH;
  const fid = ENCRYPTION_FIELD[type];
  if (bytes[at] !== fid) throw new DimeError('KEYS_BAD_FIELD', `expected encryption key field ${fid}, found ${bytes[at] ?? 'end of data'}`);
  at++;
  let dialect: KeysDialect;
  if (bytes[at] === 0 && bytes[at + 1] === KEY_LENGTH) {
    dialect = 'libdime';
    at += 2;
  } else if (bytes[at] === KEY_LENGTH) {
    dialect = 'magma';
    at += 1;
  } else {
    throw new DimeError('KEYS_BAD_FIELD', 'the encryption key length is neither u16 32 (libdime) nor u8 32 (magma/PRIME)');
  }
  if (at + KEY_LENGTH > bytes.length) throw new DimeError('KEYS_BAD_FIELD', 'encryption key truncated');
  const encryptionKey = bytes.slice(at, at + KEY_LENGTH);
  at += KEY_LENGTH;
  if (at !== bytes.length) throw new DimeError('KEYS_TRAILING_DATA', `${bytes.length - at} bytes`);
  return { type, dialect, signingKey, encryptionKey };
}

export function encodeKeys(keys: Pick<DimeKeys, 'type' | 'signingKey' | 'encryptionKey'> & { dialect?: KeysDialect }): Uint8Array {
  if (keys.signingKey.length !== KEY_LENGTH || keys.encryptionKey.length !== KEY_LENGTH) {
    throw new DimeError('KEYS_BAD_FIELD', 'both keys must be 32 bytes');
  }
  const encLength = (keys.dialect ?? 'libdime') === 'libdime' ? uintBytes(KEY_LENGTH, 2) : uintBytes(KEY_LENGTH, 1);
  const fields = concatBytes(
    Uint8Array.of(1, KEY_LENGTH),
    keys.signingKey,
    Uint8Array.of(ENCRYPTION_FIELD[keys.type]),
    encLength,
    keys.encryptionKey,
  );
  const magic = keys.type === 'org' ? MAGIC.orgKeys : MAGIC.userKeys;
  return concatBytes(uintBytes(magic, 2), uintBytes(fields.length, 3), fields);
}

export function keysArmorTag(type: KeysType): typeof ARMOR_TAGS.orgKey | typeof ARMOR_TAGS.userKey {
  return type === 'org' ? ARMOR_TAGS.orgKey : ARMOR_TAGS.userKey;
}

export function armorKeys(keys: DimeKeys): string {
  return armor(keysArmorTag(keys.type), encodeKeys(keys));
}

/** Like libdime: try `USER KEY`, then `ORGANIZATIONAL KEY`; the type comes from the magic number. */
export function dearmorKeys(text: string): DimeKeys {
  return decodeKeys(dearmor(text, [ARMOR_TAGS.userKey, ARMOR_TAGS.orgKey]).data);
}

/** Fresh keys from the backend's CSPRNG; the scalar is redrawn in the negligible case it is out of range. */
export function generateKeys(type: KeysType, crypto: { randomBytes(n: number): Uint8Array; secp256k1IsValidPrivateKey(k: Uint8Array): boolean }): DimeKeys {
  let encryptionKey = crypto.randomBytes(KEY_LENGTH);
  while (!crypto.secp256k1IsValidPrivateKey(encryptionKey)) encryptionKey = crypto.randomBytes(KEY_LENGTH);
  return { type, dialect: 'libdime', signingKey: crypto.randomBytes(KEY_LENGTH), encryptionKey };
}
