/**
 * What each DMIME signature covers (dime-formats.md §5.7). Every input is made of whole serialized
 * chunks as on the wire (type, length, encrypted payload, keyslots).
 */
import type { CryptoBackend } from '../../crypto/backend.js';
import { concatBytes } from '../bytes.js';
import { CHUNK, chunkSpec } from './chunks.js';

export interface WireChunk {
  readonly type: number;
  readonly bytes: Uint8Array;
}

/** Chunks whose SHA-512 enters the tree signature, in order (the destination chunk's is lost, see below). */
const TREE_TYPES = new Set<number>([CHUNK.ephemeral, CHUNK.origin, CHUNK.commonHeaders, CHUNK.otherHeaders, CHUNK.display, CHUNK.attachment]);

/**
 * libdime's tree signature input, quirk included: it hashes the destination chunk and then writes
 * the common headers' hash over it (a missing counter increment), so the destination chunk is not
 * covered, and the slot reserved for it stays 64 zero bytes at the end. Replicated exactly, since
 * libdime verifies exactly this; the full signature (226) still covers the destination chunk.
 */
export function treeSignatureInput(crypto: CryptoBackend, chunks: readonly WireChunk[]): Uint8Array {
  const hashes: Uint8Array[] = [];
  for (const c of chunks) if (TREE_TYPES.has(c.type)) hashes.push(crypto.sha512(c.bytes));
  hashes.push(new Uint8Array(64));
  return concatBytes(...hashes);
}

export const SECTIONS = { envelope: 1, metadata: 2, display: 4, attach: 8, signatures: 16 } as const;

/**
 * The chunks of the given sections, concatenated. In a canonically ordered message they are one
 * contiguous run at the start, so the result is usually a view rather than a copy.
 */
export function sectionInput(message: Uint8Array, chunks: readonly (WireChunk & { offset: number })[], mask: number, before = 256): Uint8Array {
  const picked = chunks.filter((c) => c.type < before && (chunkSpec(c.type)!.section & mask) !== 0);
  if (picked.length === 0) return new Uint8Array(0);
  const first = picked[0]!;
  const last = picked[picked.length - 1]!;
  const contiguous = chunks.filter((c) => c.offset >= first.offset && c.offset <= last.offset).length === picked.length;
  return contiguous ? message.subarray(first.offset, last.offset + last.bytes.length) : concatBytes(...picked.map((c) => c.bytes));
}

/** Meta bounce (248): envelope and metadata. */
export const META_BOUNCE_SECTIONS = SECTIONS.envelope | SECTIONS.metadata;
/** Display bounce (249): envelope, metadata and display. */
export const DISPLAY_BOUNCE_SECTIONS = SECTIONS.envelope | SECTIONS.metadata | SECTIONS.display;
/** Origin full (255): every chunk before it. */
export const ALL_SECTIONS = 0xff;
