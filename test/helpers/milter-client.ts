/**
 * A milter client that speaks the MTA side the way Postfix does (shared/spec/milter-and-postfix.md
 * §1.1): OPTNEG offering v6, actions 0x1FF and protocol 0x1FFFFF; a MACRO packet before each event;
 * no event whose SMFIP_NO* flag was negotiated; no wait for a reply whose NR_* flag was negotiated;
 * SMFIR_PROGRESS counted and skipped while waiting; after the end-of-message reply, two ABORTs.
 */
import * as net from 'node:net';
import {
  decodeResponse,
  encodeCommand,
  encodeFrame,
  FrameReader,
  SMFIP,
  type CommandCode,
  type ConnectFamily,
  type MilterCommand,
  type MilterResponse,
  type OptnegResponse,
} from '../../src/milter/codec.js';

export const POSTFIX_OFFER = { version: 6, actions: 0x1ff, protocol: 0x1fffff } as const;

/** Responses that end an event (everything but modifications and progress). */
const FINAL = new Set(['continue', 'accept', 'reject', 'tempfail', 'discard', 'replycode', 'shutdown', 'connfail', 'skip']);

export type EventReply = MilterResponse | 'skipped' | 'no-reply';

export interface EomReply {
  final: MilterResponse;
  modifications: MilterResponse[];
  progress: number;
}

export interface TestMessage {
  from: string;
  rcpts: string[];
  headers: Array<[string, string]>;
  body: Uint8Array | string;
  /** Split the body into BODY packets of this size (Postfix: 65535). */
  chunkSize?: number;
  queueId?: string;
}

export class MilterClient {
  readonly socket: net.Socket;
  /** What the milter answered to OPTNEG. */
  negotiated: OptnegResponse | undefined;
  /** SMFIR_PROGRESS packets seen so far. */
  progress = 0;
  /** Time of each progress packet (ms since epoch). */
  readonly progressTimes: number[] = [];
  readonly closed: Promise<void>;
  private readonly reader = new FrameReader();
  private readonly queue: MilterResponse[] = [];
  private waiter: (() => void) | undefined;
  private isClosed = false;
  private error: Error | undefined;

  private constructor(socket: net.Socket, readonly timeoutMs: number) {
    this.socket = socket;
    this.closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const frame of this.reader.push(chunk)) {
          const resp = decodeResponse(frame);
          if (resp.type === 'progress') {
            this.progress++;
            this.progressTimes.push(Date.now());
          } else {
            this.queue.push(resp);
          }
        }
      } catch (err) {
        this.error = err as Error;
        socket.destroy();
      }
      this.wake();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.isClosed = true;
      this.wake();
    });
  }

  static async connect(target: { port: number; host?: string } | { path: string }, timeoutMs = 10_000): Promise<MilterClient> {
    const socket = 'path' in target ? net.connect(target.path) : net.connect(target.port, target.host ?? '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    // Like Postfix's small writes per event: without this, Nagle + delayed ACK add 40 ms per event.
    socket.setNoDelay(true);
    return new MilterClient(socket, timeoutMs);
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  send(cmd: MilterCommand): void {
    this.write(encodeCommand(cmd));
  }

  /** The next response other than progress; rejects on timeout or if the connection closes. */
  async next(timeoutMs = this.timeoutMs): Promise<MilterResponse> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = this.queue.shift();
      if (r) return r;
      if (this.error) throw this.error;
      if (this.isClosed) throw new Error('milter closed the connection');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no milter response within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** Resolves true if nothing (but progress) arrives within ms. */
  async silentFor(ms: number): Promise<boolean> {
    await new Promise((r) => setTimeout(r, ms));
    return this.queue.length === 0;
  }

  /** Responses received but not consumed. */
  pending(): MilterResponse[] {
    return [...this.queue];
  }

  private has(flag: number): boolean {
    return ((this.negotiated?.protocol ?? 0) & flag) !== 0;
  }

  async negotiate(offer: { version: number; actions: number; protocol: number } = POSTFIX_OFFER): Promise<OptnegResponse> {
    this.send({ type: 'optneg', ...offer });
    const r = await this.next();
    if (r.type !== 'optneg') throw new Error(`expected an OPTNEG reply, got ${r.type}`);
    this.negotiated = r;
    return r;
  }

  macro(stage: CommandCode, macros: Record<string, string>): void {
    this.send({ type: 'macro', stage, macros: Object.entries(macros) });
  }

  /** Send an event: skipped when its NO* flag was negotiated, not awaited when its NR_* flag was. */
  private async event(cmd: MilterCommand, no: number, nr: number): Promise<EventReply> {
    if (no && this.has(no)) return 'skipped';
    this.send(cmd);
    if (nr && this.has(nr)) return 'no-reply';
    return this.next();
  }

  connectEvent(hostname = '[127.0.0.1]', family: ConnectFamily = 'inet', port = 50000, address = '127.0.0.1'): Promise<EventReply> {
    return this.event({ type: 'connect', hostname, family, port, address }, SMFIP.NOCONNECT, SMFIP.NR_CONN);
  }
  helo(name: string): Promise<EventReply> {
    return this.event({ type: 'helo', name }, SMFIP.NOHELO, SMFIP.NR_HELO);
  }
  mail(sender: string, ...args: string[]): Promise<EventReply> {
    return this.event({ type: 'mail', sender, args }, SMFIP.NOMAIL, SMFIP.NR_MAIL);
  }
  rcpt(recipient: string, ...args: string[]): Promise<EventReply> {
    return this.event({ type: 'rcpt', recipient, args }, SMFIP.NORCPT, SMFIP.NR_RCPT);
  }
  data(): Promise<EventReply> {
    return this.event({ type: 'data' }, SMFIP.NODATA, SMFIP.NR_DATA);
  }
  header(name: string, value: string): Promise<EventReply> {
    return this.event({ type: 'header', name, value }, SMFIP.NOHDRS, SMFIP.NR_HDR);
  }
  eoh(): Promise<EventReply> {
    return this.event({ type: 'eoh' }, SMFIP.NOEOH, SMFIP.NR_EOH);
  }
  body(chunk: Uint8Array): Promise<EventReply> {
    return this.event({ type: 'body', chunk }, SMFIP.NOBODY, SMFIP.NR_BODY);
  }
  unknown(line: string): Promise<EventReply> {
    return this.event({ type: 'unknown', line }, SMFIP.NOUNKNOWN, SMFIP.NR_UNKN);
  }

  /** End of message: modifications until one final decision. */
  async eom(timeoutMs = this.timeoutMs): Promise<EomReply> {
    this.send({ type: 'eom', chunk: new Uint8Array(0) });
    const modifications: MilterResponse[] = [];
    const before = this.progress;
    for (;;) {
      const r = await this.next(timeoutMs);
      if (FINAL.has(r.type)) return { final: r, modifications, progress: this.progress - before };
      modifications.push(r);
    }
  }

  abort(): void {
    this.send({ type: 'abort' });
  }
  quit(): void {
    this.send({ type: 'quit' });
  }
  quitNc(): void {
    this.send({ type: 'quitNc' });
  }
  /** Raw packet with any code, for protocol-error tests. */
  raw(code: string, data: Uint8Array = new Uint8Array(0)): void {
    this.write(encodeFrame(code, data));
  }

  destroy(): void {
    this.socket.destroy();
  }

  /**
   * One message the way Postfix sends it, with the default macros before each event; returns every
   * reply. Stops early when an envelope reply is final for the message (Postfix would then RSET).
   */
  async sendMessage(m: TestMessage): Promise<{ replies: Record<string, EventReply[]>; eom: EomReply | undefined }> {
    const replies: Record<string, EventReply[]> = { mail: [], rcpt: [], data: [], header: [], eoh: [], body: [] };
    const stop = (r: EventReply): boolean => typeof r !== 'string' && ['accept', 'reject', 'tempfail', 'discard', 'replycode'].includes(r.type);
    const queueId = m.queueId ?? 'ABC123';
    this.macro('M', { '{mail_addr}': m.from.replace(/[<>]/g, ''), '{mail_host}': 'mail.example.test', '{mail_mailer}': 'local' });
    const mr = await this.mail(m.from);
    replies.mail!.push(mr);
    if (stop(mr)) return { replies, eom: undefined };
    for (const [i, rcpt] of m.rcpts.entries()) {
      this.macro('R', { ...(i > 0 ? { i: queueId } : {}), '{rcpt_addr}': rcpt.replace(/[<>]/g, ''), '{rcpt_host}': 'mail.example.test', '{rcpt_mailer}': 'local' });
      replies.rcpt!.push(await this.rcpt(rcpt));
    }
    this.macro('T', { i: queueId });
    const dr = await this.data();
    replies.data!.push(dr);
    if (stop(dr)) return { replies, eom: undefined };
    for (const [name, value] of m.headers) {
      this.macro('L', { i: queueId });
      replies.header!.push(await this.header(name, value));
    }
    this.macro('N', { i: queueId });
    replies.eoh!.push(await this.eoh());
    const body = typeof m.body === 'string' ? new TextEncoder().encode(m.body) : m.body;
    const size = m.chunkSize ?? 65535;
    for (let at = 0; at < body.length; at += size) {
      this.macro('B', { i: queueId });
      const r = await this.body(body.subarray(at, at + size));
      replies.body!.push(r);
      if (typeof r !== 'string' && r.type === 'skip') break;
    }
    this.macro('E', { i: queueId });
    const eom = await this.eom();
    this.abort();
    this.abort();
    return { replies, eom };
  }
}
