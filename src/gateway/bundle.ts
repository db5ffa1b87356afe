/**
 * The bundle: what the Postfix queue holds for dark recipients (docs/mail-flow.md "The bundle").
 * The submission milter re-injects one bundle per message; the relay's LMTP listener takes the part
 * of each recipient and delivers it over DMTP. A pure codec: bytes ↔ parts, no I/O.
 *
 * The bundle carries only what the author's server knows anyway: the envelope sender, each
 * recipient, and the origin and destination signet fingerprints. No Subject, no body, no header
 * of the original message.
 */
import { randomBytes } from 'node:crypto';
import { base64MimeLines } from '../dime/base64.js';
import { DimeError } from '../errors.js';
import { decodeMimeBase64, fieldName, parseHeaderBlock, scanHeaderBlock, splitMultipart, unfoldedText, type Field } from './mime-scan.js';
import { MAX_MESSAGE_BYTES } from './mime.js';

export const BUNDLE_CONTENT_TYPE = 'application/x-dime-message';
export const BUNDLE_MARKER = 'X-DIME-Bundle';
/** One part per dark recipient; Postfix's default recipient limit per message is far above this. */
export const MAX_BUNDLE_PARTS = 1000;
/** A bundle is sealed copies of one message: bounded by the gateway's message limit times the parts, and by the queue's. */
export const MAX_BUNDLE_BYTES = 2 * MAX_MESSAGE_BYTES;

export interface SignetRef {
  domain: string;
  /** The organisational signet's fingerprint, as DMTP carries it. */
  fingerprint: string;
}

export interface BundlePart {
  /** The recipient's address, as in the envelope. */
  recipient: string;
  origin: SignetRef;
  destination: SignetRef;
  /** The origin-signed DMIME object. */
  message: Uint8Array;
}

export interface BundleInfo {
  /** The envelope sender ('' for the null sender). */
  sender: string;
  /** Our host name, for the Message-ID. */
  hostname: string;
  date?: Date;
}

/** Only characters that cannot fold, end or extend a header line or confuse the address syntax. */
function headerToken(value: string, what: string): string {
  if (typeof value !== 'string' || !/^[\x21-\x7e]{1,320}$/.test(value) || /[<>"()\\,;]/.test(value)) {
    throw new DimeError('GATEWAY_BAD_BUNDLE', `${what} ${JSON.stringify(value)} cannot go into a bundle header`);
  }
  return value;
}

function rfc5322Date(d: Date): string {
  return d.toUTCString().replace(/GMT$/, '+0000');
}

function checkRef(ref: SignetRef, what: string): string {
  return `${headerToken(ref.domain.toLowerCase(), `${what} domain`)} ${headerToken(ref.fingerprint, `${what} fingerprint`)}`;
}

/** The bundle as CRLF text, in slices (a large message is never base64-encoded in one piece). */
export function* encodeBundle(info: BundleInfo, parts: readonly BundlePart[]): Generator<Buffer> {
  if (!Array.isArray(parts) || parts.length === 0 || parts.length > MAX_BUNDLE_PARTS) {
    throw new DimeError('GATEWAY_BAD_BUNDLE', `a bundle has 1 to ${MAX_BUNDLE_PARTS} parts, got ${Array.isArray(parts) ? parts.length : typeof parts}`);
  }
  const heads = parts.map((p, i) => {
    if (!(p.message instanceof Uint8Array) || p.message.length === 0) throw new DimeError('GATEWAY_BAD_BUNDLE', `part ${i}: message must be a non-empty Uint8Array`);
    return [
      `Content-Type: ${BUNDLE_CONTENT_TYPE}`,
      'Content-Transfer-Encoding: base64',
      `X-DIME-Recipient: ${headerToken(p.recipient, `part ${i} recipient`)}`,
      `X-DIME-Origin: ${checkRef(p.origin, `part ${i} origin`)}`,
      `X-DIME-Destination: ${checkRef(p.destination, `part ${i} destination`)}`,
    ];
  });
  const sender = info.sender === '' ? 'MAILER-DAEMON' : headerToken(info.sender, 'sender');
  const host = headerToken(info.hostname, 'host name');
  const token = randomBytes(12).toString('hex');
  const boundary = `=_dime_bundle_${token}`;
  const head = [
    `Date: ${rfc5322Date(info.date ?? new Date())}`,
    `From: <${sender}>`,
    'To: undisclosed-recipients:;',
    `Message-ID: <bundle-${token}@${host}>`,
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    `${BUNDLE_MARKER}: 1`,
    '',
    'This message holds DIME messages waiting for delivery by the DMTP relay.',
    '',
  ].join('\r\n');
  yield Buffer.from(head, 'latin1');
  for (const [i, p] of parts.entries()) {
    yield Buffer.from(`--${boundary}\r\n${heads[i]!.join('\r\n')}\r\n\r\n`, 'latin1');
    yield* base64MimeLines(p.message);
  }
  yield Buffer.from(`--${boundary}--\r\n`, 'latin1');
}

/** The whole bundle in one buffer (tests, small messages). */
export function encodeBundleBytes(info: BundleInfo, parts: readonly BundlePart[]): Buffer {
  return Buffer.concat([...encodeBundle(info, parts)]);
}

function bad(detail: string): DimeError {
  return new DimeError('GATEWAY_BAD_BUNDLE', detail);
}

function parseRef(text: string | undefined, what: string): SignetRef {
  const m = text === undefined ? null : /^\s*([A-Za-z0-9.-]{1,253})\s+([A-Za-z0-9+/=_-]{20,200})\s*$/.exec(text);
  if (!m) throw bad(`${what} must be "<domain> <fingerprint>", got ${JSON.stringify(text)}`);
  return { domain: m[1]!.toLowerCase(), fingerprint: m[2]! };
}

function fields(buf: Buffer, list: readonly Field[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const f of list) {
    const name = fieldName(buf, f);
    if (!out.has(name)) out.set(name, unfoldedText(buf, f).trim());
  }
  return out;
}

/**
 * Whether a header block marks a bundle (the relay uses this to refuse, with a clear reply, plain
 * messages that reached it by mistake).
 */
export function isBundle(raw: Uint8Array): boolean {
  try {
    const buf = Buffer.from(raw.buffer, raw.byteOffset, raw.length);
    let found = false;
    scanHeaderBlock(buf, 0, buf.length, (f) => {
      if (fieldName(buf, f) === BUNDLE_MARKER.toLowerCase()) found = true;
    });
    return found;
  } catch {
    return false;
  }
}

/**
 * The parts of a bundle, in order. Throws GATEWAY_BAD_BUNDLE for anything that is not exactly what
 * encodeBundle writes (a queue file is ours, so anything else is damage or a message that should
 * never have been routed to the relay). Line ends may be CRLF or LF (LMTP gives CRLF; files LF).
 */
export function decodeBundle(raw: Uint8Array): BundlePart[] {
  if (!(raw instanceof Uint8Array)) throw bad('bundle must be a Uint8Array');
  if (raw.length > MAX_BUNDLE_BYTES) throw bad(`bundle of ${raw.length} bytes exceeds ${MAX_BUNDLE_BYTES}`);
  const buf = Buffer.from(raw.buffer, raw.byteOffset, raw.length);
  const top = parseHeaderBlock(buf, 0, buf.length, {
    maxFields: 200,
    maxBytes: 64 * 1024,
    exceeded: (what) => {
      throw bad(`bundle header block: ${what}`);
    },
  });
  const head = fields(buf, top.fields);
  if (head.get(BUNDLE_MARKER.toLowerCase()) !== '1') throw bad(`not a bundle: no ${BUNDLE_MARKER}: 1 header`);
  const ct = /^multipart\/mixed\s*;.*boundary="?([^";\s]{1,200})"?/i.exec(head.get('content-type') ?? '');
  if (!ct) throw bad('bundle Content-Type must be multipart/mixed with a boundary');
  const ranges = splitMultipart(buf, top.bodyStart, buf.length, Buffer.from(ct[1]!, 'latin1'), MAX_BUNDLE_PARTS);
  if (!ranges || ranges.length === 0) throw bad('bundle has no parts');
  return ranges.map(([start, end], i) => {
    const block = parseHeaderBlock(buf, start, end, {
      maxFields: 50,
      maxBytes: 8 * 1024,
      exceeded: (what) => {
        throw bad(`part ${i} header block: ${what}`);
      },
    });
    const h = fields(buf, block.fields);
    if ((h.get('content-type') ?? '').toLowerCase() !== BUNDLE_CONTENT_TYPE) throw bad(`part ${i} is not ${BUNDLE_CONTENT_TYPE}`);
    if ((h.get('content-transfer-encoding') ?? '').toLowerCase() !== 'base64') throw bad(`part ${i} is not base64`);
    const recipient = h.get('x-dime-recipient');
    if (!recipient || !/^[\x21-\x7e]{1,320}$/.test(recipient) || !recipient.includes('@')) throw bad(`part ${i} has no valid X-DIME-Recipient`);
    const message = decodeMimeBase64(buf, block.bodyStart, end);
    if (!message || message.length === 0) throw bad(`part ${i} (${recipient}): the body is not base64, or empty`);
    return { recipient, origin: parseRef(h.get('x-dime-origin'), `part ${i} X-DIME-Origin`), destination: parseRef(h.get('x-dime-destination'), `part ${i} X-DIME-Destination`), message };
  });
}

/** The part for one envelope recipient: domain case-insensitive, local part exact (RFC 5321 §2.4). */
export function partFor(parts: readonly BundlePart[], recipient: string): BundlePart | undefined {
  const key = (a: string) => {
    const at = a.lastIndexOf('@');
    return at < 0 ? a : `${a.slice(0, at)}@${a.slice(at + 1).toLowerCase()}`;
  };
  const want = key(recipient);
  return parts.find((p) => key(p.recipient) === want);
}
