/**
 * The server side of one DMTP connection: a state machine over the line codec, deciding nothing
 * itself about signets or messages (that is the handler's job, handler = DmtpHandler below).
 *
 *   connect ── 220 banner ──┬─ implicit TLS listener: secure from the first byte
 *                           └─ dual listener: only QUIT, MODE, STARTTLS (503 otherwise);
 *                              STARTTLS <host> MODE=DMTPv1 → 220 READY → handshake → 250 OK DMTPv1
 *   secure: SGNT, HIST, VRFY, MODE, NOOP, RSET, HELP, QUIT at any time (libdime's client sends SGNT
 *           right after the banner, without EHLO)
 *           EHLO → MAIL FROM <d> [fp] SIZE=n → RCPT TO <d> [fp] → DATA → exactly n octets → CRLF
 *
 * Rules that keep a hostile or broken peer cheap (docs/dmtp.md "Limits"):
 *  - a command line is refused once MAX_COMMAND_LINE octets hold no line end (500, connection closed);
 *  - the idle timer runs from each reply until the next complete command line, so a peer that
 *    trickles a byte at a time is cut off like a silent one (421);
 *  - the data has its own deadline, scaled by SIZE (421), and its buffer is reserved from a shared
 *    memory budget at MAIL FROM (452 when the relay already holds enough in flight);
 *  - protocol violations are answered after a short delay and counted; at the cut-off: 421, closed;
 *  - the handler answers within a deadline, else 451;
 *  - nothing reaches the handler's data() until all SIZE octets and the CRLF have arrived: a
 *    connection dropped mid-DATA delivers nothing, and the sender retries.
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import * as tls from 'node:tls';
import { base64Encode } from '../dime/base64.js';
import type { Signet } from '../dime/signet/index.js';
import { isDimeError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import {
  LineBuffer,
  MAX_COMMAND_LINE,
  formatReply,
  parseCommand,
  type DataOption,
  type DmtpCommand,
  type Reply,
  type ReturnOption,
  type VrfyResult,
} from './codec.js';
import { REPLIES, ehloReply, helpReply, render, replySpecFor, replySpecForError, type ReplySpec } from './replies.js';

export interface SessionLimits {
  /** Largest SIZE accepted at MAIL FROM (552 above it) and advertised in EHLO. */
  maxMessageSize: number;
  /** Protocol violations before the session is cut off with 421. */
  maxInvalidCommands: number;
  /** From a reply to the next complete command line. */
  idleMs: number;
  /** Base time for the whole DATA transfer; minDataRate adds time for larger messages. */
  dataTimeoutMs: number;
  /** Octets per second a sender must sustain during DATA (scales the data deadline). */
  minDataRate: number;
  /** TLS handshake after STARTTLS (the implicit listener applies the same through tls.Server). */
  handshakeMs: number;
  /** One handler call (signet lookup, origin verification, MTA hand-off), plus minDataRate for the data. */
  handlerMs: number;
  /** Pause before answering a protocol violation (slows down scanners; 0 in tests). */
  violationDelayMs: number;
}

/**
 * Defaults. 64 MiB admits a 50 MB attachment after DIME's padding and keyslots (DMIME itself allows
 * 256 MiB, which the relay would have to hold in memory). Five minutes idle and ten for the data
 * follow RFC 5321 §4.5.3.2; 32 KiB/s as the slowest acceptable sender gives a 64 MiB message
 * 34 minutes. Ten violations is Postfix's smtpd_hard_error_limit/2: a real client never makes them.
 */
export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  maxMessageSize: 64 * 1024 * 1024,
  maxInvalidCommands: 10,
  idleMs: 300_000,
  dataTimeoutMs: 600_000,
  minDataRate: 32 * 1024,
  handshakeMs: 30_000,
  handlerMs: 120_000,
  violationDelayMs: 250,
};

/** After the last reply, how long a closing connection may take to finish before it is destroyed. */
export const CLOSE_LINGER_MS = 5_000;

/**
 * Octets of message data all sessions of a server may hold at once, reserved at MAIL FROM. 256 MiB
 * is four maximal messages, or sixty 4 MiB ones, in flight; the reservation keeps resident memory
 * bounded whatever the number of connections.
 */
export const DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024;

export class MemoryBudget {
  private used = 0;
  constructor(readonly limit: number = DEFAULT_MEMORY_BUDGET) {}
  get inFlight(): number {
    return this.used;
  }
  reserve(n: number): boolean {
    if (this.used + n > this.limit) return false;
    this.used += n;
    return true;
  }
  release(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

export interface Transaction {
  /** Transaction id, also in `354 CONTINUE [id]` and `250 OK [id]`. */
  readonly id: string;
  readonly peer: string;
  /** The EHLO domain. */
  readonly ehlo: string;
  readonly from: { domain: string; fingerprint: string; size: number; ret?: ReturnOption; data?: DataOption };
  to?: { domain: string; fingerprint: string };
}

/** A handler's answer. A refusal without a code is an unexpected local failure (451). */
export type Result<T> = { ok: true; value: T } | { ok: false; code: ErrorCode | undefined; detail?: string };

export function ok<T>(value: T): Result<T> {
  return { ok: true, value };
}
export function refuse<T = never>(code: ErrorCode | undefined, detail?: string): Result<T> {
  return detail === undefined ? { ok: false, code } : { ok: false, code, detail };
}

export interface HandlerContext {
  /** Aborted when the handler's deadline passes or the connection goes away. */
  signal: AbortSignal;
  peer: string;
  log: Logger;
}

/** The decisions a DMTP server makes; every answer is a value (a throw is a 451). */
export interface DmtpHandler {
  /** SGNT: the current signet of a name, or with a fingerprint that version (SIGNET_NOT_FOUND otherwise). */
  signet(name: string, fingerprint: string | undefined, ctx: HandlerContext): Promise<Result<Signet>>;
  /** HIST: the versions from `start` to `stop` (inclusive; whole history when absent), oldest first. */
  history(name: string, start: string | undefined, stop: string | undefined, ctx: HandlerContext): Promise<Result<Signet[]>>;
  /** VRFY: is the version with this fingerprint the current one? */
  verify(name: string, fingerprint: string, ctx: HandlerContext): Promise<Result<VrfyResult>>;
  mailFrom(tx: Transaction, ctx: HandlerContext): Promise<Result<void>>;
  rcptTo(tx: Transaction, ctx: HandlerContext): Promise<Result<void>>;
  /** All SIZE octets arrived: accept (the message is safe with the local MTA) or refuse. */
  data(tx: Transaction, message: Uint8Array, ctx: HandlerContext): Promise<Result<void>>;
  /** The transaction ended before or after data(): drop any state kept for it. */
  end?(tx: Transaction): void;
}

export interface SessionOptions {
  /** Our host name: banner, EHLO/HELO replies. */
  hostname: string;
  handler: DmtpHandler;
  /** 'implicit': the socket is TLS already; 'dual': plaintext until STARTTLS. */
  mode: 'implicit' | 'dual';
  /** For STARTTLS on a dual-mode listener. */
  secureContext?: tls.SecureContext;
  limits: SessionLimits;
  budget: MemoryBudget;
  log: Logger;
}

interface DataState {
  buf: Buffer;
  got: number;
  timer: NodeJS.Timeout;
}

function newId(): string {
  return randomBytes(9).toString('base64url');
}

export class DmtpSession {
  readonly done: Promise<void>;
  private resolveDone!: () => void;
  private socket: Socket;
  private readonly input = new LineBuffer();
  private readonly abort = new AbortController();
  private readonly peer: string;
  private secure: boolean;
  /** A DMTP STARTTLS was accepted: SMTP fallback is refused with its own text. */
  private dmtpStarted = false;
  private ehlo: string | undefined;
  private tx: Transaction | undefined;
  private reserved = 0;
  private data: DataState | undefined;
  private busy = false;
  private closing = false;
  private stopping = false;
  private finished = false;
  /** The peer shut down its sending side: answer what is buffered, then close. */
  private eof = false;
  private violations = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly log: Logger;

  private readonly onData = (chunk: Buffer) => this.received(chunk);
  private readonly onEnd = () => this.peerEnded();
  private readonly onClose = () => this.finish();
  private readonly onError = (err: Error) => this.log.debug({ err: err.message }, 'connection error');

  constructor(
    socket: Socket,
    private readonly options: SessionOptions,
  ) {
    this.socket = socket;
    this.secure = options.mode === 'implicit';
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unknown';
    this.log = options.log.child({ peer: this.peer });
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    this.attach(socket);
    socket.setNoDelay(true);
    this.send(render(REPLIES.banner, { host: options.hostname }));
    this.armIdle();
  }

  /** Graceful stop: an idle session gets 421 now, a busy one after the exchange in progress. */
  close(): void {
    this.stopping = true;
    if (!this.busy && !this.data && !this.closing) this.send(render(replySpecFor('DMTP_SHUTTING_DOWN'), { host: this.options.hostname }), true);
  }

  destroy(): void {
    this.socket.destroy();
  }

  // ------------------------------------------------------------------------------ socket plumbing

  private attach(socket: Socket): void {
    this.socket = socket;
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onClose);
    socket.on('error', this.onError);
  }

  private detach(socket: Socket): void {
    socket.off('data', this.onData);
    socket.off('end', this.onEnd);
    socket.off('close', this.onClose);
    socket.off('error', this.onError);
  }

  private received(chunk: Buffer): void {
    if (this.closing) return;
    this.input.push(chunk);
    void this.pump();
  }

  private peerEnded(): void {
    this.eof = true;
    void this.pump();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.closing = true;
    this.clearIdle();
    if (this.data) {
      clearTimeout(this.data.timer);
      this.log.info({ event: 'dmtp.data.aborted', id: this.tx?.id, got: this.data.got, size: this.tx?.from.size }, 'connection closed during DATA; nothing delivered');
      this.data = undefined;
    }
    this.abort.abort();
    this.endTransaction();
    this.resolveDone();
  }

  private send(reply: Reply, close = false): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    let text: string;
    try {
      text = formatReply(reply);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'unsendable reply; sending the local-error reply instead');
      text = formatReply(render(replySpecFor(undefined)));
    }
    this.socket.write(text);
    if (close) {
      this.closing = true;
      this.clearIdle();
      this.socket.end();
      setTimeout(() => this.socket.destroy(), CLOSE_LINGER_MS).unref();
    }
  }

  private sendSpec(spec: ReplySpec, vars: Record<string, string | number> = {}): void {
    this.send(render(spec, { host: this.options.hostname, ...vars }), spec.close === true);
  }

  private armIdle(): void {
    this.clearIdle();
    if (this.closing) return;
    this.idleTimer = setTimeout(() => {
      this.log.info({ event: 'dmtp.idle_timeout' }, 'no complete command in time; closing');
      this.sendSpec(REPLIES.idleTimeout);
    }, this.options.limits.idleMs);
    // Session timers never keep the process alive by themselves: the sockets decide (DmtpServer.unref).
    this.idleTimer.unref();
  }

  private clearIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private waitDrain(): Promise<void> {
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  // ------------------------------------------------------------------------------ input loop

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (!this.closing) {
        if (this.data) {
          if (!(await this.feedData())) break;
          if (this.stopping && !this.closing) {
            this.sendSpec(replySpecFor('DMTP_SHUTTING_DOWN'));
            break;
          }
          continue;
        }
        let line: string | null;
        try {
          line = this.input.readLine(MAX_COMMAND_LINE);
        } catch (err) {
          await this.violation(err);
          break;
        }
        if (line === null) break;
        this.clearIdle();
        await this.command(line);
        await this.waitDrain();
        if (this.stopping && !this.data && !this.closing) {
          this.sendSpec(replySpecFor('DMTP_SHUTTING_DOWN'));
          break;
        }
        if (!this.data) this.armIdle();
      }
    } finally {
      this.busy = false;
    }
    if (this.eof && !this.closing) {
      // Nothing more can arrive: commands already buffered were answered; a partial line or
      // partial DATA is dropped (nothing is delivered).
      this.closing = true;
      this.clearIdle();
      this.socket.end();
    }
  }

  /** Run a handler call with the deadline, the connection's abort signal and the socket paused. */
  private async call<T>(fn: (ctx: HandlerContext) => Promise<Result<T>>, extraMs = 0): Promise<Result<T>> {
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    this.abort.signal.addEventListener('abort', onAbort);
    this.socket.pause();
    let timer: NodeJS.Timeout | undefined;
    try {
      const deadline = new Promise<Result<T>>((resolve) => {
        timer = setTimeout(() => {
          controller.abort();
          resolve(refuse('DEADLINE_EXCEEDED'));
        }, this.options.limits.handlerMs + extraMs);
        timer.unref();
      });
      return await Promise.race([fn({ signal: controller.signal, peer: this.peer, log: this.log }), deadline]);
    } catch (err) {
      if (!isDimeError(err)) this.log.error({ err: err instanceof Error ? (err.stack ?? err.message) : String(err) }, 'handler failed');
      return refuse(isDimeError(err) ? err.code : undefined, err instanceof Error ? err.message : String(err));
    } finally {
      clearTimeout(timer);
      this.abort.signal.removeEventListener('abort', onAbort);
      if (!this.closing) this.socket.resume();
    }
  }

  private async violation(err: unknown): Promise<void> {
    const spec = isDimeError(err) ? replySpecForError(err) : replySpecFor('DMTP_UNKNOWN_COMMAND');
    await this.protocolError(spec, isDimeError(err) ? err.message : undefined);
  }

  private async protocolError(spec: ReplySpec, detail?: string, vars: Record<string, string | number> = {}): Promise<void> {
    this.violations++;
    this.log.debug({ event: 'dmtp.violation', reply: spec.code, detail, violations: this.violations }, 'protocol violation');
    if (this.options.limits.violationDelayMs > 0) await new Promise((r) => setTimeout(r, this.options.limits.violationDelayMs));
    if (this.closing) return;
    if (!spec.close && this.violations >= this.options.limits.maxInvalidCommands) {
      this.log.info({ event: 'dmtp.cutoff', violations: this.violations }, 'too many invalid commands; closing');
      this.sendSpec(replySpecFor('DMTP_TOO_MANY_ERRORS'));
      return;
    }
    this.sendSpec(spec, vars);
  }

  private refused(result: { code: ErrorCode | undefined; detail?: string }, vars: Record<string, string | number> = {}): void {
    const spec = replySpecFor(result.code);
    this.log.info({ event: 'dmtp.refused', code: result.code, reply: spec.code, detail: result.detail, id: this.tx?.id }, 'refused');
    this.sendSpec(spec, vars);
  }

  // ------------------------------------------------------------------------------ commands

  private async command(line: string): Promise<void> {
    let cmd: DmtpCommand;
    try {
      cmd = parseCommand(line);
    } catch (err) {
      await this.violation(err);
      return;
    }
    if (!this.secure && !['QUIT', 'MODE', 'STARTTLS', 'SMTP'].includes(cmd.verb)) {
      await this.protocolError(replySpecFor('DMTP_TLS_REQUIRED'));
      return;
    }
    switch (cmd.verb) {
      case 'QUIT':
        this.sendSpec(REPLIES.bye);
        return;
      case 'MODE':
        this.sendSpec(REPLIES.mode);
        return;
      case 'NOOP':
        this.sendSpec(REPLIES.ok);
        return;
      case 'HELP':
        this.send(helpReply(cmd.topic));
        return;
      case 'VERB':
      case 'STATS':
        this.sendSpec(REPLIES.notImplemented);
        return;
      case 'RSET':
        this.endTransaction();
        this.sendSpec(REPLIES.ok);
        return;
      case 'SMTP':
        await this.protocolError(this.dmtpStarted ? REPLIES.noFallback : replySpecFor('DMTP_SMTP_FALLBACK'));
        return;
      case 'STARTTLS':
        if (this.secure) await this.protocolError(REPLIES.alreadySecure);
        else await this.startTls();
        return;
      case 'EHLO':
      case 'HELO':
        this.endTransaction();
        this.ehlo = cmd.domain;
        if (cmd.verb === 'EHLO') this.send(ehloReply(this.options.limits.maxMessageSize));
        else this.sendSpec(REPLIES.helo);
        return;
      case 'MAIL':
        return this.mail(cmd);
      case 'RCPT':
        return this.rcpt(cmd);
      case 'DATA':
        return this.startData();
      case 'SGNT': {
        const r = await this.call((ctx) => this.options.handler.signet(cmd.name, cmd.fingerprint, ctx));
        if (r.ok) this.sendSpec(REPLIES.signet, { signet: base64Encode(r.value.bytes) });
        else this.refused(r);
        return;
      }
      case 'HIST': {
        const r = await this.call((ctx) => this.options.handler.history(cmd.name, cmd.start, cmd.stop, ctx));
        if (!r.ok) {
          if (r.code === 'DMTP_BAD_SYNTAX') await this.protocolError(REPLIES.historyRange, r.detail);
          else this.refused(r);
          return;
        }
        const lines = r.value.map((s) => render(REPLIES.historyLine, { signet: base64Encode(s.bytes) }).lines[0]!);
        this.send({ code: REPLIES.historyLine.code, lines: [...lines, REPLIES.ok.text] });
        return;
      }
      case 'VRFY': {
        const r = await this.call((ctx) => this.options.handler.verify(cmd.name, cmd.fingerprint, ctx));
        if (!r.ok) this.refused(r);
        else if (r.value.current) this.sendSpec(REPLIES.vrfyCurrent);
        else this.sendSpec(REPLIES.vrfyUpdate, { fingerprint: r.value.fingerprint });
        return;
      }
    }
  }

  private async mail(cmd: Extract<DmtpCommand, { verb: 'MAIL' }>): Promise<void> {
    if (this.ehlo === undefined) return this.protocolError(REPLIES.needEhlo);
    this.endTransaction(); // a second MAIL FROM starts over
    const max = this.options.limits.maxMessageSize;
    if (cmd.size > max) {
      this.refused({ code: 'DMTP_SIZE_EXCEEDED', detail: `SIZE=${cmd.size}` }, { size: max });
      return;
    }
    if (!this.options.budget.reserve(cmd.size)) {
      this.refused({ code: 'DMTP_BUSY', detail: `${this.options.budget.inFlight} octets in flight` });
      return;
    }
    this.reserved = cmd.size;
    const from: Transaction['from'] = { domain: cmd.domain, fingerprint: cmd.fingerprint, size: cmd.size };
    if (cmd.ret !== undefined) from.ret = cmd.ret;
    if (cmd.data !== undefined) from.data = cmd.data;
    const tx: Transaction = { id: newId(), peer: this.peer, ehlo: this.ehlo, from };
    this.tx = tx;
    const r = await this.call((ctx) => this.options.handler.mailFrom(tx, ctx));
    if (this.tx !== tx) return; // the connection went away meanwhile
    if (r.ok) {
      this.sendSpec(REPLIES.ok);
      return;
    }
    this.endTransaction();
    this.refused(r);
  }

  private async rcpt(cmd: Extract<DmtpCommand, { verb: 'RCPT' }>): Promise<void> {
    if (this.ehlo === undefined) return this.protocolError(REPLIES.needEhlo);
    const tx = this.tx;
    if (!tx) return this.protocolError(REPLIES.needMail);
    if (tx.to) return this.protocolError(REPLIES.oneRecipient);
    const candidate: Transaction = { ...tx, to: { domain: cmd.domain, fingerprint: cmd.fingerprint } };
    const r = await this.call((ctx) => this.options.handler.rcptTo(candidate, ctx));
    if (this.tx !== tx) return;
    if (!r.ok) {
      this.refused(r);
      return;
    }
    tx.to = candidate.to;
    this.sendSpec(REPLIES.ok);
  }

  private async startData(): Promise<void> {
    if (this.ehlo === undefined) return this.protocolError(REPLIES.needEhlo);
    const tx = this.tx;
    if (!tx) return this.protocolError(REPLIES.needMail);
    if (!tx.to) return this.protocolError(REPLIES.needRcpt);
    const { limits } = this.options;
    const ms = limits.dataTimeoutMs + Math.ceil((tx.from.size * 1000) / limits.minDataRate);
    const timer = setTimeout(() => {
      this.log.info({ event: 'dmtp.data_timeout', id: tx.id, got: this.data?.got, size: tx.from.size }, 'DATA not complete in time; nothing delivered');
      this.data = undefined;
      this.endTransaction();
      this.sendSpec(REPLIES.dataTimeout);
    }, ms);
    timer.unref();
    this.data = { buf: Buffer.allocUnsafe(tx.from.size), got: 0, timer };
    this.sendSpec(REPLIES.dataContinue, { id: tx.id });
  }

  /**
   * Move buffered octets into the message. False while more are needed; true once the data and its
   * line end were consumed and answered.
   */
  private async feedData(): Promise<boolean> {
    const d = this.data!;
    const tx = this.tx!;
    while (d.got < d.buf.length) {
      const part = this.input.take(d.buf.length - d.got);
      if (!part) return false;
      part.copy(d.buf, d.got);
      d.got += part.length;
    }
    let end: string | null;
    try {
      end = this.input.readLine(MAX_COMMAND_LINE);
    } catch {
      end = 'overlong';
    }
    if (end === null) return false;
    clearTimeout(d.timer);
    this.data = undefined;
    if (end !== '') {
      this.log.info({ event: 'dmtp.size_mismatch', id: tx.id, size: tx.from.size }, 'data continued past SIZE octets; nothing delivered');
      this.endTransaction();
      this.sendSpec(replySpecFor('DMTP_SIZE_MISMATCH'));
      return true;
    }
    const extraMs = Math.ceil((tx.from.size * 1000) / this.options.limits.minDataRate);
    const r = await this.call((ctx) => this.options.handler.data(tx, d.buf, ctx), extraMs);
    if (this.closing) {
      this.endTransaction();
      return true;
    }
    if (r.ok) {
      this.log.info({ event: 'dmtp.accepted', id: tx.id, origin: tx.from.domain, size: tx.from.size }, 'message accepted');
      this.sendSpec(REPLIES.accepted, { id: tx.id });
    } else {
      this.refused(r);
    }
    this.endTransaction();
    this.armIdle();
    await this.waitDrain();
    return true;
  }

  private endTransaction(): void {
    if (this.reserved > 0) {
      this.options.budget.release(this.reserved);
      this.reserved = 0;
    }
    if (this.data) {
      clearTimeout(this.data.timer);
      this.data = undefined;
    }
    const tx = this.tx;
    this.tx = undefined;
    if (tx) this.options.handler.end?.(tx);
  }

  // ------------------------------------------------------------------------------ STARTTLS

  private startTls(): Promise<void> {
    if (!this.options.secureContext) {
      this.sendSpec(replySpecFor(undefined));
      return Promise.resolve();
    }
    if (this.input.buffered > 0) {
      // Bytes after STARTTLS would be read as if they came through TLS (the CVE-2011-0411 class).
      this.sendSpec(REPLIES.pipelinedStarttls);
      return Promise.resolve();
    }
    const raw = this.socket;
    const context = this.options.secureContext;
    return new Promise<void>((resolve) => {
      raw.write(formatReply(render(REPLIES.starttlsReady)), () => {
        if (raw.destroyed) return resolve();
        this.detach(raw);
        const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: context, requestCert: false });
        let settled = false;
        const fail = (why: string) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          this.log.info({ event: 'dmtp.starttls_failed', why }, 'STARTTLS handshake failed');
          this.closing = true;
          secure.destroy();
          raw.destroy();
          this.finish();
          resolve();
        };
        const timer = setTimeout(() => fail('handshake timed out'), this.options.limits.handshakeMs);
        timer.unref();
        secure.once('error', (err) => fail(err.message));
        secure.once('close', () => fail('closed during the handshake'));
        secure.once('secure', () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          secure.removeAllListeners('error');
          secure.removeAllListeners('close');
          this.secure = true;
          this.dmtpStarted = true;
          this.attach(secure);
          secure.setNoDelay(true);
          this.log.debug({ event: 'dmtp.starttls', protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'TLS established');
          this.sendSpec(REPLIES.starttlsDone);
          resolve();
        });
      });
    });
  }
}
