/**
 * The common-headers chunk (type 33) and the envelope chunks (4, 5) as libdime writes and reads them
 * (dime-formats.md §5.5). Pure codecs over the chunks' plaintext data segments.
 */
import { DimeError } from '../../errors.js';
import { concatBytes, utf8 } from '../bytes.js';

/** The common headers in libdime's fixed writing order; labels are exact and case-sensitive. */
export const COMMON_HEADER_LABELS = ['Date', 'To', 'CC', 'From', 'Organization', 'Subject'] as const;
export type CommonHeaderLabel = (typeof COMMON_HEADER_LABELS)[number];
export const REQUIRED_COMMON_HEADERS: readonly CommonHeaderLabel[] = ['Date', 'To', 'From', 'Subject'];

/** Values are raw octets (RFC 5322 allows 8-bit junk in the wild); none may hold CR or LF. */
export type CommonHeaders = Partial<Record<CommonHeaderLabel, Uint8Array>>;

const CR = 0x0d;
const LF = 0x0a;

function checkValue(label: string, value: Uint8Array): void {
  if (value.includes(CR) || value.includes(LF)) throw new DimeError('MESSAGE_BAD_HEADERS', `${label} value contains a line break (unfold it first)`);
}

/** `Label: value\r\n` lines in libdime's order, only for present headers; the required ones must be there. */
export function encodeCommonHeaders(headers: CommonHeaders): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const label of REQUIRED_COMMON_HEADERS) {
    if (!headers[label]) throw new DimeError('MESSAGE_BAD_HEADERS', `the common headers need ${label}`);
  }
  for (const label of COMMON_HEADER_LABELS) {
    const value = headers[label];
    if (!value) continue;
    checkValue(label, value);
    parts.push(utf8.encode(`${label}: `), value, Uint8Array.of(CR, LF));
  }
  return concatBytes(...parts);
}

/**
 * libdime's reader: lines in any order, each `Label: value\r\n` with one of the six labels,
 * no duplicates, nothing after the last CRLF. We also require the four headers libdime's writer
 * requires, so an incomplete chunk is an error rather than a message with no sender.
 */
export function decodeCommonHeaders(data: Uint8Array): CommonHeaders {
  const out: CommonHeaders = {};
  let at = 0;
  while (at < data.length) {
    const lf = data.indexOf(LF, at);
    if (lf < 0 || lf === at || data[lf - 1] !== CR) throw new DimeError('MESSAGE_BAD_HEADERS', `line at offset ${at} does not end in CRLF`);
    const line = data.subarray(at, lf - 1);
    const colon = line.indexOf(0x3a);
    const label = colon > 0 ? utf8.decode(line.subarray(0, colon)) : '';
    if (!(COMMON_HEADER_LABELS as readonly string[]).includes(label) || line[colon + 1] !== 0x20) {
      throw new DimeError('MESSAGE_BAD_HEADERS', `unknown common header line ${JSON.stringify(utf8.decode(line.subarray(0, 40)))}`);
    }
    const key = label as CommonHeaderLabel;
    if (out[key]) throw new DimeError('MESSAGE_BAD_HEADERS', `${key} appears twice`);
    const value = line.subarray(colon + 2);
    checkValue(key, value);
    out[key] = Uint8Array.from(value);
    at = lf + 1;
  }
  for (const label of REQUIRED_COMMON_HEADERS) {
    if (!out[label]) throw new DimeError('MESSAGE_BAD_HEADERS', `the common headers lack ${label}`);
  }
  return out;
}

/** Envelope of the origin chunk (4): what the author's server may learn. */
export interface OriginEnvelope {
  author: string;
  /** Crypto fingerprint of the author's user signet. */
  authorSignet: string;
  destination: string;
  destinationSignet: string;
}

/** Envelope of the destination chunk (5): what the recipient's server may learn. */
export interface DestinationEnvelope {
  recipient: string;
  recipientSignet: string;
  origin: string;
  originSignet: string;
}

const ORIGIN_LINES = [
  ['Author', 'author', '<', '>'],
  ['Author-Signet', 'authorSignet', '[', ']'],
  ['Destination', 'destination', '<', '>'],
  ['Destination-Signet', 'destinationSignet', '[', ']'],
] as const;
const DESTINATION_LINES = [
  ['Recipient', 'recipient', '<', '>'],
  ['Recipient-Signet', 'recipientSignet', '[', ']'],
  ['Origin', 'origin', '<', '>'],
  ['Origin-Signet', 'originSignet', '[', ']'],
] as const;

/** Printable ASCII without the closing bracket: what libdime accepts between the brackets. */
function checkEnvelopeValue(label: string, value: string, close: string): void {
  if (value.length === 0 || !/^[\x21-\x7e]+$/.test(value) || value.includes(close)) {
    throw new DimeError('MESSAGE_BAD_ENVELOPE', `${label} must be non-empty printable ASCII without ${close}`);
  }
}

function encodeLines(lines: readonly (readonly [string, string, string, string])[], values: Record<string, string>): Uint8Array {
  let text = '';
  for (const [label, key, open, close] of lines) {
    const value = values[key] as string;
    checkEnvelopeValue(label, value, close);
    text += `${label}: ${open}${value}${close}\r\n`;
  }
  return utf8.encode(text);
}

function decodeLines(lines: readonly (readonly [string, string, string, string])[], data: Uint8Array): Record<string, string> {
  const text = new TextDecoder('latin1').decode(data);
  const out: Record<string, string> = {};
  let at = 0;
  for (const [label, key, open, close] of lines) {
    const prefix = `${label}: ${open}`;
    if (!text.startsWith(prefix, at)) throw new DimeError('MESSAGE_BAD_ENVELOPE', `expected ${label} at offset ${at}`);
    const end = text.indexOf(`${close}\r\n`, at + prefix.length);
    if (end < 0) throw new DimeError('MESSAGE_BAD_ENVELOPE', `${label} is not closed by ${close} and CRLF`);
    const value = text.slice(at + prefix.length, end);
    checkEnvelopeValue(label, value, close);
    out[key] = value;
    at = end + 3;
  }
  if (at !== text.length) throw new DimeError('MESSAGE_BAD_ENVELOPE', 'data after the last envelope line');
  return out;
}

export function encodeOriginEnvelope(e: OriginEnvelope): Uint8Array {
  return encodeLines(ORIGIN_LINES, e as unknown as Record<string, string>);
}
export function decodeOriginEnvelope(data: Uint8Array): OriginEnvelope {
  return decodeLines(ORIGIN_LINES, data) as unknown as OriginEnvelope;
}
export function encodeDestinationEnvelope(e: DestinationEnvelope): Uint8Array {
  return encodeLines(DESTINATION_LINES, e as unknown as Record<string, string>);
}
export function decodeDestinationEnvelope(data: Uint8Array): DestinationEnvelope {
  return decodeLines(DESTINATION_LINES, data) as unknown as DestinationEnvelope;
}
