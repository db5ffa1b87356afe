/**
 * The Postfix policy delegation wire format (SMTPD_POLICY_README), pure: bytes ↔ requests.
 *
 * A request is `name=value\n` lines ended by an empty line; one connection carries many requests
 * (Postfix keeps it open), possibly pipelined. Values are everything after the first `=`. A `\r`
 * before `\n` is dropped so a person can test with telnet or nc -C.
 *
 * The decoder is incremental: `feed()` bytes as they arrive, take complete requests with `next()`
 * until it returns null, and call `finish()` once when the peer half-closes (Exim's
 * `${readsocket}`): it returns a last request even if the empty line (or the final newline) never
 * came, because Exim users write the request string by hand and a forgotten `\n\n` must not turn
 * into a silent timeout.
 */
import { DimeError } from '../errors.js';

/**
 * One line. Postfix's line_length_limit (2048) bounds every value taken from SMTP; certificate
 * subjects are the longest others. Four times that is generous and still small.
 */
export const MAX_POLICY_LINE = 8192;
/** Postfix 3.7 sends 29 attributes, newer versions a few more. */
export const MAX_POLICY_ATTRIBUTES = 128;
/** A whole request: far above any legitimate one, small enough to buffer per connection. */
export const MAX_POLICY_REQUEST = 64 * 1024;

/** Attribute names are Postfix's lowercase identifiers; be a little wider for hand-written requests. */
const ATTRIBUTE_NAME = /^[A-Za-z0-9_.-]+$/;

/** A decoded request. Unknown attributes are kept (the spec says to ignore, not reject, them). */
export class PolicyRequest {
  constructor(readonly attributes: ReadonlyMap<string, string>) {}

  get(name: string): string | undefined {
    return this.attributes.get(name);
  }
  /** `smtpd_access_policy` from Postfix. */
  get request(): string | undefined {
    return this.attributes.get('request');
  }
  /** CONNECT, EHLO, HELO, MAIL, RCPT, DATA, END-OF-MESSAGE, VRFY or ETRN. */
  get protocolState(): string | undefined {
    return this.attributes.get('protocol_state');
  }
  get sender(): string | undefined {
    return this.attributes.get('sender');
  }
  get recipient(): string | undefined {
    return this.attributes.get('recipient');
  }
  get clientAddress(): string | undefined {
    return this.attributes.get('client_address');
  }
  get queueId(): string | undefined {
    return this.attributes.get('queue_id');
  }
  /** The same for every request about one message on one connection. */
  get instance(): string | undefined {
    return this.attributes.get('instance');
  }
}

const NL = 0x0a;
const CR = 0x0d;

export class PolicyRequestDecoder {
  private buf: Buffer = Buffer.alloc(0);
  private attrs = new Map<string, string>();
  private requestBytes = 0;
  private finished = false;

  /** Bytes received and not yet part of a returned request. */
  get pendingBytes(): number {
    return this.buf.length + this.requestBytes;
  }

  feed(chunk: Uint8Array): void {
    if (this.finished) throw new Error('PolicyRequestDecoder: feed() after finish()');
    this.buf = this.buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buf, chunk]);
  }

  /** The next complete request, or null until more bytes arrive. Throws a DimeError on bad input. */
  next(): PolicyRequest | null {
    for (;;) {
      const nl = this.buf.indexOf(NL);
      if (nl < 0) {
        // +1: the line may still end in the \r that takeLine() drops.
        if (this.buf.length > MAX_POLICY_LINE + 1) throw new DimeError('POLICY_LINE_TOO_LONG', `more than ${MAX_POLICY_LINE} bytes without a newline`);
        this.checkRequestSize(this.buf.length);
        return null;
      }
      const line = this.buf.subarray(0, nl);
      this.buf = this.buf.subarray(nl + 1);
      const request = this.takeLine(line, nl + 1);
      if (request) return request;
    }
  }

  /** The peer half-closed: return what is left as a last request (or null), then accept no more. */
  finish(): PolicyRequest | null {
    if (this.finished) return null;
    this.finished = true;
    if (this.buf.length > 0) {
      const line = this.buf;
      this.buf = Buffer.alloc(0);
      if (line.length > MAX_POLICY_LINE) throw new DimeError('POLICY_LINE_TOO_LONG', `a line of ${line.length} bytes`);
      this.takeLine(line, line.length);
    }
    return this.attrs.size > 0 ? this.endRequest() : null;
  }

  private takeLine(raw: Buffer, consumed: number): PolicyRequest | null {
    const line = raw.length > 0 && raw[raw.length - 1] === CR ? raw.subarray(0, raw.length - 1) : raw;
    if (line.length > MAX_POLICY_LINE) throw new DimeError('POLICY_LINE_TOO_LONG', `a line of ${line.length} bytes`);
    this.checkRequestSize(consumed);
    this.requestBytes += consumed;
    if (line.length === 0) {
      if (this.attrs.size === 0) throw new DimeError('POLICY_BAD_ATTRIBUTE', 'an empty line before any attribute (empty request)');
      return this.endRequest();
    }
    const eq = line.indexOf(0x3d);
    if (eq <= 0) throw new DimeError('POLICY_BAD_ATTRIBUTE', eq === 0 ? 'empty attribute name' : 'no "=" in the line');
    if (line.includes(0)) throw new DimeError('POLICY_BAD_ATTRIBUTE', 'NUL byte in the line');
    const name = line.subarray(0, eq).toString('latin1');
    if (!ATTRIBUTE_NAME.test(name)) throw new DimeError('POLICY_BAD_ATTRIBUTE', `attribute name ${JSON.stringify(name)} has characters outside [A-Za-z0-9_.-]`);
    if (this.attrs.has(name)) throw new DimeError('POLICY_DUPLICATE_ATTRIBUTE', name);
    if (this.attrs.size >= MAX_POLICY_ATTRIBUTES) throw new DimeError('POLICY_TOO_MANY_ATTRIBUTES', `more than ${MAX_POLICY_ATTRIBUTES}`);
    // SMTPUTF8 addresses arrive as UTF-8; invalid sequences become U+FFFD rather than failing the
    // whole request (which Postfix would turn into its own default action for every retry).
    this.attrs.set(name, line.subarray(eq + 1).toString('utf8'));
    return null;
  }

  private checkRequestSize(more: number): void {
    if (this.requestBytes + more > MAX_POLICY_REQUEST) {
      throw new DimeError('POLICY_REQUEST_TOO_LARGE', `more than ${MAX_POLICY_REQUEST} bytes`);
    }
  }

  private endRequest(): PolicyRequest {
    const request = new PolicyRequest(this.attrs);
    this.attrs = new Map();
    this.requestBytes = 0;
    return request;
  }
}

/** Decode a whole byte string that holds only complete requests (tests, one-shot tools). */
export function decodePolicyRequests(bytes: Uint8Array): PolicyRequest[] {
  const d = new PolicyRequestDecoder();
  d.feed(bytes);
  const out: PolicyRequest[] = [];
  for (let r = d.next(); r; r = d.next()) out.push(r);
  if (d.pendingBytes > 0) throw new DimeError('POLICY_BAD_ATTRIBUTE', 'input ends inside a request');
  return out;
}

/** Encode a request as Postfix sends it (clients in tests, and the Exim documentation). */
export function encodePolicyRequest(attributes: Iterable<readonly [string, string]>): Buffer {
  let text = '';
  const seen = new Set<string>();
  for (const [name, value] of attributes) {
    if (!ATTRIBUTE_NAME.test(name)) throw new DimeError('POLICY_BAD_ATTRIBUTE', `attribute name ${JSON.stringify(name)}`);
    if (seen.has(name)) throw new DimeError('POLICY_DUPLICATE_ATTRIBUTE', name);
    if (/[\n\r\0]/.test(value)) throw new DimeError('POLICY_BAD_ATTRIBUTE', `value of ${name} contains a line break or NUL`);
    seen.add(name);
    text += `${name}=${value}\n`;
  }
  if (seen.size === 0) throw new DimeError('POLICY_BAD_ATTRIBUTE', 'a request needs at least one attribute');
  const out = Buffer.from(`${text}\n`, 'utf8');
  if (out.length > MAX_POLICY_REQUEST) throw new DimeError('POLICY_REQUEST_TOO_LARGE', `${out.length} bytes`);
  return out;
}

/** Parse a reply (`action=...\n\n`) as Postfix's client does: the text after `action=`. */
export function decodePolicyReply(bytes: Uint8Array): string {
  const text = Buffer.from(bytes).toString('latin1');
  const m = /^action=([^\n]*)\n\n$/.exec(text);
  if (!m) throw new DimeError('POLICY_BAD_ATTRIBUTE', `not a policy reply: ${JSON.stringify(text.slice(0, 80))}`);
  return m[1]!;
}
