/**
 * Listeners for the policy delegation and socketmap services. Each accepted connection gets its
 * own session (session.ts); the handler decides (handler.ts).
 */
import * as net from 'node:net';
import { createLogger, type Logger } from '../log.js';
import { DimeError } from '../errors.js';
import { validatePolicyAction, type PolicyAction } from './action.js';
import { dunnoPolicy, type PolicyHandler, type SocketmapHandler } from './handler.js';
import { formatSocketSpec, listenOn, parseSocketSpec, type SocketSpec } from '../net/socket.js';
import {
  DEFAULT_DEADLINE_MS,
  DEFAULT_FAILURE_ACTION,
  DEFAULT_POLICY_IDLE_MS,
  DEFAULT_SOCKETMAP_IDLE_MS,
  runPolicySession,
  runSocketmapSession,
  type Session,
} from './session.js';

/**
 * Concurrent connections per service. Each Postfix smtpd process (default_process_limit 100)
 * holds at most one policy connection, and trivial-rewrite a few socketmap ones; ten times that
 * leaves room for several Postfix instances while capping file descriptors.
 */
export const MAX_CONNECTIONS = 1000;
/** On close, a request in progress gets this long beyond its deadline before the socket is cut. */
export const CLOSE_GRACE_MS = 1000;

export interface ServiceOptions {
  /** `inet:HOST:PORT` / `unix:PATH`, or a parsed spec. Port 0 picks a free port. */
  listen: string | SocketSpec;
  idleMs?: number;
  deadlineMs?: number;
  logger?: Logger;
}

export interface PolicyServerOptions extends ServiceOptions {
  handler?: PolicyHandler;
  /** Answer when the handler throws or misses its deadline; DEFAULT_FAILURE_ACTION if unset. */
  failureAction?: PolicyAction;
}

export interface SocketmapServerOptions extends ServiceOptions {
  handler: SocketmapHandler;
}

export interface ServiceServer {
  /** The bound endpoint, with the real port. */
  readonly endpoint: SocketSpec;
  /** `inet:127.0.0.1:9998` form, ready for main.cf. */
  readonly address: string;
  /** TCP port (0 for unix sockets). */
  readonly port: number;
  readonly connections: number;
  /** Stop accepting, let requests in progress finish (bounded), close every connection. */
  close(): Promise<void>;
}

function checkTimeouts(idleMs: number, deadlineMs: number): void {
  if (!(deadlineMs > 0) || !(idleMs > 0)) throw new DimeError('USAGE', 'timeouts must be positive');
  // The idle timer is not armed while a handler runs, but a deadline longer than the idle time
  // would keep a stuck connection beyond what the admin asked for.
  if (deadlineMs >= idleMs) throw new DimeError('USAGE', `the request deadline (${deadlineMs} ms) must be shorter than the idle timeout (${idleMs} ms)`);
}

async function startService(
  service: 'policy' | 'socketmap',
  options: ServiceOptions,
  idleMs: number,
  deadlineMs: number,
  run: (socket: net.Socket, log: Logger) => Session,
): Promise<ServiceServer> {
  checkTimeouts(idleMs, deadlineMs);
  const spec = typeof options.listen === 'string' ? parseSocketSpec(options.listen) : options.listen;
  const log = (options.logger ?? createLogger()).child({ service });
  const sessions = new Set<Session>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    const session = run(socket, log.child({ peer }));
    sessions.add(session);
    void session.done.then(() => sessions.delete(session));
  });
  server.maxConnections = MAX_CONNECTIONS;
  const bound = await listenOn(server, spec);
  const endpoint = bound.spec;
  const address = formatSocketSpec(endpoint);
  log.info({ address }, 'listening');
  let closed: Promise<void> | undefined;
  return {
    endpoint,
    address,
    port: endpoint.kind === 'inet' ? endpoint.port : 0,
    get connections() {
      return sessions.size;
    },
    close() {
      closed ??= (async () => {
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const s of sessions) s.close();
        const grace = setTimeout(() => {
          for (const s of sessions) s.destroy();
        }, deadlineMs + CLOSE_GRACE_MS);
        await Promise.all([...sessions].map((s) => s.done));
        clearTimeout(grace);
        await stopped;
        await bound.release();
        log.info({ address }, 'stopped');
      })();
      return closed;
    },
  };
}

export async function startPolicyServer(options: PolicyServerOptions): Promise<ServiceServer> {
  const failureAction = options.failureAction ?? DEFAULT_FAILURE_ACTION;
  validatePolicyAction(failureAction);
  const idleMs = options.idleMs ?? DEFAULT_POLICY_IDLE_MS;
  const deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
  const handler = options.handler ?? dunnoPolicy;
  return startService('policy', options, idleMs, deadlineMs, (socket, log) =>
    runPolicySession(socket, { handler, failureAction, deadlineMs, idleMs, log }),
  );
}

export async function startSocketmapServer(options: SocketmapServerOptions): Promise<ServiceServer> {
  const idleMs = options.idleMs ?? DEFAULT_SOCKETMAP_IDLE_MS;
  const deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
  return startService('socketmap', options, idleMs, deadlineMs, (socket, log) =>
    runSocketmapSession(socket, { handler: options.handler, deadlineMs, idleMs, log }),
  );
}
