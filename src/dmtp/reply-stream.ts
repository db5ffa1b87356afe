/**
 * A connection seen as a stream of replies: commands are written (with back-pressure) and each
 * read() waits, with a timeout, for the next complete reply. Failures are typed DMTP errors and
 * stick: after one, every read and write rejects with it. Shared by the DMTP client and the SMTP
 * hand-off to the local MTA (both speak reply codes with continuation lines).
 */
import type * as net from 'node:net';
import { DimeError, isDimeError } from '../errors.js';
import { DEFAULT_REPLY_LIMITS, ReplyDecoder, type Reply, type ReplyLimits } from './codec.js';

export class ReplyStream {
  private readonly decoder: ReplyDecoder;
  private waiting: { resolve: (r: Reply) => void; reject: (e: Error) => void } | undefined;
  private failure: DimeError | undefined;
  socket: net.Socket;
  private readonly onData = (chunk: Buffer) => {
    try {
      this.decoder.push(chunk);
      this.deliver();
    } catch (err) {
      this.fail(isDimeError(err) && err.code !== 'DMTP_LINE_TOO_LONG' ? err : new DimeError('DMTP_BAD_REPLY', (err as Error).message, { cause: err }));
    }
  };
  private readonly onError = (err: Error) => this.fail(new DimeError('DMTP_CONNECTION_LOST', err.message, { cause: err }));
  private readonly onClose = () => this.fail(new DimeError('DMTP_CONNECTION_LOST', 'the peer closed the connection'));

  constructor(socket: net.Socket, limits: ReplyLimits = DEFAULT_REPLY_LIMITS) {
    this.decoder = new ReplyDecoder(limits);
    this.socket = socket;
    this.attach(socket);
  }

  attach(socket: net.Socket): void {
    this.socket = socket;
    // Commands are small writes each awaiting a reply: Nagle plus delayed ACKs would add 40 ms to each.
    socket.setNoDelay(true);
    socket.on('data', this.onData);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
  }

  /** Stop reading from the socket; returns how many received octets were not consumed. */
  detach(): number {
    this.socket.off('data', this.onData);
    this.socket.off('error', this.onError);
    this.socket.off('close', this.onClose);
    return this.decoder.input.buffered;
  }

  get broken(): boolean {
    return this.failure !== undefined;
  }

  private fail(err: DimeError): void {
    this.failure ??= err;
    const w = this.waiting;
    this.waiting = undefined;
    w?.reject(this.failure);
  }

  private deliver(): void {
    if (!this.waiting) return;
    const reply = this.decoder.next();
    if (!reply) return;
    const w = this.waiting;
    this.waiting = undefined;
    w.resolve(reply);
  }

  read(timeoutMs: number): Promise<Reply> {
    const ready = this.decoder.next();
    if (ready) return Promise.resolve(ready);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        const err = new DimeError('DMTP_TIMEOUT', `no reply within ${timeoutMs} ms`);
        this.failure ??= err;
        reject(err);
      }, timeoutMs);
      this.waiting = {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  async write(data: string | Uint8Array): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.socket.write(data)) return;
    await new Promise<void>((resolve, reject) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', closed);
        resolve();
      };
      const closed = () => {
        this.socket.off('drain', done);
        reject(this.failure ?? new DimeError('DMTP_CONNECTION_LOST', 'closed while sending'));
      };
      this.socket.on('drain', done);
      this.socket.once('close', closed);
    });
  }
}
