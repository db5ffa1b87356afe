/**
 * End to end (issue 8, item 6): dark messages per second from alice@a.test's submission to bob@b.test's
 * Maildir, through both Postfix instances and both relays, next to the same Postfix pair carrying
 * plaintext, in the same run, for 4 KiB and 1 MiB messages.
 *
 * The environment is test/helpers/two-domains.ts, the one the end-to-end test uses (two Postfix
 * instances from postfix-examples/, two `dime start` sidecars, DNSSEC, Redis, SoftHSM, Dovecot SASL),
 * with the sidecars at log level info (the default) and no recording proxy on DMTP.
 *
 * The two paths, on the same two Postfix instances (same processes, same queues, same settings):
 *
 *   dark:      submission (SASL, dime milter: resolve, seal, re-inject the bundle, discard)
 *              → bundle smtpd → queue → dmtp (LMTP) → a.test relay ═DMTP/TLS═▶ b.test relay
 *              → handover smtpd (dime milter: verify, decrypt for bob) → queue → virtual(8) → Maildir
 *   plaintext: a copy of that submission service without the milter, content_filter =
 *              smtp:[127.0.0.1]:<b> → queue → smtp(8) → a copy of b.test's handover service
 *              without the milter → queue → virtual(8) → the same Maildir
 *
 * So the plaintext path differs from the dark one only in what DIME adds: the two milters, the
 * bundle re-injection, the LMTP leg, the relays and DMTP. Both are SASL-authenticated, one message
 * per connection, over 8 parallel submissions (sendMail with AUTH PLAIN).
 *
 * One operation = N messages of one size on one path, submitted over PARALLEL connections, until
 * all N are in bob's Maildir. Rate = N ÷ (last delivery − first submission). Latency per message =
 * the Maildir file's mtime (written by virtual(8) just before it appears in new/) minus the moment
 * its submission started (connect), both wall clock; the kernel's file timestamps are coarse (a few
 * ms), well below the figures. A sequential phase at the end sends messages one at a time (the next
 * after the previous one is delivered): latency on an idle pipeline.
 *
 * Rounds: the four (path, size) setups are interleaved, the order rotated each round, one warm-up
 * round not counted; each ratio dark ÷ plaintext is the median of the per-round ratios (same
 * machine, minutes apart at most).
 *
 * CPU per message: each sidecar's process tree, each Postfix instance's process tree (master and
 * its children, reaped ones included), and the whole machine, from /proc.
 *
 * Needs root, postfix, swaks, softhsm2, dovecot-core, bind9 + unbound, redis-server; port 26 on
 * 127.0.0.2 and 127.0.0.4 (so not while the end-to-end test runs). Skips with one line otherwise.
 * Run: `node dist/bench/run.js --filter e2e-two-domains` (after a build). Takes about 2½ minutes.
 */
import { spawnSync } from 'node:child_process';
import * as nodeCrypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sendMail } from '../src/dmtp/smtp-client.js';
import type { Postfix } from '../test/helpers/postfix.js';
import { reservePort, startTwoDomains, twoDomainsMissing, type TwoDomains } from '../test/helpers/two-domains.js';
import { median, registerBench, type BenchGroup } from './lib.js';

const SUITE = 'e2e-two-domains';
const quick = process.argv.includes('--quick');
const PARALLEL = 8;
/** Counted rounds; one warm-up round comes first. */
const ROUNDS = quick ? 1 : 5;
const KIB = 1024;
const MIB = 1024 * KIB;
const SIZES = [
  { label: '4 KiB', bytes: 4 * KIB, messages: quick ? 40 : 240, sequential: quick ? 10 : 40 },
  { label: '1 MiB', bytes: MIB, messages: quick ? 8 : 40, sequential: quick ? 4 : 15 },
] as const;
type Size = (typeof SIZES)[number];
type PathName = 'plaintext' | 'dark';
/** No delivery for this long fails the operation (with the logs). */
const STALL_MS = 60_000;
/** The Postfix queues on a tmpfs, as in bench/milter-postfix.ts: fsync() on a shared disk is noise. */
const SCRATCH = fs.existsSync('/dev/shm') && fs.statSync('/dev/shm').isDirectory() ? '/dev/shm' : undefined;
const ALICE = 'alice@a.test';
const BOB = 'bob@b.test';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Whether --filter (if any) selects this suite. */
function selected(): boolean {
  const argv = process.argv.slice(2);
  const i = argv.indexOf('--filter');
  const filter = (i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith('--filter='))?.slice('--filter='.length))?.toLowerCase();
  if (!filter) return true;
  // Both paths always run (plaintext is the baseline); any filter naming either selects the suite.
  return filter.startsWith(`${SUITE}/`) || ['plaintext', 'dark'].some((p) => `${SUITE}/end to end/${p}`.includes(filter));
}

// ------------------------------------------------------------------------------- CPU from /proc

const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** utime + stime + cutime + cstime (ticks) and the parent of every live process. */
function processTable(): Map<number, { ppid: number; ticks: number }> {
  const out = new Map<number, { ppid: number; ticks: number }>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const f = fs.readFileSync(`/proc/${name}/stat`, 'utf8').split(') ')[1]!.split(' ');
      out.set(Number(name), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]) });
    } catch {
      // exited while we looked
    }
  }
  return out;
}

/**
 * CPU ms of a process tree so far: every live member's own time plus what it reaped (a child's
 * time moves into its parent's cutime/cstime when reaped, so nothing is counted twice).
 */
function treeCpuMs(table: Map<number, { ppid: number; ticks: number }>, root: number | undefined): number {
  if (root === undefined || !table.has(root)) return 0;
  const children = new Map<number, number[]>();
  for (const [pid, p] of table) children.set(p.ppid, [...(children.get(p.ppid) ?? []), pid]);
  let ticks = 0;
  const stack = [root];
  while (stack.length) {
    const pid = stack.pop()!;
    ticks += table.get(pid)?.ticks ?? 0;
    stack.push(...(children.get(pid) ?? []));
  }
  return (ticks * 1000) / CLOCK_TICKS;
}

function machineBusyMs(): number {
  const t = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return ((t.reduce((x, y) => x + y, 0) - t[3]! - t[4]!) * 1000) / CLOCK_TICKS;
}

function masterPid(pf: Postfix): number | undefined {
  try {
    return Number(fs.readFileSync(path.join(pf.queueDir, 'pid', 'master.pid'), 'utf8').trim()) || undefined;
  } catch {
    return undefined;
  }
}

const CPU_PARTS = ['sidecar a', 'sidecar b', 'Postfix a', 'Postfix b', 'machine'] as const;
type Cpu = Record<(typeof CPU_PARTS)[number], number>;

function cpuNow(env: TwoDomains): Cpu {
  const t = processTable();
  return {
    'sidecar a': treeCpuMs(t, env.a.child?.pid),
    'sidecar b': treeCpuMs(t, env.b.child?.pid),
    'Postfix a': treeCpuMs(t, masterPid(env.pfA)),
    'Postfix b': treeCpuMs(t, masterPid(env.pfB)),
    machine: machineBusyMs(),
  };
}

// ------------------------------------------------------------------------------- the plaintext services

/** The service block (header line and its -o lines) whose syslog_name is `name`. */
function serviceBlock(lines: string[], name: string): string[] {
  const at = lines.findIndex((l) => l.trim() === `-o syslog_name=${name}`);
  if (at < 1) throw new Error(`postfix-examples/master.cf has no service with syslog_name=${name}`);
  let start = at;
  while (start > 0 && /^\s/.test(lines[start]!)) start--;
  let end = at + 1;
  while (end < lines.length && /^\s/.test(lines[end]!)) end++;
  return lines.slice(start, end);
}

/** A copy of a service on another port, without milters, with a syslog name of its own and extra -o lines. */
function copyWithoutMilter(block: string[], port: number, syslogName: string, extra: string[]): string[] {
  const [header, ...opts] = block;
  const fields = header!.trim().split(/\s+/);
  fields[0] = `127.0.0.1:${port}`;
  return [
    fields.join(' '),
    ...opts.filter((o) => !/-o (smtpd_milters|syslog_name)=/.test(o)),
    `  -o syslog_name=${syslogName}`,
    '  -o smtpd_milters=',
    ...extra.map((o) => `  -o ${o}`),
  ];
}

// ------------------------------------------------------------------------------- messages

interface Sent {
  /** Wall clock (ms) when its submission started. */
  at: number;
}

function bodyOf(size: Size): Buffer {
  // Incompressible printable text in 76-character lines, as a base64 attachment would be.
  const lines: string[] = [];
  for (let n = 0; n < size.bytes; n += 78) lines.push(nodeCrypto.randomBytes(57).toString('base64'));
  return Buffer.from(`${lines.join('\r\n')}\r\n`);
}

function headerOf(tag: string): Buffer {
  return Buffer.from(
    [
      'From: Alice <alice@a.test>',
      'To: Bob <bob@b.test>',
      `Subject: bench ${tag}`,
      `Date: ${new Date().toUTCString().replace('GMT', '+0000')}`,
      `Message-ID: <bench-${tag}@a.test>`,
      `X-Bench-Tag: ${tag}`,
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=us-ascii',
      '',
      '',
    ].join('\r\n'),
  );
}

function bobNew(env: TwoDomains): string {
  return path.join(env.pfB.mailDir, 'b.test', 'bob', 'new');
}

function listNew(env: TwoDomains): string[] {
  try {
    return fs.readdirSync(bobNew(env));
  } catch {
    return [];
  }
}

/** The X-Bench-Tag of a delivered file (from its first 16 KiB: the headers come first). */
function tagOf(file: string): string | undefined {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(16 * KIB);
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    return /^X-Bench-Tag: (\S+)/m.exec(buf.subarray(0, n).toString('latin1'))?.[1];
  } finally {
    fs.closeSync(fd);
  }
}

function queued(pf: Postfix, queue: string): number {
  try {
    return fs.readdirSync(path.join(pf.queueDir, queue)).length;
  } catch {
    return 0;
  }
}

// ------------------------------------------------------------------------------- one operation

interface Result {
  /** ms from the first submission to the last delivery. */
  ms: number;
  latencies: number[];
  cpu: Cpu;
}

let sequence = 0;

async function submit(env: TwoDomains, port: number, tag: string, body: Buffer): Promise<void> {
  const r = await sendMail({
    target: { kind: 'inet', host: '127.0.0.1', port },
    helo: 'client.a.test',
    from: ALICE,
    to: [BOB],
    body: [headerOf(tag), body],
    auth: { user: ALICE, password: env.password },
    timeouts: { connectMs: 10_000, commandMs: 120_000, dataEndMs: 300_000 },
  });
  if (!r.accepted) throw new Error(`${tag}: submission refused at ${r.stage}: ${r.reason}\n${env.logs()}`);
}

/** Wait until `count` files are in bob's new/, then take them: tag → mtime (ms). */
async function collect(env: TwoDomains, count: number, what: string): Promise<Map<string, number>> {
  let last = -1;
  let lastChange = Date.now();
  for (;;) {
    const names = listNew(env);
    if (names.length >= count) {
      const out = new Map<string, number>();
      for (const name of names) {
        const file = path.join(bobNew(env), name);
        const tag = tagOf(file);
        if (!tag) throw new Error(`${what}: a delivery without X-Bench-Tag: ${file}`);
        out.set(tag, fs.statSync(file).mtimeMs);
        fs.rmSync(file);
      }
      if (names.length > count) throw new Error(`${what}: ${names.length} deliveries, expected ${count} (duplicates?)`);
      return out;
    }
    if (names.length !== last) {
      last = names.length;
      lastChange = Date.now();
    }
    const deferred = queued(env.pfA, 'deferred') + queued(env.pfB, 'deferred');
    if (deferred > 0 || Date.now() - lastChange > STALL_MS) {
      throw new Error(`${what}: ${names.length}/${count} delivered, ${deferred} deferred\n${env.pfA.log().split('\n').slice(-8).join('\n')}\n${env.pfB.log().split('\n').slice(-8).join('\n')}\n${env.logs()}`);
    }
    await sleep(10);
  }
}

/** `count` messages over PARALLEL connections, then wait until all are delivered. */
async function operation(env: TwoDomains, port: number, size: Size, body: Buffer, count: number, what: string): Promise<Result> {
  if (listNew(env).length !== 0) throw new Error(`${what}: bob's Maildir is not empty before the operation`);
  const cpu0 = cpuNow(env);
  const run = ++sequence;
  const sent = new Map<string, Sent>();
  let next = 0;
  const t0 = Date.now();
  const worker = async () => {
    while (next < count) {
      const tag = `r${run}-${size.bytes}-${next++}`;
      sent.set(tag, { at: Date.now() });
      await submit(env, port, tag, body);
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, count) }, worker));
  const delivered = await collect(env, count, what);
  const cpu1 = cpuNow(env);
  const latencies: number[] = [];
  for (const [tag, s] of sent) {
    const at = delivered.get(tag);
    if (at === undefined) throw new Error(`${what}: ${tag} was not delivered (other tags: ${[...delivered.keys()].slice(0, 5).join(', ')})`);
    latencies.push(at - s.at);
  }
  const cpu = Object.fromEntries(CPU_PARTS.map((k) => [k, cpu1[k] - cpu0[k]])) as Cpu;
  return { ms: Math.max(...delivered.values()) - t0, latencies, cpu };
}

/** One message at a time, each delivered before the next: latencies on an idle pipeline. */
async function sequential(env: TwoDomains, port: number, size: Size, body: Buffer, what: string): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < size.sequential; i++) out.push(...(await operation(env, port, size, body, 1, what)).latencies);
  return out;
}

// ------------------------------------------------------------------------------- report

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

interface Setup {
  path: PathName;
  size: Size;
  port: number;
  body: Buffer;
  opMs: number[];
  latencies: number[];
  messages: number;
  cpu: Cpu;
  idle: number[];
}

const f1 = (n: number) => (n >= 100 ? n.toFixed(0) : n.toFixed(1));

function report(setups: Setup[]): void {
  console.log(`### ${SUITE}: alice@a.test's submission → bob@b.test's Maildir, dark (both milters, both relays, DMTP) next to plaintext (same Postfix pair, SMTP, no milter)`);
  console.log('');
  console.log(
    `${ROUNDS} interleaved rounds after one warm-up; per round and setup: ${SIZES.map((s) => `${s.messages} × ${s.label}`).join(', ')}, ${PARALLEL} parallel SASL submissions, one message per connection. Latency: connect of the submission → file in the Maildir.`,
  );
  console.log('');
  console.log('| size | path | msgs/s (median round) | MB/s | dark ÷ plaintext (median of rounds) | rounds min–max | p50 ms | p99 ms | idle p50 ms | idle p99 ms | CPU ms/msg: sidecar a + b | Postfix a + b | machine |');
  console.log('|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const size of SIZES) {
    const plain = setups.find((s) => s.size === size && s.path === 'plaintext')!;
    for (const s of setups.filter((x) => x.size === size)) {
      const rate = (size.messages * 1000) / median(s.opMs);
      const ratios = s.opMs.map((ms, i) => plain.opMs[i]! / ms);
      const lat = [...s.latencies].sort((x, y) => x - y);
      const idle = [...s.idle].sort((x, y) => x - y);
      const per = (ms: number) => f1(ms / s.messages);
      const isBase = s === plain;
      console.log(
        `| ${size.label} | ${isBase ? '**plaintext** (baseline)' : 'dark'} | ${f1(rate)} | ${f1((rate * size.bytes) / 1e6)} | ${isBase ? '1' : `**${median(ratios).toFixed(3)}**`} | ${isBase ? '–' : `${Math.min(...ratios).toFixed(3)}–${Math.max(...ratios).toFixed(3)}`} | ${f1(percentile(lat, 50))} | ${f1(percentile(lat, 99))} | ${f1(percentile(idle, 50))} | ${f1(percentile(idle, 99))} | ${per(s.cpu['sidecar a'])} + ${per(s.cpu['sidecar b'])} | ${per(s.cpu['Postfix a'])} + ${per(s.cpu['Postfix b'])} | ${per(s.cpu.machine)} |`,
      );
    }
  }
  console.log('');
  for (const size of SIZES) {
    const plain = setups.find((s) => s.size === size && s.path === 'plaintext')!;
    const dark = setups.find((s) => s.size === size && s.path === 'dark')!;
    const ratios = dark.opMs.map((ms, i) => plain.opMs[i]! / ms);
    const p = (xs: number[], q: number) => percentile([...xs].sort((x, y) => x - y), q);
    console.log(
      `${size.label}: dark ÷ plaintext = ${median(ratios).toFixed(3)} (per round: ${ratios.map((r) => r.toFixed(3)).join(', ')}); latency p50 ${f1(p(dark.latencies, 50))} vs ${f1(p(plain.latencies, 50))} ms, p99 ${f1(p(dark.latencies, 99))} vs ${f1(p(plain.latencies, 99))} ms; one at a time p50 ${f1(p(dark.idle, 50))} vs ${f1(p(plain.idle, 50))} ms (${dark.idle.length} messages each).`,
    );
  }
  console.log('');
}

// ------------------------------------------------------------------------------- the suite

/** Before measuring: what each path delivers (bob reads the original on both; only dark has dime=pass). */
async function check(env: TwoDomains, setup: Setup): Promise<void> {
  const tag = `check-${setup.path}-${setup.size.bytes}`;
  const markB = env.pfB.logMark();
  await submit(env, setup.port, tag, setup.body);
  await collect(env, 1, tag).then((m) => {
    if (!m.has(tag)) throw new Error(`${tag}: not delivered`);
  });
  // collect() removed the file; the maillog says which way it went.
  const log = Buffer.from(env.pfB.log()).subarray(markB).toString('utf8');
  const via = setup.path === 'dark' ? /postfix\/dime-inbound\/smtpd/ : /postfix\/plain-inbound\/smtpd/;
  if (!via.test(log)) throw new Error(`${tag}: b.test's maillog does not show ${via}:\n${log.slice(-3000)}`);
  if (env.sink.messages.length > 0) throw new Error(`${tag}: plaintext reached the sink (the b.test route by domain)`);
}

async function groups(): Promise<BenchGroup[]> {
  if (!selected()) return [];
  const missing = twoDomainsMissing();
  if (missing) {
    console.log(`(${SUITE}: skipped: ${missing})\n`);
    return [];
  }
  const plainSubmission = await reservePort();
  const plainInbound = await reservePort();
  const env = await startTwoDomains({
    logLevel: 'info',
    capture: false,
    ...(SCRATCH ? { scratchParent: SCRATCH } : {}),
    extraMaster: (side, example) =>
      side === 'a'
        ? copyWithoutMilter(serviceBlock(example, 'postfix/submission'), plainSubmission, 'postfix/plain-submission', [`content_filter=smtp:[127.0.0.1]:${plainInbound}`])
        : copyWithoutMilter(serviceBlock(example, 'postfix/dime-inbound'), plainInbound, 'postfix/plain-inbound', []),
  });
  try {
    const setups: Setup[] = [];
    for (const size of SIZES) {
      const body = bodyOf(size);
      for (const p of ['plaintext', 'dark'] as const) {
        const zero = Object.fromEntries(CPU_PARTS.map((k) => [k, 0])) as Cpu;
        setups.push({ path: p, size, port: p === 'dark' ? env.a.ports.submission : plainSubmission, body, opMs: [], latencies: [], messages: 0, cpu: zero, idle: [] });
      }
    }
    for (const s of setups) await check(env, s);
    for (let round = 0; round <= ROUNDS; round++) {
      const order = setups.map((_, i) => setups[(i + round) % setups.length]!);
      for (const s of order) {
        const r = await operation(env, s.port, s.size, s.body, s.size.messages, `round ${round} ${s.path} ${s.size.label}`);
        process.stderr.write(`  ${SUITE}: round ${round}${round === 0 ? ' (warm-up)' : ''}, ${s.path} ${s.size.label}: ${((s.size.messages * 1000) / r.ms).toFixed(1)} msgs/s\n`);
        if (round === 0) continue;
        s.opMs.push(r.ms);
        s.latencies.push(...r.latencies);
        s.messages += s.size.messages;
        for (const k of CPU_PARTS) s.cpu[k] += r.cpu[k];
      }
    }
    for (const s of setups) s.idle = await sequential(env, s.port, s.size, s.body, `one at a time ${s.path} ${s.size.label}`);
    report(setups);
  } finally {
    await env.stop();
  }
  return [];
}

registerBench({ name: SUITE, groups });
