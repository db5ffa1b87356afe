/**
 * The shared cache through Redis Sentinel and Redis Cluster, with real servers on loopback: the
 * resolver is built from a [resolver] configuration exactly as production builds it (parseConfig →
 * createResolver → createRedisClient), once per "MX host". What MX host A resolved (a record, an org
 * signet) MX host B reads from Redis without asking DNS or the DX; Redis TTLs follow the cache's
 * freshness and stale windows; for Sentinel the client found the master through the sentinel (only
 * the sentinel is configured, the keys are on the master); for Cluster the keys spread over the
 * masters and every one is read back.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { Cluster, Redis } from 'ioredis';
import { parseConfig } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { base64EncodeNoPad } from '../src/dime/base64.js';
import { parseRecordValue } from '../src/dime/record.js';
import { createOrgSignet } from '../src/dime/signet/index.js';
import { createLogger } from '../src/log.js';
import type { SignetLoad, SignetValue } from '../src/resolver/cache.js';
import type { DnsClient, RecordLookup } from '../src/resolver/dns.js';
import { createResolver, type Resolver } from '../src/resolver/resolver.js';
import { redisAvailable, redisCliAvailable, startCluster, startSentinel, type ClusterRig, type SentinelRig } from './helpers/redis.js';

const crypto = defaultCrypto();
const POK = base64EncodeNoPad(crypto.ed25519PublicKey(new Uint8Array(32).fill(3)));
const TEXT = `ver=1 pok=${POK} pol=experimental`;
const found = (ttl: number): RecordLookup => ({ kind: 'record', record: parseRecordValue(TEXT), text: TEXT, dnssec: 'validated', ttl, server: 'test' });
const SERVFAIL: RecordLookup = { kind: 'servfail', code: 'DNS_SERVFAIL', detail: 'test' };
const PREFIX = 'topo:';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const missing = !redisAvailable() ? 'redis-server is not installed (/usr/bin/redis-server)' : !redisCliAvailable() ? 'redis-cli is not installed (/usr/bin/redis-cli)' : false;

/** The [resolver] section a deployment would write, plus short windows so TTLs can be watched. */
function configText(topology: string): string {
  return ['domain = "mx.example"', '[resolver]', topology, `redis_prefix = "${PREFIX}"`, 'redis_timeout_ms = 1000', 'min_ttl = 0', 'max_stale = 1', 'signet_ttl = 1', ''].join('\n');
}

interface MxHost {
  name: string;
  resolver: Resolver;
  dns: { answer: RecordLookup; calls: number };
  warnings: Array<Record<string, unknown>>;
}

/** One MX host: a resolver built from the configuration as production builds it, DNS stubbed. */
async function mxHost(name: string, toml: string, answer: RecordLookup = found(60)): Promise<MxHost> {
  const warnings: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) warnings.push(JSON.parse(l));
      cb();
    },
  });
  const dns = { answer, calls: 0 };
  const stub = {
    lookupRecord: async (): Promise<RecordLookup> => {
      dns.calls++;
      return dns.answer;
    },
  } as unknown as DnsClient;
  const config = parseConfig(toml, `${name}.toml`, {});
  const resolver = createResolver(config.resolver, { dns: stub, log: createLogger({ level: 'warn', destination }) });
  assert.ok(resolver.cache.store.hasRedis, `${name}: the configuration gives a Redis client`);
  assert.equal(await resolver.cache.store.ready(10_000), true, `${name}: Redis is ready`);
  return { name, resolver, dns, warnings };
}

/** No fallbacks, no errors, no warnings: every Redis call of this host went through. */
function assertClean(h: MxHost): void {
  const m = h.resolver.metrics;
  assert.deepEqual([m.get('redis_fallbacks'), m.get('redis_errors'), m.get('redis_corrupt')], [0, 0, 0], `${h.name}: ${JSON.stringify(m.snapshot())}`);
  assert.deepEqual(h.warnings, [], `${h.name} logged no warning`);
}

let signetValue: SignetValue;
async function orgSignet(): Promise<SignetValue> {
  signetValue ??= {
    signet: await createOrgSignet({ signer: crypto.ed25519Signer(new Uint8Array(32).fill(9)), encryptionKey: crypto.secp256k1PublicKey(new Uint8Array(32).fill(4)), domain: 'sig.example' }),
    state: 'id',
    fingerprints: {},
    anchor: POK,
  };
  return signetValue;
}

/** How many of `keys` exist, one EXISTS each (keys in different cluster slots cannot share a command). */
async function count(admin: Pick<Redis, 'exists'>, ...keys: string[]): Promise<number> {
  let n = 0;
  for (const k of keys) n += await admin.exists(k);
  return n;
}

/**
 * The checks both topologies share. `admin` reads the keys where they are stored (the master, or
 * the cluster); `hosts` collects the hosts to close.
 */
function sharedCases(toml: () => string, admin: () => Pick<Redis, 'pttl' | 'exists'>, hosts: MxHost[]) {
  const host = async (name: string, answer?: RecordLookup) => {
    const h = await mxHost(name, toml(), answer);
    hosts.push(h);
    return h;
  };

  it('a record and an org signet resolved by MX host A are read by MX host B from Redis', async () => {
    const a = await host('mx-a');
    const b = await host('mx-b');
    const r1 = await a.resolver.record('Shared.Example');
    assert.deepEqual([r1.kind, r1.kind === 'record' && r1.path, a.dns.calls], ['record', 'dns', 1]);
    const value = await orgSignet();
    let loadsA = 0;
    const s1 = await a.resolver.cache.signet('org', 'sig.example', () => true, async (): Promise<SignetLoad> => {
      loadsA++;
      return { kind: 'signet', value, path: 'dmtp' };
    });
    assert.deepEqual([s1.kind, s1.kind === 'signet' && s1.path, loadsA], ['signet', 'dmtp', 1]);
    await a.resolver.cache.store.flush();

    const r2 = await b.resolver.record('shared.example');
    assert.deepEqual([r2.kind, r2.kind === 'record' && r2.path, r2.kind === 'record' && r2.tier, b.dns.calls], ['record', 'cache', 'redis', 0], 'B answers from what A stored');
    assert.equal(r2.kind === 'record' && r2.value.text, TEXT);
    const s2 = await b.resolver.cache.signet('org', 'sig.example', () => true, async (): Promise<SignetLoad> => {
      throw new Error('MX host B must not fetch a signet A already has');
    });
    assert.deepEqual([s2.kind, s2.kind === 'signet' && s2.path, s2.kind === 'signet' && s2.tier], ['signet', 'cache', 'redis']);
    assert.deepEqual(s2.kind === 'signet' && s2.value.signet.bytes, value.signet.bytes, 'the same signet bytes');
    assert.equal(b.resolver.metrics.get('redis_hits'), 2);
    assert.equal(await count(admin(), `${PREFIX}v1:rec:shared.example`, `${PREFIX}v1:org:sig.example`), 2);
    assertClean(a);
    assertClean(b);
  });

  it('Redis TTLs follow freshness + max_stale: fresh on B, then stale only on failure, then gone', async () => {
    const a = await host('mx-a-ttl', found(1)); // ttl 1 s, max_stale 1 s: kept 2 s
    await a.resolver.record('ttl.example');
    const value = await orgSignet();
    await a.resolver.cache.signet('org', 'ttl-sig.example', () => true, async (): Promise<SignetLoad> => ({ kind: 'signet', value, path: 'dmtp' }));
    await a.resolver.cache.store.flush();
    for (const key of [`${PREFIX}v1:rec:ttl.example`, `${PREFIX}v1:org:ttl-sig.example`]) {
      const pttl = await admin().pttl(key);
      assert.ok(pttl > 1_500 && pttl <= 2_000, `${key}: PTTL ${pttl} ms is freshness (1 s) + max_stale (1 s)`);
    }

    const b = await host('mx-b-ttl', SERVFAIL);
    const fresh = await b.resolver.record('ttl.example');
    assert.deepEqual([fresh.kind === 'record' && fresh.path, fresh.kind === 'record' && fresh.tier, b.dns.calls], ['cache', 'redis', 0]);

    await sleep(1_100); // past freshness, inside the stale window
    const c = await host('mx-c-ttl', SERVFAIL);
    const stale = await c.resolver.record('ttl.example');
    assert.deepEqual([stale.kind, stale.kind === 'record' && stale.path, c.dns.calls], ['record', 'stale', 1], 'not fresh any more: DNS is asked, its failure is covered by the stale copy from Redis');

    await sleep(1_000); // past freshness + max_stale: Redis dropped it
    assert.equal(await count(admin(), `${PREFIX}v1:rec:ttl.example`, `${PREFIX}v1:org:ttl-sig.example`), 0, 'expired in Redis');
    const d = await host('mx-d-ttl', SERVFAIL);
    const gone = await d.resolver.record('ttl.example');
    assert.deepEqual([gone.kind, d.dns.calls, d.resolver.metrics.get('redis_hits')], ['failure', 1, 0], 'nothing left to share');
    for (const h of [a, b, d]) assertClean(h);
    // c warned about the stale answer (DNS failed), nothing about Redis.
    assert.deepEqual(c.warnings.map((w) => w.event), ['resolver.stale']);
  });
}

describe('shared cache through Redis Sentinel', { skip: missing }, () => {
  let rig: SentinelRig;
  let master: Redis;
  const hosts: MxHost[] = [];
  before(async () => {
    rig = await startSentinel();
    master = new Redis(rig.master.url);
  });
  after(async () => {
    for (const h of hosts) await h.resolver.close();
    master?.disconnect();
    await rig?.stop();
  });

  const toml = () => configText(`redis_sentinels = ["${rig.sentinel}"]\nredis_sentinel_name = "${rig.name}"`);

  it('the client finds the master through the sentinel (only the sentinel is configured)', async () => {
    const sentinelStats = async () => {
      const s = new Redis({ host: '127.0.0.1', port: rig.sentinelPort });
      try {
        return Number(/total_connections_received:(\d+)/.exec(String(await s.info('stats')))![1]);
      } finally {
        s.disconnect();
      }
    };
    const before = await sentinelStats();
    assert.ok(!toml().includes(String(rig.master.port)), 'the master port is nowhere in the configuration');
    const a = await mxHost('mx-a-sentinel', toml());
    hosts.push(a);
    assert.ok((await sentinelStats()) > before + 1, 'the MX host asked the sentinel');
    const clientsBefore = Number(/connected_clients:(\d+)/.exec(String(await master.info('clients')))![1]);
    assert.ok(clientsBefore >= 2, `the master has the MX host's connection: ${clientsBefore} clients`);
    await a.resolver.record('via-sentinel.example');
    await a.resolver.cache.store.flush();
    const raw = await master.get(`${PREFIX}v1:rec:via-sentinel.example`);
    assert.ok(raw && JSON.parse(raw).v.t === TEXT, 'the entry is on the master the sentinel named');
    assert.match(String(await master.info('keyspace')), /db0:keys=\d+/);
    assertClean(a);
  });

  sharedCases(toml, () => master, hosts);
});

describe('shared cache through Redis Cluster', { skip: missing }, () => {
  let rig: ClusterRig;
  let cluster: Cluster;
  const hosts: MxHost[] = [];
  before(async () => {
    rig = await startCluster();
    cluster = new Cluster(rig.ports.map((port) => ({ host: '127.0.0.1', port })));
  });
  after(async () => {
    for (const h of hosts) await h.resolver.close();
    cluster?.disconnect();
    await rig?.stop();
  });

  const toml = () => configText(`redis_cluster = ["${rig.nodes[0]}"]`); // one seed: the client discovers the rest

  it('keys spread over the masters; MX host B reads every one (redirections followed)', async () => {
    const a = await mxHost('mx-a-cluster', toml());
    const b = await mxHost('mx-b-cluster', toml());
    hosts.push(a, b);
    const domains = Array.from({ length: 24 }, (_, i) => `spread-${i}.example`);
    for (const d of domains) assert.equal((await a.resolver.record(d)).kind, 'record');
    await a.resolver.cache.store.flush();
    for (const d of domains) {
      const r = await b.resolver.record(d);
      assert.deepEqual([r.kind === 'record' && r.path, r.kind === 'record' && r.tier], ['cache', 'redis'], d);
    }
    assert.equal(b.dns.calls, 0);
    const perNode = await Promise.all(
      rig.ports.map(async (port) => {
        const n = new Redis({ host: '127.0.0.1', port });
        try {
          return (await n.keys(`${PREFIX}v1:rec:spread-*`)).length;
        } finally {
          n.disconnect();
        }
      }),
    );
    assert.equal(perNode.reduce((x, y) => x + y, 0), domains.length, `every key stored once: ${perNode}`);
    assert.ok(perNode.filter((n) => n > 0).length >= 2, `keys on several masters: ${perNode}`);
    assertClean(a);
    assertClean(b);
  });

  sharedCases(toml, () => cluster as unknown as Redis, hosts);
});
