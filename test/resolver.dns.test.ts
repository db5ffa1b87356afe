/**
 * The DNS layer against dns2's own server on loopback (fast unit cases): every typed outcome of a
 * `_dx` lookup (record, NXDOMAIN, NODATA, SERVFAIL, timeout, bogus by EDE and by the CD probe,
 * malformed), odd TXT shapes (strings split anywhere, empty strings, several TXT RRs, oversized
 * answers that need TCP, RDATA that does not decode), AD trust, server failover, MX, and aborts.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { Packet } from 'dns2';
import { defaultCrypto } from '../src/crypto/index.js';
import { base64EncodeNoPad } from '../src/dime/base64.js';
import { isDimeError } from '../src/errors.js';
import { DnsClient, isLoopback, looksLikeDimeRecord, parseServer, resolveServers, systemServers, trustAdFor, type DnsClientOptions } from '../src/resolver/dns.js';
import { scratchDir } from './helpers/cli.js';
import { startFakeDns, type FakeAnswer, type FakeDns, type FakeQuery } from './helpers/dnssec.js';

const crypto = defaultCrypto();
const POK = base64EncodeNoPad(crypto.ed25519PublicKey(new Uint8Array(32).fill(7)));
const RECORD = `ver=1 pok=${POK} pol=strict dx=dx.good.test exp=30`;
const { TXT, SOA, MX } = Packet.TYPE;
const SOA_RR = { type: SOA, primary: 'ns.test', admin: 'hostmaster.test', serial: 1, refresh: 3600, retry: 600, expiration: 86400, minimum: 300, ttl: 600 };
const txt = (...data: string[]): Record<string, unknown> => ({ type: TXT, data, ttl: 120 });

/** The TXT data the property test serves (set before each run). */
let splitStrings: string[] = [RECORD];

const ZONE: Record<string, (q: FakeQuery) => FakeAnswer> = {
  '_dx.good.test': () => ({ answers: [txt(RECORD)], ad: true }),
  '_dx.split.test': () => ({ answers: [txt('ver=1 po', '', `k=${POK.slice(0, 10)}`, POK.slice(10), ' pol=st', 'rict')] }),
  '_dx.prop.test': () => ({ answers: [txt(...splitStrings)] }),
  '_dx.multi.test': () => ({ answers: [txt('v=spf1 -all'), txt(RECORD), txt('google-site-verification=abc')] }),
  '_dx.ambiguous.test': () => ({ answers: [txt(RECORD), txt(`ver=1 pok=${POK} pol=mixed`)] }),
  '_dx.notdime.test': () => ({ answers: [txt('v=spf1 -all'), txt('hello world')] }),
  '_dx.garbled.test': () => ({ answers: [txt('ver=1 pok=short pol=strict')] }),
  '_dx.badpolicy.test': () => ({ answers: [txt(`ver=1 pok=${POK} pol=sometimes`)] }),
  '_dx.empty.test': () => ({ answers: [txt('')] }),
  // ~9 KB: more than the 1232-octet EDNS payload we advertise, so it comes back truncated over UDP.
  '_dx.oversized.test': () => ({ answers: [txt(...Array.from({ length: 36 }, (_, i) => (i === 0 ? `${RECORD} ` : `x${i}=${'y'.repeat(240)} `)))] }),
  '_dx.binary.test': () => ({ answers: [{ type: TXT, ttl: 60, data: Array.from({ length: 30 }, (_, i) => Buffer.from(Array.from({ length: 250 }, (_, j) => (i * 7 + j * 13) % 256))) }] }),
  '_dx.nx.test': () => ({ rcode: Packet.RCODE.NXDOMAIN, authorities: [SOA_RR], ad: true }),
  '_dx.nodata.test': () => ({ authorities: [{ ...SOA_RR, ttl: 45 }] }),
  '_dx.nosoa.test': () => ({ rcode: Packet.RCODE.NXDOMAIN }),
  '_dx.servfail.test': () => ({ rcode: Packet.RCODE.SERVFAIL }),
  '_dx.bogus-cd.test': (q) => (q.cd ? { answers: [txt(RECORD)] } : { rcode: Packet.RCODE.SERVFAIL }),
  '_dx.bogus-ede.test': () => ({ rcode: Packet.RCODE.SERVFAIL, ede: Packet.EDE.DNSSEC_BOGUS }),
  '_dx.expired-ede.test': () => ({ rcode: Packet.RCODE.SERVFAIL, ede: Packet.EDE.SIGNATURE_EXPIRED }),
  '_dx.unreachable.test': () => ({ rcode: Packet.RCODE.SERVFAIL, ede: Packet.EDE.NO_REACHABLE_AUTHORITY }),
  '_dx.refused.test': () => ({ rcode: Packet.RCODE.REFUSED }),
  '_dx.timeout.test': () => ({ drop: true }),
  '_dx.slow.test': () => ({ delayMs: 5_000, answers: [txt(RECORD)] }),
  '_dx.cname.test': () => ({ answers: [{ type: Packet.TYPE.CNAME, domain: '_dx.good.test', ttl: 30 }, { name: '_dx.good.test', ...txt(RECORD) }] }),
  // A TXT RR whose character-string length runs past its RDATA: dns2 drops the record; the answer must not read as NODATA.
  '_dx.badrdata.test': () => ({
    raw: (id) => {
      const p = new Packet();
      p.header = new Packet.Header({ id, qr: 1, rd: 1, ra: 1 });
      p.questions.push(new Packet.Question('_dx.badrdata.test', TXT, Packet.CLASS.IN));
      p.answers.push(Packet.createResourceFromQuestion(p.questions[0]!, { ttl: 60, data: ['abc'] } as never));
      const b = p.toBuffer();
      b[b.length - 4] = 0x10; // the string says 16 octets, 3 remain
      return b;
    },
  }),
  // A reply to another question (an off-path guess), then silence: dropped, so a timeout.
  '_dx.wrongq.test': () => ({
    raw: (id) => {
      const p = new Packet();
      p.header = new Packet.Header({ id, qr: 1, rd: 1, ra: 1 });
      p.questions.push(new Packet.Question('_dx.evil.test', TXT, Packet.CLASS.IN));
      p.answers.push(Packet.createResourceFromQuestion(p.questions[0]!, { ttl: 60, data: ['ver=1'] } as never));
      return p.toBuffer();
    },
  }),
  'mx.test': () => ({ answers: [{ type: MX, exchange: 'b.mx.test', priority: 20 }, { type: MX, exchange: 'A.MX.test', priority: 10 }, { type: MX, exchange: 'bad_host!.test', priority: 5 }], ad: true }),
  'nullmx.test': () => ({ answers: [{ type: MX, exchange: '', priority: 0 }] }),
  'nomx.test': () => ({ authorities: [SOA_RR] }),
};

describe('resolver DNS layer (dns2 unit server)', () => {
  let dns: FakeDns;
  let client: DnsClient;
  const make = (o: Partial<DnsClientOptions> = {}) => new DnsClient({ servers: [parseServer(dns.server)], queryTimeoutMs: 3_000, attempts: 1, trustAd: true, ...o });

  before(async () => {
    dns = await startFakeDns((q) => (ZONE[q.name.toLowerCase()] ?? (() => ({ rcode: Packet.RCODE.NXDOMAIN, authorities: [SOA_RR] })))(q));
    client = make();
  });
  after(async () => {
    await dns?.close();
  });

  it('a record with AD from a trusted resolver is validated; the query carries EDNS0 with DO', async () => {
    const r = await client.lookupRecord('Good.Test.');
    assert.equal(r.kind, 'record');
    if (r.kind !== 'record') return;
    assert.equal(r.dnssec, 'validated');
    assert.equal(r.text, RECORD);
    assert.equal(r.ttl, 120);
    assert.equal(r.record.policy, 'strict');
    assert.deepEqual(r.record.dx, ['dx.good.test']);
    const q = dns.queries.find((x) => x.name === '_dx.good.test')!;
    assert.ok(q.dnssecOk, 'DO bit set');
    assert.equal(q.cd, false);
  });

  it('AD counts only from a trusted resolver: untrusted means unsigned', async () => {
    const r = await make({ trustAd: false }).lookupRecord('good.test');
    assert.equal(r.kind === 'record' && r.dnssec, 'unsigned');
    assert.equal(trustAdFor('loopback', [parseServer('127.0.0.1:53'), parseServer('[::1]:5353')]), true);
    assert.equal(trustAdFor('loopback', [parseServer('127.0.0.1'), parseServer('10.0.0.1')]), false);
    assert.equal(trustAdFor('always', [parseServer('10.0.0.1')]), true);
    assert.equal(trustAdFor('never', [parseServer('127.0.0.1')]), false);
    assert.ok(isLoopback('127.3.4.5') && isLoopback('::1') && !isLoopback('192.168.1.1'));
  });

  it('character-strings are concatenated without a separator, however they are split', async () => {
    const r = await client.lookupRecord('split.test');
    assert.equal(r.kind, 'record');
    assert.equal(r.kind === 'record' && r.record.policy, 'strict');
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat({ max: RECORD.length }), { maxLength: 12 }), async (cuts) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b);
        splitStrings = [0, ...points].map((p, i) => RECORD.slice(p, points[i] ?? RECORD.length));
        const got = await client.lookupRecord('prop.test');
        assert.equal(got.kind === 'record' && got.text, RECORD, JSON.stringify(splitStrings));
      }),
      { numRuns: 60 },
    );
  });

  it('several TXT RRs: the DIME one is taken; two DIME ones, or none, are refused', async () => {
    const multi = await client.lookupRecord('multi.test');
    assert.equal(multi.kind === 'record' && multi.text, RECORD);
    const amb = await client.lookupRecord('ambiguous.test');
    assert.deepEqual([amb.kind, amb.kind === 'malformed' && amb.code], ['malformed', 'RECORD_AMBIGUOUS']);
    const none = await client.lookupRecord('notdime.test');
    assert.deepEqual([none.kind, none.kind === 'malformed' && none.code], ['malformed', 'RECORD_NOT_DIME']);
    assert.ok(looksLikeDimeRecord('VER=1') && looksLikeDimeRecord('x=1;pok=abc') && looksLikeDimeRecord('Primary=x') && !looksLikeDimeRecord('v=spf1 pokx=1'));
  });

  it('garbled records are malformed, with the parser\'s code', async () => {
    for (const [d, code] of [
      ['garbled.test', 'RECORD_BAD_POK'],
      ['badpolicy.test', 'RECORD_BAD_POLICY'],
      ['empty.test', 'RECORD_NO_POK'],
      ['binary.test', 'RECORD_SYNTAX'], // it holds NUL octets,
    ] as const) {
      const r = await client.lookupRecord(d);
      assert.deepEqual([r.kind, r.kind === 'malformed' && r.code], ['malformed', code], d);
    }
  });

  it('an answer larger than the EDNS payload comes truncated and is fetched again over TCP', async () => {
    const before = client.stats.tcp;
    const r = await client.lookupRecord('oversized.test');
    assert.equal(r.kind, 'record');
    assert.ok(r.kind === 'record' && r.text.length > 8_000);
    assert.equal(client.stats.tcp, before + 1);
    assert.ok(dns.queries.some((q) => q.name === '_dx.oversized.test' && q.tcp));
  });

  it('NXDOMAIN and NODATA are "no record", with the SOA negative TTL (min of SOA TTL and minimum)', async () => {
    const nx = await client.lookupRecord('nx.test');
    assert.deepEqual(nx, { kind: 'no-record', reason: 'nxdomain', dnssec: 'validated', negativeTtl: 300, server: dns.server });
    const nodata = await client.lookupRecord('nodata.test');
    assert.deepEqual([nodata.kind, nodata.kind === 'no-record' && nodata.reason, nodata.kind === 'no-record' && nodata.dnssec, nodata.kind === 'no-record' && nodata.negativeTtl], ['no-record', 'nodata', 'unsigned', 45]);
    const nosoa = await client.lookupRecord('nosoa.test');
    assert.equal(nosoa.kind === 'no-record' && nosoa.negativeTtl, 0);
  });

  it('SERVFAIL: bogus when an extended error says so or the CD probe finds the data, else SERVFAIL', async () => {
    const probes = client.stats.cdProbes;
    const sf = await client.lookupRecord('servfail.test');
    assert.deepEqual([sf.kind, sf.kind === 'servfail' && sf.code], ['servfail', 'DNS_SERVFAIL']);
    assert.equal(client.stats.cdProbes, probes + 1, 'a plain SERVFAIL is probed with CD');
    assert.ok(dns.queries.some((q) => q.name === '_dx.servfail.test' && q.cd));

    const cd = await client.lookupRecord('bogus-cd.test');
    assert.deepEqual([cd.kind, cd.kind === 'bogus' && cd.how], ['bogus', 'cd-probe']);
    const ede = await client.lookupRecord('bogus-ede.test');
    assert.deepEqual([ede.kind, ede.kind === 'bogus' && ede.how], ['bogus', 'ede']);
    const expired = await client.lookupRecord('expired-ede.test');
    assert.equal(expired.kind, 'bogus');

    const p2 = client.stats.cdProbes;
    const unreachable = await client.lookupRecord('unreachable.test');
    assert.equal(unreachable.kind, 'servfail');
    assert.equal(client.stats.cdProbes, p2, 'an EDE that says "unreachable" needs no probe');
    const noProbe = await make({ cdProbe: false }).lookupRecord('bogus-cd.test');
    assert.equal(noProbe.kind, 'servfail');

    const refused = await client.lookupRecord('refused.test');
    assert.ok(refused.kind === 'servfail' && /REFUSED/.test(refused.detail));
  });

  it('no answer is a timeout, after every attempt; a forged answer to another question is ignored', async () => {
    const c = make({ queryTimeoutMs: 150, attempts: 2 });
    const t0 = Date.now();
    const r = await c.lookupRecord('timeout.test');
    assert.deepEqual([r.kind, r.kind === 'timeout' && r.code], ['timeout', 'DNS_TIMEOUT']);
    assert.ok(Date.now() - t0 >= 290, 'two attempts of 150 ms');
    assert.equal(c.stats.noAnswer, 2);
    const w = await c.lookupRecord('wrongq.test');
    assert.ok(w.kind === 'timeout' && /_dx\.evil\.test/.test(w.detail), w.kind === 'timeout' ? w.detail : w.kind);
  });

  it('an answer whose RDATA does not decode is a bad response, never "no record"', async () => {
    const r = await client.lookupRecord('badrdata.test');
    assert.deepEqual([r.kind, r.kind === 'servfail' && r.code], ['servfail', 'DNS_BAD_RESPONSE']);
  });

  it('a CNAME on the way: the TXT at the target is used, the TTL is the lowest', async () => {
    const r = await client.lookupRecord('cname.test');
    assert.equal(r.kind === 'record' && r.ttl, 30);
  });

  it('a dead server is skipped for the next one', async () => {
    const c = new DnsClient({ servers: [parseServer('127.0.0.1:9'), parseServer(dns.server)], queryTimeoutMs: 1_000, attempts: 2, trustAd: true });
    const r = await c.lookupRecord('good.test');
    assert.equal(r.kind, 'record');
    assert.equal(c.stats.noAnswer, 1);
  });

  it('the signal stops a lookup at once with RESOLVE_DEADLINE', async () => {
    const c = make({ queryTimeoutMs: 10_000 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const t0 = Date.now();
    await assert.rejects(c.lookupRecord('slow.test', { signal: ac.signal }), (e: unknown) => isDimeError(e, 'RESOLVE_DEADLINE'));
    assert.ok(Date.now() - t0 < 1_000);
  });

  it('MX: sorted by preference, junk hosts left out, null MX recognised, NODATA is no record', async () => {
    const mx = await client.lookupMx('mx.test');
    assert.deepEqual(mx.kind === 'mx' && mx.hosts, [
      { exchange: 'a.mx.test', priority: 10 },
      { exchange: 'b.mx.test', priority: 20 },
    ]);
    assert.equal(mx.kind === 'mx' && mx.dnssec, 'validated');
    const nullMx = await client.lookupMx('nullmx.test');
    assert.deepEqual(nullMx.kind === 'mx' && [nullMx.nullMx, nullMx.hosts], [true, []]);
    assert.equal((await client.lookupMx('nomx.test')).kind, 'no-record');
  });

  it('names and servers are validated at the boundary', async () => {
    await assert.rejects(client.lookupRecord('bad..name'), (e: unknown) => isDimeError(e, 'RESOLVE_BAD_NAME'));
    await assert.rejects(client.lookupRecord(`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(60)}`), (e: unknown) => isDimeError(e, 'RESOLVE_BAD_NAME'));
    assert.deepEqual(parseServer('[::1]:5353'), { host: '::1', port: 5353 });
    assert.deepEqual(parseServer('::1'), { host: '::1', port: 53 });
    assert.deepEqual(parseServer('10.1.2.3:54'), { host: '10.1.2.3', port: 54 });
    for (const bad of ['dns.example.com', '1.2.3.4:99999', '[::1', '']) assert.throws(() => parseServer(bad), (e: unknown) => isDimeError(e, 'CONFIG_INVALID'), bad);
    assert.throws(() => new DnsClient({ servers: [], queryTimeoutMs: 1, attempts: 1, trustAd: false }), (e: unknown) => isDimeError(e, 'CONFIG_INVALID'));
  });

  it('system: the nameservers of resolv.conf (at most three), 127.0.0.1 when it names none', () => {
    const dir = scratchDir('dime-resolv-');
    const f = path.join(dir, 'resolv.conf');
    fs.writeFileSync(f, '# comment\nsearch example.com\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nnameserver junk\nnameserver 10.0.0.2\nnameserver 10.0.0.3\noptions edns0 trust-ad\n');
    assert.deepEqual(systemServers(f), [
      { host: '10.0.0.1', port: 53 },
      { host: 'fe80::1', port: 53 },
      { host: '10.0.0.2', port: 53 },
    ]);
    fs.writeFileSync(f, 'search x\n');
    assert.deepEqual(systemServers(f), [{ host: '127.0.0.1', port: 53 }]);
    assert.deepEqual(resolveServers(['system'], path.join(dir, 'absent')), [{ host: '127.0.0.1', port: 53 }]);
    assert.deepEqual(resolveServers(['127.0.0.1:5354']), [{ host: '127.0.0.1', port: 5354 }]);
  });
});
