/**
 * Listening endpoints in Postfix's socket syntax: `inet:HOST:PORT` (an IPv6 host in brackets,
 * `inet:[::1]:9998`) or `unix:PATH`. The same strings go into main.cf, so an admin writes one form
 * everywhere.
 *
 * Duplicate: the milter (src/milter/) parses the same syntax; merge the two into one module later.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { DimeError } from '../errors.js';

export type ListenSpec = { kind: 'inet'; host: string; port: number } | { kind: 'unix'; path: string };

/** Unix socket paths are limited by sockaddr_un.sun_path (108 bytes on Linux, NUL included). */
export const MAX_UNIX_PATH = 107;

export function parseListenSpec(text: string): ListenSpec {
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (path.length === 0 || path.includes('\0')) throw new DimeError('USAGE', `${JSON.stringify(text)}: unix: needs a path`);
    if (Buffer.byteLength(path) > MAX_UNIX_PATH) throw new DimeError('USAGE', `${JSON.stringify(text)}: a unix socket path is at most ${MAX_UNIX_PATH} bytes`);
    return { kind: 'unix', path };
  }
  if (text.startsWith('inet:')) {
    const rest = text.slice('inet:'.length);
    const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):([0-9]{1,5})$/.exec(rest);
    if (!m) throw new DimeError('USAGE', `${JSON.stringify(text)} is not inet:HOST:PORT (IPv6 as inet:[::1]:PORT)`);
    const host = m[1] ?? m[2]!;
    const port = Number(m[3]);
    if (port > 65535) throw new DimeError('USAGE', `${JSON.stringify(text)}: port ${port} is out of range`);
    if (m[1] !== undefined && net.isIPv6(host) === false) throw new DimeError('USAGE', `${JSON.stringify(text)}: [${host}] is not an IPv6 address`);
    return { kind: 'inet', host, port };
  }
  throw new DimeError('USAGE', `${JSON.stringify(text)} is neither inet:HOST:PORT nor unix:PATH`);
}

export function formatListenSpec(spec: ListenSpec): string {
  if (spec.kind === 'unix') return `unix:${spec.path}`;
  return net.isIPv6(spec.host) ? `inet:[${spec.host}]:${spec.port}` : `inet:${spec.host}:${spec.port}`;
}

/** True for 127.0.0.0/8, ::1 and localhost: the services are unauthenticated (socketmap_table(5)). */
export function isLoopback(spec: ListenSpec): boolean {
  if (spec.kind === 'unix') return true;
  const h = spec.host.toLowerCase();
  return h === 'localhost' || h === '::1' || (net.isIPv4(h) && h.startsWith('127.'));
}

/**
 * Listen on `spec` and return the bound endpoint (with the real port when 0 was asked). A unix
 * socket file left by a dead process is replaced; one a live process still answers on is not,
 * and neither is a path that is not a socket.
 */
export async function listenOn(server: net.Server, spec: ListenSpec): Promise<ListenSpec> {
  if (spec.kind === 'unix') await removeStaleSocket(spec.path);
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    const done = () => {
      server.off('error', onError);
      resolve();
    };
    if (spec.kind === 'unix') server.listen(spec.path, done);
    else server.listen({ host: spec.host, port: spec.port, exclusive: true }, done);
  });
  const address = server.address();
  if (spec.kind === 'inet' && address && typeof address === 'object') return { kind: 'inet', host: spec.host, port: address.port };
  return spec;
}

async function removeStaleSocket(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new DimeError('USAGE', `${path} exists and is not a socket; refusing to replace it`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new DimeError('USAGE', `${path}: another process is listening on this socket`);
  fs.unlinkSync(path);
}
