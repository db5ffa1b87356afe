/**
 * DMIME container and chunk codec (dime-formats.md §5.2–5.3, §5.11): pure, no cryptography.
 *
 * `07 37 ‖ length:u32 ‖ chunks`, optionally behind a 1837 tracing prefix; each chunk is
 * `type:u8 ‖ payload_len:u24 ‖ payload ‖ keyslot[64] × N`, N fixed by the type.
 */
import { DimeError } from '../../errors.js';
import { readUint, uintBytes } from '../bytes.js';
import { MAGIC } from '../magic.js';

export type Actor = 'author' | 'origin' | 'destination' | 'recipient';
export const ACTORS: readonly Actor[] = ['author', 'origin', 'destination', 'recipient'];

export const CHUNK = {
  ephemeral: 2,
  alternate: 3,
  origin: 4,
  destination: 5,
  commonHeaders: 33,
  otherHeaders: 34,
  display: 67,
  attachment: 131,
  authorTree: 225,
  authorFull: 226,
  originMetaBounce: 248,
  originDisplayBounce: 249,
  originFull: 255,
} as const;

export type PayloadKind = 'ephemeral' | 'standard' | 'signature';

export interface ChunkSpec {
  readonly type: number;
  readonly name: string;
  readonly kind: PayloadKind;
  /** Actors holding a keyslot, in wire order (A, O, D, R). */
  readonly actors: readonly Actor[];
  /** libdime's section bits: envelope 1, metadata 2, display 4, attach 8, sig 16. */
  readonly section: 1 | 2 | 4 | 8 | 16;
  readonly multiple: boolean;
  readonly required: boolean;
}

const A: Actor = 'author';
const O: Actor = 'origin';
const D: Actor = 'destination';
const R: Actor = 'recipient';

const SPECS: ChunkSpec[] = [
  { type: 2, name: 'ephemeral', kind: 'ephemeral', actors: [], section: 1, multiple: false, required: true },
  { type: 3, name: 'alternate', kind: 'standard', actors: [A, R], section: 1, multiple: false, required: false },
  { type: 4, name: 'origin', kind: 'standard', actors: [A, O, R], section: 1, multiple: false, required: true },
  { type: 5, name: 'destination', kind: 'standard', actors: [A, D, R], section: 1, multiple: false, required: true },
  { type: 33, name: 'common headers', kind: 'standard', actors: [A, R], section: 2, multiple: false, required: true },
  // Optional in libdime's table but written and read unconditionally by its code (§9.6).
  { type: 34, name: 'other headers', kind: 'standard', actors: [A, R], section: 2, multiple: false, required: true },
  { type: 67, name: 'display', kind: 'standard', actors: [A, R], section: 4, multiple: true, required: true },
  { type: 131, name: 'attachment', kind: 'standard', actors: [A, R], section: 8, multiple: true, required: false },
  { type: 225, name: 'author tree signature', kind: 'signature', actors: [A, O, R], section: 16, multiple: false, required: true },
  { type: 226, name: 'author full signature', kind: 'signature', actors: [A, O, R], section: 16, multiple: false, required: true },
  { type: 248, name: 'origin meta bounce signature', kind: 'signature', actors: [A, O, D, R], section: 16, multiple: false, required: false },
  { type: 249, name: 'origin display bounce signature', kind: 'signature', actors: [A, O, D, R], section: 16, multiple: false, required: false },
  { type: 255, name: 'origin full signature', kind: 'signature', actors: [A, O, D, R], section: 16, multiple: false, required: true },
];

const SPEC_BY_TYPE = new Map(SPECS.map((s) => [s.type, s]));

export function chunkSpec(type: number): ChunkSpec | undefined {
  return SPEC_BY_TYPE.get(type);
}

/** 0-based keyslot index of `actor` in chunks of `type`, or -1 if the actor has none. */
export function slotIndex(type: number, actor: Actor): number {
  return chunkSpec(type)?.actors.indexOf(actor) ?? -1;
}

export const KEYSLOT_LENGTH = 64;
export const CHUNK_HEADER_LENGTH = 4;
export const MESSAGE_HEADER_LENGTH = 6;
export const EPHEMERAL_KEY_LENGTH = 33;
export const SIGNATURE_PAYLOAD_LENGTH = 64;
/**
 * Largest message we read or write: far above any mail server's size limit (Postfix defaults to
 * 10 MB) yet small enough that holding one in memory is safe; the u32 length would allow 4 GiB.
 */
export const MAX_MESSAGE_LENGTH = 256 * 1024 * 1024;
/** libdime's tracing prefix length is a u16 and must be at least 1. */
const MAX_TRACING_LENGTH = 0xffff;

export interface Chunk {
  readonly type: number;
  /** The whole serialized chunk: what tree, full and origin signatures cover. */
  readonly bytes: Uint8Array;
  /** The payload as on the wire (encrypted, except the ephemeral key). */
  readonly payload: Uint8Array;
  readonly keyslots: readonly Uint8Array[];
}

export interface DmimeMessage {
  /** 1837 tracing bytes, when present (no software writes them; libdime accepts them). */
  readonly tracing?: Uint8Array;
  readonly chunks: readonly Chunk[];
  /** The 1847 object: header and chunks (without any tracing prefix). */
  readonly bytes: Uint8Array;
}

/** Serialized size of a chunk of `type` with a payload of `payloadLength` bytes. */
export function chunkLength(type: number, payloadLength: number): number {
  const spec = chunkSpec(type);
  if (!spec) throw new DimeError('MESSAGE_UNKNOWN_CHUNK', `type ${type}`);
  return CHUNK_HEADER_LENGTH + payloadLength + KEYSLOT_LENGTH * spec.actors.length;
}

/** Write a chunk header into `out` at `at`. */
export function writeChunkHeader(out: Uint8Array, at: number, type: number, payloadLength: number): void {
  out[at] = type;
  out.set(uintBytes(payloadLength, 3), at + 1);
}

function chunkView(bytes: Uint8Array, type: number, payloadLength: number): Chunk {
  const n = chunkSpec(type)!.actors.length;
  const payload = bytes.subarray(CHUNK_HEADER_LENGTH, CHUNK_HEADER_LENGTH + payloadLength);
  const keyslots: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const start = CHUNK_HEADER_LENGTH + payloadLength + i * KEYSLOT_LENGTH;
    keyslots.push(bytes.subarray(start, start + KEYSLOT_LENGTH));
  }
  return { type, bytes, payload, keyslots };
}

/**
 * Check the chunk sequence: only known types, canonical order (ascending, repeats only for display
 * and attachment chunks), every required chunk present. libdime never enforces order, but it only
 * ever writes this order, and accepting others would let an attacker reshuffle what is signed.
 */
function checkSequence(chunks: readonly Chunk[]): void {
  let previous = -1;
  for (const c of chunks) {
    const spec = chunkSpec(c.type)!;
    if (c.type < previous || (c.type === previous && !spec.multiple)) {
      throw new DimeError('MESSAGE_CHUNK_ORDER', c.type === previous ? `chunk ${c.type} (${spec.name}) repeated` : `chunk ${c.type} after chunk ${previous}`);
    }
    previous = c.type;
  }
  for (const spec of SPECS) {
    if (spec.required && !chunks.some((c) => c.type === spec.type)) throw new DimeError('MESSAGE_INCOMPLETE', `no ${spec.name} chunk (${spec.type})`);
  }
}

function checkPayloadShape(type: number, payloadLength: number): void {
  const spec = chunkSpec(type)!;
  if (spec.kind === 'ephemeral' && payloadLength !== EPHEMERAL_KEY_LENGTH) throw new DimeError('MESSAGE_BAD_CHUNK', `the ephemeral chunk holds ${payloadLength} bytes, not ${EPHEMERAL_KEY_LENGTH}`);
  if (spec.kind === 'signature' && payloadLength !== SIGNATURE_PAYLOAD_LENGTH) throw new DimeError('MESSAGE_BAD_CHUNK', `${spec.name} payload is ${payloadLength} bytes, not ${SIGNATURE_PAYLOAD_LENGTH}`);
  // Standard payloads are whole AES blocks and hold at least signature, length, flags and pad byte.
  if (spec.kind === 'standard' && (payloadLength % 16 !== 0 || payloadLength < 80)) throw new DimeError('MESSAGE_BAD_CHUNK', `${spec.name} payload length ${payloadLength} is not a whole number of blocks ≥ 80`);
}

export function decodeMessage(input: Uint8Array): DmimeMessage {
  if (input.length > MAX_MESSAGE_LENGTH + MAX_TRACING_LENGTH + 4) throw new DimeError('OBJECT_TOO_LARGE', `${input.length} bytes, the maximum is ${MAX_MESSAGE_LENGTH}`);
  let bytes = input;
  let tracing: Uint8Array | undefined;
  if (bytes.length >= 2 && readUint(bytes, 0, 2) === MAGIC.dmimeTracing) {
    if (bytes.length < 4) throw new DimeError('OBJECT_TRUNCATED', 'tracing prefix');
    const traceLength = readUint(bytes, 2, 2);
    if (traceLength < 1 || 4 + traceLength > bytes.length) throw new DimeError('MESSAGE_BAD_CHUNK', `tracing length ${traceLength}`);
    tracing = bytes.subarray(4, 4 + traceLength);
    bytes = bytes.subarray(4 + traceLength);
  }
  if (bytes.length < MESSAGE_HEADER_LENGTH) throw new DimeError('OBJECT_TRUNCATED', `${bytes.length} bytes`);
  const magic = readUint(bytes, 0, 2);
  if (magic !== MAGIC.dmimeMessage) throw new DimeError('OBJECT_BAD_MAGIC', `${magic} is not a DIME message (1847)`);
  const length = readUint(bytes, 2, 4);
  if (length !== bytes.length - MESSAGE_HEADER_LENGTH) throw new DimeError('OBJECT_LENGTH_MISMATCH', `header says ${length}, object has ${bytes.length - MESSAGE_HEADER_LENGTH}`);
  if (length > MAX_MESSAGE_LENGTH) throw new DimeError('OBJECT_TOO_LARGE', `${length} bytes, the maximum is ${MAX_MESSAGE_LENGTH}`);
  const chunks: Chunk[] = [];
  let at = MESSAGE_HEADER_LENGTH;
  while (at < bytes.length) {
    if (at + CHUNK_HEADER_LENGTH > bytes.length) throw new DimeError('MESSAGE_TRUNCATED', `chunk header at offset ${at}`);
    const type = bytes[at] as number;
    const spec = chunkSpec(type);
    if (!spec) throw new DimeError('MESSAGE_UNKNOWN_CHUNK', `type ${type} at offset ${at}`);
    const payloadLength = readUint(bytes, at + 1, 3);
    checkPayloadShape(type, payloadLength);
    const size = CHUNK_HEADER_LENGTH + payloadLength + KEYSLOT_LENGTH * spec.actors.length;
    if (at + size > bytes.length) throw new DimeError('MESSAGE_TRUNCATED', `${spec.name} chunk at offset ${at} needs ${size} bytes, ${bytes.length - at} remain`);
    chunks.push(chunkView(bytes.subarray(at, at + size), type, payloadLength));
    at += size;
  }
  checkSequence(chunks);
  return tracing ? { tracing, chunks, bytes } : { chunks, bytes };
}

/** Concatenate serialized chunks into a 1847 object. */
export function encodeMessage(chunks: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const c of chunks) total += c.length;
  if (total > MAX_MESSAGE_LENGTH) throw new DimeError('OBJECT_TOO_LARGE', `${total} bytes, the maximum is ${MAX_MESSAGE_LENGTH}`);
  const out = new Uint8Array(MESSAGE_HEADER_LENGTH + total);
  out.set(uintBytes(MAGIC.dmimeMessage, 2), 0);
  out.set(uintBytes(total, 4), 2);
  let at = MESSAGE_HEADER_LENGTH;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

export function chunksOfType(message: DmimeMessage, type: number): Chunk[] {
  return message.chunks.filter((c) => c.type === type);
}

export function chunkOfType(message: DmimeMessage, type: number): Chunk | undefined {
  return message.chunks.find((c) => c.type === type);
}

export function withTracing(message: Uint8Array, tracing: Uint8Array): Uint8Array {
  if (tracing.length < 1 || tracing.length > MAX_TRACING_LENGTH) throw new DimeError('MESSAGE_BAD_CHUNK', `tracing length ${tracing.length}`);
  const out = new Uint8Array(4 + tracing.length + message.length);
  out.set(uintBytes(MAGIC.dmimeTracing, 2), 0);
  out.set(uintBytes(tracing.length, 2), 2);
  out.set(tracing, 4);
  out.set(message, 4 + tracing.length);
  return out;
}
