/**
 * The milter under Postfix (issue 4, item 5). In one run, private Postfix instances (the test rig,
 * test/helpers/postfix.ts) that differ only in smtpd_milters:
 *
 *   - Postfix alone (the baseline);
 *   - Postfix + `dime milter` (the pass-through handler; the CLI in its own process, as deployed),
 *     on a loopback TCP port, and on a unix socket;
 *   - Postfix + `dime milter --config` with the gateway on (dime init's configuration), receiving
 *     ordinary mail without DIME: what turning dime on costs an MX's legacy mail (no target);
 *   - Postfix + a minimal Node milter (fixed replies, no state, no logging): the floor for any
 *     milter written in Node;
 *   - Postfix + OpenDKIM with 127.0.0.1 in its PeerList, so it accepts every connection at CONNECT:
 *     what a C (libmilter) milter that passes everything through costs;
 *   - Postfix + OpenDKIM signing every message with RSA 2048 (the peer anchor).
 *
 * The OpenDKIM rows are left out, with a note, if opendkim or opendkim-tools is not installed.
 *
 * Throughput: smtp-source sends 4 KiB messages over 20 parallel SMTP sessions, one message per
 * connection (so the per-connection milter work counts for every message), and Postfix delivers
 * them to discard(8), so no mailbox I/O dominates. One operation is one smtp-source run of
 * MESSAGES messages **plus the wait until Postfix has delivered all of them**: messages/s is for
 * the whole receive-queue-deliver pipeline.
 *
 * Latency: smtp-source reports no per-message timings (its -t is the recipient), so while each
 * smtp-source run is going a Node client here sends messages of the same size one after another,
 * each on a fresh connection, and times each from connect() to the 250 after the final dot: what a
 * sending MTA waits for one message under that load. "Added" is a setup's percentile minus Postfix
 * alone's.
 *
 * CPU: the milter process's own CPU time (user + system, all threads, from /proc) per message,
 * the Postfix instance's (master and all its children), and the whole machine's busy CPU time per
 * message (everything running, so only meaningful on an otherwise idle machine). Postfix's extra
 * CPU with a milter that accepts at CONNECT is what Postfix spends on the milter exchange itself;
 * the report turns the least of them into the throughput ceiling for a milter that cost nothing.
 *
 * Shared machines drift by tens of percent within a minute, so the setups are measured in
 * interleaved rounds (one operation per setup per round, the order rotated every round, one
 * warm-up round not counted), and each ratio to Postfix alone is the median of the per-round
 * ratios. This part is printed by the suite itself; the Postfix instances are then stopped.
 *
 * The harness (bench/lib.ts) then measures, against the milters still running, the one exchange a
 * pass-through milter adds to each SMTP connection, driven the way Postfix drives it (connect,
 * OPTNEG, macros + CONNECT → ACCEPT, QUIT, close), one at a time: the latency it adds to each SMTP
 * connection on an idle machine.
 *
 * Needs root (master(8) starts as root), Debian's postfix (smtp-source) and, for the OpenDKIM rows,
 * opendkim + opendkim-tools. Run: `node dist/bench/run.js --filter milter-postfix` (after a build).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeCommand } from '../src/milter/codec.js';
import { initDomain } from '../test/helpers/cli.js';
import { freePort, startPostfix, type Postfix } from '../test/helpers/postfix.js';
import { median, registerBench, type BenchCase, type BenchGroup } from './lib.js';

const SMTP_SOURCE = '/usr/sbin/smtp-source';
const OPENDKIM = '/usr/sbin/opendkim';
const OPENDKIM_GENKEY = '/usr/sbin/opendkim-genkey';
const DIME_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/dime');

const quick = process.argv.includes('--quick');
const SESSIONS = 20;
const MESSAGE_BYTES = 4096;
const MESSAGES = quick ? 300 : 1000;
/** Counted rounds; one warm-up round comes first. */
const ROUNDS = quick ? 2 : 6;
const SENDER = 'sender@example.test';
/**
 * The Postfix instances (queue, maillog) live on a tmpfs when there is one: every message is
 * fsync()ed into the queue, and on a shared disk that adds noise from everything else on it.
 */
const SCRATCH = fs.existsSync('/dev/shm') && fs.statSync('/dev/shm').isDirectory() ? '/dev/shm' : undefined;
/** Not a rig mailbox domain: default_transport (discard) takes it. */
const BENCH_RCPT = 'bench@example.net';

const SUITE = 'milter-postfix';
const ALONE = 'Postfix alone';
const DIME = 'Postfix + dime milter (pass-through, inet)';
const DIME_UNIX = 'Postfix + dime milter (pass-through, unix socket)';
const GATEWAY = 'Postfix + dime milter (gateway on, legacy mail, inet)';
const FLOOR = 'Postfix + minimal Node milter (fixed replies)';
const FLOOR_UNIX = 'Postfix + minimal Node milter (fixed replies, unix socket)';
const DKIM_PASS = 'Postfix + OpenDKIM (PeerList: accepts at CONNECT)';
const DKIM_PASS_UNIX = 'Postfix + OpenDKIM (PeerList: accepts at CONNECT, unix socket)';
const DKIM = 'Postfix + OpenDKIM (signing, RSA 2048)';
const HANDSHAKE_GROUP = 'one pass-through milter connection as Postfix makes it (connect, OPTNEG, CONNECT → ACCEPT, QUIT, close), one at a time';
const H_DKIM = 'OpenDKIM, PeerList (C, libmilter)';
const H_FLOOR = 'minimal Node milter (fixed replies, no state)';
const H_DIME = 'dime milter, inet';
const H_DIME_UNIX = 'dime milter, unix socket';

interface Setup {
  name: string;
  pf: Postfix;
  /** The milter's process, for its CPU time. */
  milterPid: number | undefined;
  /** Wall time (ms) of each counted operation, by round. */
  opMs: number[];
  /** Probe latencies (ms) of the counted operations. */
  latencies: number[];
  /** Messages (smtp-source's and the probe's), milter CPU ms and machine busy CPU ms of the counted operations. */
  messages: number;
  milterCpuMs: number;
  /** CPU ms of this Postfix instance (master and every child, reaped ones included). */
  postfixCpuMs: number;
  busyMs: number;
}

/** CPU time (ms, user + system, all threads) of a process so far. */
function processCpuMs(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}
/**
 * CPU time (ms) of a Postfix instance so far: master's own and its reaped children's (cutime,
 * cstime), plus every live child's. A child that exits between two readings moves from the second
 * sum to the first, so differences are exact. Postfix's daemons do not fork further.
 */
function postfixCpuMs(pf: Postfix): number {
  const master = Number(fs.readFileSync(path.join(pf.queueDir, 'pid', 'master.pid'), 'utf8').trim());
  const fields = (pid: number | string) => fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  const m = fields(master);
  let ticks = Number(m[11]) + Number(m[12]) + Number(m[13]) + Number(m[14]);
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const f = fields(entry);
      if (Number(f[1]) === master) ticks += Number(f[11]) + Number(f[12]);
    } catch {
      // exited while we looked: its time is now in master's cutime/cstime
    }
  }
  return (ticks * 1000) / CLOCK_TICKS;
}
/** Busy CPU time (ms) of the whole machine so far: all but idle and iowait. */
function machineBusyMs(): number {
  const t = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return ((t.reduce((a, b) => a + b, 0) - t[3]! - t[4]!) * 1000) / CLOCK_TICKS;
}
const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

const children: ChildProcess[] = [];
const dirs: string[] = [];
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** Whether --filter (if any) selects something of this suite. */
function selected(): boolean {
  const argv = process.argv.slice(2);
  const i = argv.indexOf('--filter');
  const filter = (i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith('--filter='))?.slice('--filter='.length))?.toLowerCase();
  if (!filter) return true;
  const names = [ALONE, DIME, DIME_UNIX, GATEWAY, FLOOR, FLOOR_UNIX, DKIM_PASS, DKIM_PASS_UNIX, DKIM, H_DKIM, H_FLOOR, H_DIME, H_DIME_UNIX].map((c) => `${SUITE}/${HANDSHAKE_GROUP}/${c}`);
  return names.some((n) => n.toLowerCase().includes(filter));
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function canConnect(target: { port: number } | { path: string }): Promise<boolean> {
  return new Promise((resolve) => {
    const s = 'port' in target ? net.connect(target.port, '127.0.0.1') : net.connect(target.path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

// ------------------------------------------------------------------------------- the milters

/**
 * A private directory. opendkim refuses a configuration or key file on a path others can write
 * (such as /tmp), hence /run; setgid group postfix, so Postfix can reach a unix socket in it.
 */
function privateDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/run') ? '/run' : os.tmpdir(), prefix));
  dirs.push(dir);
  const gid = Number(spawnSync('id', ['-g', 'postfix'], { encoding: 'utf8' }).stdout.trim());
  fs.chownSync(dir, 0, gid);
  fs.chmodSync(dir, 0o2750);
  return dir;
}

function child(file: string, args: string[]): { proc: ChildProcess; stderr: () => string } {
  const proc = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(proc);
  proc.unref();
  (proc.stderr as net.Socket).unref();
  let text = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => (text += d));
  return { proc, stderr: () => text };
}

interface Milter {
  spec: string;
  pid: number;
}

/** `dime milter` in its own process, as deployed. */
async function startDimeMilter(listen: string): Promise<Milter> {
  const { proc, stderr } = child(process.execPath, [DIME_BIN, 'milter', '--listen', listen, '--log-level', 'info']);
  const until = Date.now() + 15_000;
  for (;;) {
    const m = /"event":"milter\.start".*?"listen":"([^"]+)"/.exec(stderr());
    if (m) return { spec: m[1]!, pid: proc.pid! };
    if (proc.exitCode !== null || Date.now() > until) throw new Error(`dime milter did not start (${proc.exitCode}): ${stderr()}`);
    await sleep(20);
  }
}

/**
 * `dime milter --config` with the gateway on, as a deployment runs it (dime init's configuration,
 * file keystore). The load is unauthenticated mail without DIME, i.e. what an MX receives most:
 * the gateway takes every message to its end (the inbound side looks for a DIME object and strips
 * forged Authentication-Results), then lets it through unchanged.
 */
async function startDimeGateway(): Promise<Milter> {
  const { dir, file } = await initDomain('bench.test', 'dime-bench-gateway-');
  dirs.push(dir);
  const { proc, stderr } = child(process.execPath, [DIME_BIN, 'milter', '--config', file, '--log-level', 'info']);
  const until = Date.now() + 20_000;
  for (;;) {
    const m = /"event":"milter\.start".*?"listen":"([^"]+)".*?"handler":"dime"/.exec(stderr());
    if (m) return { spec: m[1]!, pid: proc.pid! };
    if (proc.exitCode !== null || Date.now() > until) throw new Error(`dime milter (gateway) did not start (${proc.exitCode}): ${stderr()}`);
    await sleep(20);
  }
}

/** A minimal Node milter in its own process: OPTNEG → fixed reply, CONNECT → ACCEPT, QUIT → close. */
const FLOOR_MILTER = `
const net = require('node:net');
const optneg = Buffer.from([0,0,0,13,0x4f, 0,0,0,6, 0,0,0,0, 0,0,0x03,0x7e]);
const accept = Buffer.from([0,0,0,1,0x61]);
const server = net.createServer((s) => {
  let buf = Buffer.alloc(0);
  s.on('error', () => {});
  s.on('end', () => s.end());
  s.on('data', (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    while (buf.length >= 5 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const cmd = buf[4];
      buf = buf.subarray(4 + buf.readUInt32BE(0));
      if (cmd === 0x4f) s.write(optneg); else if (cmd === 0x43) s.write(accept); else if (cmd === 0x51) s.end();
    }
  });
});
const path = process.argv[1];
if (path) server.listen(path, () => { require('node:fs').chmodSync(path, 0o660); process.stderr.write('listening ' + path + '\\n'); });
else server.listen(0, '127.0.0.1', () => process.stderr.write('listening ' + server.address().port + '\\n'));
`;

/** On 127.0.0.1 (a port the OS picks), or on the unix socket `sock`. */
async function startFloorMilter(sock?: string): Promise<Milter> {
  const { proc, stderr } = child(process.execPath, ['-e', FLOOR_MILTER, ...(sock ? [sock] : [])]);
  const until = Date.now() + 10_000;
  for (;;) {
    const m = /listening (\S+)/.exec(stderr());
    if (m) return { spec: sock ? `unix:${sock}` : `inet:127.0.0.1:${m[1]}`, pid: proc.pid! };
    if (proc.exitCode !== null || Date.now() > until) throw new Error(`the minimal milter did not start: ${stderr()}`);
    await sleep(20);
  }
}

/**
 * OpenDKIM signing for example.test with a fresh 2048-bit key, on a loopback port; with
 * `passThrough`, 127.0.0.1 is in its PeerList and it accepts every connection at CONNECT.
 */
async function startOpenDkim(passThrough: boolean, unixSocket = false): Promise<Milter> {
  const dir = privateDir('dime-bench-opendkim-');
  // The directory is group postfix (setgid): with UMask 007 the socket is too, so Postfix can connect.
  const sock = path.join(dir, 'opendkim.sock');
  const gen = spawnSync(OPENDKIM_GENKEY, ['--bits=2048', `--directory=${dir}`, '--domain=example.test', '--selector=bench'], { encoding: 'utf8' });
  if (gen.status !== 0) throw new Error(`opendkim-genkey failed: ${gen.stderr}`);
  fs.writeFileSync(path.join(dir, 'peers'), '127.0.0.1\n');
  const port = await freePort();
  const conf = path.join(dir, 'opendkim.conf');
  fs.writeFileSync(
    conf,
    [
      'Syslog no',
      'Mode s',
      'Domain example.test',
      'Selector bench',
      `KeyFile ${path.join(dir, 'bench.private')}`,
      'Canonicalization relaxed/simple',
      'SignatureAlgorithm rsa-sha256',
      'InternalHosts 127.0.0.1',
      `PidFile ${path.join(dir, 'opendkim.pid')}`,
      unixSocket ? `Socket local:${sock}` : `Socket inet:${port}@127.0.0.1`,
      'UMask 007',
      ...(passThrough ? [`PeerList ${path.join(dir, 'peers')}`] : []),
      '',
    ].join('\n'),
  );
  const { proc, stderr } = child(OPENDKIM, ['-f', '-x', conf]);
  const until = Date.now() + 10_000;
  while (!(await canConnect(unixSocket ? { path: sock } : { port }))) {
    if (proc.exitCode !== null || Date.now() > until) throw new Error(`opendkim did not start (${proc.exitCode}): ${stderr()}`);
    await sleep(50);
  }
  return { spec: unixSocket ? `unix:${sock}` : `inet:127.0.0.1:${port}`, pid: proc.pid! };
}

// ------------------------------------------------------------------------------- load and probe

/** What smtp-source sends, roughly: a few headers and MESSAGE_BYTES of body. */
function probeMessage(to: string): string {
  const line = 'x'.repeat(70);
  const lines: string[] = [];
  for (let n = 0; n < MESSAGE_BYTES; n += line.length + 2) lines.push(line);
  return `From: <${SENDER}>\r\nTo: <${to}>\r\nSubject: dime bench probe\r\n\r\n${lines.join('\r\n')}\r\n.\r\n`;
}
const PROBE_DATA = probeMessage(BENCH_RCPT);

/** One message on a fresh connection; resolves with the time from connect() to the 250 after the final dot. */
function sendOne(port: number, data = PROBE_DATA, to = BENCH_RCPT): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const socket = net.connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    const script = ['EHLO probe.example.test', `MAIL FROM:<${SENDER}>`, `RCPT TO:<${to}>`, 'DATA', data, 'QUIT'];
    const expect = [220, 250, 250, 250, 354, 250, 221];
    let step = 0;
    let buf = '';
    let latency = 0;
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      buf += d;
      for (;;) {
        // A complete reply is a line with a space (or nothing) after the code.
        const m = /^(\d{3})( [^\r\n]*)?\r\n/m.exec(buf);
        if (!m) return;
        buf = buf.slice(m.index + m[0].length);
        if (Number(m[1]) !== expect[step]) {
          socket.destroy();
          reject(new Error(`probe: expected ${expect[step]} after ${step === 0 ? 'connect' : script[step - 1]!.slice(0, 24)}, got ${m[0].trim()}`));
          return;
        }
        if (step === 5) latency = performance.now() - t0;
        if (step === 6) {
          socket.end();
          resolve(latency);
          return;
        }
        socket.write(step === 4 ? script[step]! : `${script[step]}\r\n`);
        step++;
      }
    });
    socket.on('error', reject);
  });
}

function queueEmpty(pf: Postfix): boolean {
  return ['incoming', 'active', 'maildrop'].every((q) => fs.readdirSync(path.join(pf.queueDir, q)).length === 0);
}

/** One operation: smtp-source sends MESSAGES messages while the probe times its own; then wait until all are delivered. */
async function operation(setup: Setup): Promise<{ ms: number; latencies: number[]; milterCpuMs: number; postfixCpuMs: number; busyMs: number }> {
  const cpu0 = setup.milterPid ? processCpuMs(setup.milterPid) : 0;
  const postfix0 = postfixCpuMs(setup.pf);
  const busy0 = machineBusyMs();
  const t0 = performance.now();
  const source = spawn(SMTP_SOURCE, ['-s', String(SESSIONS), '-m', String(MESSAGES), '-l', String(MESSAGE_BYTES), '-f', SENDER, '-t', BENCH_RCPT, '-M', 'client.example.test', `127.0.0.1:${setup.pf.smtpPort}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  source.stderr.setEncoding('utf8');
  source.stderr.on('data', (d: string) => (stderr += d));
  let running = true;
  const done = new Promise<number | null>((resolve) => source.once('exit', (code) => resolve(code)));
  void done.then(() => (running = false));
  const latencies: number[] = [];
  while (running) latencies.push(await sendOne(setup.pf.smtpPort));
  const code = await done;
  const tail = () => setup.pf.log().split('\n').slice(-10).join('\n');
  if (code !== 0) throw new Error(`smtp-source exited ${code} against ${setup.name}: ${stderr.trim()}\n${tail()}`);
  while (!queueEmpty(setup.pf)) await sleep(5);
  if (fs.readdirSync(path.join(setup.pf.queueDir, 'deferred')).length > 0) throw new Error(`${setup.name}: mail was deferred:\n${tail()}`);
  const ms = performance.now() - t0;
  return {
    ms,
    latencies,
    milterCpuMs: setup.milterPid ? processCpuMs(setup.milterPid) - cpu0 : 0,
    postfixCpuMs: postfixCpuMs(setup.pf) - postfix0,
    busyMs: machineBusyMs() - busy0,
  };
}

/** Before measuring: a message to a real mailbox shows what the setup does to mail. */
async function check(setup: Setup, expectSignature: boolean): Promise<void> {
  await sendOne(setup.pf.smtpPort, probeMessage('alice@example.test'), 'alice@example.test');
  const m = await setup.pf.waitForDelivery('alice', 10_000);
  const signed = /^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/simple; d=example\.test;\s+s=bench;/m.test(m.content);
  if (signed !== expectSignature) throw new Error(`${setup.name}: expected ${expectSignature ? 'a' : 'no'} DKIM signature on:\n${m.content.slice(0, 1500)}`);
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

async function postfixRounds(setups: Setup[]): Promise<void> {
  for (let round = 0; round <= ROUNDS; round++) {
    // Rotate the order so that no setup always runs first or right after the heaviest one.
    const order = setups.map((_, i) => setups[(i + round) % setups.length]!);
    for (const s of order) {
      const r = await operation(s);
      if (round === 0) continue; // warm-up: smtpd, cleanup and milter processes started, caches filled
      s.opMs.push(r.ms);
      s.latencies.push(...r.latencies);
      s.messages += MESSAGES + r.latencies.length;
      s.milterCpuMs += r.milterCpuMs;
      s.postfixCpuMs += r.postfixCpuMs;
      s.busyMs += r.busyMs;
    }
  }
}

/** µs of CPU per message (smtp-source's and the probe's) over the counted rounds. */
function perMessage(s: Setup, field: 'milterCpuMs' | 'postfixCpuMs' | 'busyMs'): number {
  return (1000 * s[field]) / s.messages;
}

function postfixReport(setups: Setup[], notes: string[]): void {
  const base = setups[0]!;
  const f1 = (n: number) => n.toFixed(1);
  const rows = setups.map((s) => {
    const lat = [...s.latencies].sort((a, b) => a - b);
    // Per-round ratios to Postfix alone (same round, minutes apart at most), then their median.
    const ratios = s.opMs.map((ms, i) => base.opMs[i]! / ms);
    return { s, rate: (MESSAGES * 1000) / median(s.opMs), ratio: median(ratios), lo: Math.min(...ratios), hi: Math.max(...ratios), n: lat.length, p50: percentile(lat, 50), p99: percentile(lat, 99) };
  });
  const b = rows[0]!;
  console.log(`### ${SUITE}: Postfix receiving and delivering ${MESSAGE_BYTES / 1024} KiB messages (smtp-source -s ${SESSIONS}, one message per connection, to discard(8))`);
  console.log('');
  console.log(`${ROUNDS} interleaved rounds of ${MESSAGES} messages per setup (after one warm-up round); latency: a sequential probe on fresh connections under that load, connect → 250 after the dot.`);
  console.log('');
  console.log('| setup | msgs/s (median round) | ÷ alone (median of rounds) | rounds min–max | probe msgs | p50 ms | p99 ms | added p50 ms | added p99 ms | milter CPU µs/msg | Postfix CPU µs/msg | machine CPU µs/msg |');
  console.log('|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const r of rows) {
    const first = r === b;
    const milterCpu = r.s.milterPid ? Math.round((1000 * r.s.milterCpuMs) / r.s.messages) : '–';
    console.log(
      `| ${first ? `**${r.s.name}** (baseline)` : r.s.name} | ${Math.round(r.rate)} | ${first ? '1' : r.ratio.toFixed(3)} | ${first ? '–' : `${r.lo.toFixed(2)}–${r.hi.toFixed(2)}`} | ${r.n} | ${f1(r.p50)} | ${f1(r.p99)} | ${first ? '–' : f1(r.p50 - b.p50)} | ${first ? '–' : f1(r.p99 - b.p99)} | ${milterCpu} | ${Math.round(perMessage(r.s, 'postfixCpuMs'))} | ${Math.round(perMessage(r.s, 'busyMs'))} |`,
    );
  }
  console.log('');
  const dkim = rows.find((r) => r.s.name === DKIM);
  const cFloor = rows.find((r) => r.s.name === DKIM_PASS);
  const cFloorUnix = rows.find((r) => r.s.name === DKIM_PASS_UNIX);
  const cFloors = [cFloor, cFloorUnix].filter((r) => r !== undefined);
  const nodeFloor = rows.find((r) => r.s.name === FLOOR);
  const cost = (r: (typeof rows)[number]) => `${r.ratio.toFixed(3)}× throughput, ${f1(r.p50 - b.p50)} ms added p50, ${f1(r.p99 - b.p99)} ms added p99`;
  for (const d of rows.filter((r) => r.s.name === DIME || r.s.name === DIME_UNIX)) {
    console.log(`${d.s.name}: ${cost(d)}. Target ≥ 0.9× of Postfix alone: ${d.ratio >= 0.9 ? 'met' : 'NOT met'}.`);
    if (dkim) console.log(`  No more costly than OpenDKIM signing (${cost(dkim)}): ${d.ratio >= dkim.ratio && d.p50 <= dkim.p50 && d.p99 <= dkim.p99 ? 'yes' : 'NO'}.`);
    if (nodeFloor) console.log(`  Against the minimal Node milter (${cost(nodeFloor)}): ${(d.ratio / nodeFloor.ratio).toFixed(3)}× its throughput.`);
    // Like with like: the C reference on the same kind of socket.
    const c = d.s.name === DIME_UNIX ? (cFloorUnix ?? cFloor) : cFloor;
    if (c) console.log(`  Against ${c.s.name.replace('Postfix + ', '')} (${cost(c)}): ${(d.ratio / c.ratio).toFixed(3)}× its throughput.`);
  }
  // What Postfix itself spends on having a milter at all. With a milter that accepts at CONNECT,
  // Postfix still connects, negotiates, sends the CONNECT macros and event, reads the reply and
  // closes, for every SMTP connection. The cheapest such milter bounds what any milter can reach.
  const cheap = rows.filter((r) => [DKIM_PASS, DKIM_PASS_UNIX, FLOOR, FLOOR_UNIX, DIME_UNIX].includes(r.s.name));
  if (cheap.length > 0) {
    const added = (r: (typeof rows)[number]) => perMessage(r.s, 'postfixCpuMs') - perMessage(b.s, 'postfixCpuMs');
    const least = cheap.reduce((x, y) => (added(y) < added(x) ? y : x));
    const busy = perMessage(b.s, 'busyMs');
    // Throughput follows the machine's CPU per message while the machine is saturated.
    const budget = busy / 0.9 - busy;
    const left = budget - added(least);
    console.log(
      `Postfix's own CPU for the milter exchange, per message: ${cheap.map((r) => `+${Math.round(added(r))} µs with ${r.s.name.replace('Postfix + ', '')}`).join(', ')}.`,
    );
    console.log(
      `  0.9× of Postfix alone allows ${Math.round(budget)} µs of extra machine CPU per message (Postfix alone: ${Math.round(busy)} µs). Postfix's side takes at least ${Math.round(added(least))} µs of it, which leaves ${left > 0 ? `${Math.round(left)} µs` : 'nothing'} for the milter process per connection` +
        (cFloors.length > 0 ? ` (OpenDKIM's libmilter, accepting at CONNECT, used ${cFloors.map((r) => `${Math.round(perMessage(r.s, 'milterCpuMs'))} µs${r === cFloorUnix ? ' over a unix socket' : ' over TCP'}`).join(', ')}).` : '.'),
    );
  }
  const gw = rows.find((r) => r.s.name === GATEWAY);
  if (gw) console.log(`${gw.s.name}: ${cost(gw)}; ${Math.round(perMessage(gw.s, 'milterCpuMs'))} µs of milter CPU per message. No target: what turning the gateway on costs an MX's ordinary mail.`);
  for (const n of notes) console.log(n);
  console.log('');
}

// ------------------------------------------------------------------------------- the handshake

/** What Postfix sends a pass-through milter per SMTP connection, encoded once. */
const OPTNEG = encodeCommand({ type: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff });
const CONNECT = Buffer.concat([
  encodeCommand({ type: 'macro', stage: 'C', macros: [['j', 'mail.example.test'], ['{daemon_name}', 'mail.example.test'], ['{daemon_addr}', '127.0.0.1'], ['v', 'Postfix 3.7.11'], ['_', 'client.example.test [127.0.0.1]']] }),
  encodeCommand({ type: 'connect', hostname: 'client.example.test', family: 'inet', port: 40000, address: '127.0.0.1' }),
]);
const QUIT = encodeCommand({ type: 'quit' });

/** One milter connection: OPTNEG → 'O', macros + CONNECT → 'a', QUIT, and the milter's close. */
function handshake(spec: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = spec.startsWith('unix:') ? net.connect(spec.slice(5)) : net.connect(Number(spec.slice(spec.lastIndexOf(':') + 1)), '127.0.0.1');
    socket.setNoDelay?.(true);
    let buf: Buffer = Buffer.alloc(0);
    let step = 0;
    socket.on('connect', () => socket.write(OPTNEG));
    socket.on('data', (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      while (buf.length >= 5 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const code = String.fromCharCode(buf[4]!);
        buf = buf.subarray(4 + buf.readUInt32BE(0));
        if (step === 0 && code === 'O') {
          step = 1;
          socket.write(CONNECT);
        } else if (step === 1 && code === 'a') {
          step = 2;
          socket.end(QUIT);
        } else {
          socket.destroy();
          reject(new Error(`${spec}: unexpected reply ${JSON.stringify(code)} at step ${step}`));
        }
      }
    });
    socket.on('close', () => (step === 2 ? resolve() : reject(new Error(`${spec}: closed at step ${step}`))));
    socket.on('error', () => undefined);
  });
}

function handshakeGroup(specs: [name: string, spec: string][]): BenchGroup {
  const cases: BenchCase[] = specs.map(([name, spec]) => ({ name, fn: () => handshake(spec) }));
  return { name: HANDSHAKE_GROUP, baseline: specs[0]![0], cases };
}

// ------------------------------------------------------------------------------- the suite

async function groups(): Promise<BenchGroup[]> {
  if (!selected()) return [];
  const skip = (why: string) => (console.log(`(${SUITE}: skipped: ${why})\n`), []);
  if (process.getuid?.() !== 0) return skip('needs root: master(8) starts as root and drops privileges');
  for (const bin of ['/usr/sbin/postfix', SMTP_SOURCE]) if (!fs.existsSync(bin)) return skip(`${bin} is missing (Debian package postfix)`);
  const withDkim = fs.existsSync(OPENDKIM) && fs.existsSync(OPENDKIM_GENKEY);
  const notes = withDkim ? [] : [`(the OpenDKIM rows are left out: ${OPENDKIM} or ${OPENDKIM_GENKEY} is missing; install the Debian packages opendkim and opendkim-tools)`];

  const sock = path.join(privateDir('dime-bench-milter-'), 'milter.sock');
  const dimeInet = await startDimeMilter('inet:127.0.0.1:0');
  // The rig runs without chroot, so Postfix takes the real path (postfixMilterSpec says the same).
  const dimeUnix = await startDimeMilter(`unix:${sock}`);
  const gateway = await startDimeGateway();
  const floor = await startFloorMilter();
  const floorUnix = await startFloorMilter(path.join(path.dirname(sock), 'floor.sock'));
  const dkimPass = withDkim ? await startOpenDkim(true) : undefined;
  const dkimPassUnix = withDkim ? await startOpenDkim(true, true) : undefined;
  const dkimSign = withDkim ? await startOpenDkim(false) : undefined;
  const specs: [string, Milter | undefined][] = [
    [ALONE, undefined],
    [DIME, dimeInet],
    [DIME_UNIX, dimeUnix],
    [GATEWAY, gateway],
    [FLOOR, floor],
    [FLOOR_UNIX, floorUnix],
    ...(dkimPass && dkimPassUnix && dkimSign ? ([[DKIM_PASS, dkimPass], [DKIM_PASS_UNIX, dkimPassUnix], [DKIM, dkimSign]] as [string, Milter][]) : []),
  ];
  const setups: Setup[] = [];
  try {
    for (const [name, milter] of specs) {
      const main = { default_transport: 'discard:dime bench', ...(milter ? { smtpd_milters: milter.spec } : {}) };
      const pf = await startPostfix({ users: ['alice'], main, ...(SCRATCH ? { scratchParent: SCRATCH } : {}) });
      const setup: Setup = { name, pf, milterPid: milter?.pid, opMs: [], latencies: [], messages: 0, milterCpuMs: 0, postfixCpuMs: 0, busyMs: 0 };
      setups.push(setup);
      await check(setup, name === DKIM);
    }
    await postfixRounds(setups);
    postfixReport(setups, notes);
  } finally {
    await Promise.all(setups.map((s) => s.pf.stop()));
  }

  // The harness part: the milters alone (they are killed when the process exits).
  return [handshakeGroup([...(dkimPass ? ([[H_DKIM, dkimPass.spec]] as [string, string][]) : []), [H_FLOOR, floor.spec], [H_DIME, dimeInet.spec], [H_DIME_UNIX, dimeUnix.spec]])];
}

registerBench({ name: SUITE, groups });
