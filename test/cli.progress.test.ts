/**
 * Progress bars (src/cli/progress.ts) and `dime user import`: a bar is drawn on a terminal only;
 * piped output (scripts, these tests) carries no control character; an import file with a bad line
 * names the line and adds nobody; a line that fails while adding is reported with its number and
 * the other lines still go in; an interrupted import says what it did not do.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { progress, type ProgressStream } from '../src/cli/progress.js';
import { createSoftHsmToken, softHsmAvailable } from '../src/keystore/softhsm.js';
import { DIME_BIN, dime, oneJsonObject, scratchDir } from './helpers/cli.js';

/** Anything but newline and tab: what a bar (\r, ESC) or colour would leave behind. */
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/;

function fakeTerminal(isTTY: boolean, columns = 120): ProgressStream & { out: string } {
  return {
    isTTY,
    columns,
    out: '',
    write(chunk: string) {
      this.out += chunk;
      return true;
    },
  };
}

describe('progress', () => {
  it('draws on a terminal: a counted bar, named steps, output printed around it, erased at the end', () => {
    const tty = fakeTerminal(true);
    let t = 0;
    const p = progress('importing users', { total: 4, stream: tty, env: {}, now: () => (t += 100) });
    assert.equal(p.active, true);
    p.tick('alice@example.com');
    assert.match(tty.out, /\r\x1b\[2Kimporting users \[######\.{18}\] 1\/4 [\d.]+s alice@example\.com$/);
    const stdout = fakeTerminal(false);
    p.print(stdout, 'added: alice\n');
    assert.equal(stdout.out, 'added: alice\n');
    assert.ok(tty.out.endsWith('alice@example.com'), 'redrawn after the output');
    p.update(4);
    assert.match(tty.out, /\[#{24}\] 4\/4/);
    p.done();
    assert.ok(tty.out.endsWith('\r\x1b[2K'), 'erased');
    const before = tty.out;
    p.tick('late');
    assert.equal(tty.out, before, 'nothing after done()');

    const steps = fakeTerminal(true);
    const s = progress('dime init', { total: 5, stream: steps, env: {} });
    s.step('generating the organisation keys in the HSM');
    assert.match(steps.out, /\r\x1b\[2Kdime init \[1\/5\] generating the organisation keys in the HSM [\d.]+s$/);
    s.step('signing the record');
    assert.match(steps.out, /\r\x1b\[2Kdime init \[2\/5\] signing the record [\d.]+s$/);
    s.done();
  });

  it('keeps to one terminal row and never echoes control characters from a note', () => {
    const tty = fakeTerminal(true, 60);
    const p = progress('x', { total: 2, stream: tty, env: {} });
    p.tick(`evil\x1b]0;title\x07${'y'.repeat(200)}`);
    const line = tty.out.slice('\r\x1b[2K'.length);
    assert.ok(line.length <= 59, `${line.length} columns`);
    assert.ok(!CONTROL.test(line), JSON.stringify(line));
    p.done();
  });

  it('is a no-op when stderr is not a terminal, with TERM=dumb or DIME_NO_PROGRESS', () => {
    for (const [stream, env] of [
      [fakeTerminal(false), {}],
      [fakeTerminal(true), { TERM: 'dumb' }],
      [fakeTerminal(true), { DIME_NO_PROGRESS: '1' }],
    ] as const) {
      const p = progress('x', { total: 3, stream, env });
      assert.equal(p.active, false);
      p.tick('a');
      p.step('b');
      const out = fakeTerminal(false);
      p.print(out, 'line\n');
      p.done();
      assert.equal(stream.out, '');
      assert.equal(out.out, 'line\n', 'print still writes the output');
    }
  });
});

describe('dime user import', () => {
  const root = scratchDir('dime-import-');
  const dir = path.join(root, 'example.net');
  const env = { DIME_CONFIG: path.join(dir, 'dime.toml') };
  const file = (name: string, lines: string[]) => {
    const f = path.join(root, name);
    fs.writeFileSync(f, lines.join('\n') + '\n');
    return f;
  };
  const users = () => dime(['user', 'list', '--json'], { env }).stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l).address as string);

  before(() => {
    const r = dime(['init', '--domain', 'example.net', '--dir', dir]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(!CONTROL.test(r.stdout) && !CONTROL.test(r.stderr), `dime init piped: ${JSON.stringify(r.stderr)}`);
  });

  it('a bad line: its number is reported, the whole file is refused, nobody is added', () => {
    const f = file('bad.txt', ['# staff', 'ann@example.net', '', 'bob@example.net,sometimes', 'carl@example.org', 'ann@example.net,trustful']);
    const r = dime(['user', 'import', f], { env });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`${f}:4: mode "sometimes" is not trustful, cautious, paranoid`));
    assert.match(r.stderr, new RegExp(`${f}:5: carl@example\\.org is not in example\\.net`));
    assert.match(r.stderr, new RegExp(`${f}:6: ann@example\\.net is already on line 2`));
    assert.match(r.stderr, /3 bad lines \(4, 5, 6\); nobody was added \[IMPORT_BAD_LINE\]/);
    assert.deepEqual(users(), []);
    const j = dime(['user', 'import', f, '--json'], { env });
    assert.equal(j.status, 1);
    assert.deepEqual(oneJsonObject(j.stdout).failed.map((e: { line: number; code: string }) => [e.line, e.code]), [[4, 'IMPORT_BAD_LINE'], [5, 'IMPORT_BAD_LINE'], [6, 'IMPORT_BAD_LINE']]);
  });

  it('imports every good line, reports a failing one with its number and goes on; piped output has no control characters', () => {
    assert.equal(dime(['user', 'add', 'dora@example.net'], { env }).status, 0);
    const f = file('staff.txt', ['ann@example.net', 'Dora@example.net', 'eve@example.net,trustful']);
    const r = dime(['user', 'import', f], { env });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stdout, new RegExp(`^${f}:1: added: ann@example\\.net`, 'm'));
    assert.match(r.stdout, new RegExp(`^${f}:3: added: eve@example\\.net`, 'm'));
    assert.match(r.stderr, new RegExp(`^${f}:2: dora@example\\.net: .*\\[USER_EXISTS\\]`, 'm'));
    assert.match(r.stdout, /2 added, 0 skipped, 1 failed \(of 3\)/);
    assert.match(r.stderr, /failed on line 2 \[IMPORT_INCOMPLETE\]/);
    assert.ok(!CONTROL.test(r.stdout) && !CONTROL.test(r.stderr), JSON.stringify(r.stdout + r.stderr));
    assert.deepEqual(users().sort(), ['ann@example.net', 'dora@example.net', 'eve@example.net']);
    // Run again: existing users skipped, exit 0, one JSON object.
    const again = dime(['user', 'import', f, '--skip-existing', '--json'], { env });
    assert.equal(again.status, 0, again.stderr);
    const j = oneJsonObject(again.stdout);
    assert.deepEqual([j.added.length, j.skipped.map((s: { line: number }) => s.line), j.failed, j.notProcessed], [0, [1, 2, 3], [], []]);
  });

  it('cautious and paranoid lines name their request (and key) files, relative to the import file', () => {
    const keys = path.join(root, 'fay.keys');
    assert.equal(dime(['keys', 'generate', '--user', 'fay@example.net', '--out', keys]).status, 0);
    assert.equal(dime(['signet', 'request', '--keys', keys, '--out', path.join(root, 'fay.ssr')]).status, 0);
    fs.writeFileSync(path.join(root, 'fay.blob'), Buffer.alloc(118, 7));
    const f = file('byo.txt', ['fay@example.net, cautious, fay.ssr, fay.blob', 'gus@example.net,paranoid,fay.ssr', 'hal@example.net,paranoid']);
    const r = dime(['user', 'import', f, '--json'], { env });
    assert.equal(r.status, 1, 'hal has no request');
    assert.match(r.stderr, new RegExp(`${f}:3: a paranoid user brings their own keys`));
    const ok = file('byo-ok.txt', ['fay@example.net, cautious, fay.ssr, fay.blob', 'gus@example.net,paranoid,fay.ssr']);
    const r2 = dime(['user', 'import', ok, '--json'], { env });
    assert.equal(r2.status, 0, r2.stderr);
    assert.deepEqual(oneJsonObject(r2.stdout).added.map((u: { line: number; mode: string }) => [u.line, u.mode]), [[1, 'cautious'], [2, 'paranoid']]);
  });

  it('SIGINT stops after the current user and says which lines were not imported', async () => {
    const lines = Array.from({ length: 400 }, (_, i) => `bulk${i}@example.net`);
    const f = file('bulk.txt', lines);
    const child = spawn(process.execPath, [DIME_BIN, 'user', 'import', f], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let sent = false;
    child.stdout.on('data', (d) => {
      stdout += d;
      // Once: a second ^C after the import loop is the operator insisting, and kills as usual.
      if (!sent && /added: bulk3@/.test(stdout)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    if (!/not processed/.test(stdout)) {
      // The machine finished all 400 before the signal landed: nothing to observe.
      assert.equal(code, 0, stderr);
      return;
    }
    assert.equal(code, 1, stderr);
    const m = /(\d+) added, 0 skipped, 0 failed, (\d+) not processed \(of 400\)/.exec(stdout);
    assert.ok(m, stdout.slice(-500));
    assert.equal(Number(m[1]) + Number(m[2]), 400);
    assert.match(stderr, new RegExp(`stopped by SIGINT before line ${Number(m[1]) + 1}; lines ${Number(m[1]) + 1}-400 were not imported \\(run again with --skip-existing\\) \\[IMPORT_INCOMPLETE\\]`));
    // Every line printed as added was added, and nothing else.
    assert.equal(users().filter((u) => u.startsWith('bulk')).length, Number(m[1]));
  });

  it('on a terminal (script(1) gives it a pty) the bar is drawn on stderr', { skip: fs.existsSync('/usr/bin/script') ? false : 'script(1) is not installed' }, () => {
    const f = file('tty.txt', ['ida@example.net', 'jon@example.net']);
    const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const r = spawnSync('script', ['-qec', `${q(process.execPath)} ${q(DIME_BIN)} user import ${q(f)}`, '/dev/null'], { encoding: 'utf8', env: { ...process.env, ...env, TERM: 'xterm' }, timeout: 30_000 });
    assert.equal(r.status, 0, r.stdout);
    assert.match(r.stdout, /\r\x1b\[2Kimporting users \[/);
    assert.match(r.stdout, /added: ida@example\.net/);
  });
});

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

describe('progress of key generation in an HSM', { skip: softHsmAvailable() && fs.existsSync('/usr/bin/script') ? false : 'needs SoftHSM2 and script(1)' }, () => {
  const token = softHsmAvailable() ? createSoftHsmToken({ label: 'dime-progress' }) : undefined;
  after(() => token?.remove());

  it('dime init and dime keys rotate name the HSM step on a terminal, and print no control character when piped', () => {
    const dir = path.join(scratchDir('dime-progress-hsm-'), 'd');
    const hsm = `--hsm-module ${q(token!.module)} --hsm-token ${q(token!.label)} --hsm-pin-file ${q(token!.pinFile)}`;
    const onTty = (command: string, env: NodeJS.ProcessEnv) =>
      spawnSync('script', ['-qec', command, '/dev/null'], { encoding: 'utf8', env: { ...process.env, ...env, TERM: 'xterm' }, timeout: 60_000 });
    const init = onTty(`${q(process.execPath)} ${q(DIME_BIN)} init --domain hsm.test --dir ${q(dir)} ${hsm}`, token!.env);
    assert.equal(init.status, 0, init.stdout);
    assert.match(init.stdout, /\r\x1b\[2Kdime init \[2\/5\] generating the organisation keys in the HSM [\d.]+s/);
    assert.match(init.stdout, /_dx\.hsm\.test\. 3600 IN TXT/);
    const env = { ...token!.env, DIME_CONFIG: path.join(dir, 'dime.toml') };
    const rotate = onTty(`${q(process.execPath)} ${q(DIME_BIN)} keys rotate`, env);
    assert.equal(rotate.status, 0, rotate.stdout);
    assert.match(rotate.stdout, /\[2\/4\] generating the new POK in the HSM/);
    const piped = dime(['keys', 'rotate'], { env });
    assert.equal(piped.status, 0, piped.stderr);
    assert.ok(!CONTROL.test(piped.stdout) && !CONTROL.test(piped.stderr), JSON.stringify(piped.stdout + piped.stderr));
    assert.match(piped.stdout, /rotated pok\/2 → pok\/3/);
  });
});
