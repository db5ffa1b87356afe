/**
 * Signet resolution (architecture.md §1.5, dime-formats.md §6.7): `domain` or `user@domain` →
 * the `_dx` management record (DNS, DNSSEC status) → the organisational signet, validated against
 * the record's POKs → the user's signet, validated against the organisational signet, with the
 * chain of custody checked against the user signet seen before.
 *
 * One deadline per resolution: when it passes, the answer is `unknown` (RESOLVE_DEADLINE), which
 * the milter and policy services turn into a tempfail. It is never "no signet", and only a real
 * "no record" (NXDOMAIN or NODATA) ever allows plaintext. docs/resolver.md has the full table.
 *
 * Signets come from a SignetFetcher (src/resolver/dmtp-fetcher.ts adapts the DMTP client). The
 * resolver does not trust the fetcher: every signet is decoded and validated here.
 */
import { performance } from 'node:perf_hooks';
import type { ResolverConfig } from '../config/config.js';
import { defaultCrypto, type CryptoBackend } from '../crypto/index.js';
import { base64EncodeNoPad } from '../dime/base64.js';
import { bytesEqual } from '../dime/bytes.js';
import type { DimeRecord, RecordPolicy } from '../dime/record.js';
import {
  decodeSignet,
  fingerprints,
  identifierOf,
  isValidState,
  signingKeyOf,
  stateRank,
  structuralState,
  validateSignet,
  type FingerprintKind,
  type Signet,
  type SignetState,
  type ValidationResult,
} from '../dime/signet/index.js';
import { isAddress } from '../dmtp/codec.js';
import { DimeError, ERROR_CODES, isDimeError, type ErrorCode } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { metrics as registry } from '../metrics.js';
import {
  ResolverCache,
  ResolverMetrics,
  TieredStore,
  createRedisClient,
  type Clock,
  type CustodyVerdict,
  type Entry,
  type MxResult,
  type RecordResult,
  type SignetLoad,
  type SignetResult,
  type SignetValue,
  type Tier,
} from './cache.js';
import { DnsClient, abortError, normalizeDomain, raceSignal, resolveServers, trustAdFor, type DnssecStatus } from './dns.js';

/** libdime's get_signet accepts FULL only; we also accept ID (which adds the identifier). Crypto-only signets carry no full signature. */
export const MIN_SIGNET_STATE: SignetState = 'full';
/** Versions a HIST answer may hold before we stop checking links (a chain is a few rotations). */
export const MAX_HISTORY = 1000;

const RESOLUTION_SECONDS = registry.histogram('dime_resolver_resolution_seconds', 'Signet resolution time by outcome (ok, no-record, no-signet, unknown, refused)', ['status']);

// ------------------------------------------------------------------------------------ fetcher

export interface SignetFetchRequest {
  /** `domain` (the organisational signet) or `user@domain`. */
  name: string;
  domain: string;
  /** The management record and its DNSSEC status, for the DX's certificate checks. */
  record: DimeRecord;
  dnssec: DnssecStatus;
  /** The resolution's deadline. */
  signal: AbortSignal;
}

/**
 * Where signets come from: SGNT, HIST and VRFY on the domain's DX. Failures reject with a
 * DimeError (typed: DMTP_*); "the DX has no such signet" resolves null (SGNT) or rejects with
 * SIGNET_NOT_FOUND. Returned signets are raw bytes: the resolver decodes and validates them.
 */
export interface SignetFetcher {
  /** SGNT `name` [fingerprint]: the current version, or the one with that fingerprint. */
  signet(req: SignetFetchRequest & { fingerprint?: string }): Promise<Uint8Array | null>;
  /** HIST `name` [start] [end]: versions from start to end, oldest first. Optional. */
  history?(req: SignetFetchRequest & { start?: string; end?: string }): Promise<Uint8Array[]>;
  /** VRFY `name` fingerprint: is that version still current? Optional. */
  verify?(req: SignetFetchRequest & { fingerprint: string }): Promise<{ current: true } | { current: false; fingerprint: string }>;
}

// ------------------------------------------------------------------------------------ result

/**
 * What the resolution allows:
 *  - ok: signets resolved and validated (or, with recordOnly, the record);
 *  - no-record: a real NXDOMAIN/NODATA for `_dx`: the only outcome that allows plaintext;
 *  - no-signet: the DX says it has no signet for the name (SIGNET_NOT_FOUND);
 *  - unknown: we could not find out in time (deadline, SERVFAIL, timeout, DX unreachable): tempfail;
 *  - refused: we found something and must not use it (bogus DNSSEC, malformed record, a signet
 *    that does not validate, broken chain of custody): never plaintext.
 */
export type ResolutionStatus = 'ok' | 'no-record' | 'no-signet' | 'unknown' | 'refused';

/** cache: a fresh cached answer; dns/dmtp: asked now; stale: a cached answer past freshness, because asking failed. */
export type StepPath = 'cache' | 'dns' | 'dmtp' | 'stale';

export interface Step {
  path: StepPath;
  tier?: Tier;
  ms: number;
}

export interface ResolvedSignet {
  signet: Signet;
  state: SignetState;
  fingerprints: Partial<Record<FingerprintKind, string>>;
  custody?: CustodyVerdict;
}

export interface Resolution {
  /** What was asked, normalised. */
  name: string;
  domain: string;
  address?: string;
  status: ResolutionStatus;
  /** True only for a real "no record". */
  plaintextAllowed: boolean;
  error?: { code: ErrorCode; message: string };
  /** Of the management record (bogus when validation failed). */
  dnssec?: DnssecStatus | 'bogus';
  policy?: RecordPolicy;
  record?: DimeRecord;
  recordText?: string;
  /** A cached pol=strict record answered although DNS said "no record" without DNSSEC. */
  downgradeRefused?: boolean;
  org?: ResolvedSignet;
  user?: ResolvedSignet;
  steps: { record?: Step; org?: Step; user?: Step };
  /** e.g. ["record:cache", "org:dmtp", "user:stale"]. */
  path: string[];
  /** Some part was answered from a stale cache entry. */
  stale: boolean;
  warnings: string[];
  timings: { totalMs: number };
}

export interface ResolveOptions {
  /** The caller's own deadline (the milter's); the resolution also stops at deadlineMs. */
  signal?: AbortSignal;
  deadlineMs?: number;
  /** Stop after the management record (no signet fetched). */
  recordOnly?: boolean;
}

// ------------------------------------------------------------------------------------ names

/** `domain` or `local@domain`, normalised (domain lower-cased, local part as written). */
export function parseName(name: string): { domain: string; address?: string } {
  if (typeof name !== 'string' || name.length === 0 || name.length > 320) throw new DimeError('RESOLVE_BAD_NAME', JSON.stringify(name));
  const at = name.lastIndexOf('@');
  if (at < 0) return { domain: normalizeDomain(name) };
  const domain = normalizeDomain(name.slice(at + 1));
  const address = `${name.slice(0, at)}@${domain}`;
  // DMTP carries dot-atom local parts only (src/dmtp/codec.ts); anything else cannot be asked for.
  if (!isAddress(address)) throw new DimeError('RESOLVE_BAD_NAME', JSON.stringify(name));
  return { domain, address };
}

// ------------------------------------------------------------------------------------ validation

function usable(state: SignetState): boolean {
  return stateRank(state) >= stateRank(MIN_SIGNET_STATE);
}

/**
 * Validate a user signet against its organisation without a previous version. validateSignet
 * reports a signet that carries a custody signature as broken-custody when no previous version is
 * given; it checks custody last, so that verdict means every other check passed and the signet's
 * level is its structural one.
 */
function validateWithoutPrevious(crypto: CryptoBackend, signet: Signet, org: Signet): ValidationResult {
  const v = validateSignet(crypto, signet, { org });
  if (v.state === 'broken-custody') return { state: structuralState(signet), reason: 'custody signature not checked (no previous version known)' };
  return v;
}

function sameKey(a: Signet, b: Signet): boolean {
  const ka = signingKeyOf(a);
  const kb = signingKeyOf(b);
  return ka !== undefined && kb !== undefined && bytesEqual(ka, kb);
}

/**
 * A HIST chain links `previous` to `current`: it holds a version with previous's key, ends with
 * current's key, and from there on each version's custody signature verifies under the key before it.
 */
export function historyLinks(crypto: CryptoBackend, chain: readonly Signet[], previous: Signet, current: Signet): boolean {
  const start = chain.findIndex((s) => sameKey(s, previous));
  const last = chain[chain.length - 1];
  if (start < 0 || !last || !sameKey(last, current)) return false;
  for (let i = start + 1; i < chain.length; i++) {
    const prev = chain[i - 1]!;
    const next = chain[i]!;
    if (sameKey(prev, next)) continue;
    const v = validateSignet(crypto, next, { previous: prev });
    if (!isValidState(v.state)) return false;
  }
  return true;
}

// ------------------------------------------------------------------------------------ resolver

export interface ResolverOptions {
  config: ResolverConfig;
  dns?: DnsClient;
  fetcher?: SignetFetcher;
  cache?: ResolverCache;
  crypto?: CryptoBackend;
  log?: Logger;
  clock?: Clock;
}

export class Resolver {
  readonly config: ResolverConfig;
  readonly dns: DnsClient;
  readonly cache: ResolverCache;
  readonly metrics: ResolverMetrics;
  fetcher: SignetFetcher | undefined;
  private readonly crypto: CryptoBackend;
  private readonly log: Logger;

  constructor(options: ResolverOptions) {
    this.config = options.config;
    this.log = options.log ?? createLogger({ name: 'resolver' });
    this.crypto = options.crypto ?? defaultCrypto();
    this.dns =
      options.dns ??
      (() => {
        const servers = resolveServers(options.config.servers);
        return new DnsClient({ servers, queryTimeoutMs: options.config.queryTimeoutMs, attempts: options.config.attempts, trustAd: trustAdFor(options.config.trustAd, servers) });
      })();
    this.cache =
      options.cache ??
      new ResolverCache({
        timings: options.config,
        store: new TieredStore({ lruEntries: options.config.lruEntries, redis: createRedisClient(options.config), prefix: options.config.redisPrefix, log: this.log, ...(options.clock ? { clock: options.clock } : {}) }),
        log: this.log,
        ...(options.clock ? { clock: options.clock } : {}),
      });
    this.metrics = this.cache.metrics;
    this.fetcher = options.fetcher;
  }

  /** The management record of `domain` through the cache (for the DMTP locator and `recordOnly`). */
  record(domain: string, signal?: AbortSignal): Promise<RecordResult> {
    const d = normalizeDomain(domain);
    return this.cache.record(d, (s) => this.dns.lookupRecord(d, { signal: s }), signal);
  }

  /** MX hosts of `domain` through the cache (for the DMTP locator when the record has no dx=). */
  mx(domain: string, signal?: AbortSignal): Promise<MxResult> {
    const d = normalizeDomain(domain);
    return this.cache.mx(d, (s) => this.dns.lookupMx(d, { signal: s }), signal);
  }

  async resolve(name: string, options: ResolveOptions = {}): Promise<Resolution> {
    const t0 = performance.now();
    const { domain, address } = parseName(name);
    const deadlineMs = options.deadlineMs ?? this.config.deadlineMs;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new DimeError('RESOLVE_DEADLINE', `${address ?? domain}: ${deadlineMs} ms passed`)), deadlineMs);
    const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
    const out: Resolution = { name: address ?? domain, domain, ...(address ? { address } : {}), status: 'unknown', plaintextAllowed: false, steps: {}, path: [], stale: false, warnings: [], timings: { totalMs: 0 } };
    try {
      await this.run(out, domain, address, options, signal);
    } catch (err) {
      if (!isDimeError(err)) throw err;
      // The deadline (or the caller's signal): whatever was not answered yet is unknown.
      this.finish(out, signal.aborted ? 'unknown' : out.status, signal.aborted ? abortError(signal) : err);
    } finally {
      clearTimeout(timer);
    }
    out.timings.totalMs = performance.now() - t0;
    this.metrics.inc(`resolve_${out.status.replace('-', '_')}`);
    RESOLUTION_SECONDS.observe(out.timings.totalMs / 1000, { status: out.status });
    return out;
  }

  private finish(out: Resolution, status: ResolutionStatus, err?: DimeError | { code: ErrorCode; detail: string }): void {
    out.status = status;
    out.plaintextAllowed = status === 'no-record';
    if (err) out.error = err instanceof DimeError ? { code: err.code, message: err.message } : { code: err.code, message: new DimeError(err.code, err.detail).message };
  }

  private step(out: Resolution, which: 'record' | 'org' | 'user', path: StepPath, started: number, tier?: Tier): void {
    out.steps[which] = { path, ms: performance.now() - started, ...(tier ? { tier } : {}) };
    out.path.push(`${which}:${path}`);
    if (path === 'stale') out.stale = true;
  }

  private async run(out: Resolution, domain: string, address: string | undefined, options: ResolveOptions, signal: AbortSignal): Promise<void> {
    // 1. The management record.
    let t = performance.now();
    const rec = await this.record(domain, signal);
    if (rec.kind === 'no-record') {
      this.step(out, 'record', rec.path, t, rec.tier);
      out.dnssec = rec.dnssec;
      return this.finish(out, 'no-record', { code: 'DNS_NO_RECORD', detail: `_dx.${domain}: ${rec.reason}${rec.dnssec === 'validated' ? ' (DNSSEC-validated)' : ''}` });
    }
    if (rec.kind === 'failure') {
      this.step(out, 'record', 'dns', t);
      const f = rec.failure;
      if (f.kind === 'bogus') out.dnssec = 'bogus';
      else if (f.kind === 'malformed') out.dnssec = f.dnssec;
      return this.finish(out, f.kind === 'bogus' || f.kind === 'malformed' ? 'refused' : 'unknown', f);
    }
    this.step(out, 'record', rec.path, t, rec.tier);
    const { record, dnssec, text } = rec.value;
    Object.assign(out, { record, recordText: text, dnssec, policy: record.policy });
    if (rec.downgradeRefused) {
      out.downgradeRefused = true;
      out.warnings.push(`DNS answered "no record" without DNSSEC; the cached pol=strict record stands until ${new Date(rec.value.hold).toISOString()}`);
    } else if (rec.failure) {
      out.warnings.push(`stale record: ${rec.failure instanceof DimeError ? rec.failure.message : rec.failure.detail}`);
    }
    if (options.recordOnly) return this.finish(out, 'ok');
    const fetcher = this.fetcher;
    if (!fetcher) return this.finish(out, 'unknown', new DimeError('RESOLVE_NO_FETCHER', 'no DMTP client configured'));
    const base = { domain, record, dnssec };

    // 2. The organisational signet, validated against the record's POKs.
    t = performance.now();
    const poks = new Set(record.poks.map(base64EncodeNoPad));
    const org = await this.cache.signet('org', domain, (v) => poks.has(v.anchor), (cached, s) => this.loadOrg({ ...base, name: domain, signal: s }, fetcher, cached), signal);
    if (!this.signetStep(out, 'org', org, t)) return;
    const orgSignet = org.value.signet;
    if (!address) return this.finish(out, 'ok');

    // 3. The user's signet, validated against the organisational signet, custody checked.
    t = performance.now();
    const anchor = org.value.fingerprints.crypto!;
    const user = await this.cache.signet(
      'user',
      address,
      (v) => v.anchor === anchor,
      (cached, s) => this.loadUser({ ...base, name: address, signal: s }, fetcher, orgSignet, anchor, cached),
      signal,
    );
    if (!this.signetStep(out, 'user', user, t)) return;
    if (user.value.custody === 'broken') out.warnings.push("the user's key changed without a valid chain-of-custody signature (custody = \"flag\")");
    return this.finish(out, 'ok');
  }

  private signetStep(out: Resolution, which: 'org' | 'user', r: SignetResult, started: number): r is Extract<SignetResult, { kind: 'signet' }> {
    if (r.kind !== 'signet') {
      this.step(out, which, 'dmtp', started);
      const status: ResolutionStatus = r.kind === 'not-found' ? 'no-signet' : r.kind === 'refused' ? 'refused' : 'unknown';
      this.finish(out, status, r.error);
      return false;
    }
    this.step(out, which, r.path, started, r.tier);
    const v = r.value;
    out[which] = { signet: v.signet, state: v.state, fingerprints: v.fingerprints, ...(v.custody ? { custody: v.custody } : {}) };
    if (r.failure) out.warnings.push(`stale ${which} signet: ${r.failure.message}`);
    return true;
  }

  /** Ask the DX whether our cached version is still current (VRFY); true when it is. */
  private async stillCurrent(fetcher: SignetFetcher, req: SignetFetchRequest, cached: Entry<SignetValue> | undefined): Promise<boolean> {
    const fp = cached?.v.fingerprints.full;
    if (!cached || !fp || !fetcher.verify) return false;
    try {
      const r = await fetcher.verify({ ...req, fingerprint: fp });
      this.metrics.inc(r.current ? 'vrfy_current' : 'vrfy_update');
      return r.current;
    } catch (err) {
      // A DX without VRFY, or a refusal: fetch the current version instead.
      if (req.signal.aborted) throw err;
      this.metrics.inc('vrfy_failed');
      return false;
    }
  }

  private async fetch(fetcher: SignetFetcher, req: SignetFetchRequest): Promise<{ signet: Signet } | Exclude<SignetLoad, { kind: 'signet' }>> {
    let bytes: Uint8Array | null;
    try {
      bytes = await fetcher.signet(req);
    } catch (err) {
      if (isDimeError(err, 'SIGNET_NOT_FOUND')) return { kind: 'not-found', error: err };
      if (isDimeError(err, 'DMTP_SIGNET_REJECTED')) return { kind: 'refused', error: new DimeError('RESOLVE_SIGNET_INVALID', err.message, { cause: err }) };
      if (isDimeError(err)) return { kind: 'failure', error: err };
      return { kind: 'failure', error: new DimeError('RESOLVE_FETCH_FAILED', `${req.name}: ${(err as Error).message}`, { cause: err }) };
    }
    if (bytes === null) return { kind: 'not-found', error: new DimeError('SIGNET_NOT_FOUND', `${req.name}: the DX has none`) };
    try {
      return { signet: decodeSignet(bytes) };
    } catch (err) {
      // A DX that answers junk: the signet is refused (it is not a fetch failure to retry over stale data).
      return { kind: 'refused', error: new DimeError('RESOLVE_SIGNET_INVALID', `${req.name}: the served signet does not decode: ${(err as Error).message}`, { cause: err }) };
    }
  }

  private async loadOrg(req: SignetFetchRequest, fetcher: SignetFetcher, cached: Entry<SignetValue> | undefined): Promise<SignetLoad> {
    if (await this.stillCurrent(fetcher, req, cached)) return { kind: 'signet', value: cached!.v, path: 'dmtp' };
    const got = await this.fetch(fetcher, req);
    if (!('signet' in got)) return got;
    const s = got.signet;
    const refuse = (why: string): SignetLoad => ({ kind: 'refused', error: new DimeError('RESOLVE_SIGNET_INVALID', `${req.name}: ${why}`) });
    if (s.type !== 'org') return refuse(`served a ${s.type} signet for the organisation`);
    const v = validateSignet(this.crypto, s, { poks: req.record.poks });
    if (!usable(v.state)) return refuse(`organisational signet is ${v.state}${v.reason ? ` (${v.reason})` : ''}`);
    const id = identifierOf(s);
    if (id !== null && id.toLowerCase() !== req.domain) return refuse(`the signet names ${JSON.stringify(id)}`);
    return { kind: 'signet', value: { signet: s, state: v.state, fingerprints: fingerprints(this.crypto, s), anchor: base64EncodeNoPad(signingKeyOf(s)!) }, path: 'dmtp' };
  }

  private async loadUser(req: SignetFetchRequest, fetcher: SignetFetcher, org: Signet, anchor: string, cached: Entry<SignetValue> | undefined): Promise<SignetLoad> {
    const address = req.name;
    if (await this.stillCurrent(fetcher, req, cached)) return { kind: 'signet', value: cached!.v, path: 'dmtp' };
    const got = await this.fetch(fetcher, req);
    if (!('signet' in got)) return got;
    const s = got.signet;
    const refuse = (code: ErrorCode, why: string): SignetLoad => ({ kind: 'refused', error: new DimeError(code, `${address}: ${why}`) });
    if (s.type !== 'user') return refuse('RESOLVE_SIGNET_INVALID', `served a ${s.type} signet for a user`);
    const id = identifierOf(s);
    if (id !== null && id.toLowerCase() !== address.toLowerCase()) return refuse('RESOLVE_SIGNET_INVALID', `the signet names ${JSON.stringify(id)}`);
    const base = validateWithoutPrevious(this.crypto, s, org);
    if (!usable(base.state)) return refuse('RESOLVE_SIGNET_INVALID', `user signet is ${base.state}${base.reason ? ` (${base.reason})` : ''}`);

    // Chain of custody against the last version we accepted (a pin that outlives the signet cache).
    const previous = (await this.cache.pin(address)) ?? cached?.v.signet;
    let custody: CustodyVerdict;
    if (!previous) custody = 'first-seen';
    else if (sameKey(previous, s)) custody = 'unchanged';
    else if (isValidState(validateSignet(this.crypto, s, { org, previous }).state)) custody = 'verified';
    else custody = (await this.historyVerifies(fetcher, req, previous, s)) ? 'verified-history' : 'broken';

    if (custody === 'broken') {
      this.metrics.inc('custody_broken');
      const fp = fingerprints(this.crypto, s).full;
      this.log.warn(
        { event: 'resolver.custody_broken', address, fingerprint: fp, previous: fingerprints(this.crypto, previous!).full, action: this.config.custody },
        "a user's signing key changed without a valid custody signature",
      );
      if (this.config.custody === 'refuse') return refuse('RESOLVE_CUSTODY_BROKEN', `the new key (${fp}) is not vouched for by the previous one`);
    } else {
      // The pin moves only along verified links (or on first sight): a flagged key never becomes the reference.
      this.cache.setPin(address, s);
    }
    return { kind: 'signet', value: { signet: s, state: base.state, fingerprints: fingerprints(this.crypto, s), anchor, custody }, path: 'dmtp' };
  }

  /** HIST from the previous version to the served one: does every link carry a valid custody signature? */
  private async historyVerifies(fetcher: SignetFetcher, req: SignetFetchRequest, previous: Signet, current: Signet): Promise<boolean> {
    if (!fetcher.history) return false;
    let raw: Uint8Array[];
    try {
      raw = await fetcher.history({ ...req, start: fingerprints(this.crypto, previous).full!, end: fingerprints(this.crypto, current).full! });
    } catch (err) {
      if (req.signal.aborted) throw err;
      this.metrics.inc('hist_failed');
      return false;
    }
    if (raw.length > MAX_HISTORY) return false;
    let chain: Signet[];
    try {
      chain = raw.map((b) => decodeSignet(b));
    } catch {
      return false;
    }
    return chain.every((c) => c.type === 'user') && historyLinks(this.crypto, chain, previous, current);
  }

  /**
   * One given version of a signet (SGNT with a fingerprint, e.g. the origin signet a DMTP MAIL FROM
   * names), validated like the current one: an organisational version against the record's POKs,
   * a user version against the current organisational signet. Versions are immutable, but are not
   * cached here (the relay asks for few). Throws typed errors (resolutionError for the lookups).
   */
  async signetVersion(name: string, fingerprint: string, options: ResolveOptions = {}): Promise<Signet> {
    const { domain, address } = parseName(name);
    const t0 = performance.now();
    const res = await this.resolve(domain, options);
    if (res.status !== 'ok' || !res.org || !res.record || !res.dnssec || res.dnssec === 'bogus') throw resolutionError(res);
    const has = (s: ResolvedSignet | Signet) => Object.values('state' in s ? s.fingerprints : fingerprints(this.crypto, s)).includes(fingerprint);
    if (!address && has(res.org)) return res.org.signet;
    const fetcher = this.fetcher;
    if (!fetcher) throw new DimeError('RESOLVE_NO_FETCHER', name);
    const left = (options.deadlineMs ?? this.config.deadlineMs) - (performance.now() - t0);
    if (left <= 0) throw new DimeError('RESOLVE_DEADLINE', `${name}: no time left for the version ${fingerprint}`);
    const timeout = AbortSignal.timeout(Math.ceil(left));
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    const req: SignetFetchRequest & { fingerprint: string } = { name: address ?? domain, domain, record: res.record, dnssec: res.dnssec, signal, fingerprint };
    let got: { signet: Signet } | Exclude<SignetLoad, { kind: 'signet' }>;
    try {
      got = await raceSignal(this.fetch(fetcher, req), signal);
    } catch (err) {
      throw signal.aborted ? abortError(signal) : err;
    }
    if (!('signet' in got)) throw got.error;
    const s = got.signet;
    const refuse = (why: string) => new DimeError('RESOLVE_SIGNET_INVALID', `${req.name} version ${fingerprint}: ${why}`);
    if (!has(s)) throw refuse('the served signet does not have that fingerprint');
    if (s.type !== (address ? 'user' : 'org')) throw refuse(`served a ${s.type} signet`);
    const id = identifierOf(s);
    if (id !== null && id.toLowerCase() !== req.name.toLowerCase()) throw refuse(`the signet names ${JSON.stringify(id)}`);
    const v = address ? validateWithoutPrevious(this.crypto, s, res.org.signet) : validateSignet(this.crypto, s, { poks: res.record.poks });
    if (!usable(v.state)) throw refuse(`it is ${v.state}${v.reason ? ` (${v.reason})` : ''}`);
    return s;
  }

  /** Wait for the cache's Redis writes and close the connection. */
  async close(): Promise<void> {
    await this.cache.close();
  }
}

/** The error a resolution that is not `ok` stands for (for callers that want a throw). */
export function resolutionError(res: Resolution): DimeError {
  if (res.error) {
    const prefix = `${ERROR_CODES[res.error.code]}: `;
    const m = res.error.message;
    return new DimeError(res.error.code, m.startsWith(prefix) ? m.slice(prefix.length) : m === ERROR_CODES[res.error.code] ? undefined : m);
  }
  return new DimeError('RESOLVE_FETCH_FAILED', `${res.name}: ${res.status}`);
}

/** A resolver from the [resolver] configuration (system or configured DNS, LRU, Redis when configured). */
export function createResolver(config: ResolverConfig, options: Omit<ResolverOptions, 'config'> = {}): Resolver {
  return new Resolver({ ...options, config });
}
