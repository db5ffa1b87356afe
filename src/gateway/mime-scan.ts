/**
 * Byte-level scanning of RFC 5322 header blocks and RFC 2046 multipart bodies. Everything works on
 * offsets into one Buffer and never copies: the gateway maps messages of tens of MiB. The rules are
 * total (any byte string scans to something), because the mapping must carry broken mail exactly.
 */

export const CR = 0x0d;
export const LF = 0x0a;
export const SP = 0x20;
export const HT = 0x09;
const COLON = 0x3a;
const DASH = 0x2d;

/** A header field: raw bytes [start, end) including its continuation lines and final line end. */
export interface Field {
  start: number;
  /** Offset of the colon that ends the name (the name may carry obsolete trailing white space). */
  colon: number;
  end: number;
}

/** Fields, then the separator [sepStart, bodyStart): an empty line (CRLF or LF) or nothing. */
export interface HeaderBlock {
  fields: Field[];
  sepStart: number;
  bodyStart: number;
}

export interface HeaderLimits {
  maxFields: number;
  maxBytes: number;
  /** Called when a limit is exceeded; must throw. */
  exceeded: (what: string) => never;
}

/** Offset just past the LF that ends the line starting at `at`, or `end` when the line is unterminated. */
export function lineEnd(buf: Buffer, at: number, end: number): number {
  const i = buf.subarray(at, end).indexOf(LF);
  return i < 0 ? end : at + i + 1;
}

/** RFC 5322 ftext: printable ASCII except the colon. */
function isFtext(b: number): boolean {
  return b >= 0x21 && b <= 0x7e && b !== COLON;
}

/** If a field starts at `at` (`name *WSP ":"`, all on this line), the colon's offset; else -1. */
function fieldColon(buf: Buffer, at: number, end: number): number {
  let i = at;
  while (i < end && isFtext(buf[i] as number)) i++;
  if (i === at) return -1;
  while (i < end && (buf[i] === SP || buf[i] === HT)) i++;
  return i < end && buf[i] === COLON ? i : -1;
}

/**
 * Walk the header block of the entity at [start, end), calling `onField` for each field. The block
 * ends at an empty line (the separator), or without a separator at the first line that is neither
 * a field nor a continuation (a line without a colon, an mbox `From ` line, a body with no header
 * block) or at `end`. This matches Postfix cleanup and Python's email parser, which start the body
 * at such a line.
 */
export function scanHeaderBlock(
  buf: Buffer,
  start: number,
  end: number,
  onField: (f: Field) => void,
  limits?: HeaderLimits,
): { sepStart: number; bodyStart: number } {
  let pos = start;
  let count = 0;
  while (pos < end) {
    const b = buf[pos];
    if (b === LF) return { sepStart: pos, bodyStart: pos + 1 };
    if (b === CR && pos + 1 < end && buf[pos + 1] === LF) return { sepStart: pos, bodyStart: pos + 2 };
    const colon = fieldColon(buf, pos, end);
    if (colon < 0) break;
    let fieldEnd = lineEnd(buf, colon, end);
    while (fieldEnd < end && (buf[fieldEnd] === SP || buf[fieldEnd] === HT)) {
      // check inside the loop too: a huge folded field fails before it is scanned to its end
      if (limits && fieldEnd - start > limits.maxBytes) limits.exceeded(`more than ${limits.maxBytes} bytes`);
      fieldEnd = lineEnd(buf, fieldEnd, end);
    }
    if (limits) {
      if (fieldEnd - start > limits.maxBytes) limits.exceeded(`more than ${limits.maxBytes} bytes`);
      if (++count > limits.maxFields) limits.exceeded(`more than ${limits.maxFields} fields`);
    }
    onField({ start: pos, colon, end: fieldEnd });
    pos = fieldEnd;
  }
  return { sepStart: pos, bodyStart: pos };
}

/** The header block as a list of fields (scanHeaderBlock). */
export function parseHeaderBlock(buf: Buffer, start: number, end: number, limits?: HeaderLimits): HeaderBlock {
  const fields: Field[] = [];
  const r = scanHeaderBlock(buf, start, end, (f) => fields.push(f), limits);
  return { fields, ...r };
}

/**
 * What the mapping needs from a body part's header block: the first Content-Type and
 * Content-Disposition and where the body starts. Fields are not kept: a part's header block has no
 * size limit of its own, and a few MiB of tiny fields must not become millions of objects.
 */
export function scanPartHeaders(buf: Buffer, start: number, end: number): { contentType?: MimeValue; disposition?: MimeValue; sepStart: number; bodyStart: number } {
  let contentType: MimeValue | undefined;
  let disposition: MimeValue | undefined;
  const r = scanHeaderBlock(buf, start, end, (f) => {
    if (((buf[f.start] as number) | 0x20) !== 0x63) return; // both names start with "c"
    const name = fieldName(buf, f);
    if (name === 'content-type') contentType ??= parseMimeValue(unfoldedText(buf, f));
    else if (name === 'content-disposition') disposition ??= parseMimeValue(unfoldedText(buf, f));
  });
  return { contentType, disposition, ...r };
}

/** The field's name, without obsolete white space before the colon, lower-cased (names are ASCII). */
export function fieldName(buf: Buffer, f: Field): string {
  return buf.toString('latin1', f.start, f.colon).trimEnd().toLowerCase();
}

/** The field body with every CR and LF removed (unfolded), as latin1 text for parameter parsing. */
export function unfoldedText(buf: Buffer, f: Field): string {
  return buf.toString('latin1', f.colon + 1, f.end).replace(/[\r\n]/g, '');
}

/** A structured MIME value (`type/subtype` or a disposition) and its parameters, names lower-cased. */
export interface MimeValue {
  value: string;
  params: Map<string, string>;
}

/**
 * Tolerant RFC 2045 parameter parser: comments are skipped, values are tokens or quoted strings,
 * the first occurrence of a parameter wins, junk is skipped up to the next `;`.
 */
export function parseMimeValue(text: string): MimeValue {
  let i = 0;
  const n = text.length;
  const skipCfws = (): void => {
    for (;;) {
      while (i < n && (text[i] === ' ' || text[i] === '\t')) i++;
      if (text[i] !== '(') return;
      let depth = 0;
      while (i < n) {
        const c = text[i++];
        if (c === '\\') i++;
        else if (c === '(') depth++;
        else if (c === ')' && --depth === 0) break;
      }
    }
  };
  const readUntil = (stops: string): string => {
    const from = i;
    while (i < n && !stops.includes(text[i] as string)) i++;
    return text.slice(from, i);
  };
  skipCfws();
  let value = '';
  while (i < n && text[i] !== ';') {
    value += readUntil(' \t(;');
    skipCfws();
  }
  const params = new Map<string, string>();
  while (i < n) {
    i++; // the ';'
    skipCfws();
    const name = readUntil(' \t(;=').toLowerCase();
    skipCfws();
    if (text[i] !== '=') {
      readUntil(';');
      continue;
    }
    i++;
    skipCfws();
    let v = '';
    if (text[i] === '"') {
      i++;
      while (i < n && text[i] !== '"') {
        if (text[i] === '\\' && i + 1 < n) i++;
        v += text[i++];
      }
      i++;
    } else {
      v = readUntil(' \t(;');
    }
    readUntil(';');
    if (name && !params.has(name)) params.set(name, v);
  }
  return { value: value.toLowerCase(), params };
}

/** The first field named `name` (lower case), parsed as a MIME value; undefined when absent. */
export function mimeField(buf: Buffer, fields: readonly Field[], name: string): MimeValue | undefined {
  for (const f of fields) if (fieldName(buf, f) === name) return parseMimeValue(unfoldedText(buf, f));
  return undefined;
}

/** A delimiter line [lineStart, lineEnd): `--boundary`, `--` if it closes, transport padding, line end. */
interface Delimiter {
  lineStart: number;
  lineEnd: number;
  close: boolean;
}

/** The delimiter line starting exactly at `at`, if there is one; anything else on the line disqualifies it. */
function delimiterAt(buf: Buffer, at: number, end: number, dashBoundary: Buffer): Delimiter | undefined {
  if (at + dashBoundary.length > end || buf.compare(dashBoundary, 0, dashBoundary.length, at, at + dashBoundary.length) !== 0) {
    return undefined;
  }
  let i = at + dashBoundary.length;
  let close = false;
  if (i + 1 < end && buf[i] === DASH && buf[i + 1] === DASH) {
    close = true;
    i += 2;
  }
  while (i < end && (buf[i] === SP || buf[i] === HT)) i++;
  if (i === end) return { lineStart: at, lineEnd: end, close };
  if (buf[i] === LF) return { lineStart: at, lineEnd: i + 1, close };
  if (buf[i] === CR && i + 1 < end && buf[i + 1] === LF) return { lineStart: at, lineEnd: i + 2, close };
  return undefined;
}

/** The next delimiter line at or after `from` (a line start), searching only below `end`. */
function nextDelimiter(bounded: Buffer, from: number, end: number, dashBoundary: Buffer, lfDashBoundary: Buffer): Delimiter | undefined {
  const here = delimiterAt(bounded, from, end, dashBoundary);
  if (here) return here;
  for (let s = from; ; ) {
    const m = bounded.indexOf(lfDashBoundary, s);
    if (m < 0) return undefined;
    const d = delimiterAt(bounded, m + 1, end, dashBoundary);
    if (d) return d;
    s = m + 1;
  }
}

/**
 * Split a multipart body [bodyStart, end) at its delimiter lines. Returns the body-part ranges: each
 * runs from just after its delimiter line to just before the line end that precedes the next one
 * (RFC 2046: that line end belongs to the delimiter). Without a close delimiter the last part runs to
 * `end`. Undefined when there is no opening delimiter, or more than `maxParts` parts: the caller then
 * keeps the body as one opaque leaf. Everything between part ranges (preamble, delimiter lines,
 * epilogue) is the caller's "glue".
 */
export function splitMultipart(
  buf: Buffer,
  bodyStart: number,
  end: number,
  boundary: Uint8Array,
  maxParts: number,
): Array<[number, number]> | undefined {
  const dashBoundary = Buffer.concat([Buffer.from('--'), boundary]);
  const lfDashBoundary = Buffer.concat([Buffer.from('\n--'), boundary]);
  const bounded = buf.subarray(0, end);
  const first = nextDelimiter(bounded, bodyStart, end, dashBoundary, lfDashBoundary);
  if (!first || first.close) return undefined;
  const parts: Array<[number, number]> = [];
  for (let cur = first; ; ) {
    if (parts.length >= maxParts) return undefined;
    const contentStart = cur.lineEnd;
    const next = nextDelimiter(bounded, contentStart, end, dashBoundary, lfDashBoundary);
    if (!next) {
      parts.push([contentStart, end]);
      return parts;
    }
    let contentEnd = next.lineStart;
    if (contentEnd > contentStart) {
      contentEnd--; // the LF found with the delimiter
      if (contentEnd > contentStart && buf[contentEnd - 1] === CR) contentEnd--;
    }
    parts.push([contentStart, contentEnd]);
    if (next.close) return parts;
    cur = next;
  }
}

/** base64 alphabet bytes (RFC 2045 §6.8): 1 = a digit, 2 = padding, 3 = white space between lines. */
const B64_CLASS = (() => {
  const t = new Uint8Array(256);
  for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') t[c.charCodeAt(0)] = 1;
  t[0x3d] = 2;
  for (const c of [CR, LF, SP, HT]) t[c] = 3;
  return t;
})();

/**
 * The base64 body [start, end) of a MIME part: white space between characters is skipped, anything
 * else outside the alphabet, padding anywhere but at the end, or a length that is not whole groups
 * returns undefined (the caller names the error). One pass over the bytes and Node's native decoder:
 * sealed messages of tens of MiB pass through here on both sides of the gateway.
 */
export function decodeMimeBase64(buf: Buffer, start: number, end: number): Uint8Array | undefined {
  const compact = Buffer.allocUnsafe(end - start);
  let n = 0;
  let pad = 0;
  for (let i = start; i < end; i++) {
    const c = buf[i]!;
    const k = B64_CLASS[c]!;
    if (k === 1) {
      if (pad > 0) return undefined;
      compact[n++] = c;
    } else if (k === 2) {
      if (++pad > 2) return undefined;
      compact[n++] = c;
    } else if (k !== 3) {
      return undefined;
    }
  }
  if (n === 0 || n % 4 !== 0) return undefined;
  return new Uint8Array(Buffer.from(compact.toString('latin1', 0, n), 'base64'));
}
