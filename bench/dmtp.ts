/**
 * DMTP relay throughput (issue 5): DIME messages per second from example.com's client to
 * example.org's relay on loopback, over real TLS, with everything the relay does per message
 * (origin signet lookup through the cache, destination chunk, origin signatures, MIME wrapper, SMTP
 * hand-off to a sink, 250 after the sink's 250). 4 KiB and 1 MiB, 50 concurrent sessions.
 *
 * One operation = 50 messages, one on each of 50 concurrent sessions, so messages/s = ops/s × 50.
 * Baseline, same run: the same bytes over 50 persistent raw TLS connections to a server that
 * reads SIZE octets and answers one line (transport and TLS cost only, no DMTP, no DIME, no MTA).
 *
 * Memory: `node --expose-gc dist/bench/dmtp.js --memory` (run by the suite in a fresh process)
 * sends 25 MiB messages over 4 concurrent sessions and reports peak resident memory.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as nodeCrypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { createNodeBackend } from '../src/crypto/index.js';
import { localActorKeys, sealMessage, signAsOrigin } from '../src/dime/message/index.js';
import { certificateDer, signTlsPin } from '../src/dime/record.js';
import { createOrgSignet, createSigningRequest, fingerprint, signUserSignet, type Signet } from '../src/dime/signet/index.js';
import { CachingSignetSource, DMTP_TLS_CIPHERS, DmtpClient, StaticPeerLocator, type DmtpConnection, type Envelope } from '../src/dmtp/client.js';
import { startRelay, type DmtpServer } from '../src/dmtp/server.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { createLogger } from '../src/log.js';
import { registerBench, type BenchGroup } from './lib.js';

const CONCURRENCY = 50;
const KIB = 1024;
const MIB = 1024 * KIB;
const crypto = createNodeBackend();
const te = (s: string) => new TextEncoder().encode(s);
const key = (label: string) => new Uint8Array(nodeCrypto.createHash('sha256').update(label).digest());
const silent = createLogger({ level: 'silent' });

interface Env {
  message(size: number): Promise<Uint8Array>;
  envelope: Envelope;
  client: DmtpClient;
  relayPort: number;
  cert: { cert: string; key: string };
  sink: { count: number };
  close(): Promise<void>;
}

function selfSigned(dir: string, host: string): { cert: string; key: string } {
  const k = path.join(dir, `${host}.key`);
  const c = path.join(dir, `${host}.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', k, '-out', c, '-days', '2', '-subj', `/CN=${host}`, '-addext', `subjectAltName=DNS:${host}`], { stdio: 'pipe' });
  return { cert: fs.readFileSync(c, 'latin1'), key: fs.readFileSync(k, 'latin1') };
}

/** An SMTP sink that only counts: finds the end of data across reads without buffering the message. */
async function startCountingSink(): Promise<{ port: number; count: number; server: net.Server }> {
  const state = { port: 0, count: 0, server: undefined as unknown as net.Server };
  const server = net.createServer((socket) => {
    socket.unref();
    socket.setNoDelay(true);
    socket.on('error', () => undefined);
    socket.write('220 sink ESMTP\r\n');
    let inData = false;
    let tail = '';
    let line = '';
    socket.on('data', (chunk: Buffer) => {
      let text = chunk.toString('latin1');
      for (;;) {
        if (inData) {
          const scan = tail + text;
          const end = scan.indexOf('\r\n.\r\n');
          if (end < 0) {
            tail = scan.slice(-4);
            return;
          }
          inData = false;
          state.count++;
          socket.write('250 2.0.0 Ok: queued\r\n');
          text = scan.slice(end + 5);
          tail = '';
        }
        line += text;
        text = '';
        let nl: number;
        while (!inData && (nl = line.indexOf('\r\n')) >= 0) {
          const cmd = line.slice(0, 4).toUpperCase();
          line = line.slice(nl + 2);
          if (cmd === 'DATA') {
            inData = true;
            tail = '\r\n'; // an empty message ends at the first ".\r\n"
            socket.write('354 go\r\n');
          } else if (cmd === 'QUIT') socket.end('221 bye\r\n');
          else socket.write(cmd === 'EHLO' ? '250-sink\r\n250 8BITMIME\r\n' : '250 Ok\r\n');
        }
        if (!inData) return;
        text = line;
        line = '';
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  server.unref();
  state.port = (server.address() as net.AddressInfo).port;
  state.server = server;
  return state;
}

export async function setup(): Promise<Env> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dime-bench-dmtp-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const orgA = crypto.ed25519Signer(key('bench org A'));
  const orgB = crypto.ed25519Signer(key('bench org B'));
  const origin = await createOrgSignet({ signer: orgA, encryptionKey: crypto.secp256k1PublicKey(key('bench enc A')), domain: 'example.com' });
  const destination = await createOrgSignet({ signer: orgB, encryptionKey: crypto.secp256k1PublicKey(key('bench enc B')), domain: 'example.org' });
  const authorSigner = crypto.ed25519Signer(key('bench author'));
  const author = await signUserSignet(crypto, await createSigningRequest({ signer: authorSigner, encryptionKey: crypto.secp256k1PublicKey(key('bench author enc')) }), { orgSigner: orgA, address: 'alice@example.com' });
  const recipient = await signUserSignet(crypto, await createSigningRequest({ signer: crypto.ed25519Signer(key('bench bob')), encryptionKey: crypto.secp256k1PublicKey(key('bench bob enc')) }), { orgSigner: orgB, address: 'bob@example.org' });
  const storeA = new FileSignetStore(path.join(dir, 'a'), crypto);
  const storeB = new FileSignetStore(path.join(dir, 'b'), crypto);
  for (const s of [origin, author]) await storeA.put(s);
  for (const s of [destination, recipient]) await storeB.put(s);
  const certA = selfSigned(dir, 'dx.example.com');
  const certB = selfSigned(dir, 'dx.example.org');
  const rec = (seed: Uint8Array, cert: string) => ({ version: 1 as const, poks: [crypto.ed25519PublicKey(seed)], tls: [signTlsPin(seed, certificateDer(cert), crypto)], policy: 'experimental' as const, subdomain: 'strict' as const, dx: [] });
  const sink = await startCountingSink();
  const locator = new StaticPeerLocator();
  const common = { crypto, mta: { kind: 'inet' as const, host: '127.0.0.1', port: sink.port }, listen: 'inet:127.0.0.1:0', log: silent, limits: { violationDelayMs: 0 } };
  const relayA: DmtpServer = await startRelay({ ...common, domain: 'example.com', hostname: 'dx.example.com', store: storeA, keys: localActorKeys(crypto, key('bench enc A')), signets: new DmtpClient({ crypto, locator, log: silent }), tls: certA });
  const relayB: DmtpServer = await startRelay({ ...common, domain: 'example.org', hostname: 'dx.example.org', store: storeB, keys: localActorKeys(crypto, key('bench enc B')), signets: new CachingSignetSource(new DmtpClient({ crypto, locator, log: silent })), tls: certB });
  relayA.unref();
  relayB.unref();
  locator.set('example.com', { record: rec(key('bench org A'), certA.cert), dnssec: 'validated', candidates: [{ host: 'dx.example.com', address: '127.0.0.1', port: relayA.endpoints.implicit!.port, mode: 'implicit' }] });
  locator.set('example.org', { record: rec(key('bench org B'), certB.cert), dnssec: 'validated', candidates: [{ host: 'dx.example.org', address: '127.0.0.1', port: relayB.endpoints.implicit!.port, mode: 'implicit' }] });
  const seal = { author: { address: 'alice@example.com', signet: author, signer: authorSigner }, origin: { domain: 'example.com', signet: origin }, destination: { domain: 'example.org', signet: destination }, recipient: { address: 'bob@example.org', signet: recipient } };
  const signets: Record<'author' | 'origin' | 'destination' | 'recipient', Signet> = { author, origin, destination, recipient };
  return {
    async message(size: number) {
      const content = {
        commonHeaders: { Date: te('Sun, 22 Nov 2026 10:00:00 +0000'), To: te('bob@example.org'), From: te('alice@example.com'), Subject: te('bench') },
        otherHeaders: te('Message-ID: <bench@example.com>\r\n'),
        display: [new Uint8Array(nodeCrypto.randomBytes(size))],
      };
      const sealed = await sealMessage(crypto, seal, content);
      return (await signAsOrigin(crypto, sealed, { keys: localActorKeys(crypto, key('bench enc A')), signer: orgA, signets, bounce: { meta: true } })).message;
    },
    envelope: { from: { domain: 'example.com', fingerprint: fingerprint(crypto, origin, 'full')! }, to: { domain: 'example.org', fingerprint: fingerprint(crypto, destination, 'full')! } },
    client: new DmtpClient({ crypto, locator, log: silent }),
    relayPort: relayB.endpoints.implicit!.port,
    cert: certB,
    sink,
    close: async () => {
      await Promise.all([relayA.close(1_000), relayB.close(1_000)]);
      sink.server.close();
    },
  };
}

/** The floor: a TLS server (same certificate, suites and versions) that reads SIZE octets + CRLF and answers one line. */
async function rawTlsBaseline(env: Env, size: number): Promise<() => Promise<void>> {
  const server = tls.createServer({ ...env.cert, minVersion: 'TLSv1.2', ciphers: DMTP_TLS_CIPHERS }, (socket) => {
    socket.unref();
    socket.setNoDelay(true);
    socket.on('error', () => undefined);
    let got = 0;
    socket.on('data', (chunk: Buffer) => {
      got += chunk.length;
      if (got >= size + 2) {
        got -= size + 2;
        socket.write('250 OK [x]\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  server.unref();
  const port = (server.address() as net.AddressInfo).port;
  const sockets = await Promise.all(
    Array.from({ length: CONCURRENCY }, () => new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, servername: 'dx.example.org' }, () => {
        s.unref();
        resolve(s);
      });
      s.setNoDelay(true);
      s.once('error', reject);
    })),
  );
  const payload = Buffer.alloc(size, 0x42);
  return () =>
    Promise.all(
      sockets.map(
        (s) =>
          new Promise<void>((resolve) => {
            s.once('data', () => resolve());
            s.write(payload);
            s.write('\r\n');
          }),
      ),
    ).then(() => undefined);
}

async function sessions(env: Env): Promise<DmtpConnection[]> {
  const conns = await Promise.all(Array.from({ length: CONCURRENCY }, () => env.client.connect('example.org')));
  for (const c of conns) c.unref();
  return conns;
}

/**
 * Every socket and server of this suite is unref'd, so the runner exits when it is done without a
 * teardown hook; while an operation (or the setup) is in progress, this ref'd timer keeps the
 * process alive.
 */
async function held<T>(fn: () => Promise<T>): Promise<T> {
  const keep = setInterval(() => undefined, 1 << 30);
  try {
    return await fn();
  } finally {
    clearInterval(keep);
  }
}

function check(outcomes: { outcome: string; detail: string }[]): void {
  const bad = outcomes.find((o) => o.outcome !== 'delivered');
  if (bad) throw new Error(`bench delivery failed: ${bad.detail}`);
}

async function groups(): Promise<BenchGroup[]> {
  runMemoryChildIfSelected();
  return held(buildGroups);
}

async function buildGroups(): Promise<BenchGroup[]> {
  const env = await setup();
  const out: BenchGroup[] = [];
  for (const [label, size] of [['4 KiB', 4 * KIB], ['1 MiB', MIB]] as const) {
    const message = await env.message(size);
    const floor = await rawTlsBaseline(env, message.length);
    const conns = await sessions(env);
    out.push({
      name: `deliver ${label} DIME messages (${message.length} octets sealed), ${CONCURRENCY} concurrent sessions: 1 op = ${CONCURRENCY} messages`,
      baseline: `raw TLS: same octets, ${CONCURRENCY} persistent connections, one-line ack`,
      bytesPerOp: CONCURRENCY * message.length,
      cases: [
        { name: `raw TLS: same octets, ${CONCURRENCY} persistent connections, one-line ack`, fn: () => held(floor) },
        { name: 'DMTP relay → SMTP sink, persistent sessions (MAIL, RCPT, DATA per message)', fn: () => held(async () => check(await Promise.all(conns.map((c) => c.send(message, env.envelope))))) },
        { name: 'DMTP relay → SMTP sink, new TLS session per message (connect, EHLO, …, QUIT)', fn: () => held(async () => check(await Promise.all(Array.from({ length: CONCURRENCY }, () => env.client.deliver(message, env.envelope))))) },
      ],
    });
  }
  return out;
}

registerBench({ name: 'dmtp', groups });

// ------------------------------------------------------------------------------------ memory

/** `npm run bench` runs the memory measurement in a fresh process unless --filter excludes dmtp. */
function runMemoryChildIfSelected(): void {
  const argv = process.argv.slice(2);
  const i = argv.indexOf('--filter');
  const filter = (i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith('--filter='))?.slice('--filter='.length))?.toLowerCase();
  if (filter && !'dmtp/memory'.includes(filter) && !filter.startsWith('dmtp')) return;
  const quick = argv.includes('--quick');
  console.log('### dmtp: memory (fresh process)\n');
  const r = spawnSync(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), '--memory', ...(quick ? ['--quick'] : [])], { encoding: 'utf8', timeout: 600_000 });
  console.log(`${(r.stdout + r.stderr).trim()}\n`);
}

async function memory(quick: boolean): Promise<void> {
  const SIZE = 25 * MIB;
  const SESSIONS = 4;
  const ROUNDS = quick ? 1 : 3;
  const env = await setup();
  const message = await env.message(SIZE);
  const conns = await Promise.all(Array.from({ length: SESSIONS }, () => env.client.connect('example.org')));
  // Warm up (signet cache, JIT) with a small message, then measure from a collected heap.
  const small = await env.message(4 * KIB);
  check(await Promise.all(conns.map((c) => c.send(small, env.envelope))));
  global.gc?.();
  const before = process.memoryUsage().rss;
  let peak = before;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 2);
  const t0 = performance.now();
  for (let r = 0; r < ROUNDS; r++) check(await Promise.all(conns.map((c) => c.send(message, env.envelope))));
  const seconds = (performance.now() - t0) / 1000;
  clearInterval(timer);
  peak = Math.max(peak, process.resourceUsage().maxRSS * 1024);
  for (const c of conns) await c.quit();
  await env.close();
  const n = ROUNDS * SESSIONS;
  console.log(
    `${n} messages of ${(message.length / MIB).toFixed(1)} MiB (${SESSIONS} concurrent sessions × ${ROUNDS} rounds, sender and relay in one process), ` +
      `${(n / seconds).toFixed(2)} messages/s: peak RSS ${(peak / MIB).toFixed(0)} MiB, ${((peak - before) / MIB).toFixed(0)} MiB above the ${(before / MIB).toFixed(0)} MiB before = ` +
      `${((peak - before) / message.length).toFixed(2)}× one message, ${((peak - before) / (message.length * SESSIONS)).toFixed(2)}× the ${SESSIONS} in flight`,
  );
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1]) && process.argv.includes('--memory')) {
  await memory(process.argv.includes('--quick'));
  process.exit(0);
}
