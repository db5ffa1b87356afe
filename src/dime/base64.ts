/**
 * Standard base64 (RFC 4648 §4, `+` and `/`) as DIME uses it: padded inside armor and on the DMTP
 * wire, unpadded for fingerprints and management records. The URL-safe alphabet is never DIME.
 */
import { DimeError } from '../errors.js';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const DECODE = new Int16Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) DECODE[ALPHABET.charCodeAt(i)] = i;

export function base64Encode(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('base64');
}

export function base64EncodeNoPad(bytes: Uint8Array): string {
  return base64Encode(bytes).replace(/=+$/, '');
}

/**
 * libdime's lenient decoder: characters outside the alphabet (line breaks, spaces) are skipped,
 * decoding stops at the first `=`, and a final group of 2 or 3 characters yields 1 or 2 bytes.
 * A final group of a single character carries no whole byte and is an error.
 */
export function base64DecodeLenient(text: string): Uint8Array {
  const out = new Uint8Array(Math.floor((text.length * 3) / 4) + 3);
  let n = 0;
  let acc = 0;
  let bits = 0;
  let sextets = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x3d /* = */) break;
    const v = c < 128 ? (DECODE[c] as number) : -1;
    if (v < 0) continue;
    acc = (acc << 6) | v;
    bits += 6;
    sextets++;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (acc >> bits) & 0xff;
    }
    acc &= 0xff;
  }
  if (sextets % 4 === 1) throw new DimeError('BASE64_INVALID', 'a trailing group of one character');
  return out.slice(0, n);
}

/**
 * Strict decoder for values that must be exact (management record keys and signatures): only
 * alphabet characters, optional correct padding, and unused trailing bits must be zero, so every
 * value has exactly one accepted spelling.
 */
export function base64DecodeStrict(text: string): Uint8Array {
  const body = text.replace(/=+$/, '');
  const pad = text.length - body.length;
  if (pad > 0 && (text.length % 4 !== 0 || pad > 2)) throw new DimeError('BASE64_INVALID', 'bad padding');
  if (body.length % 4 === 1) throw new DimeError('BASE64_INVALID', 'impossible length');
  for (let i = 0; i < body.length; i++) {
    const c = body.charCodeAt(i);
    if (c >= 128 || (DECODE[c] as number) < 0) throw new DimeError('BASE64_INVALID', `character ${JSON.stringify(body[i])}`);
  }
  const bytes = base64DecodeLenient(body);
  if (base64EncodeNoPad(bytes) !== body) throw new DimeError('BASE64_INVALID', 'non-zero trailing bits');
  return bytes;
}

/** MIME base64 line length (RFC 2045 §6.8). */
const MIME_BASE64_LINE = 76;
/** Raw octets per slice: whole lines (57 octets each), about 56 KiB per piece. */
const MIME_BASE64_SLICE = 57 * 1000;

/**
 * `bytes` as MIME base64 body lines (76 characters, CRLF), in slices, so that a message of tens of
 * MiB is never encoded as one string. Used by the relay's inbound wrapper and the gateway's bundle.
 */
export function* base64MimeLines(bytes: Uint8Array): Generator<Buffer> {
  for (let at = 0; at < bytes.length; at += MIME_BASE64_SLICE) {
    const b64 = Buffer.from(bytes.buffer, bytes.byteOffset + at, Math.min(MIME_BASE64_SLICE, bytes.length - at)).toString('base64');
    let text = '';
    for (let i = 0; i < b64.length; i += MIME_BASE64_LINE) text += `${b64.slice(i, i + MIME_BASE64_LINE)}\r\n`;
    yield Buffer.from(text, 'latin1');
  }
}
