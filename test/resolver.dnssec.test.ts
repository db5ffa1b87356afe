/**
 * DNSSEC with real components: bind9 serving zones signed with Ed25519 keys made for this run, and
 * unbound validating them against trust anchors for exactly those zones (test/helpers/dnssec.ts).
 *
 *  - a signed zone: the record comes back with AD, so "validated"; a missing name is a validated
 *    NXDOMAIN, cached as a negative answer;
 *  - an unsigned zone: "unsigned";
 *  - a corrupted signature: bogus (told by unbound's extended error, then by the CD probe with
 *    extended errors off), refused, never used and never cached;
 *  - a pol=strict record removed from an unsigned zone (a downgrade attempt): the cached record
 *    stands until its exp=; a signed zone served stripped of its signatures: bogus, the cached
 *    record answers stale; a DNSSEC-validated removal: accepted.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { DEFAULT_RESOLVER } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { base64EncodeNoPad } from '../src/dime/base64.js';
import { createLogger } from '../src/log.js';
import { Resolver } from '../src/resolver/resolver.js';
import { dnssecToolsAvailable, startDnssecRig, type DnssecRig } from './helpers/dnssec.js';

const crypto = defaultCrypto();
const POK = base64EncodeNoPad(crypto.ed25519PublicKey(new Uint8Array(32).fill(5)));
const STRICT = `_dx 60 IN TXT "ver=1 pok=${POK} pol=strict exp=1"`;
// Split into two character-strings, as genrec prints long records.
const MIXED = `_dx 60 IN TXT "ver=1 pok=${POK.slice(0, 20)}" "${POK.slice(20)} pol=mixed"`;
const S = 1000;
const log = createLogger({ level: 'silent' });

describe('resolver with bind9 + unbound (DNSSEC)', { skip: !dnssecToolsAvailable() && 'bind9 and unbound are not installed' }, () => {
  let rig: DnssecRig;
  let t = Date.now();
  const clock = { now: () => t, advance: (ms: number) => (t += ms) };
  const make = () =>
    new Resolver({
      // trust_ad = loopback: unbound listens on 127.0.0.1, so its AD bit counts.
      config: { ...DEFAULT_RESOLVER, servers: [rig.resolver], queryTimeoutMs: 3_000, attempts: 1, deadlineMs: 8_000, minTtl: 0, maxStale: 600 },
      log,
      clock: clock.now,
    });

  before(async () => {
    rig = await startDnssecRig([
      { name: 'signed.test', signed: true, records: [STRICT, 'www 60 IN A 127.0.0.1'] },
      { name: 'plain.test', signed: false, records: [STRICT] },
      { name: 'bogus.test', signed: true, records: [MIXED] },
      { name: 'mixed.test', signed: true, records: [MIXED] },
    ]);
  });
  after(async () => {
    await rig?.stop();
  });

  it('a signed zone: AD set by the validating resolver, so the record is "validated"', async () => {
    const r = make();
    const a = await r.resolve('signed.test', { recordOnly: true });
    assert.deepEqual([a.status, a.dnssec, a.policy, a.path], ['ok', 'validated', 'strict', ['record:dns']]);
    const m = await r.resolve('mixed.test', { recordOnly: true });
    assert.deepEqual([m.status, m.dnssec, m.policy, m.record?.poks.length], ['ok', 'validated', 'mixed', 1], 'two character-strings joined');
  });

  it('a missing name in a signed zone: a validated NXDOMAIN, which allows plaintext and is cached (briefly)', async () => {
    const r = make();
    const a = await r.resolve('bob@www.signed.test');
    assert.deepEqual([a.status, a.plaintextAllowed, a.dnssec], ['no-record', true, 'validated']);
    const b = await r.resolve('www.signed.test');
    assert.deepEqual([b.status, b.path], ['no-record', ['record:cache']]);
    assert.equal(r.metrics.get('negative_cached'), 1);
  });

  it('an unsigned zone: "unsigned", and its "no record" is not cached', async () => {
    const r = make();
    const a = await r.resolve('plain.test', { recordOnly: true });
    assert.deepEqual([a.status, a.dnssec], ['ok', 'unsigned']);
    const n1 = await r.resolve('nothing.plain.test');
    const n2 = await r.resolve('nothing.plain.test');
    assert.deepEqual([n1.status, n1.dnssec, n2.path], ['no-record', 'unsigned', ['record:dns']]);
  });

  it('a corrupted signature is bogus: refused, never used, never cached (EDE, then the CD probe)', async () => {
    await rig.setZone('bogus.test', [MIXED], { bogus: '_dx' });
    const r = make();
    const a = await r.resolve('bogus.test', { recordOnly: true });
    assert.deepEqual([a.status, a.dnssec, a.error?.code, a.record, a.plaintextAllowed], ['refused', 'bogus', 'DNS_BOGUS', undefined, false]);
    assert.match(a.error!.message, /extended error DNSSEC_BOGUS/);
    await rig.setEde(false);
    try {
      const probes = r.dns.stats.cdProbes;
      const b = await r.resolve('bogus.test', { recordOnly: true });
      assert.deepEqual([b.status, b.error?.code, b.path], ['refused', 'DNS_BOGUS', ['record:dns']], 'not cached: asked again');
      assert.match(b.error!.message, /checking disabled/);
      assert.equal(r.dns.stats.cdProbes, probes + 1);
    } finally {
      await rig.setEde(true);
    }
  });

  it('a strict record removed from an unsigned zone (a downgrade attempt) stands until its exp=', async () => {
    const r = make();
    await rig.setZone('plain.test', [STRICT]);
    assert.equal((await r.resolve('plain.test', { recordOnly: true })).policy, 'strict');
    await rig.setZone('plain.test', []);
    clock.advance(61 * S); // past the TTL: DNS is asked again and says NXDOMAIN, without DNSSEC
    const a = await r.resolve('alice@plain.test', { recordOnly: true });
    assert.deepEqual([a.status, a.policy, a.downgradeRefused, a.plaintextAllowed, a.path], ['ok', 'strict', true, false, ['record:stale']]);
    assert.equal(r.metrics.get('downgrade_refused'), 1);
    clock.advance(86_400 * S); // exp=1: one day
    const b = await r.resolve('alice@plain.test', { recordOnly: true });
    assert.deepEqual([b.status, b.plaintextAllowed], ['no-record', true]);
  });

  it('a signed zone stripped of its signatures is bogus: the cached strict record answers; a validated removal is accepted', async () => {
    const r = make();
    await rig.setZone('signed.test', [STRICT]);
    await r.resolve('signed.test', { recordOnly: true });
    await rig.setZone('signed.test', [], { signed: false });
    clock.advance(61 * S);
    const a = await r.resolve('signed.test', { recordOnly: true });
    assert.deepEqual([a.status, a.policy, a.stale, a.plaintextAllowed, a.path], ['ok', 'strict', true, false, ['record:stale']]);
    assert.match(a.warnings.join(), /DNSSEC/);
    // The domain really leaves DIME: the removal is signed, so it is believed at once.
    await rig.setZone('signed.test', []);
    clock.advance(61 * S);
    const b = await r.resolve('signed.test', { recordOnly: true });
    assert.deepEqual([b.status, b.dnssec, b.plaintextAllowed], ['no-record', 'validated', true]);
  });
});
