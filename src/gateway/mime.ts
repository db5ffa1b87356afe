/**
 * RFC 5322 message ↔ DMIME chunk contents (common headers 33, other headers 34, display 67,
 * attachments 131), byte-exact both ways for any input within the size limits. The mapping is
 * specified in docs/mime-mapping.md; the structure line it relies on is in mime-manifest.ts and the
 * byte scanning in mime-scan.ts. Pure, no I/O.
 */
import { DimeError } from '../errors.js';
import { COMMON_HEADER_LABELS, REQUIRED_COMMON_HEADERS, type CommonHeaderLabel, type CommonHeaders } from '../dime/message/headers.js';
import {
  MANIFEST_FIELD,
  decodeManifest,
  encodeManifest,
  type BodyNode,
  type CommonEntry,
  type CommonFieldForm,
  type Eol,
  type Manifest,
} from './mime-manifest.js';
import { CR, HT, LF, SP, fieldName, mimeField, parseHeaderBlock, scanPartHeaders, splitMultipart, type Field, type MimeValue } from './mime-scan.js';

/** Well above what MTAs accept (Postfix defaults to 10 MB, large providers to 25–50 MB) and within what one milter process should hold per message. */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** Top-level header block: chunks 33 and 34 each must fit one chunk (< 16 MiB); real blocks are a few KiB, and Postfix caps each header at 100 KiB by default. */
export const MAX_HEADER_BYTES = 1024 * 1024;
/** Top-level header fields: the structure line indexes them; Postfix bounces mail with more than 50 Received fields, real mail has under 200 fields. */
export const MAX_HEADER_FIELDS = 5000;
/** Multipart nesting kept as separate chunks; each level rescans its body, so this bounds the work to depth × size. Deeper parts stay whole in one chunk. */
export const MAX_MULTIPART_DEPTH = 16;
/** Display plus attachment chunks: each costs 2 keyslots, a ≥ 256-byte payload and a tree-signature hash. More parts than this keep the body as one chunk. */
export const MAX_PARTS = 1000;
/** RFC 2046 allows 70; tolerate sloppy generators, but a longer parameter is not a boundary we split on. */
export const MAX_BOUNDARY_BYTES = 256;
/** Skeleton (nested headers, preamble, epilogue, odd delimiter lines) kept in the structure line per multipart; a larger one keeps that multipart whole. */
export const MAX_NODE_SKELETON_BYTES = 16 * 1024;
/** Skeleton in the whole structure line: chunk 34 stays small. Beyond it the body is kept as one chunk. */
export const MAX_SKELETON_BYTES = 64 * 1024;

/** What goes into the DMIME content chunks. Display and attachment entries may be views into the input. */
export interface MessageParts {
  /** Chunk 33. */
  common: CommonHeaders;
  /** Chunk 34: the structure line, then every other header field verbatim. */
  otherHeaders: Uint8Array;
  /** Chunks 67, at least one. */
  display: Uint8Array[];
  /** Chunks 131. */
  attachments: Uint8Array[];
}

export type RequiredCommonLabel = 'Date' | 'To' | 'From' | 'Subject';

export interface MimeToPartsOptions {
  /**
   * Chunk-33 values shown for required headers the message lacks (the structure line records the
   * absence, so the way back omits them). Defaults: To `undisclosed-recipients:;` (RFC 5322 §3.6.3's
   * empty group, what sendmail adds), Date, From and Subject empty. The milter may pass the arrival
   * date or the envelope sender instead.
   */
  placeholders?: Partial<Record<RequiredCommonLabel, Uint8Array>>;
}

const DEFAULT_PLACEHOLDERS: Record<RequiredCommonLabel, Uint8Array> = {
  Date: new Uint8Array(0),
  To: Buffer.from('undisclosed-recipients:;', 'latin1'),
  From: new Uint8Array(0),
  Subject: new Uint8Array(0),
};

const LABEL_BY_NAME = new Map<string, CommonHeaderLabel>(COMMON_HEADER_LABELS.map((l) => [l.toLowerCase(), l]));
const EOL_BYTES: Record<Eol, Uint8Array> = { crlf: Uint8Array.of(CR, LF), lf: Uint8Array.of(LF), none: new Uint8Array(0) };

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && asBuffer(a).equals(asBuffer(b));
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = Buffer.concat(parts);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** The message's default line end: that of its first line (CRLF when there is no LF at all). */
function detectEol(buf: Buffer): 'crlf' | 'lf' {
  const i = buf.indexOf(LF);
  return i > 0 && buf[i - 1] === CR ? 'crlf' : i < 0 ? 'crlf' : 'lf';
}

function eolOf(buf: Buffer, start: number, end: number): Eol {
  if (end === start) return 'none';
  return end - start === 2 ? 'crlf' : 'lf';
}

// ---------------------------------------------------------------------------------------------
// Common headers

interface AnalysedField {
  /** The unfolded value for chunk 33 (a copy; never holds CR or LF). */
  value: Uint8Array;
  entry: CommonEntry;
}

/**
 * Split a common field into the chunk-33 value and the deviations from `Label: value<eol>`: the
 * value starts at the first byte after the colon that is not white space or a line end, and its
 * folds (line ends before continuation white space) are removed and recorded. A bare CR left in the
 * value cannot go into chunk 33, so such a field stays raw in chunk 34.
 */
function analyseField(buf: Buffer, f: Field, index: number, label: CommonHeaderLabel, eol: 'crlf' | 'lf'): AnalysedField {
  let e = f.end;
  let term: Eol = 'none';
  if (buf[e - 1] === LF && e - 1 > f.colon) {
    if (e - 2 > f.colon && buf[e - 2] === CR) {
      term = 'crlf';
      e -= 2;
    } else {
      term = 'lf';
      e -= 1;
    }
  }
  let p = f.colon + 1;
  while (p < e && (buf[p] === SP || buf[p] === HT || buf[p] === CR || buf[p] === LF)) p++;
  const pieces: Uint8Array[] = [];
  const folds: Array<[number, Eol | undefined]> = [];
  let length = 0;
  let segment = p;
  for (let j = buf.subarray(0, e).indexOf(LF, p); j >= 0; j = buf.subarray(0, e).indexOf(LF, j + 1)) {
    const crlf = buf[j - 1] === CR;
    const eolStart = crlf ? j - 1 : j;
    pieces.push(buf.subarray(segment, eolStart));
    length += eolStart - segment;
    const kind: Eol = crlf ? 'crlf' : 'lf';
    folds.push([length, kind === eol ? undefined : kind]);
    segment = j + 1;
  }
  pieces.push(buf.subarray(segment, e));
  const value = Uint8Array.from(Buffer.concat(pieces));
  if (value.includes(CR)) return { value: value.map((b) => (b === CR ? SP : b)), entry: { kind: 'raw' } };
  const form: CommonFieldForm = { index };
  const name = buf.subarray(f.start, f.colon);
  if (name.toString('latin1') !== label) form.name = Uint8Array.from(name);
  const prefix = buf.subarray(f.colon + 1, p);
  if (!(prefix.length === 1 && prefix[0] === SP)) form.prefix = Uint8Array.from(prefix);
  if (folds.length > 0) form.folds = folds;
  if (term !== eol) form.term = term;
  return { value, entry: { kind: 'form', form } };
}

function renderField(label: CommonHeaderLabel, value: Uint8Array, form: CommonFieldForm, eol: 'crlf' | 'lf'): Uint8Array[] {
  const out: Uint8Array[] = [form.name ?? Buffer.from(label, 'latin1'), Uint8Array.of(0x3a), form.prefix ?? Uint8Array.of(SP)];
  let at = 0;
  for (const [offset, kind] of form.folds ?? []) {
    if (offset < at || offset > value.length) throw new DimeError('MIME_BAD_MANIFEST', `${label} fold at ${offset} is out of order or past the value`);
    out.push(value.subarray(at, offset), EOL_BYTES[kind ?? eol]);
    at = offset;
  }
  out.push(value.subarray(at), EOL_BYTES[form.term ?? eol]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Body tree

/** Node with the byte ranges the chunks and glue come from. */
type Tree =
  | { kind: 'leaf'; display: boolean; start: number; end: number }
  | { kind: 'multi'; boundary: Uint8Array; head?: [number, number]; glue: Array<[number, number] | undefined>; children: Tree[] };

/** Thrown inside the tree builder when a whole-message budget runs out; the body is then kept whole. */
class Collapse extends Error {}

interface Ctx {
  buf: Buffer;
  eol: 'crlf' | 'lf';
  leaves: number;
  skeleton: number;
}

/** The boundary of a multipart Content-Type, if it is one we split on. */
function multipartBoundary(ct: MimeValue): Uint8Array | undefined {
  if (!ct.value.startsWith('multipart/')) return undefined;
  const b = ct.params.get('boundary');
  if (b === undefined || b.length === 0 || b.length > MAX_BOUNDARY_BYTES) return undefined;
  return Buffer.from(b, 'latin1');
}

/**
 * Display or attachment for a leaf part (docs/mime-mapping.md §4): an explicit disposition decides;
 * otherwise the alternatives of multipart/alternative, the signed content of multipart/signed, text
 * and (kept-whole) multipart entities are read inline, anything else is an attachment.
 */
function isDisplay(contentType: MimeValue | undefined, disposition: MimeValue | undefined, parentSubtype: string, index: number): boolean {
  if (disposition?.value === 'attachment') return false;
  if (disposition?.value === 'inline') return true;
  if (parentSubtype === 'alternative' || (parentSubtype === 'signed' && index === 0)) return true;
  const type = contentType ? contentType.value.split('/')[0] : parentSubtype === 'digest' ? 'message' : 'text';
  return type === 'text' || type === 'multipart';
}

function leaf(ctx: Ctx, start: number, end: number, display: boolean): Tree {
  if (++ctx.leaves > MAX_PARTS) throw new Collapse();
  return { kind: 'leaf', display, start, end };
}

/** A body part [start, end): a multipart we can split, or one leaf chunk holding the whole entity. */
function buildPart(ctx: Ctx, start: number, end: number, depth: number, parentSubtype: string, index: number): Tree {
  const h = scanPartHeaders(ctx.buf, start, end);
  // The signed content must stay byte-identical in one chunk so a reader can check the signature over it.
  if (parentSubtype !== 'signed' && depth < MAX_MULTIPART_DEPTH && h.bodyStart > h.sepStart && h.contentType) {
    const boundary = multipartBoundary(h.contentType);
    if (boundary) {
      const multi = buildMulti(ctx, h.bodyStart, end, boundary, h.contentType.value.slice('multipart/'.length), depth + 1, [start, h.bodyStart]);
      if (multi) return multi;
    }
  }
  return leaf(ctx, start, end, isDisplay(h.contentType, h.disposition, parentSubtype, index));
}

function defaultGlue(boundary: Uint8Array, eol: 'crlf' | 'lf', slot: 'first' | 'middle' | 'last'): Uint8Array {
  const e = EOL_BYTES[eol];
  const dash = Buffer.from('--');
  if (slot === 'first') return concat([dash, boundary, e]);
  if (slot === 'middle') return concat([e, dash, boundary, e]);
  return concat([e, dash, boundary, dash, e]);
}

function buildMulti(
  ctx: Ctx,
  bodyStart: number,
  end: number,
  boundary: Uint8Array,
  subtype: string,
  depth: number,
  head?: [number, number],
): Tree | undefined {
  const parts = splitMultipart(ctx.buf, bodyStart, end, boundary, MAX_PARTS);
  if (!parts) return undefined;
  const n = parts.length;
  const glue: Array<[number, number] | undefined> = [];
  let skeleton = boundary.length + (head ? head[1] - head[0] : 0);
  for (let k = 0; k <= n; k++) {
    const from = k === 0 ? bodyStart : (parts[k - 1] as [number, number])[1];
    const to = k === n ? end : (parts[k] as [number, number])[0];
    const expected = defaultGlue(boundary, ctx.eol, k === 0 ? 'first' : k === n ? 'last' : 'middle');
    if (bytesEqual(ctx.buf.subarray(from, to), expected)) {
      glue.push(undefined);
    } else {
      glue.push([from, to]);
      skeleton += to - from;
    }
  }
  if (skeleton > MAX_NODE_SKELETON_BYTES) return undefined;
  ctx.skeleton += skeleton;
  if (ctx.skeleton > MAX_SKELETON_BYTES) throw new Collapse();
  const children = parts.map(([s, e], i) => buildPart(ctx, s, e, depth, subtype, i));
  return head ? { kind: 'multi', boundary, head, glue, children } : { kind: 'multi', boundary, glue, children };
}

function forEachLeaf(t: Tree, fn: (l: Extract<Tree, { kind: 'leaf' }>) => void): void {
  if (t.kind === 'leaf') fn(t);
  else for (const c of t.children) forEachLeaf(c, fn);
}

function toBodyNode(ctx: Ctx, t: Tree): BodyNode {
  if (t.kind === 'leaf') return { kind: 'leaf', display: t.display };
  const slice = (r: [number, number] | undefined): Uint8Array | undefined => (r ? Uint8Array.from(ctx.buf.subarray(r[0], r[1])) : undefined);
  const node: BodyNode = { kind: 'multi', boundary: t.boundary, glue: t.glue.map(slice), children: t.children.map((c) => toBodyNode(ctx, c)) };
  if (t.head) node.head = slice(t.head);
  return node;
}

// ---------------------------------------------------------------------------------------------
// Public mapping

/**
 * Map a message to chunk contents. Never fails on malformed MIME (it degrades to a coarser but
 * exact split); throws MIME_TOO_LARGE / MIME_HEADERS_TOO_LARGE for the size limits only. Display
 * and attachment entries are views into `raw`: copy them if `raw` will be reused.
 */
export function mimeToParts(raw: Uint8Array, options: MimeToPartsOptions = {}): MessageParts {
  if (!(raw instanceof Uint8Array)) throw new TypeError('raw must be a Uint8Array');
  if (raw.length > MAX_MESSAGE_BYTES) throw new DimeError('MIME_TOO_LARGE', `${raw.length} bytes, limit ${MAX_MESSAGE_BYTES}`);
  const placeholders = { ...DEFAULT_PLACEHOLDERS, ...options.placeholders };
  for (const [label, v] of Object.entries(placeholders)) {
    if (!(v instanceof Uint8Array) || v.includes(CR) || v.includes(LF)) {
      throw new DimeError('MESSAGE_BAD_HEADERS', `placeholder for ${label} must be bytes without CR or LF`);
    }
  }
  const buf = asBuffer(raw);
  const eol = detectEol(buf);
  const hb = parseHeaderBlock(buf, 0, buf.length, {
    maxFields: MAX_HEADER_FIELDS,
    maxBytes: MAX_HEADER_BYTES,
    exceeded: (what) => {
      throw new DimeError('MIME_HEADERS_TOO_LARGE', what);
    },
  });

  // Chunk 33: the first field of each common label; everything else stays in order in chunk 34.
  const common: CommonHeaders = {};
  const entries: Partial<Record<CommonHeaderLabel, CommonEntry>> = {};
  const extracted = new Set<number>();
  hb.fields.forEach((f, i) => {
    const label = LABEL_BY_NAME.get(fieldName(buf, f));
    if (!label || entries[label]) return;
    const a = analyseField(buf, f, i, label, eol);
    common[label] = a.value;
    entries[label] = a.entry;
    if (a.entry.kind === 'form') extracted.add(i);
  });
  for (const label of REQUIRED_COMMON_HEADERS) {
    if (entries[label]) continue;
    common[label] = Uint8Array.from(placeholders[label as RequiredCommonLabel]);
    entries[label] = { kind: 'none' };
  }

  // Display and attachments: split a top-level multipart when it is well formed enough, else one display chunk.
  const ctx: Ctx = { buf, eol, leaves: 0, skeleton: 0 };
  let tree: Tree | undefined;
  const ct = hb.bodyStart > hb.sepStart ? mimeField(buf, hb.fields, 'content-type') : undefined;
  const boundary = ct && multipartBoundary(ct);
  if (ct && boundary) {
    try {
      tree = buildMulti(ctx, hb.bodyStart, buf.length, boundary, ct.value.slice('multipart/'.length), 1);
    } catch (err) {
      if (!(err instanceof Collapse)) throw err;
    }
  }
  tree ??= { kind: 'leaf', display: true, start: hb.bodyStart, end: buf.length };
  // libdime needs a display chunk: with only attachments, the first part is shown.
  const leaves: Array<Extract<Tree, { kind: 'leaf' }>> = [];
  forEachLeaf(tree, (l) => leaves.push(l));
  if (!leaves.some((l) => l.display)) (leaves[0] as { display: boolean }).display = true;
  const display: Uint8Array[] = [];
  const attachments: Uint8Array[] = [];
  for (const l of leaves) (l.display ? display : attachments).push(raw.subarray(l.start, l.end));

  const sep = eolOf(buf, hb.sepStart, hb.bodyStart);
  const manifest: Manifest = { eol, common: entries, body: toBodyNode(ctx, tree) };
  if (sep !== eol) manifest.sep = sep;
  const otherFields = hb.fields.filter((_, i) => !extracted.has(i)).map((f) => buf.subarray(f.start, f.end));
  const otherHeaders = concat([Buffer.from(encodeManifest(manifest), 'latin1'), ...otherFields]);
  return { common, otherHeaders, display, attachments };
}

/** Rebuild the message. Exact for our own parts; best effort for parts from another DIME author (no structure line). */
export function partsToMime(parts: MessageParts): Uint8Array {
  const other = asBuffer(parts.otherHeaders);
  const first = parseHeaderBlock(other, 0, other.length).fields[0];
  if (!first || other.toString('latin1', first.start, first.colon) !== MANIFEST_FIELD) return foreignToMime(parts);
  const manifest = decodeManifest(other.toString('latin1', first.colon + 1, first.end).replace(/\r\n/g, ''));
  const eol = manifest.eol;
  const out: Uint8Array[] = [];

  // Header block: chunk-34 fields in order, with the rebuilt common fields at their recorded positions.
  const rest = parseHeaderBlock(other, first.end, other.length);
  if (rest.sepStart !== other.length) throw new DimeError('MIME_BAD_MANIFEST', 'other-headers chunk holds something other than header fields');
  const placed = new Map<number, Uint8Array[]>();
  for (const label of COMMON_HEADER_LABELS) {
    const entry = manifest.common[label];
    const value = parts.common[label];
    if (!entry) {
      if (value) throw new DimeError('MIME_BAD_MANIFEST', `${label} is in chunk 33 but not in the structure line`);
      continue;
    }
    if (!value) throw new DimeError('MIME_BAD_MANIFEST', `${label} is in the structure line but not in chunk 33`);
    if (entry.kind !== 'form') continue;
    if (placed.has(entry.form.index)) throw new DimeError('MIME_BAD_MANIFEST', `two fields at position ${entry.form.index}`);
    placed.set(entry.form.index, renderField(label, value, entry.form, eol));
  }
  const total = rest.fields.length + placed.size;
  let next = 0;
  for (let i = 0; i < total; i++) {
    const field = placed.get(i);
    if (field) out.push(...field);
    else {
      const f = rest.fields[next++];
      if (!f) throw new DimeError('MIME_BAD_MANIFEST', `field position ${i} is past the header block`);
      out.push(other.subarray(f.start, f.end));
    }
  }
  if (next !== rest.fields.length) throw new DimeError('MIME_BAD_MANIFEST', 'a common field position is past the header block');
  out.push(EOL_BYTES[manifest.sep ?? eol]);

  // Body: chunks in document order, glue between them.
  const queues = { display: 0, attachments: 0 };
  const emit = (node: BodyNode): void => {
    if (node.kind === 'leaf') {
      const list = node.display ? parts.display : parts.attachments;
      const key = node.display ? 'display' : 'attachments';
      const chunk = list[queues[key]++];
      if (!chunk) throw new DimeError('MIME_BAD_MANIFEST', `more ${key} parts in the structure than chunks`);
      out.push(chunk);
      return;
    }
    if (node.head) out.push(node.head);
    const n = node.children.length;
    node.children.forEach((child, k) => {
      out.push(node.glue[k] ?? defaultGlue(node.boundary, eol, k === 0 ? 'first' : 'middle'));
      emit(child);
    });
    out.push(node.glue[n] ?? defaultGlue(node.boundary, eol, 'last'));
  };
  emit(manifest.body);
  if (queues.display !== parts.display.length || queues.attachments !== parts.attachments.length) {
    throw new DimeError('MIME_BAD_MANIFEST', 'more chunks than parts in the structure');
  }
  return checkedConcat(out);
}

function checkedConcat(out: Uint8Array[]): Uint8Array {
  let size = 0;
  for (const p of out) size += p.length;
  if (size > MAX_MESSAGE_BYTES) throw new DimeError('MIME_TOO_LARGE', `rebuilt message of ${size} bytes, limit ${MAX_MESSAGE_BYTES}`);
  return concat(out);
}

/**
 * Parts without our structure line (another DIME author): the common headers in libdime's order,
 * chunk 34 as it is, then the single display chunk as the body, or every chunk as a part of a new
 * multipart/mixed. Inbound delivery (issue 8) may refine this.
 */
function foreignToMime(parts: MessageParts): Uint8Array {
  const out: Uint8Array[] = [];
  const crlf = EOL_BYTES.crlf;
  const chunks = [...parts.display, ...parts.attachments];
  let boundary: string | undefined;
  if (chunks.length > 1) {
    for (let i = 0; boundary === undefined; i++) {
      const candidate = `=_dime_${i}`;
      if (!chunks.some((c) => asBuffer(c).includes(candidate, 0, 'latin1'))) boundary = candidate;
    }
    // Before chunk 34's own fields: readers take the first Content-Type.
    out.push(Buffer.from(`MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="${boundary}"\r\n`, 'latin1'));
  }
  for (const label of COMMON_HEADER_LABELS) {
    const v = parts.common[label];
    if (v) out.push(Buffer.from(`${label}: `, 'latin1'), v, crlf);
  }
  if (parts.otherHeaders.length > 0) {
    out.push(parts.otherHeaders);
    if (parts.otherHeaders[parts.otherHeaders.length - 1] !== LF) out.push(crlf);
  }
  out.push(crlf);
  if (boundary === undefined) {
    if (chunks[0]) out.push(chunks[0]);
  } else {
    for (const c of chunks) out.push(Buffer.from(`--${boundary}\r\n`, 'latin1'), c, crlf);
    out.push(Buffer.from(`--${boundary}--\r\n`, 'latin1'));
  }
  return checkedConcat(out);
}
