/**
 * Our milter server driven by OpenDKIM's miltertest (an independent MTA-side implementation) through
 * the Lua scripts in test/fixtures/miltertest/. Skipped only when miltertest is not installed
 * (.ci/run installs it).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it, type TestContext } from 'node:test';
import { createLogger } from '../src/log.js';
import { modify, verdict, type MilterHandler } from '../src/milter/handler.js';
import { startMilterServer } from '../src/milter/server.js';

const SCRIPTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test/fixtures/miltertest');

const probe = spawnSync('miltertest', ['-V'], { encoding: 'utf8' });
const MISSING = probe.error ? `miltertest is not installed (${(probe.error as NodeJS.ErrnoException).code}); install the Debian package miltertest` : false;

interface Run {
  status: number | null;
  output: string;
}

/** Run one script against a fresh in-process server; the server is closed afterwards. */
async function runScript(t: TestContext, script: string, handler?: MilterHandler): Promise<Run> {
  const server = await startMilterServer({ listen: 'inet:127.0.0.1:0', logger: createLogger({ level: 'silent' }), ...(handler ? { handler } : {}) });
  t.after(() => server.close(0));
  const spec = server.address!.spec;
  const port = spec.kind === 'inet' ? spec.port : 0;
  const child = spawn('miltertest', ['-v', '-D', `port=${port}`, '-s', path.join(SCRIPTS, script)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const status = await new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  clearTimeout(timer);
  return { status, output };
}

const enc = (s: string) => new TextEncoder().encode(s);

/** The handler modify.lua expects. */
const testHandler: MilterHandler = {
  name: 'miltertest',
  actions: ['addHeader', 'changeHeader', 'replaceBody', 'addRecipient', 'deleteRecipient', 'quarantine'],
  // A callback for every step the script performs, so that none is negotiated away (miltertest
  // refuses to perform a step the milter declined).
  connect: () => undefined,
  helo: () => undefined,
  mailFrom: () => undefined,
  rcptTo: (_ctx, r) => (r.address === 'blocked@example.test' ? verdict.reply('550', `<${r.address}>: recipient blocked by dime test`, '5.7.1') : undefined),
  header: () => undefined,
  eoh: () => undefined,
  body: () => undefined,
  async eom(_ctx, m) {
    const subject = m.headers.find((h) => h.name.toLowerCase() === 'subject')?.value ?? '';
    if (subject.includes('reject me')) return verdict.reply('550', 'rejected by dime test', '5.7.1');
    if (subject.includes('hold')) return verdict.quarantine('held by dime test');
    const body = await m.body.bytes();
    return {
      modifications: [
        modify.addHeader('X-Dime-Test', 'added'),
        modify.insertHeader(0, 'X-Dime-Top', 'inserted'),
        modify.changeHeader('Subject', 1, '[dime] replaced subject'),
        modify.deleteHeader('X-Remove-Me', 1),
        modify.addRecipient('<carol@example.test>'),
        modify.deleteRecipient('<alice@example.test>'),
        modify.replaceBody(enc(`DIME replaced body\r\noriginal body was ${body.length} bytes\r\n`)),
      ],
    };
  },
};

describe('miltertest (OpenDKIM) against the milter server', { skip: MISSING }, () => {
  it('the pass-through milter skips every step but CONNECT and accepts there', async (t) => {
    const r = await runScript(t, 'pass-through.lua');
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, /pass-through: ok/);
  });

  it('a handler that edits headers, body and recipients, refuses a recipient, rejects and quarantines', async (t) => {
    const r = await runScript(t, 'modify.lua', testHandler);
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, /modify: ok/);
  });

  it('a failed expectation makes miltertest fail (control)', async (t) => {
    const r = await runScript(t, 'wrong-expectation.lua');
    assert.notEqual(r.status, 0, r.output);
    assert.match(r.output, /FAIL: expected CONTINUE/);
  });
});
