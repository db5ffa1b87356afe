/**
 * End-to-end resolution of `domain` and `user@domain`: the `_dx` record from a DNS server on
 * loopback (dns2), signets from a SignetFetcher that stands for the DX. Org and user validation,
 * the chain of custody (first sight, unchanged key, rotation with custody, two rotations through
 * HIST, a key swapped by the domain without custody: refused by default, flagged when configured),
 * VRFY refreshes, the deadline (typed "unknown", never "no signet", stale data when there is some),
 * a DX answering junk or nothing, and the outcomes that decide plaintext.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Packet } from 'dns2';
import { DEFAULT_RESOLVER, loadConfig, parseConfig, renderConfig, type ResolverConfig } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { base64EncodeNoPad } from '../src/dime/base64.js';
import { createOrgSignet, createSigningRequest, fingerprints, signUserSignet, type Signet } from '../src/dime/signet/index.js';
import { isDimeError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { parseServer } from '../src/resolver/dns.js';
import { Resolver, parseName, type SignetFetcher, type SignetFetchRequest } from '../src/resolver/resolver.js';
import { startFakeDns, type FakeDns } from './helpers/dnssec.js';

const crypto = defaultCrypto();
const log = createLogger({ level: 'silent' });
const seed = (n: number) => new Uint8Array(32).fill(n);
const S = 1000;

interface Party {
  signer: ReturnType<typeof crypto.ed25519Signer>;
  enc: Uint8Array;
}
const party = (n: number): Party => ({ signer: crypto.ed25519Signer(seed(n)), enc: crypto.secp256k1PublicKey(seed(n + 100)) });

const ORG = party(1);
const OTHER_ORG = party(2);
let org: Signet;
let otherOrg: Signet;

async function userSignet(who: Party, address: string, o: { by?: Party; previous?: { party: Party; signet: Signet } } = {}): Promise<Signet> {
  const ssr = await createSigningRequest({ signer: who.signer, encryptionKey: who.enc, ...(o.previous ? { previousSigner: o.previous.party.signer } : {}) });
  return signUserSignet(crypto, ssr, { orgSigner: (o.by ?? ORG).signer, address, ...(o.previous ? { previous: o.previous.signet } : {}) });
}

/** The DX: what SGNT, HIST and VRFY answer, with switches for misbehaviour. */
class FakeDx implements SignetFetcher {
  current = new Map<string, Signet | 'junk'>();
  chains = new Map<string, Signet[]>();
  calls = { signet: 0, history: 0, verify: 0 };
  hang = false;

  private async gate(req: SignetFetchRequest): Promise<void> {
    if (!this.hang) return;
    await new Promise((_, reject) => req.signal.addEventListener('abort', () => reject(req.signal.reason), { once: true }));
  }

  async signet(req: SignetFetchRequest & { fingerprint?: string }): Promise<Uint8Array | null> {
    this.calls.signet++;
    await this.gate(req);
    if (req.fingerprint) return this.chains.get(req.name)?.find((s) => Object.values(fingerprints(crypto, s)).includes(req.fingerprint!))?.bytes ?? null;
    const s = this.current.get(req.name);
    if (s === 'junk') return Uint8Array.from([0x07, 0x89, 0, 0, 3, 1, 2, 3]);
    return s?.bytes ?? null;
  }

  async history(req: SignetFetchRequest & { start?: string; end?: string }): Promise<Uint8Array[]> {
    this.calls.history++;
    await this.gate(req);
    return (this.chains.get(req.name) ?? []).map((s) => s.bytes);
  }

  async verify(req: SignetFetchRequest & { fingerprint: string }): Promise<{ current: true } | { current: false; fingerprint: string }> {
    this.calls.verify++;
    await this.gate(req);
    const s = this.current.get(req.name);
    const fp = s && s !== 'junk' ? fingerprints(crypto, s).full! : 'x'.repeat(86);
    return fp === req.fingerprint ? { current: true } : { current: false, fingerprint: fp };
  }

  publish(name: string, s: Signet): void {
    this.current.set(name, s);
    this.chains.set(name, [...(this.chains.get(name) ?? []), s]);
  }
}

function clock() {
  let t = Date.now();
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

describe('signet resolution end to end', () => {
  let dns: FakeDns;
  let servfail = false;
  const record = () => `ver=1 pok=${base64EncodeNoPad(crypto.ed25519PublicKey(seed(1)))} pol=strict dx=dx.org.test`;

  before(async () => {
    org = await createOrgSignet({ signer: ORG.signer, encryptionKey: ORG.enc, domain: 'org.test' });
    otherOrg = await createOrgSignet({ signer: OTHER_ORG.signer, encryptionKey: OTHER_ORG.enc, domain: 'org.test' });
    dns = await startFakeDns((q) => {
      const SOA = { type: Packet.TYPE.SOA, primary: 'ns.test', admin: 'h.test', serial: 1, refresh: 1, retry: 1, expiration: 1, minimum: 60 };
      if (q.name.endsWith('servfail.test')) return { rcode: Packet.RCODE.SERVFAIL, ede: Packet.EDE.NO_REACHABLE_AUTHORITY };
      if (q.name.endsWith('bogus.test')) return { rcode: Packet.RCODE.SERVFAIL, ede: Packet.EDE.DNSSEC_BOGUS };
      if (q.name === '_dx.org.test' && !servfail) return { answers: [{ type: Packet.TYPE.TXT, data: [record()], ttl: 300 }], ad: true };
      if (q.name === '_dx.org.test') return { rcode: Packet.RCODE.SERVFAIL, ede: Packet.EDE.NO_REACHABLE_AUTHORITY };
      if (q.name === '_dx.garbled.test') return { answers: [{ type: Packet.TYPE.TXT, data: ['ver=1 pok=AAAA'] }], ad: true };
      return { rcode: Packet.RCODE.NXDOMAIN, authorities: [SOA], ad: true };
    });
  });
  after(async () => {
    await dns?.close();
  });

  const make = (dx: SignetFetcher | undefined, o: { clock?: () => number; config?: Partial<ResolverConfig> } = {}) =>
    new Resolver({
      config: { ...DEFAULT_RESOLVER, servers: [dns.server], trustAd: 'always', queryTimeoutMs: 2_000, attempts: 1, deadlineMs: 5_000, ...o.config },
      ...(dx ? { fetcher: dx } : {}),
      log,
      ...(o.clock ? { clock: o.clock } : {}),
    });

  it('a domain: record (DNS, DNSSEC-validated) → org signet (DMTP) validated against the POK; then from cache', async () => {
    const dx = new FakeDx();
    dx.publish('org.test', org);
    const r = make(dx);
    const a = await r.resolve('ORG.test');
    assert.equal(a.status, 'ok', JSON.stringify(a.error));
    assert.deepEqual([a.dnssec, a.policy, a.plaintextAllowed, a.path], ['validated', 'strict', false, ['record:dns', 'org:dmtp']]);
    assert.equal(a.org?.state, 'id');
    assert.equal(a.org?.fingerprints.full, fingerprints(crypto, org).full);
    assert.ok(a.timings.totalMs > 0 && a.steps.record!.ms >= 0);
    const b = await r.resolve('org.test');
    assert.deepEqual([b.status, b.path, b.steps.org?.tier], ['ok', ['record:cache', 'org:cache'], 'memory']);
    assert.equal(dx.calls.signet, 1);
  });

  it('a user: org then user signet, validated against the org signet; first sight is pinned', async () => {
    const dx = new FakeDx();
    dx.publish('org.test', org);
    const alice = await userSignet(party(10), 'alice@org.test');
    dx.publish('alice@org.test', alice);
    const r = make(dx);
    const a = await r.resolve('alice@ORG.TEST');
    assert.equal(a.status, 'ok', JSON.stringify(a.error));
    assert.deepEqual([a.name, a.user?.state, a.user?.custody, a.path], ['alice@org.test', 'id', 'first-seen', ['record:dns', 'org:dmtp', 'user:dmtp']]);
    assert.equal((await r.resolve('alice@org.test')).path.join(), 'record:cache,org:cache,user:cache');
  });

  it('signets that do not validate are refused and never cached', async () => {
    const dx = new FakeDx();
    dx.publish('org.test', otherOrg); // signed by a key that is not a POK of the record
    const r = make(dx);
    const a = await r.resolve('org.test');
    assert.deepEqual([a.status, a.error?.code, a.plaintextAllowed], ['refused', 'RESOLVE_SIGNET_INVALID', false]);
    await r.resolve('org.test');
    assert.equal(dx.calls.signet, 2, 'a refused signet is fetched again next time');

    dx.publish('org.test', org);
    dx.publish('mallory@org.test', await userSignet(party(11), 'mallory@org.test', { by: OTHER_ORG }));
    dx.publish('bob@org.test', await userSignet(party(12), 'carol@org.test'));
    dx.current.set('junk@org.test', 'junk');
    dx.publish('eve@org.test', org);
    for (const [who, why] of [
      ['mallory@org.test', /organisation's signet-signing keys/],
      ['bob@org.test', /names "carol@org.test"/],
      ['junk@org.test', /does not decode/],
      ['eve@org.test', /served a org signet/],
    ] as const) {
      const u = await r.resolve(who);
      assert.deepEqual([u.status, u.error?.code], ['refused', 'RESOLVE_SIGNET_INVALID'], who);
      assert.match(u.error!.message, why, who);
    }
  });

  it('a user key swapped by the domain without custody is refused by default, flagged when configured', async () => {
    const c = clock();
    const dx = new FakeDx();
    dx.publish('org.test', org);
    dx.publish('alice@org.test', await userSignet(party(20), 'alice@org.test'));
    const r = make(dx, { clock: c.now, config: { signetTtl: 60 } });
    assert.equal((await r.resolve('alice@org.test')).user?.custody, 'first-seen');
    // The domain publishes a new key for alice that her old key never vouched for.
    const swapped = await userSignet(party(21), 'alice@org.test');
    dx.current.set('alice@org.test', swapped);
    c.advance(61 * S);
    const a = await r.resolve('alice@org.test');
    assert.deepEqual([a.status, a.error?.code, a.user], ['refused', 'RESOLVE_CUSTODY_BROKEN', undefined]);
    assert.equal(r.metrics.get('custody_broken'), 1);
    assert.equal(dx.calls.history, 1, 'HIST was asked for a chain before refusing');
    // Still refused on the next try: the pin is the old key.
    assert.equal((await r.resolve('alice@org.test')).error?.code, 'RESOLVE_CUSTODY_BROKEN');

    const flagging = make(dx, { clock: c.now, config: { signetTtl: 60, custody: 'flag' } });
    dx.current.set('alice@org.test', dx.chains.get('alice@org.test')![0]!);
    await flagging.resolve('alice@org.test');
    dx.current.set('alice@org.test', swapped);
    c.advance(61 * S);
    const f = await flagging.resolve('alice@org.test');
    assert.deepEqual([f.status, f.user?.custody], ['ok', 'broken']);
    assert.ok(f.warnings.some((w) => /chain-of-custody/.test(w)));
  });

  it('a rotation with a custody signature is verified; two rotations are followed through HIST', async () => {
    const c = clock();
    const dx = new FakeDx();
    dx.publish('org.test', org);
    const v1p = party(30);
    const v2p = party(31);
    const v3p = party(32);
    const v1 = await userSignet(v1p, 'bob@org.test');
    dx.publish('bob@org.test', v1);
    const r = make(dx, { clock: c.now, config: { signetTtl: 60 } });
    await r.resolve('bob@org.test');
    const v2 = await userSignet(v2p, 'bob@org.test', { previous: { party: v1p, signet: v1 } });
    dx.publish('bob@org.test', v2);
    c.advance(61 * S);
    const a = await r.resolve('bob@org.test');
    assert.deepEqual([a.status, a.user?.custody], ['ok', 'verified'], JSON.stringify(a.error));

    // A resolver that last saw v1 meets v3: v3's custody is by v2's key, so the chain comes from HIST.
    const other = make(dx, { clock: c.now, config: { signetTtl: 60 } });
    dx.current.set('bob@org.test', v1);
    await other.resolve('bob@org.test');
    const v3 = await userSignet(v3p, 'bob@org.test', { previous: { party: v2p, signet: v2 } });
    dx.publish('bob@org.test', v3);
    c.advance(61 * S);
    const b = await other.resolve('bob@org.test');
    assert.deepEqual([b.status, b.user?.custody], ['ok', 'verified-history'], JSON.stringify(b.error));
    // Its first sight by a new resolver: a rotated signet validates (custody cannot be checked yet).
    const fresh = await make(dx).resolve('bob@org.test');
    assert.deepEqual([fresh.status, fresh.user?.custody], ['ok', 'first-seen'], JSON.stringify(fresh.error));

    // A DX without HIST: the same situation is a broken chain.
    const noHist: SignetFetcher = { signet: (q) => dx.signet(q), verify: (q) => dx.verify(q) };
    const third = make(noHist, { clock: c.now, config: { signetTtl: 60 } });
    dx.current.set('bob@org.test', v1);
    await third.resolve('bob@org.test');
    dx.current.set('bob@org.test', v3);
    c.advance(61 * S);
    assert.equal((await third.resolve('bob@org.test')).error?.code, 'RESOLVE_CUSTODY_BROKEN');
  });

  it('VRFY refreshes a cached signet that is still current, without fetching it again', async () => {
    const c = clock();
    const dx = new FakeDx();
    dx.publish('org.test', org);
    dx.publish('carol@org.test', await userSignet(party(40), 'carol@org.test'));
    const r = make(dx, { clock: c.now, config: { signetTtl: 60, minTtl: 3600 } });
    await r.resolve('carol@org.test');
    c.advance(61 * S);
    const a = await r.resolve('carol@org.test');
    assert.deepEqual([a.status, a.path], ['ok', ['record:cache', 'org:dmtp', 'user:dmtp']]);
    assert.deepEqual([dx.calls.signet, dx.calls.verify], [2, 2]);
    assert.equal(r.metrics.get('vrfy_current'), 2);
  });

  it('the deadline: unknown (RESOLVE_DEADLINE) within it, never "no signet"; stale data answers when there is some', async () => {
    const c = clock();
    const dx = new FakeDx();
    dx.publish('org.test', org);
    dx.publish('dave@org.test', await userSignet(party(50), 'dave@org.test'));
    dx.hang = true;
    const r = make(dx, { clock: c.now, config: { signetTtl: 60, deadlineMs: 600 } });
    const t0 = Date.now();
    const a = await r.resolve('dave@org.test');
    const took = Date.now() - t0;
    assert.deepEqual([a.status, a.error?.code, a.plaintextAllowed, a.user], ['unknown', 'RESOLVE_DEADLINE', false, undefined]);
    assert.ok(took >= 590 && took < 2_000, `took ${took} ms`);
    // The caller's own signal counts too.
    const b = await r.resolve('dave@org.test', { signal: AbortSignal.timeout(50) });
    assert.equal(b.error?.code, 'RESOLVE_DEADLINE');
    // The shared fetch that asker left behind ends at its own deadline; after it, the DX answers again.
    await new Promise((res) => setTimeout(res, 600));

    dx.hang = false;
    assert.equal((await r.resolve('dave@org.test')).status, 'ok');
    c.advance(61 * S);
    dx.hang = true;
    const s = await r.resolve('dave@org.test', { deadlineMs: 150 });
    assert.deepEqual([s.status, s.stale, s.path], ['ok', true, ['record:cache', 'org:stale', 'user:stale']]);
    assert.ok(s.warnings.length >= 2);
  });

  it('the DX has no such user: no-signet; no fetcher: unknown; record only: ok', async () => {
    const dx = new FakeDx();
    dx.publish('org.test', org);
    const r = make(dx);
    const a = await r.resolve('nobody@org.test');
    assert.deepEqual([a.status, a.error?.code, a.plaintextAllowed], ['no-signet', 'SIGNET_NOT_FOUND', false]);
    const n = await make(undefined).resolve('org.test');
    assert.deepEqual([n.status, n.error?.code, n.policy], ['unknown', 'RESOLVE_NO_FETCHER', 'strict']);
    const o = await make(undefined).resolve('org.test', { recordOnly: true });
    assert.deepEqual([o.status, o.path], ['ok', ['record:dns']]);
  });

  it('DNS outcomes: only a real "no record" allows plaintext', async () => {
    const r = make(new FakeDx());
    const none = await r.resolve('user@nothing.test');
    assert.deepEqual([none.status, none.plaintextAllowed, none.dnssec, none.error?.code], ['no-record', true, 'validated', 'DNS_NO_RECORD']);
    const sf = await r.resolve('servfail.test');
    assert.deepEqual([sf.status, sf.plaintextAllowed, sf.error?.code], ['unknown', false, 'DNS_SERVFAIL']);
    const bogus = await r.resolve('bogus.test');
    assert.deepEqual([bogus.status, bogus.plaintextAllowed, bogus.dnssec, bogus.error?.code], ['refused', false, 'bogus', 'DNS_BOGUS']);
    const garbled = await r.resolve('garbled.test');
    assert.deepEqual([garbled.status, garbled.plaintextAllowed, garbled.error?.code], ['refused', false, 'RECORD_BAD_POK']);
  });

  it('DNS fails after the record was cached: the stale record answers (within max_stale)', async () => {
    const c = clock();
    const dx = new FakeDx();
    dx.publish('org.test', org);
    const r = make(dx, { clock: c.now, config: { minTtl: 0, maxStale: 600 } });
    await r.resolve('org.test');
    c.advance(301 * S);
    servfail = true;
    try {
      const a = await r.resolve('org.test');
      assert.deepEqual([a.status, a.stale, a.path[0]], ['ok', true, 'record:stale']);
      c.advance(601 * S);
      assert.deepEqual((await r.resolve('org.test')).status, 'unknown');
    } finally {
      servfail = false;
    }
  });

  it('100 concurrent resolutions of one address: one DNS query, one org fetch, one user fetch', async () => {
    const dx = new FakeDx();
    dx.publish('org.test', org);
    dx.publish('erin@org.test', await userSignet(party(60), 'erin@org.test'));
    const r = make(dx);
    const before = dns.queries.length;
    const all = await Promise.all(Array.from({ length: 100 }, () => r.resolve('erin@org.test')));
    assert.ok(all.every((a) => a.status === 'ok'));
    assert.deepEqual([dns.queries.length - before, dx.calls.signet], [1, 2]);
  });

  it('a given version by fingerprint (SGNT with a fingerprint), validated', async () => {
    const dx = new FakeDx();
    dx.publish('org.test', org);
    const p1 = party(70);
    const v1 = await userSignet(p1, 'fay@org.test');
    dx.publish('fay@org.test', v1);
    dx.publish('fay@org.test', await userSignet(party(71), 'fay@org.test', { previous: { party: p1, signet: v1 } }));
    const r = make(dx);
    const got = await r.signetVersion('fay@org.test', fingerprints(crypto, v1).full!);
    assert.deepEqual(got.bytes, v1.bytes);
    await assert.rejects(r.signetVersion('fay@org.test', 'A'.repeat(86)), (e: unknown) => isDimeError(e, 'SIGNET_NOT_FOUND'));
  });

  it('names are checked at the boundary', async () => {
    const r = make(new FakeDx());
    for (const bad of ['', 'no spaces.test', 'a@b@', '@org.test', 'x@-bad.test', `${'a'.repeat(65)}@org.test`]) {
      await assert.rejects(r.resolve(bad), (e: unknown) => isDimeError(e, 'RESOLVE_BAD_NAME'), bad);
    }
    assert.deepEqual(parseName('Bob.Smith@Example.COM.'), { domain: 'example.com', address: 'Bob.Smith@example.com' });
    assert.deepEqual(parseName(parseServer(dns.server) ? 'a.test' : ''), { domain: 'a.test' });
  });
});

describe('[resolver] configuration', () => {
  const bad = (text: string, re: RegExp) =>
    assert.throws(() => parseConfig(text, 'r.toml', {}), (e: unknown) => isDimeError(e, 'CONFIG_INVALID') && re.test((e as Error).message), text);

  it('defaults and every key; the Redis password stays out of the configuration', () => {
    assert.deepEqual(parseConfig('', 'r.toml', {}).resolver, DEFAULT_RESOLVER);
    const c = parseConfig(
      '[resolver]\nservers = ["127.0.0.1:5354", "[::1]:53"]\ntrust_ad = "always"\nquery_timeout_ms = 500\nattempts = 3\ndeadline_ms = 4000\nmin_ttl = 10\nmax_ttl = 600\nnegative_ttl = 30\nsignet_ttl = 120\nmax_stale = 60\nmax_hold = 86400\ncustody_pin_ttl = 1000\ncustody = "flag"\nlru_entries = 50\nredis_sentinels = ["10.0.0.1:26379"]\nredis_sentinel_name = "dime"\nredis_prefix = "mx:"\nredis_timeout_ms = 100\n',
      'r.toml',
      {},
    ).resolver;
    assert.deepEqual(c, {
      servers: ['127.0.0.1:5354', '[::1]:53'],
      trustAd: 'always',
      queryTimeoutMs: 500,
      attempts: 3,
      deadlineMs: 4000,
      minTtl: 10,
      maxTtl: 600,
      negativeTtl: 30,
      signetTtl: 120,
      maxStale: 60,
      maxHold: 86400,
      custodyPinTtl: 1000,
      custody: 'flag',
      lruEntries: 50,
      redisSentinels: ['10.0.0.1:26379'],
      redisSentinelName: 'dime',
      redisPrefix: 'mx:',
      redisTimeoutMs: 100,
    });
    // The Redis password never enters the configuration object (it is read from DIME_REDIS_PASSWORD by the client).
    assert.ok(!JSON.stringify(loadConfig(undefined, { DIME_REDIS_PASSWORD: 'x' })).includes('"x"'));
  });

  it('errors name the key and the fix', () => {
    bad('[resolver]\ndeadline_ms = "10s"', /resolver.deadline_ms is "10s"; milliseconds/);
    bad('[resolver]\ndeadline_ms = 10', /resolver.deadline_ms is 10; .*below the milter/);
    bad('[resolver]\nattempts = 1.5', /resolver.attempts is 1.5/);
    bad('[resolver]\nservers = []', /resolver.servers is empty/);
    bad('[resolver]\nservers = ["system", "127.0.0.1"]', /mixes "system"/);
    bad('[resolver]\nservers = ["not a server!"]', /resolver.servers holds "not a server!"/);
    bad('[resolver]\nmin_ttl = 600\nmax_ttl = 60', /min_ttl \(600\) is above max_ttl/);
    bad('[resolver]\nquery_timeout_ms = 5000\ndeadline_ms = 1000', /query_timeout_ms \(5000\) is above deadline_ms/);
    bad('[resolver]\nredis = "redis://a"\nredis_cluster = ["b:7000"]', /redis_cluster cannot be combined with resolver.redis/);
    bad('[resolver]\nredis = "localhost:6379"', /resolver.redis is "localhost:6379"/);
    bad('[resolver]\nredis_sentinels = ["a:26379"]', /redis_sentinel_name is required/);
    bad('[resolver]\ncustody = "ignore"', /resolver.custody is "ignore"/);
    bad('[resolver]\ntrust_ad = "yes"', /resolver.trust_ad is "yes"/);
    bad('[resolver]\ncache = 1', /resolver.cache is not a setting/);
  });

  it('the rendered configuration parses back', () => {
    const c = parseConfig('[resolver]\nservers = ["127.0.0.1:53"]\nredis = "redis://127.0.0.1:6379/0"\n', 'r.toml', {});
    const back = parseConfig(renderConfig(c), 'rendered.toml', {}).resolver;
    assert.deepEqual([back.servers, back.redis, back.deadlineMs], [['127.0.0.1:53'], 'redis://127.0.0.1:6379/0', 10_000]);
  });
});
