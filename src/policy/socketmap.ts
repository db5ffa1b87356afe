/**
 * The socketmap protocol (socketmap_table(5), Sendmail's socket map), pure: netstrings
 * (`<len>:<bytes>,`, cr.yp.to/proto/netstrings.txt) carrying one `name key` request and one
 * `OK value` / `NOTFOUND ` / `TEMP reason` / `TIMEOUT reason` / `PERM reason` reply each.
 */
import { DimeError } from '../errors.js';

/**
 * Postfix's client refuses replies longer than 100000 bytes (DICT_SOCKMAP_DEF_MAX_REPLY; the man
 * page: "not configurable"), so we never send one.
 */
export const SOCKETMAP_MAX_REPLY = 100_000;
/**
 * Requests are a map name and a lookup key (an address, a domain or `*`): Postfix's
 * line_length_limit (2048) bounds them. Four times that is generous.
 */
export const SOCKETMAP_MAX_REQUEST = 8192;
/** Digits in a length prefix: enough for SOCKETMAP_MAX_REPLY, and no bignum parsing. */
export const NETSTRING_MAX_DIGITS = 6;

const COLON = 0x3a;
const COMMA = 0x2c;

/** Incremental netstring decoder with a payload limit, checked before the payload is buffered. */
export class NetstringDecoder {
  private buf: Buffer = Buffer.alloc(0);
  private finished = false;

  constructor(readonly maxLength: number) {}

  get pendingBytes(): number {
    return this.buf.length;
  }

  feed(chunk: Uint8Array): void {
    if (this.finished) throw new Error('NetstringDecoder: feed() after finish()');
    this.buf = this.buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buf, chunk]);
  }

  /** The next complete payload, or null until more bytes arrive. Throws a DimeError on bad input. */
  next(): Buffer | null {
    const colon = this.buf.indexOf(COLON);
    const digitsEnd = colon < 0 ? this.buf.length : colon;
    for (let i = 0; i < digitsEnd; i++) {
      const c = this.buf[i]!;
      if (c < 0x30 || c > 0x39) throw new DimeError('NETSTRING_BAD_LENGTH', `byte 0x${c.toString(16).padStart(2, '0')} in the length`);
    }
    if (digitsEnd > NETSTRING_MAX_DIGITS) throw new DimeError('NETSTRING_TOO_LARGE', `a length of more than ${NETSTRING_MAX_DIGITS} digits`);
    if (colon < 0) return null;
    if (colon === 0) throw new DimeError('NETSTRING_BAD_LENGTH', 'no digits before ":"');
    if (colon > 1 && this.buf[0] === 0x30) throw new DimeError('NETSTRING_BAD_LENGTH', 'leading zero in the length');
    const length = Number(this.buf.subarray(0, colon).toString('latin1'));
    if (length > this.maxLength) throw new DimeError('NETSTRING_TOO_LARGE', `${length} bytes; at most ${this.maxLength}`);
    const end = colon + 1 + length;
    if (this.buf.length <= end) return null;
    if (this.buf[end] !== COMMA) throw new DimeError('NETSTRING_NO_COMMA', `byte 0x${this.buf[end]!.toString(16).padStart(2, '0')} after ${length} bytes`);
    const payload = Buffer.from(this.buf.subarray(colon + 1, end));
    this.buf = this.buf.subarray(end + 1);
    return payload;
  }

  /** The peer closed: leftover bytes mean a cut-off netstring. */
  finish(): null {
    this.finished = true;
    if (this.buf.length > 0) throw new DimeError('NETSTRING_TRUNCATED', `${this.buf.length} bytes of an unfinished netstring`);
    return null;
  }
}

export function encodeNetstring(payload: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(`${payload.length}:`, 'latin1'), payload, Buffer.from(',', 'latin1')]);
}

/** Decode bytes holding only complete netstrings. */
export function decodeNetstrings(bytes: Uint8Array, maxLength = SOCKETMAP_MAX_REPLY): Buffer[] {
  const d = new NetstringDecoder(maxLength);
  d.feed(bytes);
  const out: Buffer[] = [];
  for (let p = d.next(); p; p = d.next()) out.push(p);
  d.finish();
  return out;
}

export interface SocketmapRequest {
  /** The name after the last colon of `socketmap:inet:HOST:PORT:name` in main.cf. */
  map: string;
  /** The lookup key (Postfix sends whole addresses, never partial keys: socketmap_table(5)). */
  key: string;
}

export type SocketmapResult =
  | { status: 'OK'; value: string }
  | { status: 'NOTFOUND' }
  | { status: 'TEMP' | 'TIMEOUT' | 'PERM'; reason: string };

/** `name key`: the name ends at the first space; the key may contain spaces (quoted local parts). */
export function decodeSocketmapRequest(payload: Uint8Array): SocketmapRequest {
  const bytes = Buffer.from(payload);
  const space = bytes.indexOf(0x20);
  if (space <= 0) throw new DimeError('SOCKETMAP_BAD_REQUEST', space === 0 ? 'empty map name' : 'no space between map name and key');
  if (bytes.includes(0)) throw new DimeError('SOCKETMAP_BAD_REQUEST', 'NUL byte in the request');
  const map = bytes.subarray(0, space).toString('latin1');
  if (!/^[\x21-\x7e]+$/.test(map)) throw new DimeError('SOCKETMAP_BAD_REQUEST', `map name ${JSON.stringify(map)} is not printable ASCII`);
  return { map, key: bytes.subarray(space + 1).toString('utf8') };
}

export function encodeSocketmapRequest(request: SocketmapRequest): Buffer {
  if (!/^[\x21-\x7e]+$/.test(request.map)) throw new DimeError('SOCKETMAP_BAD_REQUEST', `map name ${JSON.stringify(request.map)}`);
  if (request.key.includes('\0')) throw new DimeError('SOCKETMAP_BAD_REQUEST', 'NUL byte in the key');
  const payload = Buffer.from(`${request.map} ${request.key}`, 'utf8');
  if (payload.length > SOCKETMAP_MAX_REQUEST) throw new DimeError('SOCKETMAP_BAD_REQUEST', `${payload.length} bytes; at most ${SOCKETMAP_MAX_REQUEST}`);
  return encodeNetstring(payload);
}

/**
 * The reply payload, validated: Postfix reads the value as a C string (a NUL would cut it short)
 * and logs reasons; no control characters in either, and the whole reply within Postfix's limit.
 */
export function formatSocketmapReply(result: SocketmapResult): Buffer {
  let text: string;
  switch (result.status) {
    case 'OK':
      text = `OK ${checkReplyText('value', result.value)}`;
      break;
    case 'NOTFOUND':
      text = 'NOTFOUND ';
      break;
    case 'TEMP':
    case 'TIMEOUT':
    case 'PERM':
      text = `${result.status} ${checkReplyText('reason', result.reason)}`;
      break;
    default:
      throw new DimeError('SOCKETMAP_BAD_REPLY', `unknown status ${JSON.stringify((result as { status: unknown }).status)}`);
  }
  const payload = Buffer.from(text, 'utf8');
  if (payload.length > SOCKETMAP_MAX_REPLY) throw new DimeError('SOCKETMAP_BAD_REPLY', `${payload.length} bytes; Postfix accepts at most ${SOCKETMAP_MAX_REPLY}`);
  return payload;
}

export function encodeSocketmapReply(result: SocketmapResult): Buffer {
  return encodeNetstring(formatSocketmapReply(result));
}

function checkReplyText(what: string, text: string): string {
  if (/[\x00-\x1f\x7f]/.test(text)) throw new DimeError('SOCKETMAP_BAD_REPLY', `${what} contains a control character: ${JSON.stringify(text.slice(0, 80))}`);
  return text;
}

/** Parse a reply payload as Postfix's dict_sockmap does (status word, one space, the rest). */
export function decodeSocketmapReply(payload: Uint8Array): SocketmapResult {
  const text = Buffer.from(payload).toString('utf8');
  const space = text.indexOf(' ');
  const word = space < 0 ? text : text.slice(0, space);
  const rest = space < 0 ? '' : text.slice(space + 1);
  switch (word) {
    case 'OK':
      return { status: 'OK', value: rest };
    case 'NOTFOUND':
      return { status: 'NOTFOUND' };
    case 'TEMP':
    case 'TIMEOUT':
    case 'PERM':
      return { status: word, reason: rest };
    default:
      throw new DimeError('SOCKETMAP_BAD_REPLY', `unknown status ${JSON.stringify(word.slice(0, 40))}`);
  }
}
