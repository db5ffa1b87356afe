/**
 * The PEM-like armor of DIME keys and signets (dime-formats.md §1.4, prime-and-stacie.md §1.6).
 * The writer is byte-exact with libdime's: 64-column base64, `=CRC` line, END line, one final LF.
 * The reader follows libdime's rules and also accepts what magma writes (no final LF, blank line
 * before the checksum, CRLF, the PRIME tags).
 */
import { DimeError } from '../errors.js';
import { base64DecodeLenient, base64Encode } from './base64.js';
import { crc24Bytes } from './crc24.js';

export const ARMOR_TAGS = {
  orgSignet: 'ORGANIZATIONAL SIGNET',
  userSignet: 'USER SIGNET',
  /** Only PRIME labels SSRs this way; libdime writes SSRs as ORGANIZATIONAL SIGNET (§3.9). */
  signingRequest: 'SIGNET SIGNING REQUEST',
  orgKey: 'ORGANIZATIONAL KEY',
  userKey: 'USER KEY',
  ed25519PrivateKey: 'ED25519 PRIVATE KEY',
  encryptedUserKey: 'ENCRYPTED USER KEY',
  encryptedOrgKey: 'ENCRYPTED ORGANIZATIONAL KEY',
} as const;

export type ArmorTag = (typeof ARMOR_TAGS)[keyof typeof ARMOR_TAGS];

/** The largest DIME object is a signet: 5 + 16,777,215 bytes; its armor is 4/3 of that plus lines. */
export const MAX_ARMOR_TEXT = 24 * 1024 * 1024;

const LINE_WIDTH = 64;

export function armor(tag: ArmorTag, data: Uint8Array): string {
  const b64 = base64Encode(data);
  const lines: string[] = [`-----BEGIN ${tag}-----`];
  for (let i = 0; i < b64.length; i += LINE_WIDTH) lines.push(b64.slice(i, i + LINE_WIDTH));
  lines.push(`=${base64Encode(crc24Bytes(data))}`, `-----END ${tag}-----`);
  return lines.join('\n') + '\n';
}

export interface Dearmored {
  tag: ArmorTag;
  data: Uint8Array;
}

export interface DearmoredUnchecked extends Dearmored {
  /** Checksum as written in the file, and as computed from the content. */
  checksum: string;
  expected: string;
}

/**
 * Find the first armored block whose tag is one of `tags` and return its content without judging
 * the checksum; `dearmor` is the checked form every normal reader uses.
 */
export function dearmorUnchecked(text: string, tags: readonly ArmorTag[]): DearmoredUnchecked {
  if (text.length > MAX_ARMOR_TEXT) throw new DimeError('ARMOR_TOO_LARGE', `${text.length} characters`);
  const lines = text.split('\n');
  let i = 0;
  let tag: ArmorTag | undefined;
  for (; i < lines.length && !tag; i++) {
    const line = (lines[i] as string).trim();
    tag = tags.find((t) => line === `-----BEGIN ${t}-----`);
  }
  if (!tag) throw new DimeError('ARMOR_NOT_FOUND', `expected one of: ${tags.join(', ')}`);
  const end = `-----END${tag.replace(/\s+/g, '')}-----`;
  let body = '';
  let checksum: string | undefined;
  for (; i < lines.length; i++) {
    const line = (lines[i] as string).replace(/\s+/g, '');
    if (line === end) {
      if (checksum === undefined) throw new DimeError('ARMOR_NO_CHECKSUM');
      const data = base64DecodeLenient(body);
      return { tag, data, checksum, expected: base64Encode(crc24Bytes(data)) };
    }
    if (line.length === 0) continue;
    if (checksum !== undefined) throw new DimeError('ARMOR_TRAILING_DATA');
    if (line.length === 5 && line.startsWith('=')) checksum = line.slice(1);
    else body += line;
  }
  throw new DimeError('ARMOR_NO_END', `-----END ${tag}-----`);
}

/**
 * Find the first armored block whose tag is one of `tags` and return its verified content.
 * The tag is a hint only: callers decide the object type from the magic number inside.
 */
export function dearmor(text: string, tags: readonly ArmorTag[]): Dearmored {
  const { tag, data, checksum, expected } = dearmorUnchecked(text, tags);
  if (checksum !== expected) throw new DimeError('ARMOR_CRC_MISMATCH', `file says =${checksum}, content gives =${expected}`);
  return { tag, data };
}
