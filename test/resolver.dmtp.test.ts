/**
 * The resolver over real DMTP: a relay (src/dmtp/server.ts) for dark.test on loopback with a
 * self-signed RSA certificate pinned by a tls= value, its management record served by a DNS server
 * with the AD bit (so the pin alone is enough, as under DNSSEC), the DMTP client finding the DX
 * through ResolverPeerLocator and fetching through DmtpSignetFetcher. SGNT for org and user
 * signets, VRFY refreshes, custody across a rotation and across two rotations via HIST, a key
 * swapped without custody, a user the DX does not know, and DX hosts that answer junk or nothing.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Packet } from 'dns2';
import { DEFAULT_RESOLVER } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { localActorKeys } from '../src/dime/message/index.js';
import { certificateDer, formatRecord, signTlsPin } from '../src/dime/record.js';
import { createOrgSignet, createSigningRequest, fingerprints, signUserSignet, type Signet } from '../src/dime/signet/index.js';
import { DmtpClient } from '../src/dmtp/client.js';
import { startRelay, type DmtpServer } from '../src/dmtp/server.js';
import { parseMtaTarget } from '../src/dmtp/smtp-client.js';
import { isDimeError } from '../src/errors.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { createLogger } from '../src/log.js';
import { DmtpSignetFetcher, ResolverPeerLocator, ResolverSignetSource } from '../src/resolver/dmtp-fetcher.js';
import { Resolver } from '../src/resolver/resolver.js';
import { scratchDir } from './helpers/cli.js';
import { startFakeDns, type FakeDns } from './helpers/dnssec.js';

const crypto = defaultCrypto();
const log = createLogger({ level: process.env.DMTP_TEST_LOG ?? 'silent' });
const dir = scratchDir('dime-resolver-dmtp-');
const seed = (n: number) => new Uint8Array(32).fill(n);
const S = 1000;
const ORG_SEED = seed(1);
const orgSigner = crypto.ed25519Signer(ORG_SEED);
const party = (n: number) => ({ signer: crypto.ed25519Signer(seed(n)), enc: crypto.secp256k1PublicKey(seed(n + 100)) });

async function user(n: number, address: string, previous?: { n: number; signet: Signet }): Promise<Signet> {
  const p = party(n);
  const ssr = await createSigningRequest({ signer: p.signer, encryptionKey: p.enc, ...(previous ? { previousSigner: party(previous.n).signer } : {}) });
  return signUserSignet(crypto, ssr, { orgSigner, address, ...(previous ? { previous: previous.signet } : {}) });
}

describe('resolver over DMTP (real relay, real TLS)', () => {
  let dns: FakeDns;
  let relay: DmtpServer;
  let hang: net.Server;
  let junk: net.Server;
  const sockets = new Set<net.Socket>();
  let store: FileSignetStore;
  let org: Signet;
  const v: Signet[] = [];
  let t = Date.now();
  const clock = { now: () => t, advance: (ms: number) => (t += ms) };

  before(async () => {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'dx.key', '-out', 'dx.pem', '-days', '30', '-subj', '/CN=dx.dark.test', '-addext', 'subjectAltName=DNS:dx.dark.test'], { cwd: dir, stdio: 'pipe' });
    const cert = fs.readFileSync(path.join(dir, 'dx.pem'), 'latin1');
    const record = formatRecord({ version: 1, poks: [crypto.ed25519PublicKey(ORG_SEED)], tls: [signTlsPin(ORG_SEED, certificateDer(cert), crypto)], policy: 'strict', subdomain: 'strict', dx: ['dx.dark.test'] });
    dns = await startFakeDns((q) => {
      if (q.name === '_dx.dark.test' || q.name === '_dx.hang.test' || q.name === '_dx.junk.test') return { answers: [{ type: Packet.TYPE.TXT, data: [record.slice(0, 200), record.slice(200)], ttl: 3600 }], ad: true };
      return { rcode: Packet.RCODE.NXDOMAIN, ad: true };
    });
    org = await createOrgSignet({ signer: orgSigner, encryptionKey: crypto.secp256k1PublicKey(seed(2)), domain: 'dark.test' });
    v.push(await user(10, 'alice@dark.test'));
    v.push(await user(11, 'alice@dark.test', { n: 10, signet: v[0]! }));
    v.push(await user(12, 'alice@dark.test', { n: 11, signet: v[1]! }));
    store = new FileSignetStore(path.join(dir, 'signets'), crypto);
    await store.put(org);
    await store.put(v[0]!);
    relay = await startRelay({
      domain: 'dark.test',
      hostname: 'dx.dark.test',
      crypto,
      store,
      keys: localActorKeys(crypto, seed(2)),
      signets: { org: async () => org, user: async () => v[0]! },
      mta: parseMtaTarget('inet:127.0.0.1:9'),
      tls: { cert, key: fs.readFileSync(path.join(dir, 'dx.key'), 'latin1') },
      listen: 'inet:127.0.0.1:0',
      limits: { violationDelayMs: 0 },
      // The relay caches store reads for a few seconds; the test publishes versions and asks at once.
      storeCacheMs: 0,
      log,
    });
    // A DX that accepts and never speaks, and one that answers junk instead of TLS.
    hang = net.createServer((s) => sockets.add(s));
    junk = net.createServer((s) => {
      sockets.add(s);
      s.end('HTTP/1.0 400 nope\r\n\r\n');
    });
    await Promise.all([hang, junk].map((srv) => new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))));
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    await Promise.all([relay?.close(1_000), dns?.close(), new Promise((r) => hang?.close(r)), new Promise((r) => junk?.close(r))]);
  });

  /** A resolver whose DMTP client reaches the DX named in the record on `port`. */
  const make = (o: { port?: number; deadlineMs?: number } = {}) => {
    const r = new Resolver({ config: { ...DEFAULT_RESOLVER, servers: [dns.server], signetTtl: 60, deadlineMs: o.deadlineMs ?? 8_000, queryTimeoutMs: Math.min(3_000, o.deadlineMs ?? 3_000) }, log, clock: clock.now });
    const locator = new ResolverPeerLocator(r, { ports: { dmtp: o.port ?? relay.endpoints.implicit!.port, dual: [] }, addresses: { 'dx.dark.test': '127.0.0.1' } });
    r.fetcher = new DmtpSignetFetcher(new DmtpClient({ crypto, locator, log, timeouts: { connectMs: 5_000, commandMs: 5_000 } }));
    return r;
  };

  it('the locator answers record + DNSSEC status + candidates from the resolver', async () => {
    const r = make();
    const loc = await new ResolverPeerLocator(r, { addresses: (h) => (h === 'dx.dark.test' ? '127.0.0.1' : undefined) }).locate('Dark.Test');
    assert.deepEqual([loc.domain, loc.dnssec, loc.record.policy, loc.candidates], ['dark.test', 'validated', 'strict', [{ host: 'dx.dark.test', port: 26, mode: 'implicit', address: '127.0.0.1' }]]);
    await assert.rejects(new ResolverPeerLocator(r).locate('nothing.test'), (e: unknown) => isDimeError(e, 'DMTP_NO_RECORD'));
  });

  let first: Resolver;
  let second: Resolver;

  it('SGNT over TLS (pinned certificate): org then user signet, validated; then from cache', async () => {
    first = make();
    second = make();
    const a = await first.resolve('alice@dark.test');
    assert.equal(a.status, 'ok', JSON.stringify(a.error));
    assert.deepEqual([a.dnssec, a.path, a.user?.custody], ['validated', ['record:dns', 'org:dmtp', 'user:dmtp'], 'first-seen']);
    assert.equal(a.org?.fingerprints.full, fingerprints(crypto, org).full);
    assert.equal(a.user?.fingerprints.full, fingerprints(crypto, v[0]!).full);
    assert.deepEqual((await first.resolve('alice@dark.test')).path, ['record:cache', 'org:cache', 'user:cache']);
    assert.equal((await second.resolve('alice@dark.test')).user?.custody, 'first-seen');
  });

  it('VRFY: a cached signet still current is kept; after a rotation with custody, the new one is verified', async () => {
    clock.advance(61 * S);
    const kept = await first.resolve('alice@dark.test');
    assert.deepEqual([kept.status, kept.path], ['ok', ['record:cache', 'org:dmtp', 'user:dmtp']]);
    assert.equal(first.metrics.get('vrfy_current'), 2);
    await store.put(v[1]!);
    clock.advance(61 * S);
    const rotated = await first.resolve('alice@dark.test');
    assert.deepEqual([rotated.status, rotated.user?.custody, rotated.user?.fingerprints.full], ['ok', 'verified', fingerprints(crypto, v[1]!).full]);
    assert.equal(first.metrics.get('vrfy_update'), 1);
  });

  it('two rotations since the last look: the chain comes from HIST and verifies', async () => {
    await store.put(v[2]!);
    clock.advance(61 * S);
    const b = await second.resolve('alice@dark.test'); // second last saw v1
    assert.deepEqual([b.status, b.user?.custody, b.user?.fingerprints.full], ['ok', 'verified-history', fingerprints(crypto, v[2]!).full], JSON.stringify(b.error));
  });

  it('the domain swaps alice\'s key without custody: refused (RESOLVE_CUSTODY_BROKEN)', async () => {
    await store.put(await user(13, 'alice@dark.test'));
    clock.advance(61 * S);
    const a = await first.resolve('alice@dark.test');
    assert.deepEqual([a.status, a.error?.code, a.plaintextAllowed], ['refused', 'RESOLVE_CUSTODY_BROKEN', false]);
  });

  it('a user the DX does not know: no-signet (SIGNET_NOT_FOUND from a 450)', async () => {
    const a = await make().resolve('nobody@dark.test');
    assert.deepEqual([a.status, a.error?.code], ['no-signet', 'SIGNET_NOT_FOUND']);
  });

  it('the relay\'s SignetSource through the resolver: current signets and a version by fingerprint', async () => {
    const source = new ResolverSignetSource(make());
    assert.deepEqual((await source.org('dark.test')).bytes, org.bytes);
    assert.deepEqual((await source.org('dark.test', fingerprints(crypto, org).crypto)).bytes, org.bytes);
    const old = await source.user('alice@dark.test', fingerprints(crypto, v[0]!).full);
    assert.deepEqual(old.bytes, v[0]!.bytes);
    await assert.rejects(source.org('nothing.test'), (e: unknown) => isDimeError(e, 'DMTP_NO_RECORD'));
  });

  it('a DX that never answers: unknown at the deadline; one that answers junk: unknown, typed', async () => {
    const t0 = Date.now();
    const silent = await make({ port: (hang.address() as net.AddressInfo).port, deadlineMs: 500 }).resolve('dark.test');
    assert.deepEqual([silent.status, silent.error?.code], ['unknown', 'RESOLVE_DEADLINE']);
    assert.ok(Date.now() - t0 < 2_000);
    const bad = await make({ port: (junk.address() as net.AddressInfo).port }).resolve('dark.test');
    assert.equal(bad.status, 'unknown');
    assert.match(bad.error!.code, /^DMTP_/);
    assert.equal(bad.org, undefined);
  });
});

