import { spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** bin/dime in the source tree (tests run from dist/test/…). */
export const DIME_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dime');

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function dime(args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): CliResult {
  const r = spawnSync(process.execPath, [DIME_BIN, ...args], {
    cwd: options.cwd,
    env: { ...process.env, ...options.env },
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const scratchDirs: string[] = [];

/** A private scratch directory removed when the process exits (one exit hook for all of them). */
export function scratchDir(prefix = 'dime-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  if (scratchDirs.length === 0) process.on('exit', () => scratchDirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
  scratchDirs.push(dir);
  return dir;
}

/** Parse stdout that must be exactly one JSON object (one line, nothing else). */
export function oneJsonObject(stdout: string): any {
  const lines = stdout.split('\n').filter((l) => l.length > 0);
  if (lines.length !== 1) throw new Error(`expected exactly one line of JSON, got ${lines.length}: ${stdout}`);
  const value = JSON.parse(lines[0]!);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`not a JSON object: ${lines[0]}`);
  return value;
}

/** Listeners `dime start` binds, as dime init writes them, each moved to a port of its own. */
export interface InitedDomain {
  dir: string;
  file: string;
  ports: { milter: number; policy: number; socketmap: number; relay: number; lmtp: number; metrics: number };
}

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * `dime init` of a domain in a scratch directory, its configuration's listeners moved to free
 * loopback ports, so several `dime start` processes (and test files) can run side by side.
 */
export async function initDomain(domain: string, prefix = 'dime-init-'): Promise<InitedDomain> {
  const dir = scratchDir(prefix);
  const init = dime(['init', '--domain', domain, '--dir', dir]);
  if (init.status !== 0) throw new Error(`dime init ${domain} failed: ${init.stderr}`);
  const file = path.join(dir, 'dime.toml');
  const taken = new Set<number>();
  const next = async () => {
    let p = await freePort();
    while (taken.has(p)) p = await freePort();
    taken.add(p);
    return p;
  };
  const ports = { milter: await next(), policy: await next(), socketmap: await next(), relay: await next(), lmtp: await next(), metrics: await next() };
  let text = fs.readFileSync(file, 'utf8');
  const set = (section: string, key: string, value: string) => {
    const before = text;
    text = text.replace(new RegExp(`(\\[${section}\\][^\\[]*?)\\b${key} = "[^"]*"`), `$1${key} = "${value}"`);
    if (text === before) throw new Error(`dime init wrote no [${section}] ${key}`);
  };
  set('milter', 'listen', `inet:127.0.0.1:${ports.milter}`);
  set('policy', 'listen', `inet:127.0.0.1:${ports.policy}`);
  set('policy', 'socketmap', `inet:127.0.0.1:${ports.socketmap}`);
  set('relay', 'listen', `inet:127.0.0.1:${ports.relay}`);
  set('relay', 'lmtp_listen', `inet:127.0.0.1:${ports.lmtp}`);
  fs.writeFileSync(file, text);
  return { dir, file, ports };
}

/**
 * Wait until a running command's output (`text()`, read again each time) matches `re`. Throws with
 * the output so far when the command exits first or `ms` pass.
 */
export async function waitForOutput(child: ChildProcess, text: () => string, re: RegExp, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!re.test(text())) {
    if (child.exitCode !== null) throw new Error(`exited (${child.exitCode}) before printing ${re}: ${text()}`);
    if (Date.now() > deadline) throw new Error(`no ${re} within ${ms} ms: ${text()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
