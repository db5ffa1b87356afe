/**
 * A small SMTP client (RFC 5321) for handing inbound DIME mail to the local MTA: one message per
 * connection, EHLO (HELO if refused), MAIL FROM, RCPT TO per recipient, DATA with dot-stuffing,
 * QUIT. Multi-line replies are read whole; every reply is checked before the next command.
 *
 * The result is a verdict value, never a throw for anything the MTA or the network does:
 * accepted (the MTA's 250 after the final dot), or refused with `temporary` telling 4xx and
 * network trouble (try again) from 5xx (give up). Only a bad argument throws.
 *
 * "250 after DATA" is the moment responsibility passes to the MTA. An abort before the final dot
 * drops the connection, so the MTA discards the partial message (RFC 5321 §4.1.1.4).
 */
import * as net from 'node:net';
import { DimeError } from '../errors.js';
import type { Reply } from './codec.js';
import { ReplyStream } from './reply-stream.js';

export type MtaTarget = { kind: 'inet'; host: string; port: number } | { kind: 'unix'; path: string };

/** `inet:HOST:PORT`, `inet:[v6]:PORT` or `unix:/path` (Postfix's syntax, as in the config file). */
export function parseMtaTarget(text: string): MtaTarget {
  if (text.startsWith('unix:')) {
    const p = text.slice(5);
    if (!p.startsWith('/') || p.includes('\0')) throw new DimeError('USAGE', `${JSON.stringify(text)}: unix: needs an absolute path`);
    return { kind: 'unix', path: p };
  }
  const m = /^inet:(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):([0-9]{1,5})$/.exec(text);
  if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) throw new DimeError('USAGE', `${JSON.stringify(text)} is not inet:HOST:PORT or unix:/PATH`);
  return { kind: 'inet', host: m[1] ?? m[2]!, port: Number(m[3]) };
}

export function formatMtaTarget(t: MtaTarget): string {
  return t.kind === 'unix' ? `unix:${t.path}` : net.isIPv6(t.host) ? `inet:[${t.host}]:${t.port}` : `inet:${t.host}:${t.port}`;
}

export interface SmtpTimeouts {
  connectMs: number;
  /** Each reply to a command (RFC 5321 §4.5.3.2: 5 minutes; a local MTA answers in milliseconds). */
  commandMs: number;
  /** The reply after the final dot (RFC 5321: 10 minutes: the MTA may be scanning the message). */
  dataEndMs: number;
}

export const DEFAULT_SMTP_TIMEOUTS: SmtpTimeouts = { connectMs: 30_000, commandMs: 300_000, dataEndMs: 600_000 };

/**
 * SMTP reply lines are at most 512 octets (RFC 5321 §4.5.3.1.5); 4 KiB tolerates verbose MTAs.
 * EHLO lists extensions, one per line: 100 lines is far beyond any real server.
 */
const SMTP_REPLY_LIMITS = { maxLine: 4096, maxLines: 100, maxBytes: 64 * 1024 };

export interface SmtpMessage {
  target: MtaTarget;
  /** Our name for EHLO. */
  helo: string;
  /** Reverse path; '' is the null sender `<>`. */
  from: string;
  to: string[];
  /** The message, CRLF line ends; chunks are dot-stuffed on the way. */
  body: Iterable<Uint8Array> | AsyncIterable<Uint8Array>;
  timeouts?: Partial<SmtpTimeouts>;
  signal?: AbortSignal;
  /**
   * SMTP AUTH PLAIN (RFC 4954) after EHLO, for submission. Sent only if EHLO advertises PLAIN;
   * otherwise the message is refused at stage 'auth' without sending the credentials. No TLS here:
   * use it over loopback or a unix socket only.
   */
  auth?: { user: string; password: string };
}

export type SmtpStage = 'connect' | 'greeting' | 'ehlo' | 'auth' | 'mail' | 'rcpt' | 'data' | 'message';

export type SmtpOutcome =
  | { accepted: true; reply: Reply }
  | { accepted: false; temporary: boolean; stage: SmtpStage; reply?: Reply; reason: string };

/** No CR, LF, NUL, blanks or angle brackets: nothing that could end the path or the line. */
const PATH = /^[\x21-\x3b\x3d\x3f-\x7e]*$/;

function checkPath(value: string, what: string, allowEmpty: boolean): void {
  if ((!allowEmpty && value.length === 0) || value.length > 320 || !PATH.test(value)) throw new DimeError('DMTP_BAD_ARGUMENT', `${what} ${JSON.stringify(value)} cannot be sent in an SMTP command`);
}

/** Text of a reply for logs and refusals, one line. */
export function smtpReplyText(reply: Reply): string {
  return `${reply.code} ${reply.lines.join(' / ')}`.slice(0, 300);
}

/** Whether an EHLO reply offers SASL PLAIN (`AUTH PLAIN LOGIN`, or the pre-RFC `AUTH=PLAIN`). */
function offersAuthPlain(ehlo: Reply): boolean {
  return ehlo.lines.some((l) => /^AUTH[ =]/i.test(l) && l.slice(5).trim().split(/\s+/).some((m) => m.toUpperCase() === 'PLAIN'));
}

/**
 * Dot-stuffing: a line that starts with `.` gets another one, so no line of the message reads as
 * the end-of-data mark. State carries across chunk boundaries.
 */
export class DotStuffer {
  private atLineStart = true;
  private last2 = '';

  *stuff(chunk: Uint8Array): Generator<Buffer> {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    if (buf.length === 0) return;
    let from = 0;
    let at = 0;
    while (at < buf.length) {
      if (this.atLineStart && buf[at] === 0x2e) {
        if (at > from) yield buf.subarray(from, at);
        yield Buffer.from('.');
        from = at;
      }
      const lf = buf.indexOf(0x0a, at);
      if (lf < 0) {
        this.atLineStart = false;
        break;
      }
      this.atLineStart = true;
      at = lf + 1;
    }
    if (from < buf.length) yield buf.subarray(from);
    this.last2 = (this.last2 + buf.subarray(Math.max(0, buf.length - 2)).toString('latin1')).slice(-2);
  }

  /** The end-of-data mark, with a CRLF first if the message did not end with one. */
  end(): Buffer {
    return Buffer.from(this.last2 === '\r\n' ? '.\r\n' : '\r\n.\r\n', 'latin1');
  }
}

function connect(target: MtaTarget, timeoutMs: number, signal?: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = target.kind === 'unix' ? net.connect(target.path) : net.connect({ host: target.host, port: target.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no connection within ${timeoutMs} ms`));
    }, timeoutMs);
    const onAbort = () => {
      socket.destroy();
      reject(new Error('aborted'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      reject(err);
    });
  });
}

/** Send one message. Never throws for MTA or network behaviour; see SmtpOutcome. */
export async function sendMail(message: SmtpMessage): Promise<SmtpOutcome> {
  checkPath(message.from, 'sender', true);
  if (message.to.length === 0) throw new DimeError('DMTP_BAD_ARGUMENT', 'at least one recipient');
  for (const r of message.to) checkPath(r, 'recipient', false);
  if (!/^[A-Za-z0-9.-]{1,253}$/.test(message.helo)) throw new DimeError('DMTP_BAD_ARGUMENT', `EHLO name ${JSON.stringify(message.helo)}`);
  // NUL separates PLAIN's fields. The error names the user only: the password is never echoed.
  if (message.auth && (message.auth.user === '' || /\0/.test(message.auth.user) || /\0/.test(message.auth.password))) {
    throw new DimeError('DMTP_BAD_ARGUMENT', `AUTH PLAIN user ${JSON.stringify(message.auth.user)}: empty user, or a NUL in the user or the password`);
  }
  const t = { ...DEFAULT_SMTP_TIMEOUTS, ...message.timeouts };
  const { signal } = message;
  if (signal?.aborted) return { accepted: false, temporary: true, stage: 'connect', reason: 'aborted before connecting' };

  let stage: SmtpStage = 'connect';
  let socket: net.Socket;
  try {
    socket = await connect(message.target, t.connectMs, signal);
  } catch (err) {
    return { accepted: false, temporary: true, stage, reason: `cannot connect to ${formatMtaTarget(message.target)}: ${(err as Error).message}` };
  }
  const conn = new ReplyStream(socket, SMTP_REPLY_LIMITS);
  let dotSent = false;
  const onAbort = () => {
    // Before the final dot the MTA discards a partial message; after it, the outcome is the MTA's.
    if (!dotSent) socket.destroy();
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  const refuse = (reply: Reply): SmtpOutcome => ({ accepted: false, temporary: reply.code < 500, stage, reply, reason: smtpReplyText(reply) });
  const expect = async (okCodes: (code: number) => boolean, timeoutMs = t.commandMs): Promise<Reply | SmtpOutcome> => {
    const reply = await conn.read(timeoutMs);
    return okCodes(reply.code) ? reply : refuse(reply);
  };
  const positive = (c: number) => c >= 200 && c < 300;
  const isOutcome = (r: Reply | SmtpOutcome): r is SmtpOutcome => 'accepted' in r;

  try {
    stage = 'greeting';
    let r = await expect((c) => c === 220);
    if (isOutcome(r)) return r;
    stage = 'ehlo';
    await conn.write(`EHLO ${message.helo}\r\n`);
    r = await expect(positive);
    if (isOutcome(r)) {
      if (r.reply && r.reply.code >= 500 && r.reply.code !== 554) {
        // An RFC 821 server: HELO instead.
        await conn.write(`HELO ${message.helo}\r\n`);
        r = await expect(positive);
        if (isOutcome(r)) return r;
      } else return r;
    }
    if (message.auth) {
      stage = 'auth';
      // A server that does not offer PLAIN (or answered HELO: no extensions) never sees the credentials.
      if (!offersAuthPlain(r)) return { accepted: false, temporary: false, stage, reason: 'the server does not offer AUTH PLAIN' };
      // Initial response (RFC 4954 §4): authzid empty, then user and password, NUL-separated.
      const token = Buffer.from(`\0${message.auth.user}\0${message.auth.password}`, 'utf8').toString('base64');
      await conn.write(`AUTH PLAIN ${token}\r\n`);
      r = await expect((c) => c === 235);
      if (isOutcome(r)) return r;
    }
    stage = 'mail';
    await conn.write(`MAIL FROM:<${message.from}>\r\n`);
    r = await expect(positive);
    if (isOutcome(r)) return r;
    stage = 'rcpt';
    for (const rcpt of message.to) {
      await conn.write(`RCPT TO:<${rcpt}>\r\n`);
      r = await expect(positive);
      if (isOutcome(r)) return r;
    }
    stage = 'data';
    await conn.write('DATA\r\n');
    r = await expect((c) => c === 354);
    if (isOutcome(r)) return r;
    stage = 'message';
    const stuffer = new DotStuffer();
    for await (const chunk of message.body) {
      if (signal?.aborted) return { accepted: false, temporary: true, stage, reason: 'aborted during the message; the MTA discards it' };
      for (const part of stuffer.stuff(chunk)) await conn.write(part);
    }
    if (signal?.aborted) return { accepted: false, temporary: true, stage, reason: 'aborted before the final dot; the MTA discards the message' };
    dotSent = true;
    await conn.write(stuffer.end());
    r = await expect(positive, t.dataEndMs);
    if (isOutcome(r)) return r;
    return { accepted: true, reply: r };
  } catch (err) {
    return { accepted: false, temporary: true, stage, reason: `${stage}: ${(err as Error).message}` };
  } finally {
    signal?.removeEventListener('abort', onAbort);
    // QUIT is a courtesy (after a 250 the message is the MTA's already); a broken connection just closes.
    if (!socket.writableEnded && !socket.destroyed) socket.end('QUIT\r\n');
    setTimeout(() => socket.destroy(), 5_000).unref();
  }
}
