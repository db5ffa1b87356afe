/**
 * `dime resolve`: against a DNS server on loopback (dns2; the CLI runs as a child process, so the
 * server keeps answering while it waits) and a real redis-server for --redis: the path, DNSSEC
 * status, policy and timings in both output forms, exactly one JSON object with --json, the exit
 * statuses, and the shared cache seen from a second process.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Packet } from 'dns2';
import { defaultCrypto } from '../src/crypto/index.js';
import { base64EncodeNoPad } from '../src/dime/base64.js';
import { DIME_BIN, oneJsonObject, scratchDir } from './helpers/cli.js';
import { startFakeDns, type FakeDns } from './helpers/dnssec.js';
import { redisAvailable, startRedis, type RedisRig } from './helpers/redis.js';

const POK = base64EncodeNoPad(defaultCrypto().ed25519PublicKey(new Uint8Array(32).fill(8)));

/** The CLI as a child process, asynchronously (spawnSync would stop the in-process DNS server). */
function dime(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [DIME_BIN, ...args], { env: { ...process.env, DIME_CONFIG: '', ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      // execFile reports a non-zero exit as an error whose `code` is the status.
      const code: unknown = err ? (err as { code?: unknown }).code : 0;
      resolve({ status: typeof code === 'number' ? code : null, stdout, stderr });
    });
  });
}

describe('dime resolve', () => {
  let dns: FakeDns;
  let redis: RedisRig | undefined;
  const dir = scratchDir('dime-cli-resolve-');

  before(async () => {
    dns = await startFakeDns((q) => {
      if (q.name === '_dx.example.test') return { answers: [{ type: Packet.TYPE.TXT, data: [`ver=1 pok=${POK} pol=strict dx=dx.example.test exp=7`], ttl: 300 }], ad: true };
      if (q.name === '_dx.slow.test') return { drop: true };
      return { rcode: Packet.RCODE.NXDOMAIN, authorities: [{ type: Packet.TYPE.SOA, primary: 'ns.test', admin: 'h.test', serial: 1, refresh: 1, retry: 1, expiration: 1, minimum: 60 }], ad: true };
    });
    if (redisAvailable()) redis = await startRedis();
  });
  after(async () => {
    await dns?.close();
    await redis?.stop();
  });

  it('--record-only --json: one object with the path, DNSSEC status, policy and timings', async () => {
    const r = await dime(['resolve', 'example.test', '--dns', dns.server, '--record-only', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const j = oneJsonObject(r.stdout);
    assert.deepEqual([j.status, j.dnssec, j.policy, j.path, j.plaintextAllowed], ['ok', 'validated', 'strict', ['record:dns'], false]);
    assert.deepEqual(j.record.dx, ['dx.example.test']);
    assert.equal(j.record.expiryDays, 7);
    assert.ok(j.timings.totalMs > 0 && j.steps.record.ms >= 0);
  });

  it('the human form names the path, the DNSSEC status and the policy', async () => {
    const r = await dime(['resolve', 'example.test', '--dns', dns.server, '--record-only']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^example\.test: ok\n/);
    assert.match(r.stdout, /path\s+record:dns/);
    assert.match(r.stdout, /dnssec=validated\s+policy=strict\s+dx=dx\.example\.test \(dns, [\d.]+ ms\)/);
    assert.match(r.stdout, /plaintext\s+not allowed/);
  });

  it('no record: exit 1, plaintext allowed; a silent DNS server: unknown within the deadline', async () => {
    const none = await dime(['resolve', 'alice@nothing.test', '--dns', dns.server, '--json']);
    assert.equal(none.status, 1);
    const j = oneJsonObject(none.stdout);
    assert.deepEqual([j.status, j.plaintextAllowed, j.error.code, j.address], ['no-record', true, 'DNS_NO_RECORD', 'alice@nothing.test']);
    const t0 = Date.now();
    const slow = await dime(['resolve', 'slow.test', '--dns', dns.server, '--deadline', '400', '--json']);
    assert.equal(slow.status, 1);
    const s = oneJsonObject(slow.stdout);
    assert.equal(s.status, 'unknown');
    assert.ok(['DNS_TIMEOUT', 'RESOLVE_DEADLINE'].includes(s.error.code), s.error.code);
    assert.ok(Date.now() - t0 < 10_000);
  });

  it('the [resolver] section of --config is used; bad arguments are usage errors (exit 2)', async () => {
    const conf = path.join(dir, 'dime.toml');
    fs.writeFileSync(conf, `[resolver]\nservers = ["${dns.server}"]\ntrust_ad = "never"\n`);
    const r = await dime(['resolve', 'example.test', '--config', conf, '--record-only', '--json']);
    assert.equal(oneJsonObject(r.stdout).dnssec, 'unsigned', 'trust_ad = "never" from the file');
    const bad = await dime(['resolve', 'not a name', '--dns', dns.server, '--json']);
    assert.deepEqual([bad.status, oneJsonObject(bad.stdout).error.code], [2, 'USAGE']);
    assert.equal((await dime(['resolve', 'example.test', '--dns', 'dns.example.com'])).status, 2);
    assert.equal((await dime(['resolve', 'example.test', '--redis', 'localhost:6379'])).status, 2);
    assert.equal((await dime(['resolve', 'example.test', '--deadline', 'soon'])).status, 2);
  });

  it('--redis: a second process answers from the shared cache', { skip: !redisAvailable() && 'redis-server is not installed' }, async () => {
    const args = ['resolve', 'example.test', '--dns', dns.server, '--redis', redis!.url, '--record-only', '--json'];
    const first = oneJsonObject((await dime(args)).stdout);
    assert.deepEqual(first.path, ['record:dns']);
    const asked = dns.queries.length;
    const second = oneJsonObject((await dime(args)).stdout);
    assert.deepEqual([second.path, second.steps.record.tier], [['record:cache'], 'redis']);
    assert.equal(dns.queries.length, asked, 'no DNS query the second time');
  });
});
