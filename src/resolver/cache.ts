/**
 * The resolver's cache (docs/resolver.md, "Caching"): an in-process LRU in front, Redis behind it
 * (standalone, Sentinel or Cluster) so that several MX hosts share what one of them resolved.
 *
 * Rules, each enforced here and nowhere else:
 *  - Only what validated is cached: a parsed record that was not bogus, a signet that validated,
 *    and a "no record" only when DNSSEC validated it. Failures are never cached.
 *  - Freshness comes from DNS (the TTL, clamped to [min_ttl, max_ttl]) for records, from the SOA
 *    minimum (capped at negative_ttl) for a validated "no record", and from signet_ttl for signets.
 *  - Stale-while-revalidate on failure: past its freshness an entry still answers for max_stale when
 *    DNS or the DX fails, or when the asker's deadline passes while the refresh is under way.
 *    A "no record" is never served stale: only a current one may allow plaintext.
 *  - Downgrade resistance: a cached pol=strict record is not replaced by an unauthenticated
 *    "no record" before it expires (its exp=, at most max_hold; without exp= its stale window).
 *  - Single-flight: one lookup per key in flight, however many askers; each asker waits with its
 *    own deadline, the lookup itself is bounded by the resolution deadline.
 *  - Redis down: every Redis call is skipped or fails fast (no offline queue, a command timeout),
 *    the in-process LRU answers alone, `redis_fallbacks` counts it, and one warning is logged per
 *    outage (one info line when it comes back). A lookup never fails because of Redis.
 *
 * Redis is inside the trust boundary: whoever can write to it can plant records and signets, so it
 * must be reachable only by the MX hosts (bind to a private address, AUTH, TLS across networks).
 */
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { ResolverConfig } from '../config/config.js';
import { base64DecodeStrict, base64Encode } from '../dime/base64.js';
import { parseRecordValue, type DimeRecord } from '../dime/record.js';
import { decodeSignet, type FingerprintKind, type Signet, type SignetState } from '../dime/signet/index.js';
import { DimeError, isDimeError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { metrics as registry } from '../metrics.js';
import { abortError, raceSignal, type DnsFailure, type DnssecStatus, type MxHost, type MxLookup, type RecordLookup, type RecordMalformed } from './dns.js';

export type Clock = () => number;

const SECOND = 1000;
/** Cache key layout version: bump it when the stored JSON changes shape, so old entries are ignored. */
const KEY_VERSION = 'v1';
/** A Redis entry larger than this is not ours (a signet is at most a few KiB, a record ~64 KiB). */
const MAX_REDIS_VALUE = 1024 * 1024;

// ------------------------------------------------------------------------------------ metrics

/** Every ResolverMetrics event, process-wide, on /metrics (src/metrics.ts). */
const EVENTS = registry.counter('dime_resolver_events_total', 'Signet resolver events by name (docs/resolver.md, "Metrics")', ['event']);
/**
 * Events reach the registry in batches: a labelled Counter.inc costs about a microsecond, and the
 * warm path counts several events per resolution. Once a second is plenty for a scrape interval.
 */
const pendingEvents = new Map<string, number>();
const EVENTS_FLUSH_MS = 1_000;
let flushTimer: NodeJS.Timeout | undefined;

function flushEvents(): void {
  flushTimer = undefined;
  for (const [event, n] of pendingEvents) EVENTS.inc({ event }, n);
  pendingEvents.clear();
}

/**
 * Counters per resolver instance (the CLI and tests read them), mirrored into the process-wide
 * Prometheus registry as dime_resolver_events_total{event}. Names are stable.
 */
export class ResolverMetrics {
  private readonly counters = new Map<string, number>();

  inc(name: string, n = 1): void {
    this.counters.set(name, (this.counters.get(name) ?? 0) + n);
    pendingEvents.set(name, (pendingEvents.get(name) ?? 0) + n);
    if (!flushTimer) {
      flushTimer = setTimeout(flushEvents, EVENTS_FLUSH_MS);
      flushTimer.unref(); // never keeps the process alive; process exit loses at most a second of counts
    }
  }

  get(name: string): number {
    return this.counters.get(name) ?? 0;
  }

  snapshot(): Record<string, number> {
    return Object.fromEntries([...this.counters.entries()].sort(([a], [b]) => a.localeCompare(b)));
  }
}

// ------------------------------------------------------------------------------------ LRU

/** A Map in insertion order is an LRU: a hit moves the key to the end, eviction takes the first. */
export class Lru<V> {
  private readonly map = new Map<string, V>();
  evictions = 0;

  constructor(readonly capacity: number) {
    if (!(Number.isInteger(capacity) && capacity > 0)) throw new DimeError('CONFIG_INVALID', `LRU capacity must be a positive integer, got ${capacity}`);
  }

  get(key: string): V | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  set(key: string, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    if (this.map.size > this.capacity) {
      this.map.delete(this.map.keys().next().value as string);
      this.evictions++;
    }
  }

  delete(key: string): void {
    this.map.delete(key);
  }

  clear(): void {
    this.map.clear();
  }

  get size(): number {
    return this.map.size;
  }
}

// ------------------------------------------------------------------------------------ single-flight

export class SingleFlight {
  private readonly inflight = new Map<string, Promise<unknown>>();
  started = 0;
  joined = 0;

  /** `fn` runs once per key at a time; everyone asking meanwhile gets the same promise. */
  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const existing = this.inflight.get(key);
    if (existing) {
      this.joined++;
      return existing as Promise<T>;
    }
    this.started++;
    // Deferred so a synchronous throw in fn still goes through the cleanup below.
    const p: Promise<T> = Promise.resolve()
      .then(fn)
      .finally(() => {
        if (this.inflight.get(key) === p) this.inflight.delete(key);
      });
    this.inflight.set(key, p);
    return p;
  }

  get size(): number {
    return this.inflight.size;
  }
}

// ------------------------------------------------------------------------------------ values

export interface Entry<V> {
  v: V;
  /** When it was fetched (ms since the epoch). */
  at: number;
  /** Answers without asking anyone until then. */
  fresh: number;
  /** Answers when a refresh fails until then. */
  stale: number;
  /** Kept (Redis TTL) until then: the later of `stale` and a strict record's hold. */
  keep: number;
}

export interface PositiveRecord {
  kind: 'record';
  text: string;
  record: DimeRecord;
  dnssec: DnssecStatus;
  /** Until then an unauthenticated "no record" does not replace it (strict records; else = stale). */
  hold: number;
}

export interface NegativeRecord {
  kind: 'no-record';
  reason: 'nxdomain' | 'nodata';
  dnssec: 'validated';
}

export type RecordValue = PositiveRecord | NegativeRecord;

/** How a user signet's key relates to the one seen before (docs/resolver.md, "Chain of custody"). */
export type CustodyVerdict = 'first-seen' | 'unchanged' | 'verified' | 'verified-history' | 'broken';

export interface SignetValue {
  signet: Signet;
  state: SignetState;
  fingerprints: Partial<Record<FingerprintKind, string>>;
  /** What it validated against: the POK (org signets) or the org signet's crypto fingerprint (user signets), base64. */
  anchor: string;
  custody?: CustodyVerdict;
}

export interface PinValue {
  /** The last user signet accepted for the address. */
  signet: Signet;
}

export interface MxValue {
  hosts: MxHost[];
  nullMx: boolean;
  dnssec: DnssecStatus;
}

export type Kind = 'rec' | 'org' | 'user' | 'pin' | 'mx';
type ValueOf<K extends Kind> = K extends 'rec' ? RecordValue : K extends 'org' | 'user' ? SignetValue : K extends 'pin' ? PinValue : MxValue;

/** JSON forms in Redis; decoding re-parses the record text and the signet bytes (validate at the boundary). */
const codecs: { [K in Kind]: { encode(v: ValueOf<K>): unknown; decode(j: any): ValueOf<K> } } = {
  rec: {
    encode: (v) => (v.kind === 'record' ? { k: 'r', t: v.text, d: v.dnssec, h: v.hold } : { k: 'n', r: v.reason }),
    decode: (j) => {
      if (j?.k === 'n' && (j.r === 'nxdomain' || j.r === 'nodata')) return { kind: 'no-record', reason: j.r, dnssec: 'validated' };
      if (j?.k === 'r' && typeof j.t === 'string' && (j.d === 'validated' || j.d === 'unsigned') && Number.isFinite(j.h)) {
        return { kind: 'record', text: j.t, record: parseRecordValue(j.t), dnssec: j.d, hold: j.h };
      }
      throw new DimeError('CACHE_UNAVAILABLE', 'a cached record has an unknown form');
    },
  },
  org: { encode: encodeSignetValue, decode: decodeSignetValue },
  user: { encode: encodeSignetValue, decode: decodeSignetValue },
  pin: {
    encode: (v) => ({ b: base64Encode(v.signet.bytes) }),
    decode: (j) => ({ signet: decodeSignet(base64DecodeStrict(String(j?.b))) }),
  },
  mx: {
    encode: (v) => ({ h: v.hosts, n: v.nullMx, d: v.dnssec }),
    decode: (j) => {
      if (!Array.isArray(j?.h) || !j.h.every((h: any) => typeof h?.exchange === 'string' && Number.isInteger(h?.priority))) throw new DimeError('CACHE_UNAVAILABLE', 'a cached MX list has an unknown form');
      return { hosts: j.h, nullMx: j.n === true, dnssec: j.d === 'validated' ? 'validated' : 'unsigned' };
    },
  },
};

function encodeSignetValue(v: SignetValue): unknown {
  return { b: base64Encode(v.signet.bytes), s: v.state, f: v.fingerprints, a: v.anchor, ...(v.custody ? { c: v.custody } : {}) };
}

function decodeSignetValue(j: any): SignetValue {
  if (typeof j?.s !== 'string' || typeof j?.a !== 'string' || typeof j?.f !== 'object') throw new DimeError('CACHE_UNAVAILABLE', 'a cached signet has an unknown form');
  return { signet: decodeSignet(base64DecodeStrict(String(j.b))), state: j.s, fingerprints: j.f, anchor: j.a, ...(j.c ? { custody: j.c } : {}) };
}

// ------------------------------------------------------------------------------------ Redis

/** The part of ioredis (Redis or Cluster) the store uses. */
export interface RedisLike {
  status: string;
  get(key: string): Promise<string | null>;
  set(key: string, value: string, px: 'PX', ms: number): Promise<unknown>;
  del(key: string): Promise<number>;
  on(event: string, listener: (...args: any[]) => void): unknown;
  quit(): Promise<unknown>;
  disconnect(): void;
}

function hostPort(spec: string, defaultPort: number): { host: string; port: number } {
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(spec);
  if (v6) return { host: v6[1]!, port: v6[2] ? Number(v6[2]) : defaultPort };
  const m = /^([^:]+)(?::(\d+))?$/.exec(spec);
  if (!m) throw new DimeError('CONFIG_INVALID', `${JSON.stringify(spec)} is not HOST or HOST:PORT`);
  return { host: m[1]!, port: m[2] ? Number(m[2]) : defaultPort };
}

/**
 * An ioredis client for the configured topology, or undefined for in-process only. Commands fail
 * fast while disconnected (no offline queue, no retries per request, a command timeout); the client
 * keeps reconnecting in the background with a capped backoff.
 */
export function createRedisClient(
  config: Pick<ResolverConfig, 'redis' | 'redisSentinels' | 'redisSentinelName' | 'redisCluster' | 'redisTimeoutMs'>,
  env: NodeJS.ProcessEnv = process.env,
): RedisLike | undefined {
  // The password is read here, from the environment only, so it is never part of the configuration
  // object that `dime config check --json` prints or a log line might carry.
  const password = env.DIME_REDIS_PASSWORD;
  const common: RedisOptions = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: config.redisTimeoutMs,
    connectTimeout: Math.max(1_000, config.redisTimeoutMs * 4),
    // Reconnect quickly after a blip, at most every 2 s during a long outage.
    retryStrategy: (times: number) => Math.min(100 * times, 2_000),
    ...(password ? { password } : {}),
  };
  if (config.redisCluster) {
    return new Cluster(
      config.redisCluster.map((n) => hostPort(n, 6379)),
      { enableOfflineQueue: false, clusterRetryStrategy: (times: number) => Math.min(100 * times, 2_000), redisOptions: common },
    ) as unknown as RedisLike;
  }
  if (config.redisSentinels) {
    return new Redis({ ...common, sentinels: config.redisSentinels.map((n) => hostPort(n, 26379)), name: config.redisSentinelName! }) as unknown as RedisLike;
  }
  if (config.redis) return new Redis(config.redis, common) as unknown as RedisLike;
  return undefined;
}

// ------------------------------------------------------------------------------------ tiered store

export interface StoreOptions {
  lruEntries: number;
  redis?: RedisLike;
  /** Key prefix shared by every host using the same Redis. */
  prefix?: string;
  log?: Logger;
  metrics?: ResolverMetrics;
  clock?: Clock;
}

export type Tier = 'memory' | 'redis';

export class TieredStore {
  readonly lru: Lru<Entry<unknown>>;
  readonly metrics: ResolverMetrics;
  private readonly redis: RedisLike | undefined;
  private readonly prefix: string;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly pending = new Set<Promise<unknown>>();
  /** undefined until the first connect or failure, so the first failure also warns. */
  private redisUp: boolean | undefined;
  private closed = false;

  constructor(options: StoreOptions) {
    this.lru = new Lru(options.lruEntries);
    this.metrics = options.metrics ?? new ResolverMetrics();
    this.redis = options.redis;
    this.prefix = options.prefix ?? 'dime:';
    this.log = options.log ?? createLogger({ name: 'resolver' });
    this.clock = options.clock ?? Date.now;
    if (this.redis) {
      this.redis.on('ready', () => {
        if (this.redisUp === false) this.log.info({ event: 'resolver.redis.up' }, 'Redis is reachable again: the shared cache is back in use');
        this.redisUp = true;
      });
      // ioredis reports connection problems as events; without a listener they would crash the process.
      this.redis.on('error', (err: Error) => this.redisDown(err));
      this.redis.on('close', () => this.redisDown(new Error('connection closed')));
    }
  }

  get hasRedis(): boolean {
    return this.redis !== undefined;
  }

  /** Wait (at most `timeoutMs`) for Redis to accept commands; false when it did not. Never throws. */
  async ready(timeoutMs = 2_000): Promise<boolean> {
    const r = this.redis;
    if (!r) return false;
    const until = Date.now() + timeoutMs;
    while (r.status !== 'ready' && Date.now() < until) await new Promise((res) => setTimeout(res, 10));
    return r.status === 'ready';
  }

  private redisDown(err: Error): void {
    if (this.closed) return; // our own quit() closes the connection too
    this.metrics.inc('redis_errors');
    if (this.redisUp !== false) {
      this.redisUp = false;
      this.metrics.inc('redis_outages');
      this.log.warn({ event: 'resolver.redis.down', code: 'CACHE_UNAVAILABLE', err: err.message }, 'Redis is unreachable: lookups use the in-process cache alone until it is back');
    }
  }

  private usable(): RedisLike | undefined {
    const r = this.redis;
    if (!r) return undefined;
    if (r.status === 'ready') return r;
    this.metrics.inc('redis_fallbacks');
    if (this.redisUp !== false) this.redisDown(new Error(`Redis connection is ${r.status}`));
    return undefined;
  }

  private redisKey(kind: Kind, key: string): string {
    return `${this.prefix}${KEY_VERSION}:${kind}:${key}`;
  }

  /** The in-process entry only (synchronous): the warm path. */
  peek<K extends Kind>(kind: K, key: string): Entry<ValueOf<K>> | undefined {
    return this.lru.get(`${kind}:${key}`) as Entry<ValueOf<K>> | undefined;
  }

  /** The in-process entry when fresh, else the newer of it and Redis's. */
  async get<K extends Kind>(kind: K, key: string): Promise<{ entry: Entry<ValueOf<K>>; tier: Tier } | undefined> {
    const mem = this.peek(kind, key);
    const now = this.clock();
    if (mem && now < mem.fresh) return { entry: mem, tier: 'memory' };
    const r = this.usable();
    if (!r) return mem ? { entry: mem, tier: 'memory' } : undefined;
    let raw: string | null;
    try {
      raw = await r.get(this.redisKey(kind, key));
    } catch (err) {
      this.metrics.inc('redis_fallbacks');
      this.redisDown(err as Error);
      return mem ? { entry: mem, tier: 'memory' } : undefined;
    }
    if (raw === null) return mem ? { entry: mem, tier: 'memory' } : undefined;
    let entry: Entry<ValueOf<K>>;
    try {
      if (raw.length > MAX_REDIS_VALUE) throw new Error(`${raw.length} bytes`);
      const j = JSON.parse(raw);
      if (![j.at, j.fresh, j.stale, j.keep].every(Number.isFinite)) throw new Error('bad timestamps');
      entry = { v: codecs[kind].decode(j.v) as ValueOf<K>, at: j.at, fresh: j.fresh, stale: j.stale, keep: j.keep };
    } catch (err) {
      // Not ours or damaged: a miss, never an error for the lookup.
      this.metrics.inc('redis_corrupt');
      this.log.warn({ event: 'resolver.redis.corrupt', kind, key, err: (err as Error).message }, 'ignoring a damaged cache entry');
      return mem ? { entry: mem, tier: 'memory' } : undefined;
    }
    if (mem && mem.at > entry.at) return { entry: mem, tier: 'memory' };
    this.lru.set(`${kind}:${key}`, entry);
    this.metrics.inc('redis_hits');
    return { entry, tier: 'redis' };
  }

  /** Store in memory now and in Redis in the background (flush() waits for the writes). */
  set<K extends Kind>(kind: K, key: string, entry: Entry<ValueOf<K>>): void {
    this.lru.set(`${kind}:${key}`, entry);
    const r = this.usable();
    if (!r) return;
    const ttl = Math.ceil(entry.keep - this.clock());
    if (ttl <= 0) return;
    const json = JSON.stringify({ v: codecs[kind].encode(entry.v), at: entry.at, fresh: entry.fresh, stale: entry.stale, keep: entry.keep });
    this.track(r.set(this.redisKey(kind, key), json, 'PX', ttl));
  }

  delete(kind: Kind, key: string): void {
    this.lru.delete(`${kind}:${key}`);
    const r = this.usable();
    if (r) this.track(r.del(this.redisKey(kind, key)));
  }

  private track(p: Promise<unknown>): void {
    const q = p.then(
      () => undefined,
      (err: Error) => {
        this.metrics.inc('redis_fallbacks');
        this.redisDown(err);
      },
    );
    this.pending.add(q);
    void q.finally(() => this.pending.delete(q));
  }

  /** Wait for the Redis writes under way (tests, shutdown). */
  async flush(): Promise<void> {
    await Promise.all([...this.pending]);
  }

  async close(): Promise<void> {
    await this.flush();
    const r = this.redis;
    if (!r) return;
    this.closed = true;
    try {
      if (r.status === 'ready') await r.quit();
      else r.disconnect();
    } catch {
      r.disconnect();
    }
  }
}

// ------------------------------------------------------------------------------------ resolver cache

export type CacheTimings = Pick<ResolverConfig, 'minTtl' | 'maxTtl' | 'negativeTtl' | 'signetTtl' | 'maxStale' | 'maxHold' | 'custodyPinTtl' | 'deadlineMs'>;

export type RecordFailure = DnsFailure | RecordMalformed;

export type RecordResult =
  | {
      kind: 'record';
      value: PositiveRecord;
      path: 'cache' | 'dns' | 'stale';
      tier?: Tier;
      /** Served although DNS now says "no record" (unauthenticated) because the cached record is strict and not expired. */
      downgradeRefused?: boolean;
      /** What went wrong when the answer is stale. */
      failure?: RecordFailure | DimeError;
      /** When the cached copy stops being fresh (ms). */
      fresh: number;
    }
  | { kind: 'no-record'; reason: 'nxdomain' | 'nodata'; dnssec: DnssecStatus; path: 'cache' | 'dns'; tier?: Tier }
  | { kind: 'failure'; failure: RecordFailure };

export type SignetLoad =
  | { kind: 'signet'; value: SignetValue; path: 'dmtp' | 'cache' }
  /** The DX says there is none (SIGNET_NOT_FOUND). */
  | { kind: 'not-found'; error: DimeError }
  /** Fetched, but it does not validate (or custody is broken): never replaced by a stale copy. */
  | { kind: 'refused'; error: DimeError }
  /** Could not fetch (DX unreachable, junk, timeout): a stale copy may answer. */
  | { kind: 'failure'; error: DimeError };

export type SignetResult =
  | { kind: 'signet'; value: SignetValue; path: 'cache' | 'dmtp' | 'stale'; tier?: Tier; failure?: DimeError }
  | { kind: 'not-found' | 'refused' | 'failure'; error: DimeError };

export type MxResult = { kind: 'mx'; value: MxValue; path: 'cache' | 'dns' | 'stale' } | Exclude<MxLookup, { kind: 'mx' }>;

export interface ResolverCacheOptions {
  timings: CacheTimings;
  store: TieredStore;
  log?: Logger;
  clock?: Clock;
}

export class ResolverCache {
  readonly store: TieredStore;
  readonly flights = new SingleFlight();
  readonly metrics: ResolverMetrics;
  private readonly t: CacheTimings;
  private readonly log: Logger;
  private readonly clock: Clock;

  constructor(options: ResolverCacheOptions) {
    this.store = options.store;
    this.metrics = options.store.metrics;
    this.t = options.timings;
    this.log = options.log ?? createLogger({ name: 'resolver' });
    this.clock = options.clock ?? Date.now;
  }

  /**
   * Run `fn` with the flight's own deadline: askers come and go, the shared lookup must end. Its
   * reason is a RESOLVE_DEADLINE DimeError, so whatever the lookup rejects with stays typed.
   */
  private async bounded<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new DimeError('RESOLVE_DEADLINE', `the shared lookup ran for ${this.t.deadlineMs} ms`)), this.t.deadlineMs);
    try {
      return await fn(ac.signal);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Wait for a flight within the asker's deadline. When the deadline passes first, a stale entry
   * still inside its window answers (the flight goes on and updates the cache for the next asker).
   */
  private async wait<T>(flight: Promise<T>, signal: AbortSignal | undefined, staleAnswer: () => T | undefined): Promise<T> {
    try {
      return await raceSignal(flight, signal);
    } catch (err) {
      if (signal?.aborted && isDimeError(err)) {
        const stale = staleAnswer();
        if (stale !== undefined) {
          this.metrics.inc('stale_served');
          return stale;
        }
      }
      throw err;
    }
  }

  // ---------------------------------------------------------------------------------- records

  /** The management record of `domain`: cached, or `lookup` (DNS) once per flight. */
  async record(domain: string, lookup: (signal: AbortSignal) => Promise<RecordLookup>, signal?: AbortSignal): Promise<RecordResult> {
    this.metrics.inc('record_lookups');
    const hot = this.store.peek('rec', domain);
    const now = this.clock();
    if (hot && now < hot.fresh) {
      this.metrics.inc('memory_hits');
      return this.fromEntry(hot, 'cache', 'memory');
    }
    const flight = this.flights.run(`rec:${domain}`, () => this.loadRecord(domain, lookup));
    return this.wait(flight, signal, () => {
      const e = this.store.peek('rec', domain);
      if (!e || e.v.kind !== 'record' || this.clock() >= e.stale) return undefined;
      return { kind: 'record', value: e.v, path: 'stale', fresh: e.fresh, failure: abortError(signal!) };
    });
  }

  private fromEntry(e: Entry<RecordValue>, path: 'cache', tier: Tier): RecordResult {
    return e.v.kind === 'record' ? { kind: 'record', value: e.v, path, tier, fresh: e.fresh } : { kind: 'no-record', reason: e.v.reason, dnssec: 'validated', path, tier };
  }

  private async loadRecord(domain: string, lookup: (signal: AbortSignal) => Promise<RecordLookup>): Promise<RecordResult> {
    const got = await this.store.get('rec', domain);
    const cached = got?.entry;
    if (cached && this.clock() < cached.fresh) {
      this.metrics.inc(got.tier === 'redis' ? 'redis_fresh_hits' : 'memory_hits');
      return this.fromEntry(cached, 'cache', got.tier);
    }
    this.metrics.inc('dns_lookups');
    const old = cached?.v.kind === 'record' ? (cached as Entry<PositiveRecord>) : undefined;
    let res: RecordLookup;
    try {
      res = await this.bounded(lookup);
    } catch (err) {
      // The flight's own deadline: a stale record still answers, else the asker learns "unknown".
      if (isDimeError(err) && old && this.clock() < old.stale) {
        this.metrics.inc('stale_served');
        return { kind: 'record', value: old.v, path: 'stale', fresh: old.fresh, failure: err };
      }
      throw err;
    }
    const now = this.clock();
    switch (res.kind) {
      case 'record': {
        const ttl = Math.min(Math.max(res.ttl, this.t.minTtl), this.t.maxTtl);
        const fresh = now + ttl * SECOND;
        const stale = fresh + this.t.maxStale * SECOND;
        // exp= is the domain's own word on how long its record stands; for pol=strict that is how
        // long an unauthenticated "no record" is not believed (bounded by max_hold).
        const hold = res.record.policy === 'strict' && res.record.expiryDays !== undefined ? Math.max(stale, now + Math.min(res.record.expiryDays * 86_400, this.t.maxHold) * SECOND) : stale;
        const value: PositiveRecord = { kind: 'record', text: res.text, record: res.record, dnssec: res.dnssec, hold };
        this.store.set('rec', domain, { v: value, at: now, fresh, stale, keep: Math.max(stale, hold) });
        return { kind: 'record', value, path: 'dns', fresh };
      }
      case 'no-record': {
        if (res.dnssec !== 'validated' && old && old.v.record.policy === 'strict' && now < old.v.hold) {
          this.metrics.inc('downgrade_refused');
          this.log.warn(
            { event: 'resolver.downgrade_refused', domain, reason: res.reason, holdUntil: new Date(old.v.hold).toISOString() },
            'an unauthenticated "no record" does not replace a cached pol=strict record before it expires',
          );
          return { kind: 'record', value: old.v, path: 'stale', downgradeRefused: true, fresh: old.fresh, failure: new DimeError('DNS_NO_RECORD', `${res.reason}, not DNSSEC-validated`) };
        }
        const negTtl = Math.min(res.negativeTtl, this.t.negativeTtl);
        if (res.dnssec === 'validated' && negTtl > 0) {
          // Short, and only when validated: an unauthenticated "no record" is asked again every time.
          const fresh = now + negTtl * SECOND;
          this.store.set('rec', domain, { v: { kind: 'no-record', reason: res.reason, dnssec: 'validated' }, at: now, fresh, stale: fresh, keep: fresh });
          this.metrics.inc('negative_cached');
        } else if (cached) {
          this.store.delete('rec', domain);
        }
        return { kind: 'no-record', reason: res.reason, dnssec: res.dnssec, path: 'dns' };
      }
      default: {
        if (old && now < old.stale) {
          this.metrics.inc('stale_served');
          this.log.warn({ event: 'resolver.stale', domain, code: res.code, detail: res.detail }, 'DNS failed: answering with the cached record');
          return { kind: 'record', value: old.v, path: 'stale', fresh: old.fresh, failure: res };
        }
        return { kind: 'failure', failure: res };
      }
    }
  }

  // ---------------------------------------------------------------------------------- signets

  /**
   * A signet (org: keyed by domain; user: by address). `accept` says whether a cached one still
   * fits (its POK is still in the record, its org signet is still the current one); `load` fetches
   * and validates (it sees the cached entry, for VRFY and for custody).
   */
  async signet(
    kind: 'org' | 'user',
    name: string,
    accept: (v: SignetValue) => boolean,
    load: (cached: Entry<SignetValue> | undefined, signal: AbortSignal) => Promise<SignetLoad>,
    signal?: AbortSignal,
  ): Promise<SignetResult> {
    this.metrics.inc(`${kind}_lookups`);
    const hot = this.store.peek(kind, name);
    if (hot && this.clock() < hot.fresh && accept(hot.v)) {
      this.metrics.inc('memory_hits');
      return { kind: 'signet', value: hot.v, path: 'cache', tier: 'memory' };
    }
    const flight = this.flights.run(`${kind}:${name}`, () => this.loadSignet(kind, name, accept, load));
    return this.wait(flight, signal, () => {
      const e = this.store.peek(kind, name);
      if (!e || this.clock() >= e.stale || !accept(e.v)) return undefined;
      return { kind: 'signet', value: e.v, path: 'stale', failure: abortError(signal!) };
    });
  }

  private async loadSignet(
    kind: 'org' | 'user',
    name: string,
    accept: (v: SignetValue) => boolean,
    load: (cached: Entry<SignetValue> | undefined, signal: AbortSignal) => Promise<SignetLoad>,
  ): Promise<SignetResult> {
    const got = await this.store.get(kind, name);
    const cached = got && accept(got.entry.v) ? got.entry : undefined;
    if (cached && got && this.clock() < cached.fresh) {
      this.metrics.inc(got.tier === 'redis' ? 'redis_fresh_hits' : 'memory_hits');
      return { kind: 'signet', value: cached.v, path: 'cache', tier: got.tier };
    }
    this.metrics.inc('signet_fetches');
    let res: SignetLoad;
    try {
      res = await this.bounded((signal) => load(cached, signal));
    } catch (err) {
      // A loader that throws is a fetch failure like any other (typed when it can be).
      res = { kind: 'failure', error: isDimeError(err) ? err : new DimeError('RESOLVE_FETCH_FAILED', (err as Error).message, { cause: err }) };
    }
    const now = this.clock();
    switch (res.kind) {
      case 'signet': {
        const fresh = now + this.t.signetTtl * SECOND;
        const stale = fresh + this.t.maxStale * SECOND;
        this.store.set(kind, name, { v: res.value, at: now, fresh, stale, keep: stale });
        return { kind: 'signet', value: res.value, path: res.path };
      }
      case 'not-found':
        if (got) this.store.delete(kind, name);
        return res;
      case 'refused':
        return res;
      case 'failure':
        if (cached && now < cached.stale) {
          this.metrics.inc('stale_served');
          this.log.warn({ event: 'resolver.stale', kind, name, code: res.error.code, detail: res.error.message }, 'signet fetch failed: answering with the cached signet');
          return { kind: 'signet', value: cached.v, path: 'stale', failure: res.error };
        }
        return res;
    }
  }

  // ---------------------------------------------------------------------------------- custody pins

  /** The last user signet accepted for `address` (kept custody_pin_ttl, whatever the signet cache does). */
  async pin(address: string): Promise<Signet | undefined> {
    const got = await this.store.get('pin', address);
    if (!got || this.clock() >= got.entry.keep) return undefined;
    return got.entry.v.signet;
  }

  setPin(address: string, signet: Signet): void {
    const now = this.clock();
    const keep = now + this.t.custodyPinTtl * SECOND;
    if (this.t.custodyPinTtl > 0) this.store.set('pin', address, { v: { signet }, at: now, fresh: keep, stale: keep, keep });
  }

  // ---------------------------------------------------------------------------------- MX

  async mx(domain: string, lookup: (signal: AbortSignal) => Promise<MxLookup>, signal?: AbortSignal): Promise<MxResult> {
    // Counted like records and signets, so the hit ratio on /metrics covers every cached kind.
    this.metrics.inc('mx_lookups');
    const hot = this.store.peek('mx', domain);
    if (hot && this.clock() < hot.fresh) {
      this.metrics.inc('memory_hits');
      return { kind: 'mx', value: hot.v, path: 'cache' };
    }
    const flight = this.flights.run(`mx:${domain}`, async (): Promise<MxResult> => {
      const got = await this.store.get('mx', domain);
      const cached = got?.entry;
      if (got && cached && this.clock() < cached.fresh) {
        this.metrics.inc(got.tier === 'redis' ? 'redis_fresh_hits' : 'memory_hits');
        return { kind: 'mx', value: cached.v, path: 'cache' };
      }
      this.metrics.inc('dns_lookups');
      const res = await this.bounded(lookup);
      const now = this.clock();
      if (res.kind === 'mx') {
        const fresh = now + Math.min(Math.max(res.ttl, this.t.minTtl), this.t.maxTtl) * SECOND;
        const value: MxValue = { hosts: res.hosts, nullMx: res.nullMx, dnssec: res.dnssec };
        this.store.set('mx', domain, { v: value, at: now, fresh, stale: fresh + this.t.maxStale * SECOND, keep: fresh + this.t.maxStale * SECOND });
        return { kind: 'mx', value, path: 'dns' };
      }
      if (res.kind !== 'no-record' && cached && now < cached.stale) return { kind: 'mx', value: cached.v, path: 'stale' };
      return res;
    });
    return raceSignal(flight, signal);
  }

  async close(): Promise<void> {
    await this.store.close();
  }
}
