/**
 * The structure line (docs/mime-mapping.md §3): one header field at the top of the other-headers
 * chunk (34) that only our side interprets. It records what chunk 33 and the display/attachment
 * chunks cannot: where each common header stood and how it was written, and the MIME tree's glue.
 * Pure text codec; the mapping itself is in mime.ts.
 */
import { DimeError } from '../errors.js';
import { COMMON_HEADER_LABELS, type CommonHeaderLabel } from '../dime/message/headers.js';

/** Field name of the structure line: X- because only DIME gateways read it, and it must not collide with a real field. */
export const MANIFEST_FIELD = 'X-DIME-MIME-Map';
export const MANIFEST_VERSION = '1';
/** Fold the line before this many characters so a libdime reader's header view stays readable (RFC 5322 §2.1.1). */
const FOLD_AT = 78;

export type Eol = 'crlf' | 'lf' | 'none';
const EOL_LETTER: Record<Eol, string> = { crlf: 'c', lf: 'n', none: '-' };
const LETTER_EOL: Record<string, Eol> = { c: 'crlf', n: 'lf', '-': 'none' };

/** How the first field with a common label was written; absent members mean the default. */
export interface CommonFieldForm {
  /** Position among all fields of the header block, 0-based. */
  index: number;
  /** Raw name bytes before the colon when they differ from the chunk-33 label (`Cc`, `SUBJECT`, `To `). */
  name?: Uint8Array;
  /** Raw bytes between the colon and the value when not a single space (may hold folds). */
  prefix?: Uint8Array;
  /** Line ends removed by unfolding: [offset in the chunk-33 value, kind]; the kind is omitted for the default. */
  folds?: Array<[number, Eol | undefined]>;
  /** The field's final line end when not the default. */
  term?: Eol;
}

/** `form`: rebuilt from chunk 33; `raw`: kept verbatim in chunk 34, chunk 33 shows a sanitised copy; `none`: absent, chunk 33 holds a placeholder. */
export type CommonEntry = { kind: 'form'; form: CommonFieldForm } | { kind: 'raw' } | { kind: 'none' };

export type BodyNode =
  | { kind: 'leaf'; display: boolean }
  | {
      kind: 'multi';
      boundary: Uint8Array;
      /** Header block and separator of a nested multipart entity; undefined for the top level (its headers are chunks 33/34). */
      head?: Uint8Array;
      /** glue[k] precedes child k; glue[children.length] follows the last. Undefined = the default glue. */
      glue: Array<Uint8Array | undefined>;
      children: BodyNode[];
    };

export interface Manifest {
  eol: 'crlf' | 'lf';
  common: Partial<Record<CommonHeaderLabel, CommonEntry>>;
  /** Header/body separator when not the default line end. */
  sep?: Eol;
  body: BodyNode;
}

function bad(detail: string): DimeError {
  return new DimeError('MIME_BAD_MANIFEST', detail);
}

// Percent-encoding: printable ASCII stays, except the characters the syntax uses.
const SAFE = new Uint8Array(256);
for (let b = 0x21; b <= 0x7e; b++) SAFE[b] = 1;
for (const c of '%;,*') SAFE[c.charCodeAt(0)] = 0;
const HEX = '0123456789ABCDEF';

/** Percent-encode; with `macro`, each occurrence of it is written `*` (glue repeats `--boundary`). */
export function pctEncode(bytes: Uint8Array, macro?: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; ) {
    if (macro && macro.length > 0 && bytes[i] === macro[0] && startsWith(bytes, i, macro)) {
      s += '*';
      i += macro.length;
      continue;
    }
    const b = bytes[i++] as number;
    s += SAFE[b] ? String.fromCharCode(b) : `%${HEX[b >> 4]}${HEX[b & 15]}`;
  }
  return s;
}

export function pctDecode(s: string, macro?: Uint8Array): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x25) {
      const h = s.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(h)) throw bad(`bad percent escape ${JSON.stringify(s.slice(i, i + 3))}`);
      out.push(parseInt(h, 16));
      i += 2;
    } else if (c === 0x2a && macro) {
      for (const b of macro) out.push(b);
    } else if (c < 256 && SAFE[c]) {
      out.push(c);
    } else {
      throw bad(`character ${JSON.stringify(s[i])} must be percent-encoded`);
    }
  }
  return Uint8Array.from(out);
}

function startsWith(bytes: Uint8Array, at: number, prefix: Uint8Array): boolean {
  if (at + prefix.length > bytes.length) return false;
  for (let k = 0; k < prefix.length; k++) if (bytes[at + k] !== prefix[k]) return false;
  return true;
}

function dashBoundary(boundary: Uint8Array): Uint8Array {
  const out = new Uint8Array(boundary.length + 2);
  out[0] = 0x2d;
  out[1] = 0x2d;
  out.set(boundary, 2);
  return out;
}

function encodeForm(f: CommonFieldForm): string {
  let s = String(f.index);
  if (f.name) s += `;n:${pctEncode(f.name)}`;
  if (f.prefix) s += `;p:${pctEncode(f.prefix)}`;
  if (f.folds && f.folds.length > 0) s += `;f:${f.folds.map(([at, kind]) => `${at}${kind ? EOL_LETTER[kind] : ''}`).join(',')}`;
  if (f.term) s += `;t:${EOL_LETTER[f.term]}`;
  return s;
}

function encodeBody(node: BodyNode, out: string[]): void {
  if (node.kind === 'leaf') {
    out.push(node.display ? 'D' : 'A');
    return;
  }
  const macro = dashBoundary(node.boundary);
  out.push(`M=${pctEncode(node.boundary)}`);
  if (node.head) out.push(`h=${pctEncode(node.head)}`);
  node.children.forEach((child, k) => {
    const g = node.glue[k];
    if (g) out.push(`g=${pctEncode(g, macro)}`);
    encodeBody(child, out);
  });
  const last = node.glue[node.children.length];
  if (last) out.push(`g=${pctEncode(last, macro)}`);
  out.push('.');
}

/** The complete structure field, `X-DIME-MIME-Map: 1 …` folded with CRLF SP, ending in CRLF. */
export function encodeManifest(m: Manifest): string {
  const tokens: string[] = [MANIFEST_VERSION];
  if (m.eol === 'lf') tokens.push('eol=n');
  for (const label of COMMON_HEADER_LABELS) {
    const e = m.common[label];
    if (!e) continue;
    tokens.push(`${label}=${e.kind === 'form' ? encodeForm(e.form) : e.kind}`);
  }
  if (m.sep) tokens.push(`sep=${EOL_LETTER[m.sep]}`);
  encodeBody(m.body, tokens);
  let text = `${MANIFEST_FIELD}:`;
  let lineLength = text.length;
  for (const t of tokens) {
    if (lineLength + 1 + t.length > FOLD_AT && lineLength > 1) {
      text += '\r\n';
      lineLength = 0;
    }
    text += ` ${t}`;
    lineLength += 1 + t.length;
  }
  return `${text}\r\n`;
}

/** Nesting the decoder accepts; the encoder never exceeds the mapping's own depth limit. */
const MAX_DECODE_DEPTH = 64;

/** Parse the field body (after the colon, unfolded) of a structure line. Strict: both sides are ours. */
export function decodeManifest(body: string): Manifest {
  if (!/^[\x20-\x7e]*$/.test(body)) throw bad('non-ASCII text');
  const tokens = body.replace(/^ /, '').split(' ');
  let at = 0;
  if (tokens[at++] !== MANIFEST_VERSION) throw bad(`version ${JSON.stringify(tokens[0])} is not ${MANIFEST_VERSION}`);
  const m: Manifest = { eol: 'crlf', common: {}, body: { kind: 'leaf', display: true } };
  if (tokens[at] === 'eol=n' || tokens[at] === 'eol=c') m.eol = tokens[at++] === 'eol=n' ? 'lf' : 'crlf';
  for (; at < tokens.length; at++) {
    const t = tokens[at] as string;
    const eq = t.indexOf('=');
    const key = eq < 0 ? t : t.slice(0, eq);
    const value = t.slice(eq + 1);
    if ((COMMON_HEADER_LABELS as readonly string[]).includes(key)) {
      const label = key as CommonHeaderLabel;
      if (m.common[label]) throw bad(`${label} twice`);
      m.common[label] = value === 'raw' ? { kind: 'raw' } : value === 'none' ? { kind: 'none' } : { kind: 'form', form: decodeForm(value) };
    } else if (key === 'sep' && eq > 0) {
      if (m.sep) throw bad('sep twice');
      m.sep = letterEol(value);
    } else {
      break;
    }
  }
  const next = (): string => {
    const t = tokens[at++];
    if (t === undefined) throw bad('ends inside the body structure');
    return t;
  };
  const readNode = (depth: number, top: boolean): BodyNode => {
    const t = next();
    if (t === 'D' || t === 'A') return { kind: 'leaf', display: t === 'D' };
    if (!t.startsWith('M=')) throw bad(`unexpected token ${JSON.stringify(t.slice(0, 40))}`);
    if (depth >= MAX_DECODE_DEPTH) throw bad('nested too deep');
    const boundary = pctDecode(t.slice(2));
    if (boundary.length === 0) throw bad('empty boundary');
    const macro = dashBoundary(boundary);
    let head: Uint8Array | undefined;
    if (!top) {
      const h = next();
      if (!h.startsWith('h=')) throw bad('nested multipart without h=');
      head = pctDecode(h.slice(2));
    }
    const glue: Array<Uint8Array | undefined> = [undefined];
    const children: BodyNode[] = [];
    for (;;) {
      const peek = tokens[at];
      if (peek === '.') {
        at++;
        break;
      }
      if (peek !== undefined && peek.startsWith('g=')) {
        if (glue[children.length]) throw bad('two glue tokens in a row');
        glue[children.length] = pctDecode(peek.slice(2), macro);
        at++;
        continue;
      }
      children.push(readNode(depth + 1, false));
      glue.push(undefined);
    }
    if (children.length === 0) throw bad('multipart without parts');
    return head ? { kind: 'multi', boundary, head, glue, children } : { kind: 'multi', boundary, glue, children };
  };
  m.body = readNode(0, true);
  if (at !== tokens.length) throw bad(`${tokens.length - at} tokens after the body structure`);
  return m;
}

function letterEol(s: string): Eol {
  const e = LETTER_EOL[s];
  if (!e) throw bad(`line end ${JSON.stringify(s)} is not c, n or -`);
  return e;
}

function decodeForm(value: string): CommonFieldForm {
  const [index, ...mods] = value.split(';');
  if (!index || !/^(0|[1-9][0-9]{0,8})$/.test(index)) throw bad(`field index ${JSON.stringify(index)}`);
  const f: CommonFieldForm = { index: Number(index) };
  for (const mod of mods) {
    const key = mod.slice(0, 2);
    const v = mod.slice(2);
    if (key === 'n:' && !f.name) f.name = pctDecode(v);
    else if (key === 'p:' && !f.prefix) f.prefix = pctDecode(v);
    else if (key === 't:' && !f.term) f.term = letterEol(v);
    else if (key === 'f:' && !f.folds) {
      f.folds = v.split(',').map((item) => {
        const fm = /^(0|[1-9][0-9]{0,8})([cn]?)$/.exec(item);
        if (!fm) throw bad(`fold ${JSON.stringify(item)}`);
        return [Number(fm[1]), fm[2] ? letterEol(fm[2]) : undefined];
      });
    } else throw bad(`header modifier ${JSON.stringify(mod.slice(0, 20))}`);
  }
  return f;
}
