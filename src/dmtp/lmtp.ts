/**
 * LMTP (RFC 2033), server side: how Postfix's `dmtp` transport (`dmtp unix - - n - - lmtp`,
 * reached through `content_filter = dmtp:inet:127.0.0.1:10026`) hands bundles to the relay
 * (docs/mail-flow.md). A line codec (commands, replies, dot-unstuffing), the per-connection state
 * machine, and the listener. What happens to a message is the handler's business (outbound.ts).
 *
 *   connect ── 220 greeting ── LHLO ── MAIL FROM:<s> [SIZE=n] [BODY=…] ── RCPT TO:<r> … ── DATA
 *           ── 354 ── data, dot-stuffed, ending CRLF.CRLF ── ONE reply PER ACCEPTED RCPT, in order
 *
 * Rules that keep a broken or hostile client cheap (LMTP has no authentication, so the listener
 * binds loopback or a unix socket unless told otherwise):
 *  - a command line is refused once MAX_LMTP_LINE octets hold no line end (500, connection closed);
 *  - the idle timer runs from each reply to the next complete command line, and during DATA from
 *    one received chunk to the next (421, closed);
 *  - message data is held in memory, reserved in slices from a budget shared by every session; a
 *    message above the size limit, or beyond the budget, is read to its end and discarded, and each
 *    recipient gets 552 or 452 (never a half-read connection, which Postfix would merely defer);
 *  - protocol violations are counted; at the cut-off: 421, closed;
 *  - the handler answers before a deadline kept below Postfix's lmtp_data_done_timeout;
 *  - a connection dropped mid-DATA hands nothing to the handler.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { DimeError, isDimeError, type ErrorCode } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { formatSocketSpec, isLoopback, listenOn, parseSocketSpec, type SocketSpec } from '../net/socket.js';
import { LineBuffer } from './codec.js';
import { MemoryBudget } from './session.js';
import { MAX_BUNDLE_BYTES, MAX_BUNDLE_PARTS } from '../gateway/bundle.js';

// ------------------------------------------------------------------------------------ limits

/**
 * Longest command line we buffer, CRLF included. RFC 5321 §4.5.3.1.4 gives 512 octets plus what
 * extensions add; Postfix sends a path of at most a few hundred octets with SIZE= and BODY=.
 * Postfix's own line_length_limit (2048) is the bound: nothing longer can come from it.
 */
export const MAX_LMTP_LINE = 2048;
/** A reply line, CRLF included (RFC 5321 §4.5.3.1.5). Longer reply text is cut to fit. */
export const MAX_LMTP_REPLY_LINE = 512;
/**
 * Longest path in MAIL FROM / RCPT TO. The bundle's X-DIME-Recipient holds at most 320 characters,
 * so a longer recipient could never match a part.
 */
export const MAX_LMTP_PATH = 320;
/** SIZE= digits: more than 15 cannot be a message size (MAX_SAFE_INTEGER has 16). */
const MAX_SIZE_DIGITS = 15;
/** Message data is reserved from the budget in slices of this size, so a small message reserves little. */
const BUDGET_SLICE = 1024 * 1024;
/**
 * A message over the limit is read to its end (so each recipient gets 552, which Postfix bounces,
 * rather than a dropped connection, which it would retry forever); beyond this multiple of the
 * limit the client is not a sane MTA and the connection is closed.
 */
const MAX_DISCARD_FACTOR = 2;
/** After the last reply, how long a closing connection may take to finish before it is destroyed. */
const CLOSE_LINGER_MS = 5_000;
/** The session's own backstop after the handler's deadline (the handler answers by the deadline itself). */
const HANDLER_BACKSTOP_MS = 5_000;

export interface LmtpLimits {
  /** Largest message accepted and advertised as SIZE. */
  maxMessageSize: number;
  /** RCPT TO per transaction (452 4.5.3 beyond). */
  maxRecipients: number;
  /** From a reply to the next complete command line. */
  idleMs: number;
  /** During DATA, from one received chunk to the next. */
  dataIdleMs: number;
  /** From the final dot to the per-recipient replies. */
  deliveryMs: number;
  /** Protocol violations before the session is cut off with 421. */
  maxInvalidCommands: number;
}

/**
 * Defaults. decodeBundle refuses a bundle above MAX_BUNDLE_BYTES, and a bundle has at most
 * MAX_BUNDLE_PARTS parts, so neither limit can refuse a bundle the milter could write. Five minutes
 * idle follows RFC 5321 §4.5.3.2.7. Postfix waits lmtp_data_done_timeout (600 s) for the replies
 * after the final dot; answering within 8 minutes leaves it margin, so a slow peer gets a clean 451
 * instead of a timed-out connection (which defers every recipient, delivered or not). Ten
 * violations: Postfix never makes one, so this only ends a confused or hostile client.
 */
export const DEFAULT_LMTP_LIMITS: LmtpLimits = {
  maxMessageSize: MAX_BUNDLE_BYTES,
  maxRecipients: MAX_BUNDLE_PARTS,
  idleMs: 300_000,
  dataIdleMs: 300_000,
  deliveryMs: 480_000,
  maxInvalidCommands: 10,
};

/**
 * Octets of message data all LMTP sessions may hold at once. Two maximal bundles, or a hundred
 * 2.5 MiB ones (Postfix's default_process_limit is 100 lmtp clients); beyond it a message is
 * refused with 452 and Postfix retries later. Decoding a bundle briefly adds ¾ of its size.
 */
export const DEFAULT_LMTP_MEMORY_BUDGET = 256 * 1024 * 1024;

// ------------------------------------------------------------------------------------ commands

export type BodyType = '7BIT' | '8BITMIME';

export type LmtpCommand =
  | { verb: 'LHLO'; host: string }
  | { verb: 'MAIL'; from: string; size?: number; body?: BodyType }
  | { verb: 'RCPT'; to: string }
  | { verb: 'DATA' }
  | { verb: 'RSET' }
  | { verb: 'NOOP' }
  | { verb: 'QUIT' }
  /** SMTP's greetings: LMTP replaced them with LHLO. */
  | { verb: 'HELO' | 'EHLO' }
  /** Known SMTP commands this server does not offer. */
  | { verb: 'UNSUPPORTED'; what: string };

const NOT_OFFERED = new Set(['VRFY', 'EXPN', 'HELP', 'STARTTLS', 'AUTH', 'BDAT', 'ETRN', 'TURN', 'ATRN', 'XCLIENT', 'XFORWARD', 'SEND', 'SOML', 'SAML']);
/** A path's characters: printable ASCII without blanks and angle brackets (no quoted local parts with spaces). */
const PATH_CHARS = /^[\x21-\x3b\x3d\x3f-\x7e]*$/;
/** An esmtp-param (RFC 5321 §4.1.2): keyword[=value], value without blanks, '=' or controls. */
const PARAM = /^([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?$/;

function syntax(verb: string, detail: string): DimeError {
  return new DimeError('LMTP_BAD_SYNTAX', `${verb}: ${detail}`);
}

/** `FROM:<path> params` / `TO:<path> params` → path and parameter words. */
function pathAndParams(verb: 'MAIL' | 'RCPT', keyword: 'FROM' | 'TO', rest: string): { path: string; params: string[] } {
  const m = new RegExp(`^${keyword}:[ \\t]*<([^<>]*)>(?:[ \\t]+(.*))?$`, 'i').exec(rest);
  if (!m) throw syntax(verb, `expected ${keyword}:<address>`);
  const path = m[1]!;
  if (path.length > MAX_LMTP_PATH) throw syntax(verb, `the address is longer than ${MAX_LMTP_PATH} characters`);
  if (!PATH_CHARS.test(path)) throw syntax(verb, 'the address holds blanks or angle brackets');
  const params = (m[2] ?? '').split(/[ \t]+/).filter((p) => p.length > 0);
  return { path, params };
}

function parseMail(rest: string): LmtpCommand {
  const { path, params } = pathAndParams('MAIL', 'FROM', rest);
  const out: { verb: 'MAIL'; from: string; size?: number; body?: BodyType } = { verb: 'MAIL', from: path };
  for (const p of params) {
    const m = PARAM.exec(p);
    if (!m) throw syntax('MAIL', `malformed parameter ${JSON.stringify(p.slice(0, 40))}`);
    const key = m[1]!.toUpperCase();
    const value = m[2];
    if (key === 'SIZE') {
      if (out.size !== undefined) throw syntax('MAIL', 'SIZE given twice');
      if (value === undefined || !new RegExp(`^[0-9]{1,${MAX_SIZE_DIGITS}}$`).test(value)) throw syntax('MAIL', 'SIZE must be a number of octets');
      out.size = Number(value);
    } else if (key === 'BODY') {
      if (out.body !== undefined) throw syntax('MAIL', 'BODY given twice');
      const v = value?.toUpperCase();
      if (v !== '7BIT' && v !== '8BITMIME') throw syntax('MAIL', 'BODY is 7BIT or 8BITMIME');
      out.body = v;
    } else {
      throw new DimeError('LMTP_BAD_PARAMETER', `MAIL FROM ${key.slice(0, 20)}`);
    }
  }
  return out;
}

function parseRcpt(rest: string): LmtpCommand {
  const { path, params } = pathAndParams('RCPT', 'TO', rest);
  if (path.length === 0) throw syntax('RCPT', 'the recipient cannot be empty');
  // We advertise no RCPT extension (no DSN): Postfix sends none.
  if (params.length > 0) throw new DimeError('LMTP_BAD_PARAMETER', `RCPT TO ${(PARAM.exec(params[0]!)?.[1] ?? params[0]!).slice(0, 20).toUpperCase()}`);
  return { verb: 'RCPT', to: path };
}

/**
 * Parse one command line (without its line end). LMTP_BAD_CHARACTER, LMTP_UNKNOWN_COMMAND,
 * LMTP_BAD_SYNTAX and LMTP_BAD_PARAMETER are the only errors.
 */
export function parseLmtpCommand(line: string): LmtpCommand {
  // No SMTPUTF8 is advertised: 8-bit octets in a command are an error, and so is any control.
  if (!/^[\x20-\x7e\t]*$/.test(line)) throw new DimeError('LMTP_BAD_CHARACTER', 'a control character, NUL or non-ASCII octet in the command');
  const m = /^([A-Za-z]{1,16})(?:[ \t]+(.*?))?[ \t]*$/.exec(line);
  if (!m) throw new DimeError('LMTP_UNKNOWN_COMMAND', line.length === 0 ? 'empty line' : 'no command verb');
  const verb = m[1]!.toUpperCase();
  const rest = m[2] ?? '';
  const bare = (v: 'DATA' | 'RSET' | 'QUIT'): LmtpCommand => {
    if (rest.length > 0) throw syntax(v, 'takes no arguments');
    return { verb: v };
  };
  switch (verb) {
    case 'LHLO':
      if (!/^[\x21-\x7e]{1,255}$/.test(rest)) throw syntax('LHLO', 'expected one host name or address literal');
      return { verb: 'LHLO', host: rest };
    case 'MAIL':
      return parseMail(rest);
    case 'RCPT':
      return parseRcpt(rest);
    case 'DATA':
    case 'RSET':
    case 'QUIT':
      return bare(verb);
    case 'NOOP':
      return { verb: 'NOOP' };
    case 'HELO':
    case 'EHLO':
      return { verb };
    default:
      if (NOT_OFFERED.has(verb)) return { verb: 'UNSUPPORTED', what: verb };
      throw new DimeError('LMTP_UNKNOWN_COMMAND', `${verb.slice(0, 16)} is not an LMTP command`);
  }
}

// ------------------------------------------------------------------------------------ replies

export interface LmtpReply {
  /** 200–599. */
  code: number;
  /** RFC 3463 enhanced status code, class matching `code` (none for the greeting). */
  status?: string;
  text: string;
}

const STATUS = /^([245])\.[0-9]{1,3}\.[0-9]{1,3}$/;

/** Printable ASCII only, so reply text can never end or add a line, whatever a peer or an error said. */
export function replySafe(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?');
}

/** One reply line with CRLF. Text is made printable and cut to MAX_LMTP_REPLY_LINE; a bad code or status throws LMTP_BAD_REPLY. */
export function formatLmtpReply(reply: LmtpReply): string {
  if (!Number.isInteger(reply.code) || reply.code < 200 || reply.code > 599) throw new DimeError('LMTP_BAD_REPLY', `reply code ${reply.code}`);
  let head = String(reply.code);
  if (reply.status !== undefined) {
    const m = STATUS.exec(reply.status);
    if (!m || m[1] !== head[0]) throw new DimeError('LMTP_BAD_REPLY', `status ${JSON.stringify(reply.status)} for reply code ${reply.code}`);
    head += ` ${reply.status}`;
  }
  const room = MAX_LMTP_REPLY_LINE - head.length - 3;
  let text = replySafe(reply.text);
  if (text.length > room) text = `${text.slice(0, room - 3)}...`;
  return `${head} ${text}\r\n`;
}

/** The LHLO answer: our name and the extensions (RFC 2033 §4.1: the same as EHLO's). */
export function formatLhloReply(hostname: string, maxMessageSize: number): string {
  return [`250-${replySafe(hostname)}`, '250-PIPELINING', '250-ENHANCEDSTATUSCODES', '250-8BITMIME', `250 SIZE ${maxMessageSize}`].map((l) => `${l}\r\n`).join('');
}

interface ReplySpec extends LmtpReply {
  /** The session ends after this reply. */
  close?: boolean;
  /** A protocol violation: counts towards the cut-off. */
  violation?: boolean;
}

/** Every reply the session itself sends ({host}, {size} filled in). */
export const LMTP_REPLIES = {
  greeting: { code: 220, text: '{host} LMTP dime-relay ready' },
  bye: { code: 221, status: '2.0.0', text: '{host} closing connection', close: true },
  ok: { code: 250, status: '2.0.0', text: 'OK' },
  sender: { code: 250, status: '2.1.0', text: 'sender OK' },
  recipient: { code: 250, status: '2.1.5', text: 'recipient OK' },
  data: { code: 354, text: 'end data with <CR><LF>.<CR><LF>' },
  needLhlo: { code: 503, status: '5.5.1', text: 'send LHLO first', violation: true },
  nestedMail: { code: 503, status: '5.5.1', text: 'MAIL FROM already given; RSET first', violation: true },
  needMail: { code: 503, status: '5.5.1', text: 'send MAIL FROM first', violation: true },
  needRcpt: { code: 503, status: '5.5.1', text: 'no valid recipients', violation: true },
  useLhlo: { code: 500, status: '5.5.1', text: 'this is LMTP (RFC 2033): use LHLO', violation: true },
  notImplemented: { code: 502, status: '5.5.1', text: 'command not implemented' },
  tooManyRecipients: { code: 452, status: '4.5.3', text: 'too many recipients' },
  sizeExceeded: { code: 552, status: '5.3.4', text: 'message size exceeds the limit of {size} octets' },
  busy: { code: 452, status: '4.3.1', text: 'insufficient system storage, try again later' },
  dataOverrun: { code: 552, status: '5.3.4', text: 'message far beyond the size limit; closing connection', close: true },
  idleTimeout: { code: 421, status: '4.4.2', text: '{host} idle timeout, closing connection', close: true },
  dataTimeout: { code: 421, status: '4.4.2', text: '{host} timeout during DATA, nothing delivered; closing connection', close: true },
  tooManyErrors: { code: 421, status: '4.7.0', text: '{host} too many invalid commands, closing connection', close: true },
  shuttingDown: { code: 421, status: '4.3.2', text: '{host} service shutting down, closing connection', close: true },
  localError: { code: 451, status: '4.3.0', text: 'local error in processing, try again later' },
  deliveryTimeout: { code: 451, status: '4.4.7', text: 'delivery did not finish in time, try again later' },
} as const satisfies Record<string, ReplySpec>;

/** What a codec error becomes on the wire. */
export const LMTP_ERROR_REPLIES: Partial<Record<ErrorCode, ReplySpec>> = {
  LMTP_LINE_TOO_LONG: { code: 500, status: '5.5.2', text: 'line too long', close: true, violation: true },
  LMTP_BAD_CHARACTER: { code: 501, status: '5.5.2', text: 'invalid characters in command', violation: true },
  LMTP_UNKNOWN_COMMAND: { code: 500, status: '5.5.2', text: 'command not recognized', violation: true },
  LMTP_BAD_SYNTAX: { code: 501, status: '5.5.4', text: 'syntax error in parameters or arguments', violation: true },
  LMTP_BAD_PARAMETER: { code: 555, status: '5.5.4', text: 'MAIL FROM/RCPT TO parameter not recognized or not implemented', violation: true },
};

function render(spec: ReplySpec, vars: Record<string, string | number>): LmtpReply {
  const text = spec.text.replace(/\{(\w+)\}/g, (_, k: string) => String(vars[k] ?? ''));
  return spec.status === undefined ? { code: spec.code, text } : { code: spec.code, status: spec.status, text };
}

/** A recipient's reply with `<rcpt>` in front, as LMTP servers write them (Postfix logs it with the recipient). */
function forRecipient(spec: ReplySpec, rcpt: string, vars: Record<string, string | number>): LmtpReply {
  const r = render(spec, vars);
  return { ...r, text: `<${rcpt}> ${r.text}` };
}

// ------------------------------------------------------------------------------------ data

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const CR_BYTE = Buffer.from([CR]);

/**
 * The DATA stream: removes dot-stuffing (RFC 5321 §4.5.2) and finds the end mark `.CRLF` at the
 * start of a line. CRLF is kept as sent; a bare LF also ends a line (liberal: Postfix sends CRLF).
 * State carries across chunks, so a mark split over two reads is still found.
 */
export class DotDecoder {
  private atLineStart = true;
  /** 1: a '.' began the line; 2: '.' then CR began it. */
  private dot: 0 | 1 | 2 = 0;
  private ended = false;

  get done(): boolean {
    return this.ended;
  }

  /**
   * Feed received octets; `emit` gets the message octets (views into `chunk`, unstuffed). Returns
   * how many octets were used: all of them, or up to and including the end mark.
   */
  push(chunk: Uint8Array, emit: (data: Buffer) => void): { consumed: number; done: boolean } {
    if (this.ended) return { consumed: 0, done: true };
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    const n = buf.length;
    let i = 0;
    while (i < n) {
      if (this.dot === 1) {
        if (buf[i] === LF) return this.end(i + 1);
        if (buf[i] === CR) {
          this.dot = 2;
          i++;
          continue;
        }
        // A stuffed dot: dropped; the rest of the line is data (a second '.' included).
        this.dot = 0;
        this.atLineStart = false;
      } else if (this.dot === 2) {
        if (buf[i] === LF) return this.end(i + 1);
        // '.', CR, then something else: the dot was stuffing, the CR is data.
        emit(CR_BYTE);
        this.dot = 0;
        this.atLineStart = false;
      } else if (this.atLineStart) {
        if (buf[i] === DOT) {
          this.dot = 1;
          i++;
          continue;
        }
        this.atLineStart = false;
      }
      const lf = buf.indexOf(LF, i);
      if (lf < 0) {
        emit(buf.subarray(i));
        i = n;
        break;
      }
      emit(buf.subarray(i, lf + 1));
      i = lf + 1;
      this.atLineStart = true;
    }
    return { consumed: n, done: false };
  }

  private end(consumed: number): { consumed: number; done: boolean } {
    this.ended = true;
    this.dot = 0;
    return { consumed, done: true };
  }
}

// ------------------------------------------------------------------------------------ session

export interface LmtpTransaction {
  /** Our id for logs. */
  readonly id: string;
  readonly peer: string;
  /** The LHLO name. */
  readonly lhlo: string;
  /** Reverse path ('' for the null sender). */
  readonly from: string;
  readonly size?: number;
  readonly body?: BodyType;
  /** Accepted recipients, in RCPT order; data() answers each, in this order. */
  readonly recipients: readonly string[];
}

export interface LmtpContext {
  /** Aborted when the connection goes away (the replies can no longer be delivered). */
  signal: AbortSignal;
  /** Date.now() by which the replies must be ready; after it the session answers 451 itself. */
  deadline: number;
  peer: string;
  log: Logger;
}

/** The decisions behind an LMTP server: the final dot arrived, answer each recipient. */
export interface LmtpHandler {
  /** One reply per entry of tx.recipients, in order. A throw, or a missing reply, is a 451. */
  data(tx: LmtpTransaction, message: Buffer, ctx: LmtpContext): Promise<LmtpReply[]>;
}

export interface LmtpSessionOptions {
  hostname: string;
  handler: LmtpHandler;
  limits: LmtpLimits;
  budget: MemoryBudget;
  log: Logger;
}

interface MutableTransaction {
  id: string;
  from: string;
  size?: number;
  body?: BodyType;
  recipients: string[];
}

interface DataState {
  decoder: DotDecoder;
  chunks: Buffer[];
  size: number;
  reserved: number;
  /** Set when the message can no longer be kept: it is read to its end and discarded. */
  overflow?: 'size' | 'busy';
  discarded: number;
}

function newId(): string {
  return randomBytes(9).toString('base64url');
}

export class LmtpSession {
  readonly done: Promise<void>;
  private resolveDone!: () => void;
  private readonly input = new LineBuffer();
  private readonly abort = new AbortController();
  private readonly peer: string;
  private readonly log: Logger;
  private lhlo: string | undefined;
  private tx: MutableTransaction | undefined;
  private data: DataState | undefined;
  private busy = false;
  private closing = false;
  private stopping = false;
  private finished = false;
  private eof = false;
  private violations = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly socket: net.Socket,
    private readonly options: LmtpSessionOptions,
  ) {
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    this.log = options.log.child({ peer: this.peer });
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    socket.on('data', (chunk: Buffer) => this.received(chunk));
    socket.on('end', () => {
      this.eof = true;
      void this.pump();
    });
    socket.on('close', () => this.finish());
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'connection error'));
    socket.setNoDelay?.(true);
    this.sendSpec(LMTP_REPLIES.greeting);
    this.armTimer(options.limits.idleMs, () => this.timedOut('idle'));
  }

  /** Graceful stop: an idle session gets 421 now, a busy one after the exchange in progress. */
  close(): void {
    this.stopping = true;
    if (!this.busy && !this.data && !this.closing) this.sendSpec(LMTP_REPLIES.shuttingDown);
  }

  destroy(): void {
    this.socket.destroy();
  }

  // ------------------------------------------------------------------------------ plumbing

  private received(chunk: Buffer): void {
    if (this.closing) return;
    this.input.push(chunk);
    if (this.data) this.armTimer(this.options.limits.dataIdleMs, () => this.timedOut('data'));
    void this.pump();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.closing = true;
    this.clearTimer();
    if (this.data) this.log.info({ event: 'lmtp.data.aborted', id: this.tx?.id, got: this.data.size + this.data.discarded }, 'connection closed during DATA; nothing delivered');
    this.abort.abort();
    this.endTransaction();
    this.resolveDone();
  }

  private write(text: string, close: boolean): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    this.socket.write(text);
    if (close) {
      this.closing = true;
      this.clearTimer();
      this.socket.end();
      setTimeout(() => this.socket.destroy(), CLOSE_LINGER_MS).unref();
    }
  }

  private format(reply: LmtpReply): string {
    try {
      return formatLmtpReply(reply);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'unsendable reply; sending the local-error reply instead');
      return formatLmtpReply(LMTP_REPLIES.localError);
    }
  }

  private sendSpec(spec: ReplySpec, vars: Record<string, string | number> = {}): void {
    this.write(this.format(render(spec, { host: this.options.hostname, size: this.options.limits.maxMessageSize, ...vars })), spec.close === true);
  }

  private armTimer(ms: number, fire: () => void): void {
    this.clearTimer();
    if (this.closing) return;
    this.timer = setTimeout(fire, ms);
    // Session timers never keep the process alive by themselves: the sockets decide.
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private timedOut(what: 'idle' | 'data'): void {
    if (this.closing) return;
    if (what === 'data') {
      if (!this.data) return;
      this.log.info({ event: 'lmtp.data_timeout', id: this.tx?.id, got: this.data ? this.data.size + this.data.discarded : 0 }, 'no data in time; nothing delivered');
      this.endTransaction();
      this.sendSpec(LMTP_REPLIES.dataTimeout);
    } else {
      this.log.info({ event: 'lmtp.idle_timeout' }, 'no complete command in time; closing');
      this.sendSpec(LMTP_REPLIES.idleTimeout);
    }
  }

  /** Wait until our replies drained; meanwhile read nothing more, so a client that never reads cannot make us buffer. */
  private async waitDrain(): Promise<void> {
    if (!this.socket.writableNeedDrain) return;
    this.socket.pause();
    await new Promise<void>((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
    if (!this.closing) this.socket.resume();
  }

  // ------------------------------------------------------------------------------ input loop

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (!this.closing) {
        if (this.data) {
          if (this.input.buffered === 0) break;
          const chunk = this.input.take(this.input.buffered)!;
          const r = this.data.decoder.push(chunk, (b) => this.store(b));
          if (!r.done) {
            if (this.data.overflow && this.data.discarded > MAX_DISCARD_FACTOR * this.options.limits.maxMessageSize) {
              // A client that keeps sending far past the limit: stop reading (Postfix never does this).
              this.log.info({ event: 'lmtp.data_overrun', id: this.tx?.id, discarded: this.data.discarded }, 'data far beyond the size limit; closing');
              this.endTransaction();
              this.sendSpec(LMTP_REPLIES.dataOverrun);
            }
            continue;
          }
          // Whatever followed the end mark is the next command (pipelined): put it back.
          if (r.consumed < chunk.length) this.input.push(chunk.subarray(r.consumed));
          this.clearTimer(); // the delivery has its own deadline; no idle timer runs meanwhile
          await this.endOfData();
          await this.waitDrain();
          if (this.stopping && !this.closing) {
            this.sendSpec(LMTP_REPLIES.shuttingDown);
            break;
          }
          if (!this.closing) this.armTimer(this.options.limits.idleMs, () => this.timedOut('idle'));
          continue;
        }
        let line: string | null;
        try {
          line = this.input.readLine(MAX_LMTP_LINE);
        } catch {
          this.log.info({ event: 'lmtp.line_too_long' }, `no line end within ${MAX_LMTP_LINE} octets; closing`);
          this.violation(LMTP_ERROR_REPLIES.LMTP_LINE_TOO_LONG!);
          break;
        }
        if (line === null) break;
        this.clearTimer();
        this.command(line);
        await this.waitDrain();
        if (this.stopping && !this.data && !this.closing) {
          this.sendSpec(LMTP_REPLIES.shuttingDown);
          break;
        }
        if (this.closing) break;
        if (this.data) this.armTimer(this.options.limits.dataIdleMs, () => this.timedOut('data'));
        else this.armTimer(this.options.limits.idleMs, () => this.timedOut('idle'));
      }
    } finally {
      this.busy = false;
    }
    if (this.eof && !this.closing) {
      // Nothing more can arrive: buffered commands were answered; partial lines or data are dropped.
      if (this.data) this.log.info({ event: 'lmtp.data.aborted', id: this.tx?.id, got: this.data.size + this.data.discarded }, 'client ended during DATA; nothing delivered');
      this.closing = true;
      this.clearTimer();
      this.endTransaction();
      this.socket.end();
    }
  }

  private violation(spec: ReplySpec, detail?: string): void {
    this.violations++;
    this.log.debug({ event: 'lmtp.violation', reply: spec.code, detail, violations: this.violations }, 'protocol violation');
    if (!spec.close && this.violations >= this.options.limits.maxInvalidCommands) {
      this.log.info({ event: 'lmtp.cutoff', violations: this.violations }, 'too many invalid commands; closing');
      this.sendSpec(LMTP_REPLIES.tooManyErrors);
      return;
    }
    this.sendSpec(spec);
  }

  private command(line: string): void {
    let cmd: LmtpCommand;
    try {
      cmd = parseLmtpCommand(line);
    } catch (err) {
      const spec = (isDimeError(err) && LMTP_ERROR_REPLIES[err.code]) || LMTP_ERROR_REPLIES.LMTP_UNKNOWN_COMMAND!;
      this.violation(spec, (err as Error).message);
      return;
    }
    const limits = this.options.limits;
    switch (cmd.verb) {
      case 'QUIT':
        this.sendSpec(LMTP_REPLIES.bye);
        return;
      case 'NOOP':
        this.sendSpec(LMTP_REPLIES.ok);
        return;
      case 'RSET':
        this.endTransaction();
        this.sendSpec(LMTP_REPLIES.ok);
        return;
      case 'LHLO':
        this.endTransaction();
        this.lhlo = cmd.host;
        this.write(formatLhloReply(this.options.hostname, limits.maxMessageSize), false);
        return;
      case 'HELO':
      case 'EHLO':
        this.violation(LMTP_REPLIES.useLhlo);
        return;
      case 'UNSUPPORTED':
        this.sendSpec(LMTP_REPLIES.notImplemented);
        return;
      case 'MAIL': {
        if (this.lhlo === undefined) return this.violation(LMTP_REPLIES.needLhlo);
        if (this.tx) return this.violation(LMTP_REPLIES.nestedMail);
        if (cmd.size !== undefined && cmd.size > limits.maxMessageSize) {
          this.log.info({ event: 'lmtp.refused', reason: 'size', size: cmd.size }, 'MAIL FROM SIZE above the limit');
          this.sendSpec(LMTP_REPLIES.sizeExceeded);
          return;
        }
        const tx: MutableTransaction = { id: newId(), from: cmd.from, recipients: [] };
        if (cmd.size !== undefined) tx.size = cmd.size;
        if (cmd.body !== undefined) tx.body = cmd.body;
        this.tx = tx;
        this.sendSpec(LMTP_REPLIES.sender);
        return;
      }
      case 'RCPT': {
        if (!this.tx) return this.violation(LMTP_REPLIES.needMail);
        if (this.tx.recipients.length >= limits.maxRecipients) {
          this.sendSpec(LMTP_REPLIES.tooManyRecipients);
          return;
        }
        this.tx.recipients.push(cmd.to);
        this.sendSpec(LMTP_REPLIES.recipient);
        return;
      }
      case 'DATA':
        if (!this.tx) return this.violation(LMTP_REPLIES.needMail);
        // RFC 2033 §4.2: without a successful RCPT TO, DATA fails with 503.
        if (this.tx.recipients.length === 0) return this.violation(LMTP_REPLIES.needRcpt);
        this.data = { decoder: new DotDecoder(), chunks: [], size: 0, reserved: 0, discarded: 0 };
        this.sendSpec(LMTP_REPLIES.data);
        return;
    }
  }

  /** Keep message octets, reserving memory in slices; past the size limit or the budget, discard. */
  private store(b: Buffer): void {
    const d = this.data!;
    if (d.overflow) {
      d.discarded += b.length;
      return;
    }
    const need = d.size + b.length;
    const max = this.options.limits.maxMessageSize;
    let overflow: DataState['overflow'];
    if (need > max) overflow = 'size';
    else if (need > d.reserved) {
      const want = Math.min(max, Math.ceil(need / BUDGET_SLICE) * BUDGET_SLICE);
      if (this.options.budget.reserve(want - d.reserved)) d.reserved = want;
      else overflow = 'busy';
    }
    if (overflow) {
      d.overflow = overflow;
      d.discarded = need;
      d.chunks = [];
      d.size = 0;
      this.releaseData();
      return;
    }
    d.chunks.push(b);
    d.size = need;
  }

  private releaseData(): void {
    const d = this.data;
    if (d && d.reserved > 0) {
      this.options.budget.release(d.reserved);
      d.reserved = 0;
    }
  }

  private async endOfData(): Promise<void> {
    const d = this.data!;
    const tx = this.tx!;
    // Out of DATA from here: the reservation is released below, once the handler let go of the message.
    this.data = undefined;
    try {
      await this.answer(d, tx);
    } finally {
      if (d.reserved > 0) this.options.budget.release(d.reserved);
      d.reserved = 0;
    }
  }

  private async answer(d: DataState, tx: MutableTransaction): Promise<void> {
    const rcpts = [...tx.recipients];
    const vars = { host: this.options.hostname, size: this.options.limits.maxMessageSize };
    if (d.overflow) {
      this.log.info({ event: 'lmtp.refused', id: tx.id, reason: d.overflow, octets: d.discarded, inFlight: this.options.budget.inFlight }, d.overflow === 'size' ? 'message above the size limit' : 'memory budget exhausted');
      const spec = d.overflow === 'size' ? LMTP_REPLIES.sizeExceeded : LMTP_REPLIES.busy;
      this.write(rcpts.map((r) => this.format(forRecipient(spec, r, vars))).join(''), false);
      this.endTransaction();
      return;
    }
    const message = Buffer.concat(d.chunks, d.size);
    d.chunks = [];
    const view: LmtpTransaction = {
      id: tx.id,
      peer: this.peer,
      lhlo: this.lhlo ?? '',
      from: tx.from,
      recipients: rcpts,
      ...(tx.size !== undefined ? { size: tx.size } : {}),
      ...(tx.body !== undefined ? { body: tx.body } : {}),
    };
    this.log.debug({ event: 'lmtp.message', id: tx.id, size: message.length, recipients: rcpts.length }, 'message received');
    const replies = await this.call(view, message);
    if (this.closing) {
      this.log.info({ event: 'lmtp.replies_lost', id: tx.id }, 'the connection closed before the replies could be sent; Postfix will retry every recipient');
    } else {
      this.write(rcpts.map((r, i) => this.format(replies[i] ?? forRecipient(LMTP_REPLIES.localError, r, vars))).join(''), false);
    }
    this.endTransaction();
  }

  /** The handler, with the connection's abort signal, a deadline, and the socket paused meanwhile. */
  private async call(tx: LmtpTransaction, message: Buffer): Promise<LmtpReply[]> {
    const vars = { host: this.options.hostname, size: this.options.limits.maxMessageSize };
    const deadline = Date.now() + this.options.limits.deliveryMs;
    this.socket.pause();
    let timer: NodeJS.Timeout | undefined;
    try {
      const backstop = new Promise<null>((resolve) => {
        timer = setTimeout(() => resolve(null), this.options.limits.deliveryMs + HANDLER_BACKSTOP_MS);
        timer.unref();
      });
      const ctx: LmtpContext = { signal: this.abort.signal, deadline, peer: this.peer, log: this.log };
      const r = await Promise.race([this.options.handler.data(tx, message, ctx), backstop]);
      if (r === null) {
        this.log.error({ event: 'lmtp.handler_timeout', id: tx.id }, 'the handler missed its deadline');
        return tx.recipients.map((rcpt) => forRecipient(LMTP_REPLIES.deliveryTimeout, rcpt, vars));
      }
      if (r.length !== tx.recipients.length) this.log.error({ event: 'lmtp.handler_replies', id: tx.id, got: r.length, want: tx.recipients.length }, 'the handler answered a different number of recipients');
      return r;
    } catch (err) {
      this.log.error({ event: 'lmtp.handler_failed', id: tx.id, err: err instanceof Error ? (err.stack ?? err.message) : String(err) }, 'handler failed');
      return tx.recipients.map((rcpt) => forRecipient(LMTP_REPLIES.localError, rcpt, vars));
    } finally {
      clearTimeout(timer);
      if (!this.closing) this.socket.resume();
    }
  }

  private endTransaction(): void {
    this.releaseData();
    this.data = undefined;
    this.tx = undefined;
  }
}

// ------------------------------------------------------------------------------------ listener

/** Concurrent connections: Postfix's default_process_limit (100) lmtp clients, with room to spare. */
export const MAX_LMTP_CONNECTIONS = 500;
/** On close(), sessions in the middle of an exchange get this long before they are cut. */
export const LMTP_CLOSE_GRACE_MS = 10_000;

export interface LmtpServerOptions {
  /** `inet:HOST:PORT` or `unix:/PATH` (Postfix's syntax); port 0 picks a free port. */
  listen: string | SocketSpec;
  /** Our host name for the greeting and LHLO. */
  hostname: string;
  handler: LmtpHandler;
  /**
   * LMTP has no authentication: anyone who can connect can make the relay send. Without this, an
   * inet address other than loopback is refused (LMTP_NOT_LOOPBACK).
   */
  allowNonLoopback?: boolean;
  limits?: Partial<LmtpLimits>;
  /** Octets of message data all sessions may hold at once (DEFAULT_LMTP_MEMORY_BUDGET). */
  memoryBudget?: number;
  maxConnections?: number;
  /** Mode of a unix socket; Postfix's lmtp client (user postfix) must be able to write it. Default 0o660. */
  unixSocketMode?: number;
  log?: Logger;
}

export interface LmtpServer {
  readonly endpoint: SocketSpec;
  /** `inet:127.0.0.1:10026` form: `content_filter = dmtp:<address>`. */
  readonly address: string;
  readonly connections: number;
  readonly budget: MemoryBudget;
  /** Stop accepting; idle sessions get 421 now, busy ones after their exchange (bounded by graceMs). */
  close(graceMs?: number): Promise<void>;
}

export async function startLmtpServer(options: LmtpServerOptions): Promise<LmtpServer> {
  const spec = typeof options.listen === 'string' ? parseSocketSpec(options.listen) : options.listen;
  if (!options.allowNonLoopback && !isLoopback(spec)) {
    throw new DimeError('LMTP_NOT_LOOPBACK', `${formatSocketSpec(spec)}: listen on 127.0.0.1, ::1 or a unix socket (or allow a non-loopback address explicitly)`);
  }
  const limits: LmtpLimits = { ...DEFAULT_LMTP_LIMITS, ...options.limits };
  const log = (options.log ?? createLogger({ name: 'dime-relay' })).child({ service: 'lmtp' });
  const budget = new MemoryBudget(options.memoryBudget ?? DEFAULT_LMTP_MEMORY_BUDGET);
  const sessions = new Set<LmtpSession>();
  let closing: Promise<void> | undefined;
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    if (closing) {
      socket.destroy();
      return;
    }
    const session = new LmtpSession(socket, { hostname: options.hostname, handler: options.handler, limits, budget, log });
    sessions.add(session);
    void session.done.then(() => sessions.delete(session));
  });
  server.maxConnections = options.maxConnections ?? MAX_LMTP_CONNECTIONS;
  server.on('error', (err) => log.error({ err: err.message }, 'LMTP listener error'));
  const bound = await listenOn(server, spec, { unixMode: options.unixSocketMode ?? 0o660 });
  const address = formatSocketSpec(bound.spec);
  log.info({ event: 'lmtp.listen', address }, 'LMTP listening');
  return {
    endpoint: bound.spec,
    address,
    budget,
    get connections() {
      return sessions.size;
    },
    close(graceMs = LMTP_CLOSE_GRACE_MS) {
      closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const s of sessions) s.close();
        const timer = setTimeout(() => {
          for (const s of sessions) s.destroy();
        }, graceMs);
        await Promise.all([...sessions].map((s) => s.done));
        clearTimeout(timer);
        await stopped;
        await bound.release();
        log.info({ event: 'lmtp.stop', address }, 'LMTP stopped');
      })();
      return closing;
    },
  };
}
