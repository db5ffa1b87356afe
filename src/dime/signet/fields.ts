/**
 * Signet field tables (dime-formats.md §3.3). Only the ids listed here are legal: libdime's parser
 * rejects the unnamed placeholder rows, and so do we.
 */

export type SignetType = 'org' | 'user' | 'ssr';

/**
 * `libdime`: libdime HEAD, 0x40-prefixed signing keys and u16 encryption-key lengths (what we write).
 * `magma`: magma's libdime copy, u8 encryption-key lengths. `prime`: magma's PRIME, bare 32-byte
 * signing keys and u8 encryption-key lengths.
 */
export type SignetDialect = 'libdime' | 'magma' | 'prime';

export type FieldKind = 'signing-key' | 'sok' | 'encryption-key' | 'alternate-key' | 'signature' | 'text' | 'undefined' | 'photo' | 'identifier';

export interface FieldSpec {
  readonly id: number;
  readonly name: string;
  readonly kind: FieldKind;
  /** Length prefix width in libdime HEAD; 0 = fixed 64-byte signature; see `lengthWidth` for dialects. */
  readonly width: 0 | 1 | 2 | 3;
  readonly unique: boolean;
  /** Required for the signatures that follow (libdime's `required` column). */
  readonly required: boolean;
}

export const SIGNATURE_LENGTH = 64;
export const ED25519_KEY_LENGTH = 32;
export const SIGNING_KEY_FORMAT = 0x40;
export const ENCRYPTION_KEY_LENGTH = 33;

/** SOK permission bits (field 2 of an org signet): what a secondary key may sign. */
export const SOK_PERMISSIONS = { signets: 0x01, messages: 0x02, tls: 0x04, software: 0x08 } as const;

function f(id: number, name: string, kind: FieldKind, width: FieldSpec['width'], unique = true, required = false): FieldSpec {
  return { id, name, kind, width, unique, required };
}

/** Informational text fields 16–27, shared by org and user signets; 21 (phone) repeats. */
const INFO_16_27: FieldSpec[] = [
  f(16, 'Name', 'text', 1),
  f(17, 'Address', 'text', 1),
  f(18, 'Province', 'text', 1),
  f(19, 'Country', 'text', 1),
  f(20, 'Postal-Code', 'text', 1),
  f(21, 'Phone-Number', 'text', 1, false),
  f(22, 'Language', 'text', 1),
  f(23, 'Currency', 'text', 1),
  f(24, 'Cryptocurrency', 'text', 1),
  f(25, 'Motto', 'text', 1),
  f(26, 'Extensions', 'text', 1),
  f(27, 'Message-Size-Limit', 'text', 1),
];

const TAIL: FieldSpec[] = [
  f(251, 'Undefined-Field', 'undefined', 2, false),
  f(252, 'Photo', 'photo', 3),
  f(253, 'Organizational-Signature', 'signature', 0, true, true),
  f(254, 'Signet-Identifier', 'identifier', 1, true, true),
  f(255, 'Organizational-Signature', 'signature', 0, true, true),
];

const ORG: FieldSpec[] = [
  f(1, 'Primary-Organizational-Key', 'signing-key', 1, true, true),
  f(2, 'Secondary-Organizational-Key', 'sok', 1, false),
  f(3, 'Encryption-Key', 'encryption-key', 2, true, true),
  f(4, 'Organizational-Signature', 'signature', 0, true, true),
  ...INFO_16_27,
  f(160, 'Website', 'text', 2),
  f(200, 'Contact-Abuse', 'text', 2),
  f(201, 'Contact-Admin', 'text', 2),
  f(202, 'Contact-Support', 'text', 2),
  f(203, 'Web-Access-Host', 'text', 2),
  f(204, 'Web-Access-Location', 'text', 2),
  f(205, 'Web-Access-Certificate', 'text', 2),
  f(206, 'Mail-Access-Host', 'text', 2),
  f(207, 'Mail-Access-Certificate', 'text', 2),
  f(208, 'Onion-Access-Host', 'text', 2),
  f(209, 'Onion-Access-Certificate', 'text', 2),
  f(210, 'Onion-Delivery-Host', 'text', 2),
  f(211, 'Onion-Delivery-Certificate', 'text', 2),
  ...TAIL,
];

const USER: FieldSpec[] = [
  f(1, 'Signing-Key', 'signing-key', 1, true, true),
  f(2, 'Encryption-Key', 'encryption-key', 2, true, true),
  f(3, 'Alternate-Encryption-Key', 'alternate-key', 2, false),
  f(4, 'Custody', 'signature', 0),
  f(5, 'User-Signature', 'signature', 0, true, true),
  f(6, 'Organizational-Signature', 'signature', 0, true, true),
  ...INFO_16_27,
  f(93, 'Supported-Codecs', 'text', 1),
  f(94, 'Title', 'text', 1),
  f(95, 'Employer', 'text', 1),
  f(96, 'Gender', 'text', 1),
  f(97, 'Alma-Mater', 'text', 1),
  f(98, 'Supervisor', 'text', 1),
  f(99, 'Political-Party', 'text', 1),
  f(160, 'Website', 'text', 2),
  f(200, 'Alternate-Address', 'text', 2),
  f(201, 'Resume', 'text', 2),
  f(202, 'Endorsements', 'text', 2, false),
  ...TAIL,
];

const SSR: FieldSpec[] = [
  f(1, 'User-Signing-Key', 'signing-key', 1, true, true),
  f(2, 'User-Encryption-Key', 'encryption-key', 2, true, true),
  // u8 here but u16 in the user table (libdime §9.9): alternate keys cannot survive SSR → user.
  f(3, 'Alternate-Encryption-Key', 'alternate-key', 1, false),
  f(4, 'Chain-Of-Custody-Signature', 'signature', 0),
  f(5, 'User-Ssr-Signature', 'signature', 0, true, true),
];

function index(specs: FieldSpec[]): readonly (FieldSpec | undefined)[] {
  const table: (FieldSpec | undefined)[] = new Array(256).fill(undefined);
  for (const s of specs) table[s.id] = s;
  return table;
}

export const FIELD_TABLES: Record<SignetType, readonly (FieldSpec | undefined)[]> = {
  org: index(ORG),
  user: index(USER),
  ssr: index(SSR),
};

export function fieldSpec(type: SignetType, id: number): FieldSpec | undefined {
  return FIELD_TABLES[type][id];
}

export function fieldSpecs(type: SignetType): FieldSpec[] {
  return FIELD_TABLES[type].filter((s): s is FieldSpec => s !== undefined);
}

/** Length-prefix width of a field in a dialect: magma and PRIME shrank encryption keys to u8. */
export function lengthWidth(spec: FieldSpec, dialect: SignetDialect): FieldSpec['width'] {
  if (dialect !== 'libdime' && (spec.kind === 'encryption-key' || spec.kind === 'alternate-key')) return 1;
  return spec.width;
}

/** The field holding the encryption key, and the crypto signature that closes the "crypto signet". */
export const ENCRYPTION_KEY_FIELD: Record<SignetType, number> = { org: 3, user: 2, ssr: 2 };
export const CRYPTO_SIGNATURE_FIELD: Record<SignetType, number> = { org: 4, user: 6, ssr: 5 };
export const CUSTODY_FIELD = 4;
export const SSR_SIGNATURE_FIELD = 5;
export const FULL_SIGNATURE_FIELD = 253;
export const IDENTIFIER_FIELD = 254;
export const ID_SIGNATURE_FIELD = 255;
export const UNDEFINED_FIELD = 251;
export const PHOTO_FIELD = 252;
