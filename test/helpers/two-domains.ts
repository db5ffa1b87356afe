/**
 * Two dark domains on one machine, every part real (issue 8 item 4), for the end-to-end test and
 * the end-to-end benchmark: two Postfix instances built from postfix-examples/, two sidecars run as
 * `dime start` processes, both domains' records in zones signed by bind9 and validated by unbound,
 * Redis as the shared cache, a.test's organisation keys in SoftHSM2, and Dovecot as a.test's SASL
 * server for alice@a.test.
 *
 *   const env = await startTwoDomains();
 *   // alice@a.test submits to 127.0.0.1:env.a.ports.submission with env.password
 *   await env.pfB.waitForDelivery('bob');
 *   await env.stop();
 *
 * Users: alice (trustful) at a.test; bob (trustful) and cathy (cautious: her own keys) at b.test.
 * a.test's Postfix routes legacy.test and b.test (by domain) to a mail sink: were the milter to let
 * plaintext through, the sink would show it. Dark mail reaches b.test through the bundle service,
 * the relays and DMTP, never through that route.
 *
 * The relays listen on port 26 of 127.0.0.2 (a.test) and 127.0.0.4 (b.test); b.test's record
 * names 127.0.0.3, where a recording TCP proxy (the DMTP "capture") forwards to 127.0.0.4, unless
 * `capture: false`. The fixed port means one such environment per machine at a time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml';
import { defaultCrypto } from '../../src/crypto/index.js';
import { generateKeys } from '../../src/dime/keys.js';
import { armorSignet, createSigningRequest } from '../../src/dime/signet/index.js';
import { createSoftHsmToken, softHsmAvailable } from '../../src/keystore/softhsm.js';
import { DIME_BIN, dime, oneJsonObject, scratchDir } from './cli.js';
import { dnssecToolsAvailable, startDnssecRig, type DnssecRig } from './dnssec.js';
import { dovecotAvailable, startDovecotAuth, type DovecotAuth } from './dovecot.js';
import { freePort, startMailSink, startPostfix, type MailSink, type Postfix } from './postfix.js';
import { exampleMain, exampleMaster } from './postfix-examples.js';
import { redisAvailable, startRedis, type RedisRig } from './redis.js';

const crypto = defaultCrypto();
export const ALICE_PASSWORD = 'alice-secret-9';

export interface Sidecar {
  dir: string;
  config: string;
  ports: Record<'milter' | 'policy' | 'socketmap' | 'lmtp' | 'metrics' | 'bundle' | 'handover' | 'submission', number>;
  relayListen: string;
  env: NodeJS.ProcessEnv;
  child?: ChildProcess;
  logFile: string;
}

export interface Capture {
  bytes: () => Buffer;
  close: () => Promise<void>;
}

export interface TwoDomainsOptions {
  /** The sidecars' log level. Default debug (failure messages show the sidecars' last lines). */
  logLevel?: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
  /** DMTP to b.test through the recording proxy. Default true; it keeps every byte in memory. */
  capture?: boolean;
  /** Parent of the Postfix instances' scratch directories (default os.tmpdir(); benchmarks: a tmpfs). */
  scratchParent?: string;
  /**
   * More master.cf lines for one instance. `example` is postfix-examples/master.cf with this run's
   * ports, so a caller can copy a service from it and change one thing.
   */
  extraMaster?: (side: 'a' | 'b', example: string[]) => string[];
}

export interface TwoDomains {
  /** Scratch directory: sidecar configurations, keys and logs. */
  root: string;
  a: Sidecar;
  b: Sidecar;
  pfA: Postfix;
  pfB: Postfix;
  dns: DnssecRig;
  redis: RedisRig;
  sink: MailSink;
  sasl: DovecotAuth;
  /** The DMTP capture (undefined with `capture: false`). */
  capture: Capture | undefined;
  /** alice@a.test's SASL password. */
  password: string;
  startSidecar(s: Sidecar): Promise<void>;
  stopSidecar(s: Sidecar): Promise<void>;
  /** Both sidecars' last log lines, for failure messages. */
  logs(): string;
  /** Everything stopped, the scratch directory removed unless DIME_KEEP_E2E is set. */
  stop(): Promise<void>;
}

/** Why the environment cannot run here, or undefined. */
export function twoDomainsMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (master(8) starts as root and drops privileges)';
  if (!fs.existsSync('/usr/sbin/postfix') || !fs.existsSync('/usr/bin/swaks')) return 'postfix or swaks is not installed';
  if (!softHsmAvailable()) return 'SoftHSM2 is not installed';
  if (!dovecotAvailable()) return 'dovecot-core is not installed';
  if (!dnssecToolsAvailable()) return 'bind9 (named, dnssec-keygen, dnssec-signzone) or unbound is not installed';
  if (!redisAvailable()) return 'redis-server is not installed';
  return undefined;
}

const taken = new Set<number>();

/** A free port on 127.0.0.1 not handed out before in this process (freePort() only says "free now"). */
export async function reservePort(): Promise<number> {
  let p = await freePort();
  while (taken.has(p)) p = await freePort();
  taken.add(p);
  return p;
}

async function ports(): Promise<Sidecar['ports']> {
  const names = ['milter', 'policy', 'socketmap', 'lmtp', 'metrics', 'bundle', 'handover', 'submission'] as const;
  const out = {} as Sidecar['ports'];
  for (const n of names) out[n] = await reservePort();
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

export async function startSidecar(s: Sidecar): Promise<void> {
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

export async function stopSidecar(s: Sidecar): Promise<void> {
  const child = s.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

/** A TCP proxy that records every byte in both directions (the DMTP "capture"). */
async function recordingProxy(listenHost: string, port: number, targetHost: string): Promise<Capture> {
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

/** A sidecar's last log lines, for failure messages. */
export function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-lines).map((l) => l.slice(0, 600)).join('\n');
  } catch {
    return '(no log)';
  }
}

function check(r: { status: number | null; stderr: string }, what: string): void {
  if (r.status !== 0) throw new Error(`${what} exited ${r.status}: ${r.stderr}`);
}

export async function startTwoDomains(options: TwoDomainsOptions = {}): Promise<TwoDomains> {
  const capture = options.capture ?? true;
  const root = scratchDir('dime-e2e-');
  fs.chmodSync(root, 0o755);
  const a = {} as Sidecar;
  const b = {} as Sidecar;
  // Filled as things start, so a failure half-way stops what is running.
  const parts: Partial<Pick<TwoDomains, 'dns' | 'redis' | 'sink' | 'sasl' | 'pfA' | 'pfB' | 'capture'>> = {};
  const stop = async () => {
    await Promise.all([a, b].map((s) => stopSidecar(s)));
    await Promise.all([parts.pfA?.stop(), parts.pfB?.stop(), parts.sink?.close(), parts.capture?.close(), parts.sasl?.stop(), parts.redis?.stop(), parts.dns?.stop()]);
    if (!process.env.DIME_KEEP_E2E) fs.rmSync(root, { recursive: true, force: true });
  };
  try {
    // a.test: organisation keys generated inside SoftHSM2; b.test: the file keystore.
    const token = createSoftHsmToken({ label: 'a-test' });
    Object.assign(a, { dir: path.join(root, 'a'), config: path.join(root, 'a', 'dime.toml'), ports: await ports(), relayListen: 'inet:127.0.0.2:26', env: { ...token.env, DIME_HSM_PIN: token.pin }, logFile: path.join(root, 'a.log') });
    Object.assign(b, { dir: path.join(root, 'b'), config: path.join(root, 'b', 'dime.toml'), ports: await ports(), relayListen: 'inet:127.0.0.4:26', env: {}, logFile: path.join(root, 'b.log') });
    const initA = dime(['init', '--domain', 'a.test', '--dir', a.dir, '--dx', '127.0.0.2', '--hsm-module', token.module, '--hsm-token', token.label, '--hsm-pin-file', token.pinFile, '--json'], { env: { ...process.env, ...a.env } });
    check(initA, 'dime init a.test');
    // b.test's record names 127.0.0.3, where the recording proxy listens in front of the relay.
    const initB = dime(['init', '--domain', 'b.test', '--dir', b.dir, '--dx', capture ? '127.0.0.3' : '127.0.0.4', '--json']);
    check(initB, 'dime init b.test');
    const recordA = oneJsonObject(initA.stdout).record as string;
    const recordB = oneJsonObject(initB.stdout).record as string;

    for (const [s, args] of [
      [a, ['user', 'add', 'alice@a.test']],
      [b, ['user', 'add', 'bob@b.test']],
    ] as const) {
      check(dime([...args, '--config', s.config], { env: { ...process.env, ...s.env } }), args.join(' '));
    }
    const cathyKeys = generateKeys('user', crypto);
    const ssr = await createSigningRequest({ signer: crypto.ed25519Signer(cathyKeys.signingKey), encryptionKey: crypto.secp256k1PublicKey(cathyKeys.encryptionKey) });
    fs.writeFileSync(path.join(root, 'cathy.ssr'), armorSignet(ssr));
    fs.writeFileSync(path.join(root, 'cathy.key'), Buffer.from('her client keeps the real key; this blob is opaque to the server'));
    check(dime(['user', 'add', 'cathy@b.test', '--mode', 'cautious', '--request', path.join(root, 'cathy.ssr'), '--encrypted-key', path.join(root, 'cathy.key'), '--config', b.config]), 'user add cathy@b.test');

    const dns = (parts.dns = await startDnssecRig([
      { name: 'a.test', signed: true, records: [`_dx 60 IN TXT "${recordA}"`] },
      { name: 'b.test', signed: true, records: [`_dx 60 IN TXT "${recordB}"`] },
      { name: 'legacy.test', signed: true, records: ['www 60 IN A 127.0.0.1'] },
    ]));
    const redis = (parts.redis = await startRedis());
    const sink = (parts.sink = await startMailSink());

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
      conf.log = { level: options.logLevel ?? 'debug' };
      fs.writeFileSync(s.config, stringifyToml(conf));
    }

    // SASL for a.test's submission service: Dovecot's auth server (test/helpers/dovecot.ts says why not Cyrus).
    const sasl = (parts.sasl = await startDovecotAuth({ 'alice@a.test': ALICE_PASSWORD }));
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
    const master = (side: 'a' | 'b', s: Sidecar) => {
      const example = exampleMaster(subs(s));
      return [...example, ...(options.extraMaster?.(side, example) ?? [])];
    };
    const scratch = options.scratchParent ? { scratchParent: options.scratchParent } : {};
    // allSettled: if one start fails, the other has finished (and is in parts) when stop() runs.
    const started = await Promise.allSettled([
      startPostfix({
        domain: 'a.test',
        users: ['alice'],
        main: { ...exampleMain(subs(a)), ...fast, smtpd_sasl_type: 'dovecot', smtpd_sasl_path: sasl.socket, transport_maps: `texthash:${transport}` },
        master: master('a', a),
        ...scratch,
      }).then((pf) => (parts.pfA = pf)),
      startPostfix({ domain: 'b.test', users: ['bob', 'cathy'], main: { ...exampleMain(subs(b)), ...fast }, master: master('b', b), ...scratch }).then((pf) => (parts.pfB = pf)),
    ]);
    for (const r of started) if (r.status === 'rejected') throw r.reason;
    const pfA = parts.pfA!;
    const pfB = parts.pfB!;
    if (capture) parts.capture = await recordingProxy('127.0.0.3', 26, '127.0.0.4');
    await startSidecar(a);
    await startSidecar(b);
    return {
      root,
      a,
      b,
      pfA,
      pfB,
      dns,
      redis,
      sink,
      sasl,
      capture: parts.capture,
      password: ALICE_PASSWORD,
      startSidecar,
      stopSidecar,
      logs: () => `--- a.test sidecar ---\n${tail(a.logFile)}\n--- b.test sidecar ---\n${tail(b.logFile)}`,
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
