/**
 * postfix-examples/ as the tests load them: main.cf as settings, master.cf as service lines, with
 * the default ports (and the `submission` service name) replaced by the test's own.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const EXAMPLES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../postfix-examples');

/** Default endpoint → the test's, e.g. { '127.0.0.1:8899': '127.0.0.1:40001', submission: '127.0.0.1:40002' }. */
export type Substitutions = Record<string, string>;

function substitute(text: string, subs: Substitutions): string {
  let out = text;
  for (const [from, to] of Object.entries(subs)) out = out.split(from).join(to);
  return out;
}

/** Logical lines: comments and blank lines dropped, continuation lines (leading white space) kept with their service. */
function logicalLines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '' && !l.trimStart().startsWith('#'));
}

export function exampleMain(subs: Substitutions): Record<string, string> {
  const out: Record<string, string> = {};
  let last: string | undefined;
  for (const line of logicalLines(substitute(fs.readFileSync(path.join(EXAMPLES_DIR, 'main.cf'), 'utf8'), subs))) {
    if (/^[ \t]/.test(line) && last) {
      out[last] += ` ${line.trim()}`;
      continue;
    }
    const m = /^([a-z0-9_]+)\s*=\s*(.*)$/.exec(line);
    if (!m) throw new Error(`postfix-examples/main.cf: cannot read ${JSON.stringify(line)}`);
    out[m[1]!] = m[2]!;
    last = m[1]!;
  }
  return out;
}

export function exampleMaster(subs: Substitutions): string[] {
  const text = substitute(fs.readFileSync(path.join(EXAMPLES_DIR, 'master.cf'), 'utf8'), subs);
  return logicalLines(text).map((l) => (/^[ \t]/.test(l) ? `  ${l.trim()}` : l));
}
