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
import { spawn, type ChildProcess } from 'node:child_process';
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
