import { spawnSync } from 'node:child_process';
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
