/**
 * A private DNSSEC rig for tests (shared/spec/milter-and-postfix.md §5): bind9 serving zones on
 * 127.0.0.1:<free port>, signed with Ed25519 keys made by dnssec-keygen in a scratch directory, and
 * unbound on another free port validating them against trust anchors for exactly those zones.
 *
 *   const rig = await startDnssecRig([{ name: 'signed.test', signed: true, records: ['_dx 60 IN TXT "ver=1 pok=…"'] }]);
 *   rig.resolver                      // '127.0.0.1:PORT' of unbound: what the code under test asks
 *   await rig.setZone('signed.test', []);                          // record removed, re-signed, reloaded, cache flushed
 *   await rig.setZone('signed.test', recs, { bogus: '_dx' });      // the TXT RRSIG at _dx corrupted
 *   await rig.setZone('signed.test', recs, { signed: false });     // served unsigned (signatures stripped)
 *   await rig.stop();                 // in after(); also runs on process exit
 *
 * Needs the Debian packages bind9 (named, dnssec-keygen, dnssec-signzone) and unbound. Both run in
 * the foreground as children of the test process; nothing listens beyond 127.0.0.1.
 *
 * Pitfalls (each handled below):
 *  - unbound refuses to query 127.0.0.1 unless `do-not-query-localhost: no`, and blocks the `.test`
 *    TLD unless `local-zone: "test." nodefault`.
 *  - named's `-g` keeps it in the foreground (so we own its pid) and logs to stderr; `controls {}`
 *    turns off the rndc channel, which would otherwise want a key. A reload is SIGHUP.
 *  - SIGHUP makes unbound re-read its configuration and drop its cache, which is how a test sees a
 *    changed zone before the old TTL runs out.
 *  - A reload is asynchronous: we wait until named serves the new SOA serial, and until unbound
 *    answers again.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { UDPClient } from 'dns2';

const NAMED = '/usr/sbin/named';
const UNBOUND = '/usr/sbin/unbound';
const KEYGEN = '/usr/bin/dnssec-keygen';
const SIGNZONE = '/usr/bin/dnssec-signzone';

export interface ZoneSpec {
  /** e.g. `signed.test` (under .test, which nobody else serves). */
  name: string;
  signed: boolean;
  /** Zone-file lines after SOA, NS and `ns A`, owner names relative to the zone (`_dx 60 IN TXT "…"`). */
  records: string[];
  /** SOA minimum: the negative-caching TTL (RFC 2308). Default 60. */
  soaMinimum?: number;
}

export interface SetZoneOptions {
  /** Serve the zone unsigned this time (its trust anchor stays: validation then fails). Default: the zone's own setting. */
  signed?: boolean;
  /** Owner (relative) whose TXT RRSIG gets a corrupted signature: the bogus-signature case. */
  bogus?: string;
}

export interface DnssecRig {
  /** unbound, validating: `127.0.0.1:PORT`. */
  resolver: string;
  resolverPort: number;
  /** bind9, authoritative only. */
  authoritative: string;
  authoritativePort: number;
  dir: string;
  setZone(name: string, records: string[], options?: SetZoneOptions): Promise<void>;
  /** Drop unbound's cache (SIGHUP). */
  flushResolver(): Promise<void>;
  /** Extended DNS Errors in unbound's SERVFAILs on or off (rewrites the config, reloads, flushes). */
  setEde(on: boolean): Promise<void>;
  stop(): Promise<void>;
}

export function dnssecToolsAvailable(): boolean {
  return [NAMED, UNBOUND, KEYGEN, SIGNZONE].every((f) => fs.existsSync(f));
}

/**
 * If this test process dies without running its exit hooks (SIGKILL, or SIGTERM from a runner's
 * timeout), a detached shell kills whatever `*.pid` files in `dir` name and removes `dir`.
 * Returns a function that stops the watchdog (call it after a normal stop).
 */
export function startWatchdog(dir: string): () => void {
  const q = (x: string) => `'${x.replace(/'/g, `'\\''`)}'`;
  const script = [`while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done`, `for f in ${q(dir)}/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done`, `rm -rf ${q(dir)}`].join('; ');
  const child = spawn('/bin/sh', ['-c', script], { detached: true, stdio: 'ignore' });
  child.unref();
  return () => {
    try {
      if (child.pid) process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  };
}

/** A port free for both UDP and TCP on 127.0.0.1 at the moment of asking. */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const udp = dgram.createSocket('udp4');
    const port = await new Promise<number>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(0, '127.0.0.1', () => resolve(udp.address().port));
    });
    const ok = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    udp.close();
    if (ok) return port;
  }
  throw new Error('no free port found');
}

function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${path.basename(cmd)} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function query(port: number, name: string, type: string): Promise<import('dns2').Packet | undefined> {
  try {
    return await UDPClient({ dns: '127.0.0.1', port, timeout: 500, retryOverTCP: false })(name, type);
  } catch {
    return undefined;
  }
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

interface ZoneState {
  spec: ZoneSpec;
  serial: number;
  /** The DS lines for unbound's trust anchor (signed zones). */
  ds?: string;
}

export async function startDnssecRig(zones: ZoneSpec[]): Promise<DnssecRig> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dime-dnssec-'));
  const children: ChildProcess[] = [];
  const killAll = () => {
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null && c.pid) {
        try {
          process.kill(c.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  };
  const stopWatchdog = startWatchdog(dir);
  const onExit = () => {
    killAll();
    stopWatchdog();
    if (!process.env.DIME_KEEP_DNSSEC) fs.rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', onExit);

  const state = new Map<string, ZoneState>();
  const zoneFile = (name: string) => path.join(dir, `db.${name}`);
  const servedFile = (name: string) => path.join(dir, `db.${name}.served`);

  const writeZone = (z: ZoneState, records: string[], options: SetZoneOptions = {}) => {
    const soaMin = z.spec.soaMinimum ?? 60;
    const text = [
      '$TTL 60',
      `@ IN SOA ns.${z.spec.name}. hostmaster.${z.spec.name}. ( ${z.serial} 3600 600 86400 ${soaMin} )`,
      `@ IN NS ns.${z.spec.name}.`,
      'ns IN A 127.0.0.1',
      ...records,
      '',
    ].join('\n');
    fs.writeFileSync(zoneFile(z.spec.name), text);
    const signed = options.signed ?? z.spec.signed;
    if (!signed) {
      fs.copyFileSync(zoneFile(z.spec.name), servedFile(z.spec.name));
      return;
    }
    // -O full: one RR per line, so a signature can be found and corrupted below.
    run(SIGNZONE, ['-q', '-S', '-K', dir, '-o', z.spec.name, '-N', 'keep', '-O', 'full', '-e', '+2592000', '-f', servedFile(z.spec.name), zoneFile(z.spec.name)], dir);
    if (options.bogus !== undefined) {
      const owner = `${options.bogus}.${z.spec.name}.`;
      let hit = false;
      const lines = fs.readFileSync(servedFile(z.spec.name), 'utf8').split('\n').map((line) => {
        const f = line.trim().split(/\s+/);
        // owner ttl IN RRSIG TXT alg labels origttl expiration inception keytag signer signature…
        if (f[0] === owner && f[3] === 'RRSIG' && f[4] === 'TXT' && f.length > 12) {
          const sig = f[12]!;
          f[12] = (sig[0] === 'A' ? 'B' : 'A') + sig.slice(1);
          hit = true;
          return f.join(' ');
        }
        return line;
      });
      if (!hit) throw new Error(`no TXT RRSIG at ${owner} to corrupt`);
      fs.writeFileSync(servedFile(z.spec.name), lines.join('\n'));
    }
  };

  for (const spec of zones) {
    const z: ZoneState = { spec, serial: 1 };
    if (spec.signed) {
      run(KEYGEN, ['-q', '-a', 'ED25519', '-f', 'KSK', '-K', dir, spec.name], dir);
      run(KEYGEN, ['-q', '-a', 'ED25519', '-K', dir, spec.name], dir);
    }
    writeZone(z, spec.records);
    if (spec.signed) z.ds = fs.readFileSync(path.join(dir, `dsset-${spec.name}.`), 'utf8');
    state.set(spec.name, z);
  }

  const authPort = await freePort();
  const resolverPort = await freePort();

  fs.writeFileSync(
    path.join(dir, 'named.conf'),
    [
      'options {',
      `  directory "${dir}";`,
      `  listen-on port ${authPort} { 127.0.0.1; };`,
      '  listen-on-v6 { none; };',
      '  recursion no;',
      '  dnssec-validation no;',
      `  pid-file "${dir}/named.pid";`,
      `  session-keyfile "${dir}/session.key";`,
      '  notify no;',
      '};',
      'controls { };',
      ...zones.map((z) => `zone "${z.name}" { type primary; file "${servedFile(z.name)}"; };`),
      '',
    ].join('\n'),
  );
  const anchors = [...state.values()].map((z) => z.ds ?? '').join('');
  fs.writeFileSync(path.join(dir, 'ta.ds'), anchors);
  const writeUnboundConf = (ede: boolean) =>
    fs.writeFileSync(
      path.join(dir, 'unbound.conf'),
      [
        'server:',
        '  interface: 127.0.0.1',
        `  port: ${resolverPort}`,
        '  do-ip6: no',
        '  username: ""',
        '  chroot: ""',
        `  directory: "${dir}"`,
        `  pidfile: "${dir}/unbound.pid"`,
        '  use-syslog: no',
        '  logfile: ""',
        '  verbosity: 1',
        '  num-threads: 1',
        '  do-not-query-localhost: no',
        '  module-config: "validator iterator"',
        ...(anchors ? [`  trust-anchor-file: "${dir}/ta.ds"`] : []),
        '  local-zone: "test." nodefault',
        // Extended DNS Errors (RFC 8914) let a client tell bogus from broken without a CD probe;
        // setEde(false) turns them off to exercise the probe against a real validator.
        `  ede: ${ede ? 'yes' : 'no'}`,
        ...zones.flatMap((z) => ['stub-zone:', `  name: "${z.name}"`, `  stub-addr: 127.0.0.1@${authPort}`]),
        '',
      ].join('\n'),
    );
  writeUnboundConf(true);

  const logFd = (name: string) => fs.openSync(path.join(dir, name), 'a');
  const named = spawn(NAMED, ['-g', '-c', path.join(dir, 'named.conf')], { stdio: ['ignore', logFd('named.log'), logFd('named.log')] });
  children.push(named);
  const firstZone = zones[0]!.name;
  const servesSerial = async (name: string, serial: number) => {
    const p = await query(authPort, name, 'SOA');
    return p?.answers.some((a) => a.type === 6 && a.serial === serial) ?? false;
  };
  try {
    await waitFor(`named on 127.0.0.1:${authPort} (log: ${dir}/named.log)`, () => servesSerial(firstZone, 1));
  } catch (err) {
    onExit();
    throw new Error(`${(err as Error).message}\n${fs.existsSync(path.join(dir, 'named.log')) ? fs.readFileSync(path.join(dir, 'named.log'), 'utf8').slice(-2000) : ''}`);
  }

  const unbound = spawn(UNBOUND, ['-d', '-c', path.join(dir, 'unbound.conf')], { stdio: ['ignore', logFd('unbound.log'), logFd('unbound.log')] });
  children.push(unbound);
  const resolverAnswers = async () => (await query(resolverPort, firstZone, 'SOA')) !== undefined;
  try {
    await waitFor(`unbound on 127.0.0.1:${resolverPort}`, resolverAnswers);
  } catch (err) {
    onExit();
    throw new Error(`${(err as Error).message}\n${fs.readFileSync(path.join(dir, 'unbound.log'), 'utf8').slice(-2000)}`);
  }

  const flushResolver = async () => {
    unbound.kill('SIGHUP');
    // unbound drops its cache at once; give the reload a moment, then wait until it answers again.
    await new Promise((r) => setTimeout(r, 50));
    await waitFor('unbound after SIGHUP', resolverAnswers);
  };

  return {
    resolver: `127.0.0.1:${resolverPort}`,
    resolverPort,
    authoritative: `127.0.0.1:${authPort}`,
    authoritativePort: authPort,
    dir,
    async setZone(name, records, options = {}) {
      const z = state.get(name);
      if (!z) throw new Error(`the rig serves no zone ${name}`);
      z.serial++;
      writeZone(z, records, options);
      named.kill('SIGHUP');
      await waitFor(`named to load serial ${z.serial} of ${name}`, () => servesSerial(name, z.serial));
      await flushResolver();
    },
    flushResolver,
    async setEde(on) {
      writeUnboundConf(on);
      await flushResolver();
    },
    async stop() {
      const exited = children.filter((c) => c.exitCode === null && c.signalCode === null).map((c) => new Promise((r) => c.once('exit', r)));
      for (const c of children) c.kill('SIGTERM');
      await Promise.race([Promise.all(exited), new Promise((r) => setTimeout(r, 3_000))]);
      killAll();
      process.removeListener('exit', onExit);
      onExit();
    },
  };
}

// ------------------------------------------------------------------------------------ dns2 unit server

/** What the fake server answers to one question. */
export interface FakeAnswer {
  rcode?: number;
  /** Answer-section records (name, type, class default to the question's, ttl to 60). */
  answers?: Array<Record<string, unknown>>;
  authorities?: Array<Record<string, unknown>>;
  /** Set the AD bit. */
  ad?: boolean;
  /** Attach an Extended DNS Error (RFC 8914) INFO-CODE (only when the query had EDNS). */
  ede?: number;
  /** Do not answer at all (a timeout). */
  drop?: boolean;
  /** Answer these exact bytes instead (the id is patched in). */
  raw?: (id: number) => Buffer;
  /** Answer after this long. */
  delayMs?: number;
}

export interface FakeQuery {
  name: string;
  type: number;
  cd: boolean;
  dnssecOk: boolean;
  tcp: boolean;
}

export interface FakeDns {
  /** `127.0.0.1:PORT`, UDP and TCP. */
  server: string;
  port: number;
  queries: FakeQuery[];
  close(): Promise<void>;
}

/**
 * dns2's own server (UDP and TCP on one free port) answering from a function: the fast unit rig
 * for typed outcomes, odd TXT shapes, truncation (dns2 sets TC when the answer exceeds the
 * requester's EDNS payload size, and the client retries over TCP) and timeouts.
 */
export async function startFakeDns(answer: (q: FakeQuery) => FakeAnswer | Promise<FakeAnswer>): Promise<FakeDns> {
  const { Packet, createServer } = await import('dns2');
  const queries: FakeQuery[] = [];
  const timers = new Set<NodeJS.Timeout>();
  let closed = false;
  const server = createServer({
    udp: true,
    tcp: true,
    handle: async (request, send, client) => {
      const q0 = request.questions[0];
      if (!q0) return;
      const opt = request.additionals.find((r) => r.type === Packet.TYPE.EDNS);
      const h = request.header as typeof request.header & { cd: number };
      const q: FakeQuery = { name: q0.name, type: q0.type, cd: h.cd === 1, dnssecOk: !!opt?.doFlag, tcp: !('family' in (client as object)) };
      queries.push(q);
      const a = await answer(q);
      if (a.delayMs) {
        await new Promise<void>((r) => {
          const t = setTimeout(() => {
            timers.delete(t);
            r();
          }, a.delayMs);
          timers.add(t);
        });
      }
      if (a.drop || closed) return;
      if (a.raw) {
        const bytes = a.raw(request.header.id);
        (send as unknown as (b: Buffer) => void)(bytes);
        return;
      }
      const response = a.ede !== undefined ? Packet.createErrorResponseFromRequest(request, a.rcode ?? 0, { infoCode: a.ede }) : Packet.createResponseFromRequest(request);
      response.header.rcode = a.rcode ?? 0;
      (response.header as typeof response.header & { ad: number; ra: number }).ad = a.ad ? 1 : 0;
      response.header.ra = 1;
      const fill = (r: Record<string, unknown>) => Packet.createResourceFromQuestion(q0, { ttl: 60, ...r } as never);
      response.answers = (a.answers ?? []).map(fill);
      response.authorities = (a.authorities ?? []).map(fill);
      if (opt && a.ede === undefined) response.additionals.push(Packet.Resource.EDNS([], { doFlag: true }));
      send(response);
    },
  });
  server.on('requestError', () => undefined);
  const port = await freePort();
  await server.listen({ udp: { port, address: '127.0.0.1' }, tcp: { port, address: '127.0.0.1' } });
  return {
    server: `127.0.0.1:${port}`,
    port,
    queries,
    close: async () => {
      // Delayed answers die with the server: nothing may be sent on a closed socket.
      closed = true;
      for (const t of timers) clearTimeout(t);
      await server.close();
    },
  };
}
