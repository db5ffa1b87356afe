/**
 * The milter server: listens on a Postfix-style socket spec, runs one MilterSession per connection
 * (Postfix opens one per SMTP connection), keeps a bad connection from affecting the others, and
 * stops gracefully. `startMilterServer` is the in-process entry point for tests and the CLI.
 *
 * Unix sockets and Postfix's chroot: smtpd and cleanup run chrooted in the queue directory on
 * Debian, so Postfix resolves `smtpd_milters = unix:/dime/milter.sock` inside the chroot, i.e. to
 * /var/spool/postfix/dime/milter.sock on the real file system. Our --listen takes the real path
 * (`unix:/var/spool/postfix/dime/milter.sock`); `postfixMilterSpec` gives the main.cf form.
 */
import * as net from 'node:net';
import * as path from 'node:path';
import { createLogger, type Logger } from '../log.js';
import { DimeError } from '../errors.js';
import { passThroughHandler, type MilterHandler } from './handler.js';
import { MilterSession, resolveSessionConfig, type SessionConfig, type SessionOptions, type SessionTransport } from './session.js';
import { formatSocketSpec, listenOn, parseSocketSpec, type SocketSpec } from '../net/socket.js';

export { formatSocketSpec, parseSocketSpec, type SocketSpec };

// ---------------------------------------------------------------------------------------------
// Socket specs

/**
 * The smtpd_milters value Postfix needs to reach this socket. A unix socket under the chroot
 * directory (Postfix's queue_directory, /var/spool/postfix on Debian) is named relative to it.
 */
export function postfixMilterSpec(spec: SocketSpec, chrootDir = '/var/spool/postfix'): string {
  if (spec.kind === 'inet') return formatSocketSpec(spec);
  const rel = path.relative(chrootDir, spec.path);
  const inside = rel.length > 0 && !rel.startsWith('..') && !path.isAbsolute(rel);
  return inside ? `unix:/${rel}` : `unix:${spec.path}`;
}

// ---------------------------------------------------------------------------------------------
// The server

/** Time the in-flight sessions get to finish their message on close() before TEMPFAIL. */
export const DEFAULT_GRACE_PERIOD = 10_000;

/**
 * A milter connection with no traffic for this long is dropped. Postfix keeps the connection for the
 * whole SMTP session, and smtpd waits at most smtpd_timeout (300 s) per client command; twice that
 * means the peer is gone.
 */
export const DEFAULT_IDLE_TIMEOUT = 600_000;

/** After a graceful end (FIN), how long a peer that does not close its side is waited for. */
const CLOSE_LINGER = 2_000;

export interface MilterServerOptions extends Omit<SessionOptions, 'handler' | 'logger'> {
  /** `inet:HOST:PORT` or `unix:/PATH` (port 0: the OS picks one; see listen()). */
  listen: string | SocketSpec;
  /** Default: the pass-through handler. */
  handler?: MilterHandler;
  logger?: Logger;
  gracePeriod?: number;
  idleTimeout?: number;
  /** Mode of a unix socket; Postfix (group postfix) needs to write it. Default 0o660. */
  unixSocketMode?: number;
}

export interface ListenAddress {
  spec: SocketSpec;
  /** The bound address as a socket spec (the real port when 0 was asked for). */
  text: string;
}

export class MilterServer {
  readonly config: SessionConfig;
  private readonly spec: SocketSpec;
  private readonly log: Logger;
  private readonly gracePeriod: number;
  private readonly idleTimeout: number;
  private readonly unixSocketMode: number;
  private readonly server: net.Server;
  private readonly sessions = new Map<MilterSession, net.Socket>();
  private bound: ListenAddress | undefined;
  /** Removes our unix socket on close (a no-op for inet). */
  private release: (() => Promise<void>) | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: MilterServerOptions) {
    if (typeof options !== 'object' || options === null) throw new DimeError('USAGE', 'options must be an object');
    this.spec = typeof options.listen === 'string' ? parseSocketSpec(options.listen) : options.listen;
    this.log = options.logger ?? createLogger({ name: 'dime-milter' });
    this.config = resolveSessionConfig({ ...options, handler: options.handler ?? passThroughHandler, logger: this.log });
    this.gracePeriod = nonNegative('gracePeriod', options.gracePeriod ?? DEFAULT_GRACE_PERIOD);
    this.idleTimeout = nonNegative('idleTimeout', options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT);
    this.unixSocketMode = nonNegative('unixSocketMode', options.unixSocketMode ?? 0o660);
    this.server = net.createServer({ noDelay: true }, (socket) => this.onConnection(socket));
    this.server.on('error', (err) => this.log.error({ err }, 'milter server error'));
  }

  /** The bound address once listening. */
  get address(): ListenAddress | undefined {
    return this.bound;
  }

  /** Open connections. */
  get connections(): number {
    return this.sessions.size;
  }

  async listen(): Promise<ListenAddress> {
    if (this.bound) return this.bound;
    if (this.closing) throw new DimeError('USAGE', 'the milter server was closed');
    const bound = await listenOn(this.server, this.spec, { unixMode: this.unixSocketMode });
    this.release = bound.release;
    const spec = bound.spec;
    this.bound = { spec, text: formatSocketSpec(spec) };
    return this.bound;
  }

  /**
   * Stop accepting, let in-flight messages finish for the grace period (idle connections close at
   * once), then answer a still-running handler with TEMPFAIL and close everything. Removes the unix
   * socket if it is still ours.
   */
  close(gracePeriod: number = this.gracePeriod): Promise<void> {
    this.closing ??= this.shutdown(nonNegative('gracePeriod', gracePeriod));
    return this.closing;
  }

  private async shutdown(grace: number): Promise<void> {
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const session of this.sessions.keys()) session.drain(false);
    await this.waitForSessions(grace);
    for (const session of this.sessions.keys()) session.drain(true);
    await this.waitForSessions(CLOSE_LINGER);
    for (const socket of this.sessions.values()) socket.destroy();
    await this.waitForSessions(CLOSE_LINGER);
    await stopped;
    await this.release?.();
  }

  private async waitForSessions(ms: number): Promise<void> {
    if (this.sessions.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    });
    await Promise.race([Promise.all([...this.sessions.keys()].map((s) => s.done)), timeout]);
    clearTimeout(timer);
  }

  private onConnection(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const transport: SessionTransport = {
      write: (data) => (socket.writable ? socket.write(data) : true),
      drained: () =>
        new Promise<void>((resolve) => {
          if (!socket.writableNeedDrain || socket.destroyed) return resolve();
          socket.once('drain', resolve);
          socket.once('close', resolve);
        }),
      pause: () => socket.pause(),
      resume: () => socket.resume(),
      close: () => {
        if (socket.destroyed) return;
        // 'finish', not an end() callback: Node calls that one with a new ERR_STREAM_DESTROYED (a
        // stack trace per connection) whenever the peer's FIN destroys the socket first, the usual case.
        socket.once('finish', () => socket.destroy());
        socket.end();
        // Released as soon as the socket closes, so closed connections are not kept for the linger time.
        const linger = setTimeout(() => socket.destroy(), CLOSE_LINGER).unref();
        socket.once('close', () => clearTimeout(linger));
      },
    };
    const session = new MilterSession(this.config, transport);
    this.sessions.set(session, socket);
    // remoteAddress is a getpeername(2) per connection: only when the line is written.
    if (this.log.isLevelEnabled('debug')) this.log.debug({ conn: session.id, peer: socket.remoteAddress ?? 'unix' }, 'milter connection');
    if (this.idleTimeout > 0) {
      socket.setTimeout(this.idleTimeout, () => {
        this.log.warn({ conn: session.id }, `milter connection idle for ${this.idleTimeout} ms; closing`);
        socket.destroy();
      });
    }
    socket.on('data', (chunk: Buffer) => session.receive(chunk));
    socket.on('end', () => session.end());
    socket.on('close', () => session.end());
    // ECONNRESET and friends: the session ends through 'close'; nothing else to do.
    socket.on('error', (err: NodeJS.ErrnoException) => this.log.debug({ conn: session.id, code: err.code }, 'milter socket error'));
    void session.done.then(() => {
      this.sessions.delete(session);
      if (!socket.destroyed && !socket.writable) socket.destroy();
    });
  }
}

/** Create a server and start listening; the entry point for the CLI and in-process tests. */
export async function startMilterServer(options: MilterServerOptions): Promise<MilterServer> {
  const server = new MilterServer(options);
  await server.listen();
  return server;
}

function nonNegative(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) throw new DimeError('USAGE', `${name} must be a non-negative integer, got ${String(value)}`);
  return value;
}

/**
 * Before binding a unix socket: a leftover socket that nobody answers on is removed; a live one
 * (another milter) or a file that is not a socket is left alone and refused.
 */
