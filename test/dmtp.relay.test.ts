/**
 * Two relays for two domains on loopback with real TLS: example.com (alice's) and example.org
 * (bob's), self-signed RSA certificates pinned by tls= values under records marked
 * DNSSEC-validated, and an SMTP sink standing in for Postfix. A message goes example.com →
 * example.org end to end and bob opens what the sink received; signets go both ways (SGNT, HIST,
 * VRFY). Negatives: wrong pin, expired certificate, self-signed without pin, the CA path, bogus
 * DNSSEC, fingerprint mismatches, an unknown recipient, a tampered message, and the MTA refusing
 * (451, 550) or absent: the sender gets 4xx/5xx, never 250, and maps it to retry/fail. One test
 * goes through a real Postfix (test/helpers/postfix.ts).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { defaultCrypto } from '../src/crypto/index.js';
import { utf8 } from '../src/dime/bytes.js';
import { openMessage, sealMessage, signAsOrigin, type MessageContent } from '../src/dime/message/index.js';
import { certificateDer, signTlsPin, type DimeRecord } from '../src/dime/record.js';
import { createOrgSignet, dearmorSignet, fingerprint, type Signet } from '../src/dime/signet/index.js';
import { CachingSignetSource, DmtpClient, StaticPeerLocator, checkDxCertificate, peerCandidates, type DnssecStatus, type PeerCandidate } from '../src/dmtp/client.js';
import { DmtpServer, extractDimeMessage, startRelay } from '../src/dmtp/server.js';
import type { SessionLimits } from '../src/dmtp/session.js';
import { DotStuffer, parseMtaTarget } from '../src/dmtp/smtp-client.js';
import { isDimeError } from '../src/errors.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { createLogger } from '../src/log.js';
import { scratchDir } from './helpers/cli.js';
import { vectorParties } from './helpers/dime-parties.js';
import { vectorText } from './helpers/vectors.js';
import { startMailSink, startPostfix, type MailSink } from './helpers/postfix.js';

const crypto = defaultCrypto();
const p = vectorParties(crypto);
const log = createLogger({ level: process.env.DMTP_TEST_LOG ?? 'silent' });
const dir = scratchDir('dime-dmtp-relay-');
const LIMITS: Partial<SessionLimits> = { violationDelayMs: 0, idleMs: 10_000, handshakeMs: 5_000 };
const rotated = dearmorSignet(vectorText('libdime/signets/alice-rotated.signet'));
const full = (s: Signet) => fingerprint(crypto, s, 'full')!;

// ------------------------------------------------------------------------------------ certificates

interface Cert {
  cert: string;
  key: string;
  der: Uint8Array;
}

function openssl(args: string[], cwd = dir): void {
  execFileSync('openssl', args, { cwd, stdio: 'pipe' });
}

function load(name: string): Cert {
  const cert = fs.readFileSync(path.join(dir, `${name}.pem`), 'latin1');
  return { cert, key: fs.readFileSync(path.join(dir, `${name}.key`), 'latin1'), der: certificateDer(cert) };
}

function selfSigned(name: string, host: string): Cert {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '30', '-subj', `/CN=${host}`, '-addext', `subjectAltName=DNS:${host}`]);
  return load(name);
}

/** Self-signed and valid for one day in 2020 only (openssl ca lets us set the dates). */
function expiredSelfSigned(name: string, host: string): Cert {
  const ca = path.join(dir, `${name}-ca`);
  fs.mkdirSync(ca);
  fs.writeFileSync(path.join(ca, 'index.txt'), '');
  fs.writeFileSync(path.join(ca, 'serial'), '01\n');
  fs.writeFileSync(
    path.join(ca, 'ca.cnf'),
    '[ca]\ndefault_ca = d\n[d]\ndir = .\ndatabase = ./index.txt\nserial = ./serial\nnew_certs_dir = .\ndefault_md = sha256\npolicy = p\nunique_subject = no\ncopy_extensions = copy\n[p]\ncommonName = supplied\n',
  );
  openssl(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', `../${name}.key`, '-out', 'r.csr', '-subj', `/CN=${host}`, '-addext', `subjectAltName=DNS:${host}`], ca);
  openssl(['ca', '-batch', '-config', 'ca.cnf', '-selfsign', '-keyfile', `../${name}.key`, '-in', 'r.csr', '-out', `../${name}.pem`, '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-notext'], ca);
  return load(name);
}

/** A CA and a leaf it signed for `host`. */
function caIssued(name: string, host: string): { ca: string; leaf: Cert } {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}-ca.key`, '-out', `${name}-ca.pem`, '-days', '30', '-subj', '/CN=DIME Test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
  openssl(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${host}`]);
  fs.writeFileSync(path.join(dir, `${name}.ext`), `subjectAltName=DNS:${host}\nbasicConstraints=CA:FALSE\n`);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${name}-ca.pem`, '-CAkey', `${name}-ca.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '30', '-extfile', `${name}.ext`]);
  return { ca: fs.readFileSync(path.join(dir, `${name}-ca.pem`), 'latin1'), leaf: load(name) };
}

function record(orgSeed: Uint8Array, pins: Uint8Array[]): DimeRecord {
  return {
    version: 1,
    poks: [crypto.ed25519PublicKey(orgSeed)],
    tls: pins.map((der) => signTlsPin(orgSeed, der, crypto)),
    policy: 'experimental',
    subdomain: 'strict',
    dx: [],
  };
}

// ------------------------------------------------------------------------------------ the message

const te = (s: string) => utf8.encode(s);
const CONTENT: MessageContent = {
  commonHeaders: { Date: te('Sun, 22 Nov 2026 10:00:00 +0000'), To: te('Bob <bob@example.org>'), From: te('Alice <alice@example.com>'), Subject: te('Secret plans') },
  otherHeaders: te('Message-ID: <dmtp-1@example.com>\r\n'),
  display: [te('Hello Bob, over DMTP.\r\n.\r\n..a line with dots\r\n')],
};

async function sealFor(destination: Signet, recipient: Signet, content = CONTENT): Promise<Uint8Array> {
  const parties = { ...p.seal, destination: { domain: 'example.org', signet: destination }, recipient: { address: 'bob@example.org', signet: recipient } };
  const sealed = await sealMessage(crypto, parties, content);
  const signets = { author: p.signets.author, origin: p.signets.origin, destination, recipient };
  return (await signAsOrigin(crypto, sealed, { keys: p.actorKeys('origin'), signer: crypto.ed25519Signer(p.keys.origin.signingKey), signets, bounce: { meta: true } })).message;
}

const ENVELOPE = {
  from: { domain: 'example.com', fingerprint: full(p.signets.origin) },
  to: { domain: 'example.org', fingerprint: full(p.signets.destination) },
};

// ------------------------------------------------------------------------------------ the two relays

describe('DMTP relays example.com → example.org', () => {
  const certCom = selfSigned('dx.example.com', 'dx.example.com');
  const certOrg = selfSigned('dx.example.org', 'dx.example.org');
  const recordCom = record(p.keys.origin.signingKey, [certCom.der]);
  const recordOrg = record(p.keys.destination.signingKey, [certOrg.der]);
  const storeCom = new FileSignetStore(path.join(dir, 'signets-com'), crypto);
  const storeOrg = new FileSignetStore(path.join(dir, 'signets-org'), crypto);
  /** What example.org's relay knows about example.com's DX (and the reverse). */
  const locatorForOrg = new StaticPeerLocator();
  const locatorForCom = new StaticPeerLocator();
  let sink: MailSink;
  let relayCom: DmtpServer;
  let relayOrg: DmtpServer;
  let clientCom: DmtpClient;
  let clientOrg: DmtpClient;
  const candidate = (host: string, port: number, mode: PeerCandidate['mode'] = 'implicit'): PeerCandidate => ({ host, address: '127.0.0.1', port, mode });
  const sinkMode = (m: MailSink['mode']) => (sink.mode = m);

  before(async () => {
    for (const s of [p.signets.origin, p.signets.author, rotated]) await storeCom.put(s);
    for (const s of [p.signets.destination, p.signets.recipient]) await storeOrg.put(s);
    sink = await startMailSink();
    const common = { crypto, mta: parseMtaTarget(`inet:127.0.0.1:${sink.port}`), listen: 'inet:127.0.0.1:0', limits: LIMITS, log };
    relayCom = await startRelay({
      ...common,
      domain: 'example.com',
      hostname: 'dx.example.com',
      store: storeCom,
      keys: p.actorKeys('origin'),
      signets: new CachingSignetSource(new DmtpClient({ crypto, locator: locatorForCom, log })),
      tls: certCom,
    });
    relayOrg = await startRelay({
      ...common,
      dualListen: 'inet:127.0.0.1:0',
      domain: 'example.org',
      hostname: 'dx.example.org',
      store: storeOrg,
      keys: p.actorKeys('destination'),
      signets: new CachingSignetSource(new DmtpClient({ crypto, locator: locatorForOrg, log })),
      tls: certOrg,
    });
    locatorForOrg.set('example.com', { record: recordCom, dnssec: 'validated', candidates: [candidate('dx.example.com', relayCom.endpoints.implicit!.port)] });
    locatorForCom.set('example.org', { record: recordOrg, dnssec: 'validated', candidates: [candidate('dx.example.org', relayOrg.endpoints.implicit!.port)] });
    clientCom = new DmtpClient({ crypto, locator: locatorForCom, log, timeouts: { commandMs: 10_000 } });
    clientOrg = new DmtpClient({ crypto, locator: locatorForOrg, log, timeouts: { commandMs: 10_000 } });
  });

  after(async () => {
    await Promise.all([relayCom?.close(1_000), relayOrg?.close(1_000), sink?.close()]);
  });

  it('fetches and validates the destination signets, delivers, and bob opens what the MTA received', async () => {
    const destination = await clientCom.org('example.org');
    assert.deepEqual(destination.bytes, p.signets.destination.bytes);
    const bob = await clientCom.user('bob@example.org');
    assert.deepEqual(bob.bytes, p.signets.recipient.bytes);
    const message = await sealFor(destination, bob);
    const before = sink.messages.length;
    const result = await clientCom.deliver(message, { ...ENVELOPE, to: { domain: 'example.org', fingerprint: full(destination) } });
    assert.equal(result.outcome, 'delivered', result.detail);
    assert.match(result.id!, /^[A-Za-z0-9_-]+$/);
    assert.equal(sink.messages.length, before + 1, '250 came after the MTA had the message');
    const got = sink.messages.at(-1)!;
    assert.equal(got.from, '', 'null sender: a bounce must not tell the origin who the recipient is');
    assert.deepEqual(got.recipients, ['bob@example.org']);
    const head = got.data.slice(0, got.data.indexOf('\r\n\r\n'));
    assert.doesNotMatch(head, /^Subject:/im, 'the destination does not know the subject');
    assert.doesNotMatch(got.data, /Secret plans|alice/i, 'nothing the destination may not know');
    assert.match(head, /^To: <bob@example\.org>$/m);
    assert.match(head, /^X-DIME-Origin: example\.com$/m);
    assert.match(head, new RegExp(`^Received: from example\\.com \\(127\\.0\\.0\\.1\\) by dx\\.example\\.org \\(dime relay\\) with DMTP id ${result.id}`, 'm'));
    const inner = extractDimeMessage(got.data);
    assert.deepEqual(inner, message);
    const view = await openMessage(crypto, inner, { actor: 'recipient', keys: p.actorKeys('recipient'), signets: { ...p.signets, destination, recipient: bob } });
    assert.equal(utf8.decode(view.display![0]!), utf8.decode(CONTENT.display[0]!));
  });

  it('delivers in dual mode (STARTTLS MODE=DMTPv1) and several messages over one session', async () => {
    const dual = new StaticPeerLocator({ 'example.org': { record: recordOrg, dnssec: 'validated', candidates: [candidate('dx.example.org', relayOrg.endpoints.dual!.port, 'dual')] } });
    const client = new DmtpClient({ crypto, locator: dual, log });
    const message = await sealFor(p.signets.destination, p.signets.recipient);
    const conn = await client.connect('example.org');
    try {
      assert.equal(conn.via, 'pin');
      assert.equal(conn.tls.protocol, 'TLSv1.3');
      const before = sink.messages.length;
      for (let i = 0; i < 3; i++) assert.equal((await conn.send(message, ENVELOPE)).outcome, 'delivered');
      assert.equal(sink.messages.length, before + 3);
    } finally {
      await conn.quit();
    }
  });

  it('serves signets both ways: SGNT with and without fingerprint, HIST with custody, VRFY', async () => {
    // example.org's side asks example.com's relay.
    assert.deepEqual((await clientOrg.org('example.com')).bytes, p.signets.origin.bytes);
    assert.deepEqual((await clientOrg.user('alice@example.com')).bytes, rotated.bytes, 'the current version');
    const oldFp = full(p.signets.author);
    assert.deepEqual((await clientOrg.user('alice@example.com', oldFp)).bytes, p.signets.author.bytes, 'a historic version by fingerprint');
    const chain = await clientOrg.history('alice@example.com');
    assert.deepEqual(chain.map((s) => s.bytes), [p.signets.author.bytes, rotated.bytes], 'oldest first, custody checked');
    assert.deepEqual((await clientOrg.history('alice@example.com', full(rotated))).map((s) => s.bytes), [rotated.bytes]);
    assert.deepEqual(await clientOrg.verifyCurrent('alice@example.com', oldFp), { current: false, fingerprint: full(rotated) });
    assert.deepEqual(await clientOrg.verifyCurrent('alice@example.com', fingerprint(crypto, rotated, 'crypto')!), { current: true });
    await assert.rejects(clientOrg.user('mallory@example.com'), (e: unknown) => isDimeError(e, 'SIGNET_NOT_FOUND'));
    await assert.rejects(clientOrg.org('example.com', 'A'.repeat(86)), (e: unknown) => isDimeError(e, 'SIGNET_NOT_FOUND'));
    // …and the other way.
    assert.deepEqual((await clientCom.verifyCurrent('bob@example.org', full(p.signets.recipient))), { current: true });
    // A relay serves only its own domain.
    const conn = await clientCom.connect('example.org');
    await assert.rejects(conn.sgnt('example.com'), (e: unknown) => isDimeError(e, 'SIGNET_NOT_FOUND'));
    await conn.quit();
  });

  it('refuses a certificate that no tls= value pins, an expired one, and a self-signed one without pin', async () => {
    const other = selfSigned('other', 'dx.example.org');
    const expired = expiredSelfSigned('expired', 'dx.example.org');
    const wrong = await DmtpServer.start({ hostname: 'dx.example.org', handler: stubHandler(), tls: other, listen: 'inet:127.0.0.1:0', log });
    const old = await DmtpServer.start({ hostname: 'dx.example.org', handler: stubHandler(), tls: expired, listen: 'inet:127.0.0.1:0', log });
    try {
      const tryWith = async (rec: DimeRecord, dnssec: DnssecStatus, port: number) => {
        const client = new DmtpClient({ crypto, locator: new StaticPeerLocator({ 'example.org': { record: rec, dnssec, candidates: [candidate('dx.example.org', port)] } }), log });
        return client.deliver(new Uint8Array(10), ENVELOPE);
      };
      let r = await tryWith(recordOrg, 'validated', wrong.endpoints.implicit!.port);
      assert.deepEqual([r.outcome, r.code], ['retry', 'DMTP_CERTIFICATE_REJECTED']);
      assert.match(r.detail, /no tls= value/);
      r = await tryWith(record(p.keys.destination.signingKey, [expired.der]), 'validated', old.endpoints.implicit!.port);
      assert.deepEqual([r.outcome, r.code], ['retry', 'DMTP_CERTIFICATE_REJECTED']);
      assert.match(r.detail, /expired/);
      r = await tryWith(record(p.keys.destination.signingKey, []), 'unsigned', wrong.endpoints.implicit!.port);
      assert.match(r.detail, /self-signed certificate needs a tls= pin/);
      r = await tryWith(recordOrg, 'unsigned', relayOrg.endpoints.implicit!.port);
      assert.equal(r.code, 'DMTP_CERTIFICATE_REJECTED', 'a pin without DNSSEC still needs the CA path');
      assert.match(r.detail, /chain does not verify/);
      r = await tryWith(recordOrg, 'bogus', relayOrg.endpoints.implicit!.port);
      assert.deepEqual([r.outcome, r.code], ['retry', 'DMTP_RECORD_BOGUS']);
    } finally {
      await Promise.all([wrong.close(500), old.close(500)]);
    }
  });

  it('accepts a CA-issued certificate for the right host name without pin (DNSSEC or not), and not for another name', async () => {
    const { ca, leaf } = caIssued('ca-leaf', 'dx.example.org');
    const server = await DmtpServer.start({ hostname: 'dx.example.org', handler: stubHandler(), tls: leaf, listen: 'inet:127.0.0.1:0', log });
    try {
      const port = server.endpoints.implicit!.port;
      const noPin = record(p.keys.destination.signingKey, []);
      const client = (host: string, trust?: string) =>
        new DmtpClient({ crypto, ...(trust ? { ca: trust } : {}), locator: new StaticPeerLocator({ 'example.org': { record: noPin, dnssec: 'unsigned', candidates: [candidate(host, port)] } }), log });
      const conn = await client('dx.example.org', ca).connect('example.org');
      assert.equal(conn.via, 'ca');
      await conn.quit();
      await assert.rejects(client('mx.example.org', ca).connect('example.org'), (e: unknown) => isDimeError(e, 'DMTP_CERTIFICATE_REJECTED') && /does not name mx\.example\.org/.test(e.message));
      await assert.rejects(client('dx.example.org').connect('example.org'), (e: unknown) => isDimeError(e, 'DMTP_CERTIFICATE_REJECTED') && /trusted CA/.test(e.message), 'our test CA is not in the default roots');
    } finally {
      await server.close(500);
    }
  });

  it('checks the trust model and the candidate order as pure functions', () => {
    const cert = new X509Certificate(certOrg.cert);
    const base = { record: recordOrg, host: 'dx.example.org', cert, chainVerified: false };
    assert.deepEqual(checkDxCertificate(crypto, { ...base, dnssec: 'validated' }), { ok: true, via: 'pin' });
    assert.equal(checkDxCertificate(crypto, { ...base, dnssec: 'validated', now: new Date(Date.now() + 365 * 86_400_000) }).ok, false, 'expired later');
    assert.deepEqual(checkDxCertificate(crypto, { ...base, dnssec: 'unsigned', chainVerified: true }), { ok: true, via: 'pin+ca' });
    assert.deepEqual(
      peerCandidates('example.org', { dx: [] }, ['mx1.example.org.', 'mx2.example.org', 'mx3.example.org', 'mx4.example.org']).map((c) => `${c.host}:${c.port}/${c.mode}`),
      ['mx1.example.org:26/implicit', 'mx1.example.org:25/dual', 'mx1.example.org:587/dual', 'mx2.example.org:26/implicit', 'mx2.example.org:25/dual', 'mx2.example.org:587/dual', 'mx3.example.org:26/implicit', 'mx3.example.org:25/dual', 'mx3.example.org:587/dual', 'example.org:26/implicit'],
    );
    assert.deepEqual(peerCandidates('example.org', { dx: ['dx1.example.org', 'dx2.example.org'] }, ['mx.example.org']).map((c) => `${c.host}:${c.port}`), ['dx1.example.org:26', 'dx2.example.org:26']);
    const stuffer = new DotStuffer();
    const out = Buffer.concat([...stuffer.stuff(Buffer.from('.a\r\nb\r')), ...stuffer.stuff(Buffer.from('\n.c\r\n..')), stuffer.end()]).toString();
    assert.equal(out, '..a\r\nb\r\n..c\r\n...\r\n.\r\n');
  });

  it('fails on fingerprint mismatches: RCPT TO not our current signet, MAIL FROM naming no origin signet', async () => {
    const message = await sealFor(p.signets.destination, p.signets.recipient);
    const before = sink.messages.length;
    let r = await clientCom.deliver(message, { ...ENVELOPE, to: { domain: 'example.org', fingerprint: full(p.signets.origin) } });
    assert.deepEqual([r.outcome, r.reply?.code, r.reply?.lines[0]], ['fail', 554, 'SIGNET FINGERPRINT MISMATCH']);
    r = await clientCom.deliver(message, { ...ENVELOPE, from: { domain: 'example.com', fingerprint: full(p.signets.author) } });
    assert.deepEqual([r.outcome, r.reply?.code, r.reply?.lines[0]], ['fail', 554, 'SIGNET FINGERPRINT MISMATCH'], 'example.com has no org signet with that fingerprint');
    r = await clientCom.deliver(message, { ...ENVELOPE, to: { domain: 'example.net', fingerprint: full(p.signets.destination) } });
    assert.equal(r.outcome, 'fail', 'no record for example.net');
    assert.equal(r.code, 'DMTP_NO_RECORD');
    assert.equal(sink.messages.length, before);
  });

  it("fails a message whose Origin is not the MAIL FROM domain (another org's valid signet does not help)", async () => {
    // example.net: a real organisation with its own signet and DX, but the message is example.com's.
    const netSeed = crypto.randomBytes(32);
    const net = await createOrgSignet({ signer: crypto.ed25519Signer(netSeed), encryptionKey: crypto.secp256k1PublicKey(crypto.randomBytes(32)), domain: 'example.net' });
    const certNet = selfSigned('dx.example.net', 'dx.example.net');
    const dxNet = await DmtpServer.start({
      hostname: 'dx.example.net',
      handler: { ...stubHandler(), signet: async (name) => (name === 'example.net' ? { ok: true as const, value: net } : { ok: false as const, code: 'SIGNET_NOT_FOUND' as const }) },
      tls: certNet,
      listen: 'inet:127.0.0.1:0',
      log,
    });
    locatorForOrg.set('example.net', { record: record(netSeed, [certNet.der]), dnssec: 'validated', candidates: [candidate('dx.example.net', dxNet.endpoints.implicit!.port)] });
    try {
      const message = await sealFor(p.signets.destination, p.signets.recipient);
      const before = sink.messages.length;
      const r = await clientCom.deliver(message, { ...ENVELOPE, from: { domain: 'example.net', fingerprint: full(net) } });
      assert.deepEqual([r.outcome, r.reply?.code, r.reply?.lines[0]], ['fail', 554, 'MESSAGE ORIGIN DOES NOT MATCH MAIL FROM']);
      assert.equal(sink.messages.length, before);
    } finally {
      await dxNet.close(500);
    }
  });

  it('fails a tampered message and one for a recipient without a current signet; nothing reaches the MTA', async () => {
    const message = await sealFor(p.signets.destination, p.signets.recipient);
    const before = sink.messages.length;
    const tampered = Uint8Array.from(message);
    tampered[tampered.length - 100]! ^= 1; // inside the origin full signature chunk
    let r = await clientCom.deliver(tampered, ENVELOPE);
    assert.equal(r.outcome, 'fail');
    assert.equal(r.reply?.code, 554);
    r = await clientCom.deliver(Uint8Array.from(message.subarray(0, message.length - 10)), ENVELOPE);
    assert.deepEqual([r.outcome, r.reply?.lines[0]], ['fail', 'INVALID DMIME DATA RECEIVED']);
    const store = new FileSignetStore(path.join(dir, 'signets-org-2'), crypto);
    await store.put(p.signets.destination);
    const lonely = await startRelay({
      crypto,
      mta: parseMtaTarget(`inet:127.0.0.1:${sink.port}`),
      listen: 'inet:127.0.0.1:0',
      limits: LIMITS,
      log,
      domain: 'example.org',
      hostname: 'dx.example.org',
      store,
      keys: p.actorKeys('destination'),
      signets: new DmtpClient({ crypto, locator: locatorForOrg, log }),
      tls: certOrg,
    });
    try {
      const client = new DmtpClient({ crypto, locator: new StaticPeerLocator({ 'example.org': { record: recordOrg, dnssec: 'validated', candidates: [candidate('dx.example.org', lonely.endpoints.implicit!.port)] } }), log });
      r = await client.deliver(message, ENVELOPE);
      assert.deepEqual([r.outcome, r.reply?.code, r.reply?.lines[0]], ['fail', 550, 'RECIPIENT UNKNOWN']);
    } finally {
      await lonely.close(500);
    }
    assert.equal(sink.messages.length, before);
  });

  it('answers 4xx or 5xx, never 250, when the local MTA defers, refuses or is down; the sender retries or fails', async () => {
    const message = await sealFor(p.signets.destination, p.signets.recipient);
    const before = sink.messages.length;
    try {
      sinkMode('451');
      let r = await clientCom.deliver(message, ENVELOPE);
      assert.deepEqual([r.outcome, r.reply?.code, r.reply?.lines[0]], ['retry', 451, 'LOCAL MTA DEFERRED THE MESSAGE, TRY AGAIN LATER']);
      sinkMode('550');
      r = await clientCom.deliver(message, ENVELOPE);
      assert.deepEqual([r.outcome, r.reply?.code, r.reply?.lines[0]], ['fail', 554, 'LOCAL MTA REFUSED THE MESSAGE']);
    } finally {
      sinkMode('accept');
    }
    // No MTA at all: a port nobody listens on.
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const deadPort = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const orphan = await startRelay({
      crypto,
      mta: parseMtaTarget(`inet:127.0.0.1:${deadPort}`),
      listen: 'inet:127.0.0.1:0',
      limits: LIMITS,
      log,
      domain: 'example.org',
      hostname: 'dx.example.org',
      store: storeOrg,
      keys: p.actorKeys('destination'),
      signets: new DmtpClient({ crypto, locator: locatorForOrg, log }),
      tls: certOrg,
    });
    try {
      const client = new DmtpClient({ crypto, locator: new StaticPeerLocator({ 'example.org': { record: recordOrg, dnssec: 'validated', candidates: [candidate('dx.example.org', orphan.endpoints.implicit!.port)] } }), log });
      const r = await client.deliver(message, ENVELOPE);
      assert.deepEqual([r.outcome, r.reply?.code, r.reply?.lines[0]], ['retry', 451, 'LOCAL MTA UNAVAILABLE, TRY AGAIN LATER']);
    } finally {
      await orphan.close(500);
    }
    assert.equal(sink.messages.length, before);
  });

  it('retries when the receiving relay drops the connection in the middle of the data', async () => {
    // A scripted DX that accepts the envelope, then vanishes after part of the data.
    const server = tls.createServer({ cert: certOrg.cert, key: certOrg.key }, (socket) => {
      socket.on('error', () => undefined);
      socket.write('220 <dx.example.org> DMTPv1 scripted\r\n');
      let got = 0;
      let data = false;
      socket.on('data', (chunk: Buffer) => {
        if (data) {
          got += chunk.length;
          if (got > 1000) socket.destroy();
          return;
        }
        for (const line of chunk.toString('latin1').split('\r\n').filter(Boolean)) {
          if (line.startsWith('EHLO')) socket.write('250-SIZE 1000000\r\n250 OK\r\n');
          else if (line.startsWith('DATA')) {
            data = true;
            socket.write('354 CONTINUE [x]\r\n');
          } else socket.write('250 OK\r\n');
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const client = new DmtpClient({ crypto, locator: new StaticPeerLocator({ 'example.org': { record: recordOrg, dnssec: 'validated', candidates: [candidate('dx.example.org', port)] } }), log });
      const r = await client.deliver(crypto.randomBytes(200_000), ENVELOPE);
      assert.deepEqual([r.outcome, r.code], ['retry', 'DMTP_CONNECTION_LOST']);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('hands a message to a real Postfix (skipped without root or Postfix)', async (t) => {
    if (process.getuid?.() !== 0 || !fs.existsSync('/usr/sbin/postfix')) return t.skip('needs root and Postfix');
    const pf = await startPostfix({ users: ['bob@example.org'], main: { virtual_mailbox_domains: 'example.test, example.org' } });
    try {
      const relay = await startRelay({
        crypto,
        mta: parseMtaTarget(`inet:127.0.0.1:${pf.smtpPort}`),
        listen: 'inet:127.0.0.1:0',
        limits: LIMITS,
        log,
        domain: 'example.org',
        hostname: 'dx.example.org',
        store: storeOrg,
        keys: p.actorKeys('destination'),
        signets: new DmtpClient({ crypto, locator: locatorForOrg, log }),
        tls: certOrg,
      });
      try {
        const client = new DmtpClient({ crypto, locator: new StaticPeerLocator({ 'example.org': { record: recordOrg, dnssec: 'validated', candidates: [candidate('dx.example.org', relay.endpoints.implicit!.port)] } }), log });
        const message = await sealFor(p.signets.destination, p.signets.recipient);
        const r = await client.deliver(message, ENVELOPE);
        assert.equal(r.outcome, 'delivered', r.detail);
        const got = await pf.waitForDelivery('bob@example.org', 20_000);
        assert.match(got.content, /^X-DIME-Origin: example\.com$/m);
        const view = await openMessage(crypto, extractDimeMessage(got.content), { actor: 'recipient', keys: p.actorKeys('recipient'), signets: p.signets });
        assert.equal(utf8.decode(view.display![0]!), utf8.decode(CONTENT.display[0]!));
      } finally {
        await relay.close(500);
      }
    } finally {
      await pf.stop();
    }
  });
});

function stubHandler() {
  const no = async () => ({ ok: false as const, code: 'SIGNET_NOT_FOUND' as const });
  return { signet: no, history: no, verify: no, mailFrom: no, rcptTo: no, data: no };
}
