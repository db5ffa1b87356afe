/**
 * Listening sockets in Postfix's syntax, shared by every service (milter, policy, socketmap):
 * `inet:HOST:PORT` (IPv6 as `inet:[::1]:PORT`) or `unix:/PATH` (also `local:/PATH`). The same
 * strings go into main.cf, so an admin writes one form everywhere.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { DimeError } from '../errors.js';

export type SocketSpec = { kind: 'inet'; host: string; port: number } | { kind: 'unix'; path: string };

/** sun_path is 108 bytes on Linux, including the terminating NUL. */
export const MAX_UNIX_PATH = 107;

/**
 * Sendmail's `inet:PORT@HOST` is refused with a hint: the two are easily confused (miltertest and
 * Sendmail use it, Postfix does not).
 */
export function parseSocketSpec(spec: string): SocketSpec {
  if (typeof spec !== 'string') throw new DimeError('SOCKET_BAD_SPEC', 'socket spec must be a string');
  const colon = spec.indexOf(':');
  const kind = colon < 0 ? '' : spec.slice(0, colon);
  const rest = spec.slice(colon + 1);
  if (kind === 'unix' || kind === 'local') {
    if (rest.includes('\0') || !path.isAbsolute(rest)) throw new DimeError('SOCKET_BAD_SPEC', `${JSON.stringify(spec)}: the socket path must be absolute`);
    if (Buffer.byteLength(rest) > MAX_UNIX_PATH) throw new DimeError('SOCKET_BAD_SPEC', `${JSON.stringify(spec)}: a unix socket path is at most ${MAX_UNIX_PATH} bytes`);
    return { kind: 'unix', path: path.normalize(rest) };
  }
  if (kind === 'inet') {
    if (/^[0-9]+@/.test(rest)) throw new DimeError('SOCKET_BAD_SPEC', `${JSON.stringify(spec)} is Sendmail's inet:PORT@HOST; use Postfix's inet:HOST:PORT`);
    const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):([0-9]{1,5})$/.exec(rest);
    const port = m ? Number(m[3]) : NaN;
    if (!m || port > 65535) throw new DimeError('SOCKET_BAD_SPEC', `${JSON.stringify(spec)}: expected inet:HOST:PORT with a port from 0 to 65535 (IPv6 as inet:[::1]:PORT)`);
    const host = m[1] ?? m[2]!;
    if (m[1] !== undefined && !net.isIPv6(host)) throw new DimeError('SOCKET_BAD_SPEC', `${JSON.stringify(spec)}: ${host} is not an IPv6 address`);
    return { kind: 'inet', host, port };
  }
  throw new DimeError('SOCKET_BAD_SPEC', `${JSON.stringify(spec)}: expected inet:HOST:PORT or unix:/PATH`);
}

export function formatSocketSpec(spec: SocketSpec): string {
  if (spec.kind === 'unix') return `unix:${spec.path}`;
  return net.isIPv6(spec.host) ? `inet:[${spec.host}]:${spec.port}` : `inet:${spec.host}:${spec.port}`;
}

/** 127.0.0.0/8, ::1, localhost, or a unix socket: where the unauthenticated services belong. */
export function isLoopback(spec: SocketSpec): boolean {
  if (spec.kind === 'unix') return true;
  const h = spec.host.toLowerCase();
  return h === 'localhost' || h === '::1' || (net.isIPv4(h) && h.startsWith('127.'));
}

export interface Bound {
  /** What was bound (the real port when 0 was asked). */
  spec: SocketSpec;
  /** Remove the unix socket file on close, unless something else has replaced it meanwhile. */
  release(): Promise<void>;
}

/**
 * Listen on `spec`. A unix socket file left by a dead process is replaced; one a live process still
 * answers on is not (SOCKET_IN_USE), and neither is a path that is not a socket (FILE_EXISTS).
 */
export async function listenOn(server: net.Server, spec: SocketSpec, options: { unixMode?: number } = {}): Promise<Bound> {
  if (spec.kind === 'unix') await replaceStaleSocket(spec.path);
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off('listening', onListening);
      reject(new DimeError('USAGE', `cannot listen on ${formatSocketSpec(spec)}: ${err.message}`, { cause: err }));
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    if (spec.kind === 'unix') server.listen(spec.path);
    else server.listen({ host: spec.host, port: spec.port, exclusive: true });
  });
  if (spec.kind === 'inet') {
    const a = server.address() as net.AddressInfo;
    return { spec: { kind: 'inet', host: a.address, port: a.port }, release: async () => {} };
  }
  if (options.unixMode !== undefined) await fs.promises.chmod(spec.path, options.unixMode);
  const st = await fs.promises.lstat(spec.path);
  return { spec, release: () => removeOwnSocket(spec.path, { dev: st.dev, ino: st.ino }) };
}

async function replaceStaleSocket(file: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = await fs.promises.lstat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw new DimeError('FILE_EXISTS', `${file} exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(file);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new DimeError('SOCKET_IN_USE', file);
  await fs.promises.unlink(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}

async function removeOwnSocket(file: string, identity: { dev: number; ino: number }): Promise<void> {
  try {
    const st = await fs.promises.lstat(file);
    if (st.dev === identity.dev && st.ino === identity.ino) await fs.promises.unlink(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
