/**
 * A private redis-server for tests (shared/spec/milter-and-postfix.md §5): 127.0.0.1 on a free
 * port, no persistence (no RDB, no AOF), its own scratch directory, run in the foreground as a child
 * of the test process so it can be killed mid-test and restarted on the same port.
 *
 *   const redis = await startRedis();
 *   redis.url                 // redis://127.0.0.1:PORT
 *   await redis.kill();       // SIGKILL, as a crash: clients see the connection drop
 *   await redis.restart();    // same port, empty data
 *   await redis.stop();       // in after(); also runs on process exit
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort, startWatchdog } from './dnssec.js';

const REDIS_SERVER = '/usr/bin/redis-server';

export interface RedisRig {
  url: string;
  port: number;
  kill(): Promise<void>;
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/** A child killed by a signal has a null exitCode and a signalCode. */
function running(c: ChildProcess): boolean {
  return c.exitCode === null && c.signalCode === null;
}

export function redisAvailable(): boolean {
  return fs.existsSync(REDIS_SERVER);
}

/** PING over a raw socket: +PONG means the server is ready for commands. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(500, () => done(false));
    s.once('error', () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => done(d.toString().startsWith('+PONG')));
  });
}

export async function startRedis(): Promise<RedisRig> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dime-redis-'));
  const port = await freePort();
  let child: ChildProcess | undefined;
  const killNow = () => {
    if (child && running(child) && child.pid) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };
  const stopWatchdog = startWatchdog(dir);
  const onExit = () => {
    killNow();
    stopWatchdog();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', onExit);

  const launch = async () => {
    const log = fs.openSync(path.join(dir, 'redis.log'), 'a');
    child = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--pidfile', path.join(dir, 'redis.pid'), '--daemonize', 'no', '--protected-mode', 'yes'], {
      stdio: ['ignore', log, log],
    });
    fs.closeSync(log);
    const until = Date.now() + 10_000;
    while (Date.now() < until) {
      if (await ping(port)) return;
      if (!running(child)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`redis-server did not start on 127.0.0.1:${port}: ${fs.readFileSync(path.join(dir, 'redis.log'), 'utf8').slice(-1500)}`);
  };
  const kill = async () => {
    const c = child;
    if (!c || !running(c)) return;
    const exited = new Promise((r) => c.once('exit', r));
    killNow();
    await exited;
  };

  await launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    kill,
    async restart() {
      await kill();
      await launch();
    },
    async stop() {
      await kill();
      process.removeListener('exit', onExit);
      onExit();
    },
  };
}

// ------------------------------------------------------------------------------------ Sentinel, Cluster

const REDIS_CLI = '/usr/bin/redis-cli';

export function redisCliAvailable(): boolean {
  return fs.existsSync(REDIS_CLI);
}

/** Run redis-cli; its stdout (throws on a non-zero exit). */
function cli(args: string[], timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`redis-cli ${args.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

/** A free port whose +10000 neighbour is not needed (Redis 7 takes cluster-port explicitly). */
async function freePorts(n: number): Promise<number[]> {
  const ports: number[] = [];
  while (ports.length < n) {
    const p = await freePort();
    if (!ports.includes(p)) ports.push(p);
  }
  return ports;
}

/**
 * A set of redis-server processes (data nodes or sentinels) in one scratch directory, killed
 * together by stop() and on process exit (and by the watchdog, through their pid files, should the
 * test process die by SIGKILL).
 */
function serverGroup(prefix: string) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const children: ChildProcess[] = [];
  const killNow = () => {
    for (const c of children) {
      if (running(c) && c.pid) {
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
    killNow();
    stopWatchdog();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', onExit);

  /** Start one redis-server with `args` (a config file first when given), logging to NAME.log; resolves when it answers PING. */
  const launch = async (name: string, port: number, args: string[]) => {
    const logPath = path.join(dir, `${name}.log`);
    const log = fs.openSync(logPath, 'a');
    const child = spawn(REDIS_SERVER, args, { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    children.push(child);
    const until = Date.now() + 10_000;
    while (Date.now() < until) {
      if (await ping(port)) return;
      if (!running(child)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`${name} did not start on 127.0.0.1:${port}: ${fs.readFileSync(logPath, 'utf8').slice(-1500)}`);
  };
  const dataArgs = (name: string, port: number) => ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--pidfile', path.join(dir, `${name}.pid`), '--daemonize', 'no', '--protected-mode', 'yes'];
  const stop = async () => {
    const live = children.filter(running);
    const exited = Promise.all(live.map((c) => new Promise((r) => c.once('exit', r))));
    killNow();
    await exited;
    process.removeListener('exit', onExit);
    onExit();
  };
  const fail = async (err: unknown): Promise<never> => {
    await stop();
    throw err;
  };
  return { dir, launch, dataArgs, stop, fail };
}

export interface SentinelRig {
  /** The master's own address (for asserting where the keys landed). */
  master: { host: string; port: number; url: string };
  /** The sentinel, as `host:port` for resolver.redis_sentinels. */
  sentinel: string;
  sentinelPort: number;
  /** The master name the sentinel monitors (resolver.redis_sentinel_name). */
  name: string;
  stop(): Promise<void>;
}

/**
 * One master and one sentinel monitoring it (quorum 1), each on a free loopback port:
 *
 *   const s = await startSentinel();
 *   config: { redisSentinels: [s.sentinel], redisSentinelName: s.name }
 *   await s.stop();
 */
export async function startSentinel(name = 'dime-test'): Promise<SentinelRig> {
  const g = serverGroup('dime-sentinel-');
  try {
    const [masterPort, sentinelPort] = await freePorts(2);
    await g.launch('master', masterPort!, g.dataArgs('master', masterPort!));
    // Sentinel rewrites its configuration file, so it must be a writable file of its own.
    const conf = path.join(g.dir, 'sentinel.conf');
    fs.writeFileSync(
      conf,
      [
        `port ${sentinelPort}`,
        'bind 127.0.0.1',
        'protected-mode yes',
        'daemonize no',
        `dir ${g.dir}`,
        `pidfile ${path.join(g.dir, 'sentinel.pid')}`,
        `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`,
        `sentinel down-after-milliseconds ${name} 5000`,
        '',
      ].join('\n'),
    );
    await g.launch('sentinel', sentinelPort!, [conf, '--sentinel']);
    // Ready when the sentinel names the master.
    const until = Date.now() + 10_000;
    for (;;) {
      const out = await cli(['-h', '127.0.0.1', '-p', String(sentinelPort), 'SENTINEL', 'get-master-addr-by-name', name]).catch(() => '');
      if (out.split('\n').map((l) => l.trim()).includes(String(masterPort))) break;
      if (Date.now() > until) throw new Error(`the sentinel on ${sentinelPort} does not know master ${name}: ${JSON.stringify(out)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return {
      master: { host: '127.0.0.1', port: masterPort!, url: `redis://127.0.0.1:${masterPort}` },
      sentinel: `127.0.0.1:${sentinelPort}`,
      sentinelPort: sentinelPort!,
      name,
      stop: g.stop,
    };
  } catch (err) {
    return g.fail(err);
  }
}

export interface ClusterRig {
  /** The masters, as `host:port` (seed nodes for resolver.redis_cluster). */
  nodes: string[];
  ports: number[];
  stop(): Promise<void>;
}

/**
 * Three masters, cluster-enabled, no replicas, slots spread by `redis-cli --cluster create`;
 * resolves once every node reports cluster_state:ok.
 */
export async function startCluster(): Promise<ClusterRig> {
  const g = serverGroup('dime-cluster-');
  try {
    const all = await freePorts(6);
    const ports = all.slice(0, 3);
    const busPorts = all.slice(3);
    for (const [i, port] of ports.entries()) {
      const name = `node-${port}`;
      await g.launch(name, port, [
        ...g.dataArgs(name, port),
        '--cluster-enabled', 'yes',
        '--cluster-config-file', path.join(g.dir, `${name}.conf`),
        '--cluster-port', String(busPorts[i]),
        '--cluster-node-timeout', '5000',
      ]);
    }
    const nodes = ports.map((p) => `127.0.0.1:${p}`);
    await cli(['--cluster', 'create', ...nodes, '--cluster-replicas', '0', '--cluster-yes'], 30_000);
    const until = Date.now() + 20_000;
    for (const port of ports) {
      for (;;) {
        const out = await cli(['-h', '127.0.0.1', '-p', String(port), 'CLUSTER', 'INFO']).catch(() => '');
        if (/cluster_state:ok/.test(out) && /cluster_known_nodes:3/.test(out)) break;
        if (Date.now() > until) throw new Error(`the cluster node on ${port} is not ok: ${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    return { nodes, ports, stop: g.stop };
  } catch (err) {
    return g.fail(err);
  }
}
