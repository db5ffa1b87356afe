import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { DIME_BIN, dime, initDomain, scratchDir, waitForOutput } from './helpers/cli.js';
import { redisAvailable, startRedis } from './helpers/redis.js';

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function config(dir: string): Promise<{ file: string; ports: number[] }> {
  const ports = [await freePort(), await freePort(), await freePort(), await freePort()];
  const file = path.join(dir, 'dime.toml');
  fs.writeFileSync(file, `[milter]\nlisten = "inet:127.0.0.1:${ports[0]}"\n[policy]\nlisten = "inet:127.0.0.1:${ports[1]}"\nsocketmap = "inet:127.0.0.1:${ports[2]}"\n`);
  return { file, ports };
}

describe('dime start', () => {
  it('starts every service, answers /healthz and /metrics, and stops cleanly on SIGTERM', async () => {
    const { file, ports } = await config(scratchDir());
    const child = spawn(process.execPath, [DIME_BIN, 'start', '--config', file, '--metrics', `inet:127.0.0.1:${ports[3]}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    try {
      await waitForOutput(child, () => stderr, /dime started/, 15_000);
      const health = (await (await fetch(`http://127.0.0.1:${ports[3]}/healthz`)).json()) as { services: { name: string }[] };
      assert.deepEqual(health.services.map((s: { name: string }) => s.name), ['milter', 'policy', 'socketmap', 'metrics']);
      assert.match(await (await fetch(`http://127.0.0.1:${ports[3]}/metrics`)).text(), /^# (HELP|TYPE)|^$/m);
      // SIGHUP: a valid change is applied; a broken file is refused and the services stay up.
      const waitFor = (re: RegExp) => waitForOutput(child, () => stderr, re, 10_000);
      fs.appendFileSync(file, '[log]\nlevel = "debug"\n');
      child.kill('SIGHUP');
      await waitFor(/"logLevel":"debug".*configuration reloaded"/);
      fs.appendFileSync(file, 'nonsense = \n');
      child.kill('SIGHUP');
      await waitFor(/reload refused/);
      assert.equal((await fetch(`http://127.0.0.1:${ports[3]}/healthz`)).status, 200);
    } finally {
      child.kill('SIGTERM');
    }
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    assert.equal(code, 0, stderr);
    assert.match(stderr, /dime stopped/);
  });

  it('a port already in use: exit 2 with one clear line, and nothing left listening', async () => {
    const { file, ports } = await config(scratchDir());
    const squatter = net.createServer();
    await new Promise<void>((r) => squatter.listen(ports[1], '127.0.0.1', r));
    try {
      const r = dime(['start', '--config', file, '--metrics', `inet:127.0.0.1:${ports[3]}`]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`policy on inet:127\\.0\\.0\\.1:${ports[1]}: .*EADDRINUSE`));
      // The milter, started first, was closed again.
      const probe = net.connect(ports[0]!, '127.0.0.1');
      const refused = await new Promise<boolean>((res) => {
        probe.once('connect', () => res(false));
        probe.once('error', () => res(true));
      });
      probe.destroy();
      assert.ok(refused, 'the milter port must not stay open');
    } finally {
      await new Promise<void>((r) => squatter.close(() => r()));
    }
  });

  it('after dime init, the relay starts too, with the keystore holding the organisation key', async () => {
    const { dir, file, ports: p } = await initDomain('a.test');
    assert.ok(fs.existsSync(path.join(dir, 'dime.toml')), 'dime init writes dime.toml');
    const ports = [p.milter, p.policy, p.socketmap, p.relay, p.metrics];
    const child = spawn(process.execPath, [DIME_BIN, 'start', '--config', file, '--metrics', `inet:127.0.0.1:${ports[4]}`], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, DIME_LOG_LEVEL: 'debug' },
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    try {
      await waitForOutput(child, () => stderr, /dime started/, 20_000);
      const health = (await (await fetch(`http://127.0.0.1:${ports[4]}/healthz`)).json()) as { services: { name: string }[] };
      assert.deepEqual(health.services.map((s) => s.name), ['gateway', 'milter', 'policy', 'socketmap', 'relay', 'lmtp', 'metrics']);
      // The relay greets with DMTPv1 over TLS on its port.
      const { connect } = await import('node:tls');
      const banner = await new Promise<string>((resolve, reject) => {
        const sock = connect({ host: '127.0.0.1', port: ports[3]!, rejectUnauthorized: false }, () => sock.once('data', (d) => (resolve(String(d)), sock.destroy())));
        sock.once('error', reject);
      });
      assert.match(banner, /^220 .*DMTPv1/);
      // Gateway, relay and LMTP leg share one resolver: one cache, one Redis connection.
      assert.equal(stderr.match(/signet resolver opened/g)?.length, 1, stderr);
      // Ready: the keystore signs; no Redis is configured, so none is checked.
      const ready = await fetch(`http://127.0.0.1:${ports[4]}/readyz`);
      assert.equal(ready.status, 200);
      const body = (await ready.json()) as { ok: boolean; checks: { name: string; ok: boolean; detail: string }[] };
      assert.deepEqual([body.ok, body.checks.map((c) => [c.name, c.ok])], [true, [['keystore', true]]]);
      assert.equal((await fetch(`http://127.0.0.1:${ports[4]}/healthz`)).status, 200);
      assert.match(body.checks[0]!.detail, /^the POK pok\/1 signs \(file\)$/);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await new Promise<number | null>((r) => child.once('exit', (c) => r(c))), 0, stderr);
  });

  it('/readyz reports Redis: ready while the shared cache is connected; once Redis is gone still 200 (mail flows) but degraded, naming it', { skip: redisAvailable() ? false : 'redis-server is not installed' }, async () => {
    const redis = await startRedis();
    const { file, ports: p } = await initDomain('a.test');
    const text = fs.readFileSync(file, 'utf8');
    const withRedis = text.replace(/^# redis = "[^"]*"/m, `redis = "${redis.url}"`);
    assert.notEqual(withRedis, text, 'dime init writes a commented redis line under [resolver]');
    fs.writeFileSync(file, withRedis);
    const child = spawn(process.execPath, [DIME_BIN, 'start', '--config', file, '--metrics', `inet:127.0.0.1:${p.metrics}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const readyz = async () => {
      const r = await fetch(`http://127.0.0.1:${p.metrics}/readyz`);
      return { status: r.status, body: (await r.json()) as { ok: boolean; degraded: boolean; checks: { name: string; ok: boolean; required: boolean; detail: string }[] } };
    };
    try {
      await waitForOutput(child, () => stderr, /dime started/, 20_000);
      // ioredis connects in the background: ready as soon as it has.
      let r = await readyz();
      for (const until = Date.now() + 10_000; r.body.degraded && Date.now() < until; r = await readyz()) await new Promise((res) => setTimeout(res, 500));
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual([r.body.ok, r.body.degraded, r.body.checks.map((c) => [c.name, c.ok, c.required])], [true, false, [['keystore', true, true], ['redis', true, false]]]);
      await redis.kill();
      // Results are reused for 5 s (one probe at a time for every monitor): wait past that.
      for (const until = Date.now() + 15_000; !r.body.degraded && Date.now() < until; r = await readyz()) await new Promise((res) => setTimeout(res, 500));
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual([r.body.ok, r.body.degraded, r.body.checks.map((c) => [c.name, c.ok])], [true, true, [['keystore', true], ['redis', false]]]);
      assert.match(r.body.checks[1]!.detail, /unreachable/);
    } finally {
      child.kill('SIGTERM');
      await redis.stop();
    }
    assert.equal(await new Promise<number | null>((r) => child.once('exit', (c) => r(c))), 0, stderr);
  });

  it('split deployments: dime milter runs the gateway, dime relay the LMTP leg, dime policy the strict rule', async () => {
    const { file, ports: p } = await initDomain('split.test');
    const ports = [p.milter, p.policy, p.socketmap, p.relay, p.lmtp];
    const run = async (args: string[], ready: RegExp, check: (stderr: string) => void) => {
      const child = spawn(process.execPath, [DIME_BIN, ...args, '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      try {
        await waitForOutput(child, () => stderr, ready, 20_000);
        check(stderr);
      } finally {
        child.kill('SIGTERM');
      }
      assert.equal(await new Promise<number | null>((r) => child.once('exit', (c) => r(c))), 0, stderr);
    };
    await run(['milter'], /"event":"milter.start"/, (e) => assert.match(e, /"handler":"dime"/));
    await run(['relay'], /"event":"relay.start"/, (e) => assert.match(e, new RegExp(`"lmtp":"inet:127.0.0.1:${ports[4]}"`)));
    // Listeners from [policy]; the strict rule itself is tested in policy.strict.test.ts.
    await run(['policy'], /"msg":"ready"/, (e) => assert.match(e, new RegExp(`"policy":"inet:127.0.0.1:${ports[1]}"`)));
  });

  it('a configuration error refuses to start', () => {
    const dir = scratchDir();
    const file = path.join(dir, 'bad.toml');
    fs.writeFileSync(file, '[milter]\nlisen = "inet:127.0.0.1:1"\n');
    const r = dime(['start', '--config', file]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /milter.lisen is not a setting/);
  });
});
