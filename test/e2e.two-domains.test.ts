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
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml';
import { defaultCrypto } from '../src/crypto/index.js';
import { generateKeys } from '../src/dime/keys.js';
import { armorSignet, createSigningRequest } from '../src/dime/signet/index.js';
import { createSoftHsmToken, softHsmAvailable } from '../src/keystore/softhsm.js';
import { DIME_BIN, dime, oneJsonObject, scratchDir } from './helpers/cli.js';
import { startDnssecRig, type DnssecRig } from './helpers/dnssec.js';
import { dovecotAvailable, startDovecotAuth, type DovecotAuth } from './helpers/dovecot.js';
import { freePort, startMailSink, startPostfix, waitFor, type MailSink, type Postfix } from './helpers/postfix.js';
import { exampleMain, exampleMaster } from './helpers/postfix-examples.js';
import { startRedis, type RedisRig } from './helpers/redis.js';

const crypto = defaultCrypto();
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
const PASSWORD = 'alice-secret-9';

interface Sidecar {
  dir: string;
  config: string;
  ports: Record<'milter' | 'policy' | 'socketmap' | 'lmtp' | 'metrics' | 'bundle' | 'handover' | 'submission', number>;
  relayListen: string;
  env: NodeJS.ProcessEnv;
  child?: ChildProcess;
  logFile: string;
}

const taken = new Set<number>();

async function ports(): Promise<Sidecar['ports']> {
  const names = ['milter', 'policy', 'socketmap', 'lmtp', 'metrics', 'bundle', 'handover', 'submission'] as const;
  const out = {} as Sidecar['ports'];
  for (const n of names) {
    // freePort() only says a port is free now: never hand the same one out twice.
    let p = await freePort();
    while (taken.has(p)) p = await freePort();
    taken.add(p);
    out[n] = p;
  }
  return out;
}

function httpGet(port: number, p: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, timeout: 2000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

async function startSidecar(s: Sidecar): Promise<void> {
  const out = fs.openSync(s.logFile, 'a');
  s.child = spawn(process.execPath, [DIME_BIN, 'start', '--config', s.config, '--metrics', `inet:127.0.0.1:${s.ports.metrics}`], { env: { ...process.env, ...s.env }, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const child = s.child;
  // waitFor() polls synchronous checks; this one needs HTTP, so it polls itself.
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`dime start exited ${child.exitCode}:\n${fs.readFileSync(s.logFile, 'utf8').slice(-3000)}`);
    const r = await httpGet(s.ports.metrics, '/healthz').catch(() => undefined);
    if (r?.status === 200 && r.body.includes('"relay"')) return;
    if (Date.now() > deadline) throw new Error(`dime start (${s.config}) not healthy in 30 s:\n${fs.readFileSync(s.logFile, 'utf8').slice(-3000)}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

async function stopSidecar(s: Sidecar): Promise<void> {
  const child = s.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

/** A TCP proxy that records every byte in both directions (the DMTP "capture"). */
async function recordingProxy(listenHost: string, port: number, targetHost: string): Promise<{ bytes: () => Buffer; close: () => Promise<void> }> {
  const chunks: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, targetHost);
    sockets.add(client).add(upstream);
    client.on('data', (d) => chunks.push(Buffer.from(d)));
    upstream.on('data', (d) => chunks.push(Buffer.from(d)));
    client.pipe(upstream).pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, listenHost, resolve));
  return {
    bytes: () => Buffer.concat(chunks),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

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

/** The sidecars' last log lines, for failure messages. */
function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-lines).map((l) => l.slice(0, 600)).join('\n');
  } catch {
    return '(no log)';
  }
}

const skip = !softHsmAvailable() ? 'SoftHSM2 is not installed' : !dovecotAvailable() ? 'dovecot-core is not installed' : false;

describe('two dark domains end to end (Postfix, DMTP, DNSSEC, Redis, SoftHSM)', { skip, timeout: 240_000 }, () => {
  let root: string;
  let dns: DnssecRig;
  let redis: RedisRig;
  let sink: MailSink;
  let pfA: Postfix;
  let pfB: Postfix;
  let capture: Awaited<ReturnType<typeof recordingProxy>>;
  let sasl: DovecotAuth;
  const a = {} as Sidecar;
  const b = {} as Sidecar;

  before(async () => {
    root = scratchDir('dime-e2e-');
    fs.chmodSync(root, 0o755);
    // a.test: organisation keys generated inside SoftHSM2; b.test: the file keystore.
    const token = createSoftHsmToken({ label: 'a-test' });
    Object.assign(a, { dir: path.join(root, 'a'), config: path.join(root, 'a', 'dime.toml'), ports: await ports(), relayListen: 'inet:127.0.0.2:26', env: { ...token.env, DIME_HSM_PIN: token.pin }, logFile: path.join(root, 'a.log') });
    Object.assign(b, { dir: path.join(root, 'b'), config: path.join(root, 'b', 'dime.toml'), ports: await ports(), relayListen: 'inet:127.0.0.4:26', env: {}, logFile: path.join(root, 'b.log') });
    const initA = dime(['init', '--domain', 'a.test', '--dir', a.dir, '--dx', '127.0.0.2', '--hsm-module', token.module, '--hsm-token', token.label, '--hsm-pin-file', token.pinFile, '--json'], { env: { ...process.env, ...a.env } });
    assert.equal(initA.status, 0, initA.stderr);
    // b.test's record names 127.0.0.3, where the recording proxy listens in front of the relay.
    const initB = dime(['init', '--domain', 'b.test', '--dir', b.dir, '--dx', '127.0.0.3', '--json']);
    assert.equal(initB.status, 0, initB.stderr);
    const recordA = oneJsonObject(initA.stdout).record as string;
    const recordB = oneJsonObject(initB.stdout).record as string;

    // Users: alice (trustful) at a.test; bob (trustful) and cathy (cautious: her own keys) at b.test.
    for (const [s, args] of [
      [a, ['user', 'add', 'alice@a.test']],
      [b, ['user', 'add', 'bob@b.test']],
    ] as const) {
      const r = dime([...args, '--config', s.config], { env: { ...process.env, ...s.env } });
      assert.equal(r.status, 0, r.stderr);
    }
    const cathyKeys = generateKeys('user', crypto);
    const ssr = await createSigningRequest({ signer: crypto.ed25519Signer(cathyKeys.signingKey), encryptionKey: crypto.secp256k1PublicKey(cathyKeys.encryptionKey) });
    fs.writeFileSync(path.join(root, 'cathy.ssr'), armorSignet(ssr));
    fs.writeFileSync(path.join(root, 'cathy.key'), Buffer.from('her client keeps the real key; this blob is opaque to the server'));
    const rc = dime(['user', 'add', 'cathy@b.test', '--mode', 'cautious', '--request', path.join(root, 'cathy.ssr'), '--encrypted-key', path.join(root, 'cathy.key'), '--config', b.config]);
    assert.equal(rc.status, 0, rc.stderr);

    dns = await startDnssecRig([
      { name: 'a.test', signed: true, records: [`_dx 60 IN TXT "${recordA}"`] },
      { name: 'b.test', signed: true, records: [`_dx 60 IN TXT "${recordB}"`] },
      { name: 'legacy.test', signed: true, records: ['www 60 IN A 127.0.0.1'] },
    ]);
    redis = await startRedis();
    sink = await startMailSink();

    // The sidecars' configurations: dime init's files, pointed at this machine's ports.
    for (const s of [a, b]) {
      const conf = parseToml(fs.readFileSync(s.config, 'utf8')) as Record<string, Record<string, unknown>>;
      conf.milter!.listen = `inet:127.0.0.1:${s.ports.milter}`;
      conf.policy!.listen = `inet:127.0.0.1:${s.ports.policy}`;
      conf.policy!.socketmap = `inet:127.0.0.1:${s.ports.socketmap}`;
      conf.relay!.listen = s.relayListen;
      conf.relay!.lmtp_listen = `inet:127.0.0.1:${s.ports.lmtp}`;
      conf.relay!.mta = `inet:127.0.0.1:${s.ports.handover}`;
      conf.gateway!.bundle_service = `inet:127.0.0.1:${s.ports.bundle}`;
      conf.resolver = { ...conf.resolver, servers: [dns.resolver], redis: redis.url, deadline_ms: 8000, query_timeout_ms: 2000 };
      conf.log = { level: 'debug' };
      fs.writeFileSync(s.config, stringifyToml(conf));
    }

    // SASL for a.test's submission service: Dovecot's auth server (test/helpers/dovecot.ts says why not Cyrus).
    sasl = await startDovecotAuth({ 'alice@a.test': PASSWORD });
    const transport = path.join(root, 'transport');
    // b.test routes to the sink too: were the milter to let plaintext through, the sink would show it.
    fs.writeFileSync(transport, `legacy.test smtp:[127.0.0.1]:${sink.port}\nb.test smtp:[127.0.0.1]:${sink.port}\n`);

    const fast = { queue_run_delay: '1s', minimal_backoff_time: '1s', maximal_backoff_time: '2s', lmtp_connect_timeout: '2s' };
    const subs = (s: Sidecar): Record<string, string> => ({
      '127.0.0.1:8899': `127.0.0.1:${s.ports.milter}`,
      '127.0.0.1:9998': `127.0.0.1:${s.ports.policy}`,
      '127.0.0.1:10027': `127.0.0.1:${s.ports.bundle}`,
      '127.0.0.1:10026': `127.0.0.1:${s.ports.lmtp}`,
      '[127.0.0.1]:10026': `[127.0.0.1]:${s.ports.lmtp}`,
      '127.0.0.1:10025': `127.0.0.1:${s.ports.handover}`,
      'submission inet': `127.0.0.1:${s.ports.submission} inet`,
    });
    [pfA, pfB] = await Promise.all([
      startPostfix({
        domain: 'a.test',
        users: ['alice'],
        main: { ...exampleMain(subs(a)), ...fast, smtpd_sasl_type: 'dovecot', smtpd_sasl_path: sasl.socket, transport_maps: `texthash:${transport}` },
        master: exampleMaster(subs(a)),
      }),
      startPostfix({ domain: 'b.test', users: ['bob', 'cathy'], main: { ...exampleMain(subs(b)), ...fast }, master: exampleMaster(subs(b)) }),
    ]);
    capture = await recordingProxy('127.0.0.3', 26, '127.0.0.4');
    await startSidecar(a);
    await startSidecar(b);
  });

  after(async () => {
    await Promise.all([a, b].map((s) => stopSidecar(s)));
    await Promise.all([pfA?.stop(), pfB?.stop(), sink?.close(), capture?.close(), sasl?.stop(), redis?.stop(), dns?.stop()]);
    if (!process.env.DIME_KEEP_E2E) fs.rmSync(root, { recursive: true, force: true });
  });

  async function submit(message: string, to: string[]) {
    const file = path.join(root, `message-${Date.now()}.eml`);
    // swaks ends DATA with CRLF "." CRLF after the file's content: without this the message would gain a line.
    fs.writeFileSync(file, message.replace(/\r\n$/, ''));
    const r = await pfA.sendWithSwaks(['--server', `127.0.0.1:${a.ports.submission}`, '--from', 'alice@a.test', '--to', to.join(','), '-a', 'PLAIN', '-au', 'alice@a.test', '-ap', PASSWORD, '--data', `@${file}`]);
    assert.equal(r.code, 0, `${r.output}\n${logs()}`);
    assert.deepEqual(r.replies.filter((x) => x.command.startsWith('RCPT')).map((x) => x.code), to.map(() => 250), r.output);
  }
  const logs = () => `--- a.test sidecar ---\n${tail(a.logFile)}\n--- b.test sidecar ---\n${tail(b.logFile)}`;

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
