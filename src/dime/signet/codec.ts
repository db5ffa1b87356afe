/**
 * Signet binary codec (dime-formats.md §3.2–3.4): `magic:u16 ‖ length:u24 ‖ fields`, pure.
 *
 * The encoding is canonical (the prefix width of every field follows from its id and the dialect),
 * so signatures are checked over slices of the original buffer without copying, and a decoded
 * signet re-encodes to the same bytes, except that the builders refuse the empty values (and empty
 * undefined-field names) that the decoder, like libdime and PRIME, accepts.
 */
import { DimeError } from '../../errors.js';
import { concatBytes, readUint, uintBytes } from '../bytes.js';
import { MAGIC, MAX_U24_OBJECT } from '../magic.js';
import {
  ED25519_KEY_LENGTH,
  ENCRYPTION_KEY_FIELD,
  ENCRYPTION_KEY_LENGTH,
  SIGNATURE_LENGTH,
  SIGNING_KEY_FORMAT,
  fieldSpec,
  lengthWidth,
  type FieldSpec,
  type SignetDialect,
  type SignetType,
} from './fields.js';

export const SIGNET_HEADER_LENGTH = 5;
/** The u24 length caps a signet at 16 MiB; nothing larger can even be expressed. */
export const MAX_SIGNET_LENGTH = SIGNET_HEADER_LENGTH + MAX_U24_OBJECT;

export interface SignetField {
  readonly id: number;
  /** The value as stored (signing keys keep their 0x40 format byte; SOKs their permission byte). */
  readonly value: Uint8Array;
  /** Only for undefined fields (251): their own name. */
  readonly name?: Uint8Array;
}

export interface Signet {
  readonly type: SignetType;
  readonly dialect: SignetDialect;
  readonly fields: readonly SignetField[];
  /** The whole serialized signet, header included. */
  readonly bytes: Uint8Array;
  /** ends[i] = offset just past field i within the field area (bytes after the header). */
  readonly ends: readonly number[];
}

const TYPE_BY_MAGIC = new Map<number, SignetType>([
  [MAGIC.orgSignet, 'org'],
  [MAGIC.userSignet, 'user'],
  [MAGIC.signingRequest, 'ssr'],
]);
export const MAGIC_BY_TYPE: Record<SignetType, number> = { org: MAGIC.orgSignet, user: MAGIC.userSignet, ssr: MAGIC.signingRequest };

export function signetTypeOfMagic(magic: number): SignetType | undefined {
  return TYPE_BY_MAGIC.get(magic);
}

/** The field area (everything after the header): what signatures and fingerprints cover. */
export function fieldArea(signet: Signet): Uint8Array {
  return signet.bytes.subarray(SIGNET_HEADER_LENGTH);
}

/**
 * Decide the dialect from the two places the layouts differ: the signing key (0x40-prefixed 33 bytes
 * vs bare 32) and the encryption key length prefix (u16 `00 21` vs u8 `21`). Never guesses: a
 * signet that fits no dialect is an error.
 */
export function detectDialect(type: SignetType, area: Uint8Array): SignetDialect {
  let prefixed: boolean | undefined;
  if (area[0] === 1) {
    if (area[1] === ED25519_KEY_LENGTH + 1 && area[2] === SIGNING_KEY_FORMAT) prefixed = true;
    else if (area[1] === ED25519_KEY_LENGTH) prefixed = false;
    else throw new DimeError('SIGNET_BAD_SIGNING_KEY', 'field 1 is neither 0x40 ‖ 32 bytes nor 32 bytes');
  }
  // Locate the encryption-key field: it follows field 1 and, in org signets, the u8-length SOKs.
  const encId = ENCRYPTION_KEY_FIELD[type];
  let at = 0;
  while (at < area.length && (area[at] as number) < encId) {
    if (at + 1 >= area.length) break;
    at += 2 + (area[at + 1] as number);
  }
  let wide: boolean | undefined;
  if (area[at] === encId && at + 1 < area.length) {
    if (area[at + 1] === 0) wide = true;
    else if (area[at + 1] === ENCRYPTION_KEY_LENGTH) wide = false;
    else throw new DimeError('SIGNET_BAD_ENCRYPTION_KEY', `field ${encId} length is neither u16 33 nor u8 33`);
  }
  if (prefixed === false) {
    if (wide) throw new DimeError('SIGNET_DIALECT_UNKNOWN', 'bare 32-byte signing key (PRIME) with a u16 encryption-key length (libdime)');
    return 'prime';
  }
  return wide === false ? 'magma' : 'libdime';
}

function checkValue(spec: FieldSpec, dialect: SignetDialect, value: Uint8Array): void {
  switch (spec.kind) {
    case 'signing-key':
      if (dialect === 'prime' ? value.length !== ED25519_KEY_LENGTH : value.length !== ED25519_KEY_LENGTH + 1 || value[0] !== SIGNING_KEY_FORMAT) {
        throw new DimeError('SIGNET_BAD_SIGNING_KEY', `field ${spec.id}`);
      }
      return;
    case 'sok':
      if (dialect === 'prime') throw new DimeError('SIGNET_FIELD_UNKNOWN', 'PRIME signets have no secondary organisational keys');
      if (value.length !== ED25519_KEY_LENGTH + 2 || value[1] !== SIGNING_KEY_FORMAT) {
        throw new DimeError('SIGNET_BAD_SIGNING_KEY', 'a SOK is permissions ‖ 0x40 ‖ 32-byte key');
      }
      return;
    case 'encryption-key':
      if (value.length !== ENCRYPTION_KEY_LENGTH || (value[0] !== 0x02 && value[0] !== 0x03)) {
        throw new DimeError('SIGNET_BAD_ENCRYPTION_KEY', `field ${spec.id} must be a 33-byte compressed point`);
      }
      return;
    case 'signature':
      return; // fixed width, checked by the walker
    default:
      return;
  }
}

export function decodeSignet(bytes: Uint8Array): Signet {
  if (bytes.length > MAX_SIGNET_LENGTH) throw new DimeError('OBJECT_TOO_LARGE', `${bytes.length} bytes, the maximum is ${MAX_SIGNET_LENGTH}`);
  if (bytes.length < SIGNET_HEADER_LENGTH) throw new DimeError('OBJECT_TRUNCATED', `${bytes.length} bytes`);
  const magic = readUint(bytes, 0, 2);
  const type = TYPE_BY_MAGIC.get(magic);
  if (!type) throw new DimeError('OBJECT_BAD_MAGIC', `${magic} is not a signet (1215, 1776 or 1789)`);
  const length = readUint(bytes, 2, 3);
  if (length !== bytes.length - SIGNET_HEADER_LENGTH) {
    throw new DimeError('OBJECT_LENGTH_MISMATCH', `header says ${length}, object has ${bytes.length - SIGNET_HEADER_LENGTH}`);
  }
  const area = bytes.subarray(SIGNET_HEADER_LENGTH);
  const dialect = detectDialect(type, area);
  const fields: SignetField[] = [];
  const ends: number[] = [];
  let at = 0;
  let previous = -1;
  while (at < area.length) {
    const id = area[at] as number;
    const spec = fieldSpec(type, id);
    if (!spec) throw new DimeError('SIGNET_FIELD_UNKNOWN', `field ${id} in a ${type} signet`);
    if (id < previous || (id === previous && spec.unique)) {
      throw new DimeError('SIGNET_FIELD_ORDER', id === previous ? `field ${id} repeated` : `field ${id} after field ${previous}`);
    }
    at++;
    let name: Uint8Array | undefined;
    if (spec.kind === 'undefined') {
      if (at >= area.length) throw new DimeError('SIGNET_FIELD_OVERFLOW', `field ${id} name length`);
      const nameLength = area[at] as number;
      at++;
      if (at + nameLength > area.length) throw new DimeError('SIGNET_FIELD_OVERFLOW', `field ${id} name`);
      name = area.subarray(at, at + nameLength);
      at += nameLength;
    }
    const width = lengthWidth(spec, dialect);
    let size: number = SIGNATURE_LENGTH;
    if (width > 0) {
      if (at + width > area.length) throw new DimeError('SIGNET_FIELD_OVERFLOW', `field ${id} length`);
      size = readUint(area, at, width);
      at += width;
    }
    if (at + size > area.length) throw new DimeError('SIGNET_FIELD_OVERFLOW', `field ${id} says ${size} bytes, ${area.length - at} remain`);
    const value = area.subarray(at, at + size);
    at += size;
    checkValue(spec, dialect, value);
    fields.push(name ? { id, name, value } : { id, value });
    ends.push(at);
    previous = id;
  }
  return { type, dialect, fields, bytes, ends };
}

function encodeField(type: SignetType, dialect: SignetDialect, field: SignetField): Uint8Array {
  const spec = fieldSpec(type, field.id);
  if (!spec) throw new DimeError('SIGNET_FIELD_UNKNOWN', `field ${field.id} in a ${type} signet`);
  checkValue(spec, dialect, field.value);
  const width = lengthWidth(spec, dialect);
  if (width === 0) {
    if (field.value.length !== SIGNATURE_LENGTH) throw new DimeError('SIGNET_FIELD_LENGTH', `field ${field.id} must be ${SIGNATURE_LENGTH} bytes`);
    return concatBytes(Uint8Array.of(field.id), field.value);
  }
  // Builders never write empty values: libdime cannot read one in the last position (§3.4).
  if (field.value.length === 0) throw new DimeError('SIGNET_FIELD_EMPTY', `field ${field.id}`);
  if (field.value.length >= 2 ** (8 * width)) {
    throw new DimeError('SIGNET_FIELD_LENGTH', `field ${field.id} holds at most ${2 ** (8 * width) - 1} bytes, got ${field.value.length}`);
  }
  if (spec.kind === 'undefined') {
    const name = field.name ?? new Uint8Array(0);
    if (name.length === 0 || name.length > 255) throw new DimeError('SIGNET_FIELD_LENGTH', 'an undefined field needs a name of 1 to 255 bytes');
    return concatBytes(Uint8Array.of(field.id, name.length), name, uintBytes(field.value.length, width), field.value);
  }
  if (field.name) throw new DimeError('SIGNET_BAD_ARGUMENT', `only undefined fields (251) have names, not field ${field.id}`);
  return concatBytes(Uint8Array.of(field.id), uintBytes(field.value.length, width), field.value);
}

/**
 * Append-only signet encoder: each field is serialized once, in order, so builders can sign the
 * bytes so far after every step without re-encoding the whole signet.
 */
export class SignetWriter {
  private readonly fields: SignetField[] = [];
  private readonly parts: Uint8Array[] = [];
  private length = 0;

  constructor(
    readonly type: SignetType,
    readonly dialect: SignetDialect,
  ) {}

  /** Start from a signet's fields (e.g. an SSR becoming a user signet: only the magic changes). */
  static from(signet: Signet, type: SignetType = signet.type): SignetWriter {
    const w = new SignetWriter(type, signet.dialect);
    for (const f of signet.fields) w.add(f);
    return w;
  }

  get lastId(): number {
    return this.fields.length > 0 ? (this.fields[this.fields.length - 1] as SignetField).id : -1;
  }

  add(field: SignetField): this {
    const previous = this.lastId;
    if (field.id < previous || (field.id === previous && fieldSpec(this.type, field.id)?.unique)) {
      throw new DimeError('SIGNET_FIELD_ORDER', `field ${field.id} after field ${previous}`);
    }
    const encoded = encodeField(this.type, this.dialect, field);
    if (this.length + encoded.length > MAX_U24_OBJECT) throw new DimeError('OBJECT_TOO_LARGE', `more than ${MAX_U24_OBJECT} bytes of fields`);
    this.parts.push(encoded);
    this.fields.push(field);
    this.length += encoded.length;
    return this;
  }

  /** The serialized fields so far: what a signature added now covers. */
  encodedFields(): Uint8Array {
    return concatBytes(...this.parts);
  }

  finish(): Signet {
    const bytes = concatBytes(uintBytes(MAGIC_BY_TYPE[this.type], 2), uintBytes(this.length, 3), ...this.parts);
    const area = bytes.subarray(SIGNET_HEADER_LENGTH);
    const ends: number[] = [];
    let at = 0;
    // Field views over the final buffer, so every Signet shares one representation.
    const fields = this.fields.map((fl, i) => {
      at += (this.parts[i] as Uint8Array).length;
      ends.push(at);
      const value = area.subarray(at - fl.value.length, at);
      return fl.name ? { id: fl.id, name: area.subarray(at - fl.value.length - fl.name.length - lengthWidth(fieldSpec(this.type, fl.id)!, this.dialect), at - fl.value.length - lengthWidth(fieldSpec(this.type, fl.id)!, this.dialect)), value } : { id: fl.id, value };
    });
    return { type: this.type, dialect: this.dialect, fields, bytes, ends };
  }
}

/** Serialize fields (which must already be in order) into a signet. */
export function encodeSignet(type: SignetType, dialect: SignetDialect, fields: readonly SignetField[]): Signet {
  const w = new SignetWriter(type, dialect);
  for (const f of fields) w.add(f);
  return w.finish();
}

/** Bytes of every field with id ≤ `lastId` (the prefix that signatures and fingerprints cover). */
export function fieldsThrough(signet: Signet, lastId: number): Uint8Array {
  let end = 0;
  for (let i = 0; i < signet.fields.length && (signet.fields[i] as SignetField).id <= lastId; i++) end = signet.ends[i] as number;
  return fieldArea(signet).subarray(0, end);
}

export function hasField(signet: Signet, id: number): boolean {
  return signet.fields.some((fl) => fl.id === id);
}

export function getField(signet: Signet, id: number): SignetField | undefined {
  return signet.fields.find((fl) => fl.id === id);
}

export function getFields(signet: Signet, id: number): SignetField[] {
  return signet.fields.filter((fl) => fl.id === id);
}
