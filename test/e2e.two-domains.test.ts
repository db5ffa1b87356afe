/**
 * Two dark domains on one machine, every part real (issue 8 item 4): two Postfix instances built
 * from postfix-examples/, two sidecars run as `dime start` processes, both domains' records in
 * zones signed by bind9 and validated by unbound, Redis as the shared cache, and a.test's
 * organisation keys in SoftHSM2. alice@a.test submits with SASL through swaks to bob@b.test (a
 * trustful account), cathy@b.test (cautious) and carol@legacy.test (no DIME).
 *
 * b.test's relay is stopped when alice sends, so a.test's Postfix must defer the sealed bundle: its
 * queue files are searched for the Subject and the body. Then the relay comes back, the queue is
 * flushed, and each recipient gets the message exactly once. DMTP to b.test passes through a
 * recording TCP proxy: the capture must hold neither the Subject nor the body.
 *
 * The environment itself is test/helpers/two-domains.ts, shared with bench/e2e-two-domains.ts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { softHsmAvailable } from '../src/keystore/softhsm.js';
import { dovecotAvailable } from './helpers/dovecot.js';
import { waitFor, type MailSink, type Postfix } from './helpers/postfix.js';
import { startTwoDomains, type Capture, type Sidecar, type TwoDomains } from './helpers/two-domains.js';

const SUBJECT = 'Quarterly figures 7d1f';
const BODY_LINE = 'The margin moved to 41.7 percent; keep it between us.';
const MESSAGE = [
  'From: Alice <alice@a.test>',
  'To: Bob <bob@b.test>, Cathy <cathy@b.test>, Carol <carol@legacy.test>',
  `Subject: ${SUBJECT}`,
  'Date: Sun, 22 Nov 2026 10:00:00 +0000',
  'Message-ID: <e2e-1@a.test>',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=us-ascii',
  'X-Folded: one',
  '\ttwo',
  '',
  'Hi Bob,',
  '',
  BODY_LINE,
  '',
].join('\r\n');

/** Every file under dir, recursively (queue files). */
function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** The message as delivered, minus what the receiving Postfix and the milter add on top. */
function withoutTransportHeaders(content: string): string {
  const lines = content.split('\n');
  let i = 0;
  const added = /^(Return-Path|Delivered-To|X-Original-To|Received|Authentication-Results):/i;
  while (i < lines.length && (added.test(lines[i]!) || (i > 0 && /^[ \t]/.test(lines[i]!) && added.test(lines.slice(0, i).reverse().find((l) => !/^[ \t]/.test(l)) ?? '')))) i++;
  return lines.slice(i).join('\n');
}

const skip = !softHsmAvailable() ? 'SoftHSM2 is not installed' : !dovecotAvailable() ? 'dovecot-core is not installed' : false;

describe('two dark domains end to end (Postfix, DMTP, DNSSEC, Redis, SoftHSM)', { skip, timeout: 240_000 }, () => {
  let env: TwoDomains;
  let root: string;
  let sink: MailSink;
  let pfA: Postfix;
  let pfB: Postfix;
  let capture: Capture;
  let a: Sidecar;
  let b: Sidecar;
  let PASSWORD: string;
  let startSidecar: TwoDomains['startSidecar'];
  let stopSidecar: TwoDomains['stopSidecar'];

  before(async () => {
    env = await startTwoDomains();
    ({ root, sink, pfA, pfB, a, b, startSidecar, stopSidecar, password: PASSWORD } = env);
    capture = env.capture!;
  });

  after(async () => {
    await env?.stop();
  });

  async function submit(message: string, to: string[]) {
    const file = path.join(root, `message-${Date.now()}.eml`);
    // swaks ends DATA with CRLF "." CRLF after the file's content: without this the message would gain a line.
    fs.writeFileSync(file, message.replace(/\r\n$/, ''));
    const r = await pfA.sendWithSwaks(['--server', `127.0.0.1:${a.ports.submission}`, '--from', 'alice@a.test', '--to', to.join(','), '-a', 'PLAIN', '-au', 'alice@a.test', '-ap', PASSWORD, '--data', `@${file}`]);
    assert.equal(r.code, 0, `${r.output}\n${logs()}`);
    assert.deepEqual(r.replies.filter((x) => x.command.startsWith('RCPT')).map((x) => x.code), to.map(() => 250), r.output);
  }
  const logs = () => env.logs();

  it('alice → bob (trustful), cathy (cautious), carol (legacy): each gets what their account allows, nothing in clear on the wire', async () => {
    await submit(MESSAGE, ['bob@b.test', 'cathy@b.test', 'carol@legacy.test']);

    // The legacy recipient gets the plaintext, and only carol is on that copy.
    const [legacy] = await sink.waitForMessages(1, 20_000);
    assert.deepEqual(legacy!.recipients, ['carol@legacy.test']);
    assert.ok(legacy!.data.includes(SUBJECT) && legacy!.data.includes(BODY_LINE));

    const bob = await pfB.waitForDelivery('bob', 60_000).catch((e: Error) => assert.fail(`${e.message}\n${logs()}`));
    const cathy = await pfB.waitForDelivery('cathy', 30_000);
    // bob reads the original, byte for byte, with a DIME pass.
    assert.match(bob.content, /^Authentication-Results: [^;]+; dime=pass/m);
    assert.equal(withoutTransportHeaders(bob.content), MESSAGE.replace(/\r\n/g, '\n'));
    // cathy's server holds no key of hers: still sealed, with the verification result.
    assert.match(cathy.content, /^Authentication-Results: [^;]+; dime=pass/m);
    assert.match(cathy.content, /application\/x-dime-message/);
    for (const secret of [SUBJECT, BODY_LINE]) assert.ok(!cathy.content.includes(secret), `cathy's copy shows ${secret}`);

    // The DMTP capture: TLS, and nothing of the message in it.
    const wire = capture.bytes().toString('latin1');
    assert.ok(wire.length > 1000, 'DMTP went through the proxy');
    for (const secret of [SUBJECT, BODY_LINE, 'bob@b.test', 'alice@a.test']) assert.ok(!wire.includes(secret), `the DMTP capture shows ${secret}`);
    assert.equal(sink.messages.length, 1, 'no plaintext went anywhere else');
  });

  it("b.test's relay down: the sealed bundle waits in a.test's queue (no Subject, no body in its files), then arrives once", async () => {
    const subject = 'Second note 93ab';
    const body = 'Nobody but Bob reads this second line.';
    const second = MESSAGE.replace(SUBJECT, subject).replace(BODY_LINE, body).replace('<e2e-1@a.test>', '<e2e-2@a.test>');
    await stopSidecar(b);
    // bob's signets come from the cache (Redis) now that b.test's DX does not answer.
    await submit(second, ['bob@b.test']);
    const deferred = await waitFor(() => {
      const q = pfA.queue().filter((e) => e.queueName === 'deferred');
      return q.length > 0 ? q : undefined;
    }, 20_000, "the bundle deferred in a.test's queue", logs);
    assert.deepEqual(deferred.flatMap((e) => e.recipients.map((x) => x.address)), ['bob@b.test']);
    const queueFiles = filesUnder(pfA.queueDir).filter((f) => /\/(incoming|active|deferred|hold|maildrop|corrupt)\//.test(f));
    assert.ok(queueFiles.length > 0);
    for (const file of queueFiles) {
      const text = fs.readFileSync(file).toString('latin1');
      for (const secret of [subject, body, 'Nobody but Bob']) assert.ok(!text.includes(secret), `${file} contains ${JSON.stringify(secret)}`);
    }

    await startSidecar(b);
    spawnSync('/usr/sbin/postqueue', ['-c', pfA.configDir, '-f']);
    const bob = await pfB.waitForDelivery('bob', 60_000).catch((e: Error) => assert.fail(`${e.message}\n${logs()}`));
    assert.equal(withoutTransportHeaders(bob.content), second.replace(/\r\n/g, '\n'));
    // Exactly once: nothing else arrives, nothing is left queued.
    await new Promise((res) => setTimeout(res, 3000));
    await assert.rejects(pfB.waitForDelivery('bob', 500));
    assert.deepEqual(pfA.queue(), []);
    assert.equal(sink.messages.length, 1);
  });
});
