/**
 * The resolver and the DMTP client (src/dmtp/client.ts), wired both ways:
 *  - DmtpSignetFetcher: the resolver's SignetFetcher over DmtpClient connections (SGNT, HIST,
 *    VRFY as served, decoded only: the resolver validates);
 *  - ResolverPeerLocator: the DMTP client's PeerLocator backed by the resolver, so where to
 *    connect and what to trust (the record and its DNSSEC status) come from the DNSSEC-aware,
 *    cached lookup instead of node:dns;
 *  - ResolverSignetSource: the relay's SignetSource (origin signets for MAIL FROM) backed by the
 *    resolver and its cache.
 */
import type { ResolverConfig } from '../config/config.js';
import type { CryptoBackend } from '../crypto/backend.js';
import { DmtpClient, peerCandidates, type DmtpConnection, type PeerLocation, type PeerLocator, type PeerPorts, type SignetSource } from '../dmtp/client.js';
import type { Signet } from '../dime/signet/index.js';
import { DimeError } from '../errors.js';
import type { Logger } from '../log.js';
import { normalizeDomain, raceSignal } from './dns.js';
import { Resolver, parseName, resolutionError, type Resolution, type SignetFetcher, type SignetFetchRequest } from './resolver.js';

// ------------------------------------------------------------------------------------ fetcher

/**
 * One DMTP connection per request, closed afterwards (QUIT is sent without waiting for the reply).
 * The DMTP client has no AbortSignal: when the resolution's deadline passes first, we stop waiting
 * and close the connection as soon as it exists; its own timeouts (connectMs, commandMs) bound the
 * rest, so configure them below the resolution deadline.
 */
export class DmtpSignetFetcher implements SignetFetcher {
  constructor(private readonly client: Pick<DmtpClient, 'connect'>) {}

  private async session<T>(req: SignetFetchRequest, fn: (c: DmtpConnection) => Promise<T>): Promise<T> {
    const pending = this.client.connect(req.domain);
    let conn: DmtpConnection;
    try {
      conn = await raceSignal(pending, req.signal);
    } catch (err) {
      pending.then(
        (c) => c.close(),
        () => undefined,
      );
      throw err;
    }
    const work = fn(conn);
    try {
      return await raceSignal(work, req.signal);
    } finally {
      if (req.signal.aborted) {
        work.catch(() => undefined);
        conn.close();
      } else void conn.quit();
    }
  }

  async signet(req: SignetFetchRequest & { fingerprint?: string }): Promise<Uint8Array> {
    // SIGNET_NOT_FOUND (450) propagates: the resolver reads it as "the DX has none".
    return (await this.session(req, (c) => c.sgnt(req.name, req.fingerprint))).bytes;
  }

  async history(req: SignetFetchRequest & { start?: string; end?: string }): Promise<Uint8Array[]> {
    return (await this.session(req, (c) => c.hist(req.name, req.start, req.end))).map((s) => s.bytes);
  }

  verify(req: SignetFetchRequest & { fingerprint: string }): Promise<{ current: true } | { current: false; fingerprint: string }> {
    return this.session(req, (c) => c.vrfy(req.name, req.fingerprint));
  }
}

// ------------------------------------------------------------------------------------ locator

export interface ResolverPeerLocatorOptions {
  /** DMTP ports (tests put relays on free ports). */
  ports?: PeerPorts;
  /** Where to connect for a DX host name, when not its own address (tests, static overrides). */
  addresses?: Record<string, string> | ((host: string) => string | undefined);
}

/**
 * The DMTP client's PeerLocator: the record (with its DNSSEC status) and MX hosts come from the
 * resolver's cache and DNS client. Errors follow PeerLocator's contract: DMTP_NO_RECORD for a real
 * "no record", DMTP_RECORD_BOGUS for a bogus one, DNS_* (and RECORD_* for a malformed record,
 * which is worth retrying, not bouncing) for the rest.
 */
export class ResolverPeerLocator implements PeerLocator {
  constructor(
    private readonly resolver: Resolver,
    private readonly options: ResolverPeerLocatorOptions = {},
  ) {}

  private address(host: string): string | undefined {
    const a = this.options.addresses;
    return typeof a === 'function' ? a(host) : a?.[host];
  }

  async locate(domain: string): Promise<PeerLocation> {
    const d = normalizeDomain(domain);
    const signal = AbortSignal.timeout(this.resolver.config.deadlineMs);
    const r = await this.resolver.record(d, signal);
    if (r.kind === 'no-record') throw new DimeError('DMTP_NO_RECORD', `_dx.${d}: ${r.reason}`);
    if (r.kind === 'failure') {
      const f = r.failure;
      throw f.kind === 'bogus' ? new DimeError('DMTP_RECORD_BOGUS', f.detail) : new DimeError(f.code, f.detail);
    }
    const { record, dnssec } = r.value;
    let mx: string[] = [];
    if (record.dx.length === 0) {
      const m = await this.resolver.mx(d, signal);
      if (m.kind === 'mx') mx = m.value.hosts.map((h) => h.exchange);
      else if (m.kind === 'bogus') throw new DimeError('DMTP_RECORD_BOGUS', m.detail);
      else if (m.kind !== 'no-record') throw new DimeError(m.code, m.detail);
    }
    const candidates = peerCandidates(d, record, mx, this.options.ports).map((c) => {
      const address = this.address(c.host);
      return address ? { ...c, address } : c;
    });
    return { domain: d, record, dnssec, candidates };
  }
}

// ------------------------------------------------------------------------------------ signet source

/** Codes the relay treats as permanent (PERMANENT_ORIGIN_ERRORS in src/dmtp/server.ts), from the resolver's. */
function sourceError(res: Resolution): DimeError {
  const err = resolutionError(res);
  if (res.status === 'no-record') return new DimeError('DMTP_NO_RECORD', err.message);
  if (res.status === 'refused' && res.dnssec === 'bogus') return new DimeError('DMTP_RECORD_BOGUS', err.message);
  if (res.status === 'refused' && err.code === 'RESOLVE_SIGNET_INVALID') return new DimeError('DMTP_SIGNET_REJECTED', err.message);
  return err;
}

/** The relay's SignetSource through the resolver: DNSSEC-aware, cached, custody-checked. */
export class ResolverSignetSource implements SignetSource {
  constructor(private readonly resolver: Resolver) {}

  private async get(name: string, fingerprint: string | undefined, pick: (r: Resolution) => Signet | undefined, fps: (r: Resolution) => Record<string, string> | undefined): Promise<Signet> {
    const res = await this.resolver.resolve(name);
    if (res.status !== 'ok') throw sourceError(res);
    const current = pick(res);
    if (!current) throw new DimeError('RESOLVE_FETCH_FAILED', name);
    if (fingerprint === undefined || Object.values(fps(res) ?? {}).includes(fingerprint)) return current;
    return this.resolver.signetVersion(name, fingerprint);
  }

  org(domain: string, fingerprint?: string): Promise<Signet> {
    return this.get(parseName(domain).domain, fingerprint, (r) => r.org?.signet, (r) => r.org?.fingerprints);
  }

  user(address: string, fingerprint?: string): Promise<Signet> {
    const { address: a } = parseName(address);
    if (!a) throw new DimeError('RESOLVE_BAD_NAME', `${JSON.stringify(address)} is not an address`);
    return this.get(a, fingerprint, (r) => r.user?.signet, (r) => r.user?.fingerprints);
  }
}

/**
 * The production resolver: DNS (with DNSSEC status) and the cache from the configuration, signets
 * fetched over DMTP by a client that locates DX hosts through the same resolver. The client's
 * timeouts stay inside the resolution deadline. Used by `dime resolve`, the relay and `dime start`.
 */
export function createNetworkResolver(config: ResolverConfig, options: { crypto: CryptoBackend; log: Logger }): Resolver {
  const resolver = new Resolver({ config, crypto: options.crypto, log: options.log });
  const timeouts = { connectMs: config.deadlineMs, commandMs: config.deadlineMs };
  resolver.fetcher = new DmtpSignetFetcher(new DmtpClient({ crypto: options.crypto, locator: new ResolverPeerLocator(resolver), timeouts, log: options.log }));
  // Never the Redis URL itself: it may carry a password.
  const shared = config.redis ? 'redis' : config.redisSentinels ? 'redis sentinel' : config.redisCluster ? 'redis cluster' : 'none';
  options.log.debug({ servers: config.servers, trustAd: config.trustAd, sharedCache: shared, lruEntries: config.lruEntries }, 'signet resolver opened');
  return resolver;
}
