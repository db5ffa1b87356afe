/**
 * The resolver cache with a real redis-server on loopback: hits in memory and through Redis (two
 * caches standing for two MX hosts), TTL bounds, negative caching only for a validated "no record",
 * single-flight (100 askers, one lookup), stale answers on failure and on the asker's deadline, the
 * pol=strict hold against an unauthenticated "no record", nothing cached that did not validate,
 * damaged entries ignored, and Redis killed mid-test: the in-process cache answers, a metric and one
 * warning, then recovery when Redis is back.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { DEFAULT_RESOLVER } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { base64EncodeNoPad } from '../src/dime/base64.js';
import { parseRecordValue } from '../src/dime/record.js';
import { isDimeError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { Lru, ResolverCache, SingleFlight, TieredStore, createRedisClient, type RecordResult } from '../src/resolver/cache.js';
import type { RecordLookup } from '../src/resolver/dns.js';
import { redisAvailable, startRedis, type RedisRig } from './helpers/redis.js';

const crypto = defaultCrypto();
const POK = base64EncodeNoPad(crypto.ed25519PublicKey(new Uint8Array(32).fill(3)));
const TEXT = (pol: string, exp?: number) => `ver=1 pok=${POK} pol=${pol}${exp ? ` exp=${exp}` : ''}`;
const found = (text: string, ttl = 300, dnssec: 'validated' | 'unsigned' = 'validated'): RecordLookup => ({ kind: 'record', record: parseRecordValue(text), text, dnssec, ttl, server: 'test' });
const none = (dnssec: 'validated' | 'unsigned', negativeTtl = 60): RecordLookup => ({ kind: 'no-record', reason: 'nxdomain', dnssec, negativeTtl, server: 'test' });
const SERVFAIL: RecordLookup = { kind: 'servfail', code: 'DNS_SERVFAIL', detail: 'test' };
const S = 1000;

/** A clock the test moves. */
function clock(start = Date.now()) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

/** Log lines, parsed. */
function logSink() {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { lines, log: createLogger({ level: 'info', destination }) };
}

/** A lookup that counts its calls and answers what the test sets. */
function dnsStub(initial: RecordLookup) {
  const stub = { answer: initial, calls: 0, delayMs: 0, fn: async (signal: AbortSignal): Promise<RecordLookup> => {
    stub.calls++;
    if (stub.delayMs) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(resolve, stub.delayMs);
        signal.addEventListener('abort', () => {
          clearTimeout(t);
          reject(signal.reason);
        });
      });
    }
    return stub.answer;
  } };
  return stub;
}

function newCache(o: { redis?: string; clock?: () => number; log?: ReturnType<typeof logSink>['log']; timings?: Partial<typeof DEFAULT_RESOLVER>; lru?: number } = {}) {
  const { log } = o.log ? { log: o.log } : logSink();
  const store = new TieredStore({
    lruEntries: o.lru ?? 1000,
    ...(o.redis ? { redis: createRedisClient({ redis: o.redis, redisTimeoutMs: 250 }) } : {}),
    prefix: 'test:',
    log,
    ...(o.clock ? { clock: o.clock } : {}),
  });
  return new ResolverCache({ timings: { ...DEFAULT_RESOLVER, ...o.timings }, store, log, ...(o.clock ? { clock: o.clock } : {}) });
}

const kindPath = (r: RecordResult) => `${r.kind}:${'path' in r ? r.path : ''}`;

describe('resolver cache: in-process', () => {
  it('LRU evicts the least recently used; single-flight shares one promise per key', async () => {
    const lru = new Lru<number>(2);
    lru.set('a', 1);
    lru.set('b', 2);
    lru.get('a');
    lru.set('c', 3);
    assert.deepEqual([lru.get('a'), lru.get('b'), lru.get('c'), lru.evictions], [1, undefined, 3, 1]);
    const sf = new SingleFlight();
    let runs = 0;
    const p = await Promise.all(Array.from({ length: 10 }, () => sf.run('k', async () => ++runs)));
    assert.deepEqual([new Set(p).size, runs, sf.joined, sf.size], [1, 1, 9, 0]);
    await assert.rejects(sf.run('x', () => { throw new Error('sync throw'); }));
    assert.equal(sf.size, 0, 'a synchronous throw does not leave a stuck flight');
  });

  it('a hit answers from memory; the DNS TTL is clamped to [min_ttl, max_ttl]', async () => {
    const c = clock();
    const cache = newCache({ clock: c.now, timings: { minTtl: 30, maxTtl: 3600 } });
    const dns = dnsStub(found(TEXT('mixed'), 5));
    assert.equal(kindPath(await cache.record('a.test', dns.fn)), 'record:dns');
    assert.equal(kindPath(await cache.record('a.test', dns.fn)), 'record:cache');
    c.advance(29 * S);
    assert.equal(kindPath(await cache.record('a.test', dns.fn)), 'record:cache', 'TTL 5 s is raised to min_ttl 30 s');
    c.advance(2 * S);
    assert.equal(kindPath(await cache.record('a.test', dns.fn)), 'record:dns');
    dns.answer = found(TEXT('mixed'), 1_000_000);
    c.advance(31 * S);
    await cache.record('a.test', dns.fn);
    c.advance(3601 * S);
    assert.equal(kindPath(await cache.record('a.test', dns.fn)), 'record:dns', 'a huge TTL is capped at max_ttl');
    assert.equal(dns.calls, 4);
  });

  it('negative caching: only a validated "no record", for min(SOA minimum, negative_ttl)', async () => {
    const c = clock();
    const cache = newCache({ clock: c.now, timings: { negativeTtl: 300 } });
    const dns = dnsStub(none('validated', 60));
    assert.equal(kindPath(await cache.record('n.test', dns.fn)), 'no-record:dns');
    assert.equal(kindPath(await cache.record('n.test', dns.fn)), 'no-record:cache');
    c.advance(61 * S);
    await cache.record('n.test', dns.fn);
    assert.equal(dns.calls, 2, 'the SOA minimum (60 s) bounds it');
    dns.answer = none('validated', 86_400);
    c.advance(61 * S);
    await cache.record('n.test', dns.fn);
    c.advance(301 * S);
    await cache.record('n.test', dns.fn);
    assert.equal(dns.calls, 4, 'negative_ttl (300 s) bounds it');

    const unsigned = dnsStub(none('unsigned', 600));
    for (let i = 0; i < 3; i++) assert.equal(kindPath(await cache.record('u.test', unsigned.fn)), 'no-record:dns');
    assert.equal(unsigned.calls, 3, 'an unauthenticated "no record" is never cached');
    const zero = dnsStub(none('validated', 0));
    await cache.record('z.test', zero.fn);
    await cache.record('z.test', zero.fn);
    assert.equal(zero.calls, 2, 'no SOA, no negative caching');
  });

  it('nothing that did not validate is cached: SERVFAIL, bogus, malformed are asked again', async () => {
    const cache = newCache();
    for (const answer of [SERVFAIL, { kind: 'bogus', code: 'DNS_BOGUS', how: 'ede', detail: 'x' }, { kind: 'malformed', code: 'RECORD_BAD_POK', detail: 'x', dnssec: 'validated', ttl: 60 }] as RecordLookup[]) {
      const dns = dnsStub(answer);
      const r1 = await cache.record(`f-${answer.kind}.test`, dns.fn);
      const r2 = await cache.record(`f-${answer.kind}.test`, dns.fn);
      assert.deepEqual([r1.kind, r2.kind, dns.calls], ['failure', 'failure', 2], answer.kind);
    }
  });

  it('single-flight: 100 concurrent askers for one key make one lookup', async () => {
    const cache = newCache();
    const dns = dnsStub(found(TEXT('strict')));
    dns.delayMs = 50;
    const answers = await Promise.all(Array.from({ length: 100 }, () => cache.record('sf.test', dns.fn)));
    assert.equal(dns.calls, 1);
    assert.ok(answers.every((a) => a.kind === 'record' && a.value.text === TEXT('strict')));
    assert.equal(cache.flights.joined, 99);
  });

  it('stale-while-revalidate: DNS failure or the asker\'s deadline answers from the stale entry, within max_stale', async () => {
    const c = clock();
    const { lines, log } = logSink();
    const cache = newCache({ clock: c.now, log, timings: { maxStale: 600, minTtl: 0 } });
    const dns = dnsStub(found(TEXT('mixed'), 60));
    await cache.record('s.test', dns.fn);
    c.advance(61 * S);
    dns.answer = SERVFAIL;
    const stale = await cache.record('s.test', dns.fn);
    assert.equal(kindPath(stale), 'record:stale');
    assert.ok(stale.kind === 'record' && stale.failure && 'code' in stale.failure && stale.failure.code === 'DNS_SERVFAIL');
    assert.ok(lines.some((l) => l.event === 'resolver.stale'));

    // The refresh hangs; the asker's deadline (50 ms) gets the stale entry, not "unknown".
    dns.answer = found(TEXT('mixed'), 60);
    dns.delayMs = 2_000;
    const t0 = Date.now();
    const r = await cache.record('s.test', dns.fn, AbortSignal.timeout(50));
    assert.equal(kindPath(r), 'record:stale');
    assert.ok(Date.now() - t0 < 1_000);

    c.advance(600 * S);
    dns.answer = SERVFAIL;
    dns.delayMs = 0;
    assert.equal((await cache.record('s.test', dns.fn)).kind, 'failure', 'past max_stale a failure is a failure');
    assert.ok(cache.metrics.get('stale_served') >= 2);
  });

  it('without a stale entry the asker\'s deadline is RESOLVE_DEADLINE, never "no record"', async () => {
    const cache = newCache();
    const dns = dnsStub(found(TEXT('mixed')));
    dns.delayMs = 2_000;
    await assert.rejects(cache.record('d.test', dns.fn, AbortSignal.timeout(30)), (e: unknown) => isDimeError(e, 'RESOLVE_DEADLINE'));
  });

  it('a cached pol=strict record is not replaced by an unauthenticated "no record" before it expires', async () => {
    const c = clock();
    const { lines, log } = logSink();
    const cache = newCache({ clock: c.now, log, timings: { maxStale: 3600, maxHold: 7 * 86_400, minTtl: 0 } });
    const dns = dnsStub(found(TEXT('strict', 2), 60, 'unsigned'));
    await cache.record('h.test', dns.fn);
    c.advance(2 * 3600 * S); // past fresh and past the stale window: only exp= (2 days) holds it
    dns.answer = none('unsigned');
    const held = await cache.record('h.test', dns.fn);
    assert.equal(kindPath(held), 'record:stale');
    assert.ok(held.kind === 'record' && held.downgradeRefused);
    assert.equal(cache.metrics.get('downgrade_refused'), 1);
    assert.ok(lines.some((l) => l.event === 'resolver.downgrade_refused'));
    // A DNSSEC-validated "no record" is the domain's own word: it replaces the strict record.
    dns.answer = none('validated');
    assert.equal(kindPath(await cache.record('h.test', dns.fn)), 'no-record:dns');

    // Past exp= the hold ends.
    dns.answer = found(TEXT('strict', 2), 60, 'unsigned');
    await cache.record('h2.test', dns.fn);
    c.advance(2 * 86_400 * S + S);
    dns.answer = none('unsigned');
    assert.equal(kindPath(await cache.record('h2.test', dns.fn)), 'no-record:dns');

    // exp= is bounded by max_hold; without exp= the hold is the stale window; non-strict records are not held.
    const capped = newCache({ clock: c.now, timings: { maxStale: 60, maxHold: 3600, minTtl: 0 } });
    dns.answer = found(TEXT('strict', 365), 60, 'unsigned');
    await capped.record('cap.test', dns.fn);
    c.advance(3601 * S);
    dns.answer = none('unsigned');
    assert.equal(kindPath(await capped.record('cap.test', dns.fn)), 'no-record:dns');
    dns.answer = found(TEXT('mixed', 30), 60, 'unsigned');
    await capped.record('mixed.test', dns.fn);
    c.advance(61 * S);
    dns.answer = none('unsigned');
    assert.equal(kindPath(await capped.record('mixed.test', dns.fn)), 'no-record:dns');
  });

  it('signets: fresh hits, `accept` rejects a cached one that no longer fits, stale only on fetch failure', async () => {
    const c = clock();
    const cache = newCache({ clock: c.now, timings: { signetTtl: 60, maxStale: 600 } });
    const { createOrgSignet } = await import('../src/dime/signet/index.js');
    const seed = new Uint8Array(32).fill(9);
    const signet = await createOrgSignet({ signer: crypto.ed25519Signer(seed), encryptionKey: crypto.secp256k1PublicKey(new Uint8Array(32).fill(4)), domain: 'sig.test' });
    const value = { signet, state: 'id' as const, fingerprints: {}, anchor: 'A' };
    let loads = 0;
    let next: 'ok' | 'fail' | 'refuse' = 'ok';
    const load = async () => {
      loads++;
      if (next === 'fail') return { kind: 'failure' as const, error: new (await import('../src/errors.js')).DimeError('DMTP_CONNECT_FAILED', 'x') };
      if (next === 'refuse') return { kind: 'refused' as const, error: new (await import('../src/errors.js')).DimeError('RESOLVE_SIGNET_INVALID', 'x') };
      return { kind: 'signet' as const, value, path: 'dmtp' as const };
    };
    assert.equal((await cache.signet('org', 'sig.test', () => true, load)).kind, 'signet');
    const hit = await cache.signet('org', 'sig.test', () => true, load);
    assert.deepEqual([hit.kind, hit.kind === 'signet' && hit.path, loads], ['signet', 'cache', 1]);
    await cache.signet('org', 'sig.test', (v) => v.anchor === 'B', load);
    assert.equal(loads, 2, 'a cached signet that does not fit the record is fetched again');
    c.advance(61 * S);
    next = 'fail';
    const stale = await cache.signet('org', 'sig.test', () => true, load);
    assert.deepEqual([stale.kind, stale.kind === 'signet' && stale.path], ['signet', 'stale']);
    next = 'refuse';
    assert.equal((await cache.signet('org', 'sig.test', () => true, load)).kind, 'refused', 'a signet that fails validation is never covered by a stale one');
  });
});

describe('resolver cache: through Redis', { skip: !redisAvailable() && 'redis-server is not installed' }, () => {
  let redis: RedisRig;
  let admin: Redis;

  before(async () => {
    redis = await startRedis();
    admin = new Redis(redis.url);
    admin.on('error', () => undefined); // the outage test kills the server under it
  });
  after(async () => {
    admin?.disconnect();
    await redis?.stop();
  });

  it('two caches (two MX hosts) share entries: the second answers from Redis without a lookup', async () => {
    const a = newCache({ redis: redis.url });
    const b = newCache({ redis: redis.url });
    assert.ok((await a.store.ready()) && (await b.store.ready()));
    const dns = dnsStub(found(TEXT('strict', 30), 300));
    assert.equal(kindPath(await a.record('shared.test', dns.fn)), 'record:dns');
    await a.store.flush();
    const r = await b.record('shared.test', dns.fn);
    assert.deepEqual([kindPath(r), r.kind === 'record' && r.tier, dns.calls], ['record:cache', 'redis', 1]);
    assert.equal((await b.record('shared.test', dns.fn)).kind === 'record' && 'memory', 'memory');
    // The Redis TTL keeps the entry for its hold (exp=30 days, max_hold 7 days), not just the DNS TTL.
    const pttl = await admin.pttl('test:v1:rec:shared.test');
    assert.ok(pttl > 6 * 86_400 * S && pttl <= 7 * 86_400 * S, String(pttl));
    // Negative entries too, and signets' pins.
    const n = dnsStub(none('validated', 120));
    await a.record('gone.test', n.fn);
    await a.store.flush();
    assert.equal(kindPath(await b.record('gone.test', n.fn)), 'no-record:cache');
    assert.equal(n.calls, 1);
    await Promise.all([a.close(), b.close()]);
  });

  it('single-flight through Redis: 100 askers on a cold key, one lookup; a damaged entry is a miss', async () => {
    const cache = newCache({ redis: redis.url });
    await cache.store.ready();
    const dns = dnsStub(found(TEXT('mixed')));
    dns.delayMs = 30;
    await Promise.all(Array.from({ length: 100 }, () => cache.record('sf-redis.test', dns.fn)));
    assert.equal(dns.calls, 1);
    await admin.set('test:v1:rec:junk.test', '{"v":{"k":"r","t":"not a record","d":"validated","h":0},"at":1,"fresh":9e15,"stale":9e15,"keep":9e15}');
    const junk = dnsStub(found(TEXT('mixed')));
    assert.equal(kindPath(await cache.record('junk.test', junk.fn)), 'record:dns');
    assert.equal(cache.metrics.get('redis_corrupt'), 1);
    await cache.close();
  });

  it('Redis killed mid-test: lookups go on in-process, a metric and one warning; back when Redis is', async () => {
    const { lines, log } = logSink();
    const cache = newCache({ redis: redis.url, log });
    assert.ok(await cache.store.ready());
    const dns = dnsStub(found(TEXT('mixed')));
    await cache.record('before.test', dns.fn);
    await cache.store.flush();

    await redis.kill();
    // Lookups during the outage: cached ones from memory, new ones from DNS; none fails for Redis.
    assert.equal(kindPath(await cache.record('before.test', dns.fn)), 'record:cache');
    for (let i = 0; i < 5; i++) assert.equal(kindPath(await cache.record(`during-${i}.test`, dns.fn)), 'record:dns');
    assert.equal(kindPath(await cache.record('during-0.test', dns.fn)), 'record:cache');
    assert.ok(cache.metrics.get('redis_fallbacks') >= 5, JSON.stringify(cache.metrics.snapshot()));
    assert.equal(cache.metrics.get('redis_outages'), 1);
    assert.equal(lines.filter((l) => l.event === 'resolver.redis.down').length, 1, 'one warning per outage');
    assert.equal(lines.find((l) => l.event === 'resolver.redis.down')?.level, 40);

    await redis.restart();
    assert.ok(await cache.store.ready(5_000), 'ioredis reconnects by itself');
    assert.ok(lines.some((l) => l.event === 'resolver.redis.up'));
    await cache.record('after.test', dns.fn);
    await cache.store.flush();
    assert.ok((await admin.get('test:v1:rec:after.test'))?.includes(POK), 'entries reach Redis again');
    await cache.close();
  });
});
