/**
 * Prometheus metrics of every service (docs/metrics.md), read back from the rendered text the way a
 * scraper sees /metrics, after driving the real code paths:
 *
 *  - the gateway through our milter server (MilterClient): outbound decisions, seals, refusals by
 *    reason, failure-policy applications; inbound pass, sealed, neutral and refusals;
 *  - the LMTP relay delivering over DMTP to a real destination relay over TLS: deliveries by
 *    outcome with their latency, and what the destination relay accepted and refused;
 *  - the keystores (file, and PKCS#11 when SoftHSM2 is installed): every operation timed;
 *  - the resolver cache: MX lookups count toward the hit ratio, events reach the registry;
 *  - no address, key, password or content ever appears in a label value;
 *  - `dime start`: GET /metrics lists every metric and shows the milter's counters move.
 *
 * The registry is process-wide, so every assertion compares before and after.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DEFAULT_RESOLVER, type KeystoreConfig } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { utf8 } from '../src/dime/bytes.js';
import { generateKeys } from '../src/dime/keys.js';
import { localActorKeys, sealMessage, signAsOrigin, type MessageContent } from '../src/dime/message/index.js';
import { certificateDer, signTlsPin, type DimeRecord } from '../src/dime/record.js';
import { createOrgSignet, createSigningRequest, fingerprint, fingerprints, identifierOf, signUserSignet, type Signet } from '../src/dime/signet/index.js';
import { DmtpClient, StaticPeerLocator, type SignetSource } from '../src/dmtp/client.js';
import { startLmtpRelay } from '../src/dmtp/outbound.js';
import { inboundWrapper, startRelay, type DmtpServer } from '../src/dmtp/server.js';
import { DotStuffer, parseMtaTarget, sendMail } from '../src/dmtp/smtp-client.js';
import type { LmtpServer } from '../src/dmtp/lmtp.js';
import { DimeError, isDimeError } from '../src/errors.js';
import { encodeBundleBytes, type BundlePart } from '../src/gateway/bundle.js';
import { createDimeHandler } from '../src/gateway/handler.js';
import { createInboundProcessor, INBOUND_ACTIONS, type InboundOptions } from '../src/gateway/inbound.js';
import { mimeToParts } from '../src/gateway/mime.js';
import { createOutboundProcessor, OUTBOUND_ACTIONS } from '../src/gateway/outbound.js';
import { createKeystore, openKeystore, type OrgKeystore } from '../src/keystore/keystore.js';
import { dataLayout } from '../src/keystore/layout.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { createSoftHsmToken, softHsmAvailable } from '../src/keystore/softhsm.js';
import { UserKeyStore } from '../src/keystore/users.js';
import { createLogger } from '../src/log.js';
import { metrics } from '../src/metrics.js';
import { reasonLabel } from '../src/service-metrics.js';
import { startMilterServer, type MilterServer } from '../src/milter/server.js';
import { ResolverCache, TieredStore } from '../src/resolver/cache.js';
import type { MxLookup } from '../src/resolver/dns.js';
import type { Resolution } from '../src/resolver/resolver.js';
// Loaded for its metrics (the resolution histogram), as `dime start` loads it.
import '../src/resolver/resolver.js';
import { DIME_BIN, initDomain, scratchDir, waitForOutput } from './helpers/cli.js';
import { vectorParties } from './helpers/dime-parties.js';
import { MilterClient } from './helpers/milter-client.js';
import { connectClient, startMailSink, type MailSink } from './helpers/postfix.js';

const crypto = defaultCrypto();
const log = createLogger({ level: 'silent' });

// ------------------------------------------------------------------------------------ reading the exposition

type Labels = Record<string, string>;
interface Sample {
  name: string;
  labels: Labels;
  value: number;
}

/** Every sample line of a text exposition; a line that is neither a comment nor a sample fails. */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# ')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Labels = {};
    const body = m[2] ?? '';
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/gy;
    let l: RegExpExecArray | null;
    let at = 0;
    while (at < body.length && (l = re.exec(body))) {
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      at = re.lastIndex;
    }
    assert.equal(at, body.length, `malformed labels: ${line}`);
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

const sameLabels = (a: Labels, b: Labels) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

/** The value of one series in `text` (0 when absent: a counter never incremented). */
function valueIn(text: string, name: string, labels: Labels = {}): number {
  return parse(text).find((s) => s.name === name && sameLabels(s.labels, labels))?.value ?? 0;
}

/** The current value of one series, as /metrics shows it. */
const value = (name: string, labels: Labels = {}) => valueIn(metrics.render(), name, labels);

/** Values of several series now, and the change since then. */
function snapshot(series: Array<[string, Labels?]>) {
  const before = series.map(([n, l]) => value(n, l));
  return () => series.map(([n, l], i) => value(n, l) - before[i]!);
}

const typeOf = (text: string, name: string) => new RegExp(`^# TYPE ${name} (\\w+)$`, 'm').exec(text)?.[1];

const NEW_METRICS: Record<string, string> = {
  dime_messages_sealed_total: 'counter',
  dime_messages_opened_total: 'counter',
  dime_messages_rejected_total: 'counter',
  dime_milter_failures_total: 'counter',
  dime_outbound_decisions_total: 'counter',
  dime_dmtp_deliveries_total: 'counter',
  dime_dmtp_delivery_seconds: 'histogram',
  dime_dmtp_inbound_total: 'counter',
  dime_dmtp_inbound_seconds: 'histogram',
  dime_hsm_operation_seconds: 'histogram',
  dime_resolver_events_total: 'counter',
  dime_resolver_resolution_seconds: 'histogram',
};

// ------------------------------------------------------------------------------------ parties

async function farDomain(name: string, users: string[]) {
  const orgKeys = generateKeys('org', crypto);
  const orgSigner = crypto.ed25519Signer(orgKeys.signingKey);
  const org = await createOrgSignet({ signer: orgSigner, encryptionKey: crypto.secp256k1PublicKey(orgKeys.encryptionKey), domain: name });
  const people = new Map<string, { keys: ReturnType<typeof generateKeys>; signet: Signet }>();
  for (const u of users) {
    const keys = generateKeys('user', crypto);
    const ssr = await createSigningRequest({ signer: crypto.ed25519Signer(keys.signingKey), encryptionKey: crypto.secp256k1PublicKey(keys.encryptionKey) });
    people.set(`${u}@${name}`, { keys, signet: await signUserSignet(crypto, ssr, { orgSigner, address: `${u}@${name}` }) });
  }
  return { name, orgKeys, orgSigner, org, people };
}

function resolution(status: Resolution['status'], extra: Partial<Resolution> = {}): Resolution {
  return { name: '', domain: '', status, plaintextAllowed: status === 'no-record', steps: {}, path: [], stale: false, warnings: [], timings: { totalMs: 0 }, ...extra };
}

const SUBJECT = 'Merger talks with Initech';
const BODY_SECRET = 'the code word is tangerine';
const PASSWORD = 'correct horse battery staple';

const MESSAGE = (to: string) =>
  [`From: Alice <alice@a.test>`, `To: <${to}>`, `Subject: ${SUBJECT}`, 'Date: Sun, 22 Nov 2026 10:00:00 +0000', 'Message-ID: <m1@a.test>', '', `Hello, ${BODY_SECRET}.`, ''].join('\r\n');

/** Headers as Postfix hands them to a milter that negotiated HDR_LEADSPC, and the body. */
function split(raw: string): { headers: Array<[string, string]>; body: string } {
  const cut = raw.indexOf('\r\n\r\n');
  const block = raw.slice(0, cut + 2);
  const headers: Array<[string, string]> = [];
  for (const m of block.matchAll(/^([^:\r\n]+):((?:.*\r\n)(?:[ \t].*\r\n)*)/gm)) headers.push([m[1]!, m[2]!.slice(0, -2).replace(/\r\n/g, '\n')]);
  return { headers, body: raw.slice(cut + 4) };
}

/** One message through a milter server; `auth` makes it a submission (outbound). */
async function drive(port: number, from: string, rcpts: string[], raw: string, auth?: string) {
  const client = await MilterClient.connect({ port });
  try {
    await client.negotiate();
    if (auth !== undefined) client.macro('C', { '{auth_authen}': auth });
    await client.connectEvent();
    const { headers, body } = split(raw);
    return (await client.sendMessage({ from: `<${from}>`, rcpts: rcpts.map((x) => `<${x}>`), headers, body })).eom!;
  } finally {
    client.destroy();
  }
}

const portOfMilter = (s: MilterServer) => {
  const spec = s.address!.spec;
  assert.ok(spec.kind === 'inet');
  return spec.port;
};

// ------------------------------------------------------------------------------------ catalog

describe('the registry as /metrics renders it', () => {
  it('lists every service metric with its type, and every line is a well-formed sample or comment', () => {
    const text = metrics.render();
    for (const [name, type] of Object.entries(NEW_METRICS)) {
      assert.equal(typeOf(text, name), type, name);
      assert.match(text, new RegExp(`^# HELP ${name} \\S`, 'm'), `${name} has help text`);
    }
    parse(text); // throws on a malformed line
    // Closed label sets start at zero, so rate() sees their first event.
    for (const decision of ['dark', 'legacy', 'local', 'refused']) assert.ok(parse(text).some((s) => s.name === 'dime_outbound_decisions_total' && s.labels.decision === decision), decision);
    for (const outcome of ['delivered', 'retry', 'fail']) assert.ok(parse(text).some((s) => s.name === 'dime_dmtp_deliveries_total' && s.labels.outcome === outcome), outcome);
  });

  it('a reason label is an error code or a refusal kind; anything else becomes "other"', () => {
    assert.equal(reasonLabel('GATEWAY_BAD_WRAPPER'), 'GATEWAY_BAD_WRAPPER');
    assert.equal(reasonLabel('no-signet'), 'no-signet');
    assert.equal(reasonLabel(undefined), 'unknown');
    for (const junk of ['bob@b.test', 'the DIME part is not base64', 'toString', '__proto__', 'gateway_bad_wrapper', '']) assert.equal(reasonLabel(junk), 'other', junk);
  });
});

// ------------------------------------------------------------------------------------ gateway

describe('gateway metrics through the milter server', () => {
  let dir: string;
  let sink: MailSink;
  let server: MilterServer;
  let neutralServer: MilterServer;
  let keystore: OrgKeystore;
  let signets: FileSignetStore;
  let aOrg: Signet;
  let b: Awaited<ReturnType<typeof farDomain>>;
  const answers = new Map<string, () => Resolution>();

  before(async () => {
    dir = scratchDir('dime-metrics-gw-');
    keystore = await createKeystore({ type: 'file', file: path.join(dir, 'org.keys') }, { crypto, logger: log });
    signets = new FileSignetStore(dataLayout(dir).signets, crypto);
    aOrg = await createOrgSignet({ signer: keystore.pok, encryptionKey: keystore.encryptionPublicKey, domain: 'a.test' });
    await signets.put(aOrg);
    const users = new UserKeyStore({ dataDir: dir, domain: 'a.test', keystore, signets, crypto, logger: log });
    await users.add('alice@a.test', { password: PASSWORD });
    const carolKeys = generateKeys('user', crypto);
    const request = await createSigningRequest({ signer: crypto.ed25519Signer(carolKeys.signingKey), encryptionKey: crypto.secp256k1PublicKey(carolKeys.encryptionKey) });
    await users.add('carol@a.test', { mode: 'cautious', request, encryptedKey: crypto.randomBytes(118) });
    b = await farDomain('b.test', ['bob', 'bea']);
    for (const [address, p] of b.people) {
      answers.set(address, () =>
        resolution('ok', { domain: 'b.test', address, policy: 'experimental', org: { signet: b.org, state: 'full', fingerprints: { full: fingerprint(crypto, b.org, 'full')! } }, user: { signet: p.signet, state: 'full', fingerprints: {} } }),
      );
    }
    answers.set('legacy@plain.test', () => resolution('no-record', { domain: 'plain.test' }));
    answers.set('nobody@b.test', () => resolution('no-signet', { domain: 'b.test', policy: 'experimental' }));
    answers.set('pat@strict-partner.test', () => resolution('no-record', { domain: 'strict-partner.test' }));
    answers.set('slow@servfail.test', () => resolution('unknown', { domain: 'servfail.test', error: { code: 'DNS_SERVFAIL', message: 'SERVFAIL from 127.0.0.1' } }));
    sink = await startMailSink();
    const target = parseMtaTarget(`inet:127.0.0.1:${sink.port}`);
    // b.test's signets as the resolver would serve them to the inbound side, by fingerprint.
    const known = [b.org, ...[...b.people.values()].map((p) => p.signet)];
    const source: SignetSource = {
      async org(name, fp) {
        return find(name, fp);
      },
      async user(name, fp) {
        return find(name, fp);
      },
    };
    function find(name: string, fp: string | undefined): Signet {
      const s = known.find((k) => identifierOf(k)?.toLowerCase() === name.toLowerCase() && (fp === undefined || Object.values(fingerprints(crypto, k)).includes(fp)));
      if (!s) throw new DimeError('SIGNET_NOT_FOUND', name);
      return s;
    }
    const inbound = (o: Partial<InboundOptions> = {}) => createInboundProcessor({ domain: 'a.test', hostname: 'mx.a.test', crypto, users, store: signets, signets: source, orgKeys: keystore.actorKeys, log, ...o });
    const outbound = createOutboundProcessor({
      domain: 'a.test',
      hostname: 'mx.a.test',
      crypto,
      keystore,
      store: signets,
      users,
      resolve: async (address) => {
        const a = answers.get(address);
        if (!a) throw new DimeError('RESOLVE_BAD_NAME', `no scripted answer for ${address}`);
        return a();
      },
      reinject: (r) => sendMail({ target, helo: 'mx.a.test', from: r.sender, to: r.recipients, body: r.body, signal: r.signal }),
      requireDime: { destinations: ['strict-partner.test'] },
      log,
    });
    server = await startMilterServer({
      listen: 'inet:127.0.0.1:0',
      logger: log,
      handler: createDimeHandler({ outbound: { process: outbound, actions: OUTBOUND_ACTIONS }, inbound: { process: inbound(), actions: INBOUND_ACTIONS } }),
    });
    // Without the organisation's key a sealed account's mail cannot be verified here: dime=neutral.
    neutralServer = await startMilterServer({ listen: 'inet:127.0.0.1:0', logger: log, handler: createDimeHandler({ inbound: { process: inbound({ orgKeys: undefined }), actions: INBOUND_ACTIONS } }) });
  });

  after(async () => {
    await server?.close(0);
    await neutralServer?.close(0);
    await sink?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('outbound: one decision per recipient, one seal per dark recipient, the organisation key timed', async () => {
    const hsm = { keystore: 'file' };
    const delta = snapshot([
      ['dime_outbound_decisions_total', { decision: 'dark' }],
      ['dime_outbound_decisions_total', { decision: 'legacy' }],
      ['dime_outbound_decisions_total', { decision: 'local' }],
      ['dime_messages_sealed_total'],
      ['dime_hsm_operation_seconds_count', { ...hsm, op: 'sign' }],
      ['dime_hsm_operation_seconds_count', { ...hsm, op: 'ecdh' }],
      ['dime_hsm_operation_seconds_count', { ...hsm, op: 'unwrap' }],
    ]);
    const eom = await drive(portOfMilter(server), 'alice@a.test', ['bob@b.test', 'bea@b.test', 'legacy@plain.test', 'someone@a.test'], MESSAGE('bob@b.test'), 'alice');
    assert.equal(eom.final.type, 'continue');
    const [dark, legacy, local, sealed, sign, ecdh, unwrap] = delta();
    assert.deepEqual([dark, legacy, local, sealed], [2, 1, 1, 2]);
    // Origin signatures for each sealed message (POK), the origin chunk opened (ECDH), alice's key unsealed (unwrap).
    assert.ok(sign! >= 2, `sign ${sign}`);
    assert.ok(ecdh! >= 2, `ecdh ${ecdh}`);
    assert.equal(unwrap, 1);
    // The histogram's buckets are cumulative and end at the count.
    const text = metrics.render();
    const buckets = parse(text).filter((s) => s.name === 'dime_hsm_operation_seconds_bucket' && s.labels.op === 'sign' && s.labels.keystore === 'file');
    assert.equal(buckets.at(-1)!.labels.le, '+Inf');
    assert.equal(buckets.at(-1)!.value, valueIn(text, 'dime_hsm_operation_seconds_count', { ...hsm, op: 'sign' }));
    for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]!.value >= buckets[i - 1]!.value);
    assert.ok(valueIn(text, 'dime_hsm_operation_seconds_sum', { ...hsm, op: 'sign' }) > 0);
  });

  it('outbound refusals count by reason, not by text; a failure counts by class and policy action', async () => {
    const port = portOfMilter(server);
    const rejected = (reason: string) => ['dime_messages_rejected_total', { direction: 'outbound', reason }] as [string, Labels];
    const delta = snapshot([
      rejected('no-signet'),
      rejected('dime-required'),
      rejected('GATEWAY_SENDER_CANNOT_SEAL'),
      ['dime_outbound_decisions_total', { decision: 'refused' }],
      ['dime_milter_failures_total', { class: 'dns', action: 'tempfail' }],
      ['dime_messages_sealed_total'],
    ]);
    assert.equal((await drive(port, 'alice@a.test', ['nobody@b.test'], MESSAGE('nobody@b.test'), 'alice')).final.type, 'replycode');
    // An ordinary account (no DIME keys) to a destination our policy requires to be reached dark.
    assert.equal((await drive(port, 'frank@a.test', ['pat@strict-partner.test'], MESSAGE('pat@strict-partner.test'), 'frank')).final.type, 'replycode');
    assert.equal((await drive(port, 'alice@a.test', ['bob@b.test'], MESSAGE('bob@b.test'), 'mallory')).final.type, 'replycode');
    assert.equal((await drive(port, 'alice@a.test', ['slow@servfail.test'], MESSAGE('slow@servfail.test'), 'alice')).final.type, 'tempfail');
    assert.deepEqual(delta(), [1, 1, 1, 2, 1, 0]);
  });

  /** A DMIME object from bea@b.test to `to`, origin-signed by b.test, as the relay hands it over. */
  async function inboundWrapperFor(to: string, raw: string): Promise<string> {
    const bea = b.people.get('bea@b.test')!;
    const recipient = (await signets.user(to))!;
    const parts = mimeToParts(Buffer.from(raw, 'latin1'));
    const sealed = await sealMessage(
      crypto,
      {
        author: { address: 'bea@b.test', signet: bea.signet, signer: crypto.ed25519Signer(bea.keys.signingKey) },
        origin: { domain: 'b.test', signet: b.org },
        destination: { domain: 'a.test', signet: aOrg },
        recipient: { address: to, signet: recipient },
      },
      { commonHeaders: parts.common, otherHeaders: parts.otherHeaders, display: parts.display, attachments: parts.attachments },
    );
    const object = (
      await signAsOrigin(crypto, sealed, { keys: localActorKeys(crypto, b.orgKeys.encryptionKey), signer: b.orgSigner, signets: { author: bea.signet, origin: b.org, destination: aOrg, recipient }, bounce: { meta: true } })
    ).message;
    const envelope = { recipient: to, recipientSignet: fingerprint(crypto, recipient, 'crypto')!, origin: 'b.test', originSignet: fingerprint(crypto, b.org, 'crypto')! };
    return Buffer.concat([...inboundWrapper({ message: object, envelope, domain: 'a.test', hostname: 'relay.a.test', id: 'tx1', ehlo: 'b.test', peerAddress: '192.0.2.7', date: new Date() })]).toString('latin1');
  }

  it('inbound: pass, sealed and neutral by result; an unreadable DIME part is refused by its error code', async () => {
    const delta = snapshot([
      ['dime_messages_opened_total', { result: 'pass' }],
      ['dime_messages_opened_total', { result: 'sealed' }],
      ['dime_messages_opened_total', { result: 'neutral' }],
      ['dime_messages_rejected_total', { direction: 'inbound', reason: 'GATEWAY_BAD_WRAPPER' }],
      ['dime_hsm_operation_seconds_count', { keystore: 'file', op: 'ecdh' }],
    ]);
    const raw = (to: string) => MESSAGE(to).replace('alice@a.test', 'bea@b.test');
    const port = portOfMilter(server);
    const pass = await drive(port, '', ['alice@a.test'], await inboundWrapperFor('alice@a.test', raw('alice@a.test')));
    assert.ok(pass.modifications.some((m) => m.type === 'replaceBody'), 'opened for the trustful recipient');
    await drive(port, '', ['carol@a.test'], await inboundWrapperFor('carol@a.test', raw('carol@a.test')));
    await drive(portOfMilter(neutralServer), '', ['carol@a.test'], await inboundWrapperFor('carol@a.test', raw('carol@a.test')));
    const bad = ['From: <bea@b.test>', 'To: <alice@a.test>', 'Content-Type: application/x-dime-message', 'Content-Transfer-Encoding: base64', '', '!!! not base64 !!!', ''].join('\r\n');
    assert.equal((await drive(port, '', ['alice@a.test'], bad)).final.type, 'replycode');
    const [pass1, sealed, neutral, badWrapper, ecdh] = delta();
    assert.deepEqual([pass1, sealed, neutral, badWrapper], [1, 1, 1, 1]);
    // The cautious recipient's message is verified as the destination, with the organisation's key.
    assert.ok(ecdh! >= 1);
  });

  it('no address, domain, subject, body, password or key ever appears on /metrics', async () => {
    const text = metrics.render();
    const pok = Buffer.from(keystore.pok.publicKey);
    for (const secret of ['@', 'a.test', 'b.test', 'plain.test', 'alice', 'bob', SUBJECT, BODY_SECRET, PASSWORD, pok.toString('hex'), pok.toString('base64').slice(0, 20), Buffer.from(keystore.encryptionPublicKey).toString('hex')]) {
      assert.ok(!text.includes(secret), `${secret} on /metrics`);
    }
    // Label values are tokens from closed sets or error codes (le is a number).
    for (const s of parse(text)) for (const [k, v] of Object.entries(s.labels)) if (k !== 'le') assert.match(v, /^[A-Za-z0-9_-]+$/, `${s.name}{${k}="${v}"}`);
  });
});

// ------------------------------------------------------------------------------------ LMTP → DMTP → relay

describe('DMTP metrics: the LMTP leg delivering to a real destination relay over TLS', () => {
  const dir = scratchDir('dime-metrics-dmtp-');
  const p = vectorParties(crypto);
  const te = (s: string) => utf8.encode(s);
  const full = (s: Signet) => fingerprint(crypto, s, 'full')!;
  let sink: MailSink;
  let relay: DmtpServer;
  let lmtp: LmtpServer;
  let carol: { signet: Signet };

  function selfSigned(host: string): { cert: string; key: string; der: Uint8Array } {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${host}.key`, '-out', `${host}.pem`, '-days', '30', '-subj', `/CN=${host}`, '-addext', `subjectAltName=DNS:${host}`], { cwd: dir, stdio: 'pipe' });
    const cert = fs.readFileSync(path.join(dir, `${host}.pem`), 'latin1');
    return { cert, key: fs.readFileSync(path.join(dir, `${host}.key`), 'latin1'), der: certificateDer(cert) };
  }
  const record = (orgSeed: Uint8Array, pins: Uint8Array[]): DimeRecord => ({ version: 1, poks: [crypto.ed25519PublicKey(orgSeed)], tls: pins.map((der) => signTlsPin(orgSeed, der, crypto)), policy: 'experimental', subdomain: 'strict', dx: [] });
  const content = (to: string): MessageContent => ({
    commonHeaders: { Date: te('Sun, 22 Nov 2026 10:00:00 +0000'), To: te(`<${to}>`), From: te('Alice <alice@example.com>'), Subject: te(SUBJECT) },
    otherHeaders: te('Message-ID: <m2@example.com>\r\n'),
    display: [te(`${BODY_SECRET}\r\n`)],
  });
  async function sealed(recipient: { address: string; signet: Signet }): Promise<Uint8Array> {
    const destination = { domain: 'example.org', signet: p.signets.destination };
    const m = await sealMessage(crypto, { ...p.seal, destination, recipient }, content(recipient.address));
    const signets = { author: p.signets.author, origin: p.signets.origin, destination: destination.signet, recipient: recipient.signet };
    return (await signAsOrigin(crypto, m, { keys: p.actorKeys('origin'), signer: crypto.ed25519Signer(p.keys.origin.signingKey), signets, bounce: { meta: true } })).message;
  }
  const part = (recipient: string, destination: string, destinationSignet: Signet, message: Uint8Array): BundlePart => ({
    recipient,
    origin: { domain: 'example.com', fingerprint: full(p.signets.origin) },
    destination: { domain: destination, fingerprint: full(destinationSignet) },
    message,
  });

  before(async () => {
    const certOrg = selfSigned('dx.example.org');
    const store = new FileSignetStore(path.join(dir, 'signets'), crypto);
    await store.put(p.signets.destination);
    await store.put(p.signets.recipient); // bob; carol is not published at the destination
    const keys = generateKeys('user', crypto);
    const ssr = await createSigningRequest({ signer: crypto.ed25519Signer(keys.signingKey), encryptionKey: crypto.secp256k1PublicKey(keys.encryptionKey) });
    carol = { signet: await signUserSignet(crypto, ssr, { orgSigner: crypto.ed25519Signer(p.keys.destination.signingKey), address: 'carol@example.org' }) };
    sink = await startMailSink();
    const origins: SignetSource = {
      async org(domain, fp) {
        if (domain === 'example.com' && (fp === undefined || Object.values(fingerprints(crypto, p.signets.origin)).includes(fp))) return p.signets.origin;
        throw new DimeError('SIGNET_NOT_FOUND', domain);
      },
      async user(address) {
        throw new DimeError('SIGNET_NOT_FOUND', address);
      },
    };
    relay = await startRelay({
      crypto,
      mta: parseMtaTarget(`inet:127.0.0.1:${sink.port}`),
      listen: 'inet:127.0.0.1:0',
      limits: { violationDelayMs: 0, idleMs: 10_000 },
      log,
      domain: 'example.org',
      hostname: 'dx.example.org',
      store,
      keys: p.actorKeys('destination'),
      signets: origins,
      tls: certOrg,
    });
    // example.net's DX: a port nobody listens on.
    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const closedPort = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const locator = new StaticPeerLocator();
    locator.set('example.org', { record: record(p.keys.destination.signingKey, [certOrg.der]), dnssec: 'validated', candidates: [{ host: 'dx.example.org', address: '127.0.0.1', port: relay.endpoints.implicit!.port, mode: 'implicit' }] });
    locator.set('example.net', { record: record(p.keys.destination.signingKey, [certOrg.der]), dnssec: 'validated', candidates: [{ host: 'dx.example.net', address: '127.0.0.1', port: closedPort, mode: 'implicit' }] });
    lmtp = await startLmtpRelay({
      listen: 'inet:127.0.0.1:0',
      hostname: 'mx.example.com',
      client: new DmtpClient({ crypto, locator, log, timeouts: { connectMs: 5_000, commandMs: 10_000 } }),
      originDomain: 'example.com',
      limits: { idleMs: 10_000, dataIdleMs: 10_000, deliveryMs: 20_000 },
      log,
    });
  });

  after(async () => {
    await Promise.all([lmtp?.close(500), relay?.close(500), sink?.close()]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function transact(rcpts: string[], data: Buffer | string): Promise<string[]> {
    const finals = (buf: Buffer) => buf.toString('latin1').split('\r\n').filter((l) => /^[2-5][0-9]{2}( |$)/.test(l));
    const c = await connectClient((lmtp.endpoint as { port: number }).port);
    try {
      c.write(`LHLO mx.example.com\r\nMAIL FROM:<alice@example.com>\r\n${rcpts.map((r) => `RCPT TO:<${r}>\r\n`).join('')}DATA\r\n`);
      const n = 4 + rcpts.length;
      await c.waitFor((b) => finals(b).length >= n, 5_000);
      const stuffer = new DotStuffer();
      for (const piece of stuffer.stuff(typeof data === 'string' ? Buffer.from(data) : data)) c.write(piece);
      c.write(stuffer.end());
      await c.waitFor((b) => finals(b).length >= n + rcpts.length, 30_000);
      return finals(c.received).slice(n);
    } finally {
      c.destroy();
    }
  }

  it('counts each recipient by its answer to Postfix, times each DMTP attempt, and the destination relay counts what it accepted and refused', async () => {
    const delta = snapshot([
      ['dime_dmtp_deliveries_total', { outcome: 'delivered' }],
      ['dime_dmtp_deliveries_total', { outcome: 'retry' }],
      ['dime_dmtp_deliveries_total', { outcome: 'fail' }],
      ['dime_dmtp_delivery_seconds_count', { outcome: 'delivered' }],
      ['dime_dmtp_delivery_seconds_count', { outcome: 'retry' }],
      ['dime_dmtp_delivery_seconds_count', { outcome: 'fail' }],
      ['dime_dmtp_inbound_total', { outcome: 'accepted' }],
      ['dime_dmtp_inbound_total', { outcome: 'refused', reason: 'DMTP_RECIPIENT_UNKNOWN' }],
      ['dime_dmtp_inbound_seconds_count', { outcome: 'accepted' }],
      ['dime_dmtp_inbound_seconds_count', { outcome: 'refused' }],
    ]);
    const bundle = encodeBundleBytes({ sender: 'alice@example.com', hostname: 'mx.example.com' }, [
      part('bob@example.org', 'example.org', p.signets.destination, await sealed({ address: 'bob@example.org', signet: p.signets.recipient })),
      part('carol@example.org', 'example.org', p.signets.destination, await sealed({ address: 'carol@example.org', signet: carol.signet })),
      part('dave@example.net', 'example.net', p.signets.destination, await sealed({ address: 'bob@example.org', signet: p.signets.recipient })),
    ]);
    const replies = await transact(['bob@example.org', 'carol@example.org', 'dave@example.net', 'erin@example.org'], bundle);
    assert.deepEqual(
      replies.map((r) => r.slice(0, 3)),
      ['250', '550', '451', '554'],
      replies.join('\n'),
    );
    // erin has no part: a local 5xx, counted as fail but never timed as a DMTP attempt.
    assert.deepEqual(delta(), [1, 1, 2, 1, 1, 1, 1, 1, 1, 1]);
    const text = metrics.render();
    assert.ok(valueIn(text, 'dime_dmtp_delivery_seconds_sum', { outcome: 'delivered' }) > 0);
    assert.equal(valueIn(text, 'dime_dmtp_delivery_seconds_bucket', { outcome: 'delivered', le: '+Inf' }), valueIn(text, 'dime_dmtp_delivery_seconds_count', { outcome: 'delivered' }));
  });

  it('a message that is not a bundle fails every recipient, and nothing is timed', async () => {
    const delta = snapshot([
      ['dime_dmtp_deliveries_total', { outcome: 'fail' }],
      ['dime_dmtp_delivery_seconds_count', { outcome: 'fail' }],
    ]);
    const replies = await transact(['bob@example.org', 'carol@example.org'], `Subject: ${SUBJECT}\r\n\r\n${BODY_SECRET}\r\n`);
    assert.deepEqual(replies.map((r) => r.slice(0, 3)), ['554', '554']);
    assert.deepEqual(delta(), [2, 0]);
    assert.ok(!metrics.render().includes('example.org'));
  });
});

// ------------------------------------------------------------------------------------ keystores

/** Every private operation of a keystore once, and a failing unwrap: each timed with its op and kind. */
async function exercise(ks: OrgKeystore, kind: 'file' | 'pkcs11') {
  const series = (op: string) => ['dime_hsm_operation_seconds_count', { op, keystore: kind }] as [string, Labels];
  const delta = snapshot([series('sign'), series('ecdh'), series('wrap'), series('unwrap')]);
  const sig = await ks.pok.sign(utf8.encode('hello'));
  assert.ok(crypto.ed25519Verify(ks.pok.publicKey, utf8.encode('hello'), sig), 'the metered signer still signs with the POK');
  await ks.signerFor(0).sign(utf8.encode('again'));
  await ks.actorKeys.ecdh(crypto.secp256k1PublicKey(generateKeys('user', crypto).encryptionKey));
  const blob = await ks.wrap(utf8.encode('user key'), 'alice@a.test#1');
  assert.equal(utf8.decode(await ks.unwrap(blob, 'alice@a.test#1')), 'user key');
  await assert.rejects(ks.unwrap(blob, 'mallory@a.test#1'), (e: unknown) => isDimeError(e, 'SEALED_KEY_CORRUPT'));
  assert.deepEqual(delta(), [2, 1, 1, 2], 'a failed operation is timed too');
  assert.equal(ks.pok, ks.poks.at(-1), 'one wrapper per signer');
  const rotated = await ks.rotatePok();
  assert.equal(rotated, ks.pok);
  const after = snapshot([series('sign')]);
  await ks.signer('pok/1').sign(utf8.encode('old generation'));
  await rotated.sign(utf8.encode('new generation'));
  assert.deepEqual(after(), [2]);
}

describe('keystore metrics', () => {
  it('file keystore: sign, ecdh, wrap and unwrap are timed with keystore="file"', async () => {
    const dir = scratchDir('dime-metrics-ks-');
    const config: KeystoreConfig = { type: 'file', file: path.join(dir, 'org.keys') } as KeystoreConfig;
    await (await createKeystore(config, { crypto, logger: log })).close();
    const ks = await openKeystore(config, { crypto, logger: log });
    try {
      assert.equal(ks.kind, 'file');
      await exercise(ks, 'file');
    } finally {
      await ks.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('PKCS#11 keystore (SoftHSM2): the same operations with keystore="pkcs11"', { skip: softHsmAvailable() ? false : 'SoftHSM2 is not installed' }, async () => {
    const token = createSoftHsmToken({ label: 'dime-metrics' });
    token.useIn();
    const config = { type: 'pkcs11', file: '/nonexistent', module: token.module, token: token.label, pinFile: token.pinFile, label: 'metrics' } as KeystoreConfig;
    const ks = await createKeystore(config, { crypto, logger: log });
    try {
      assert.equal(ks.kind, 'pkcs11');
      await exercise(ks, 'pkcs11');
    } finally {
      await ks.close();
      token.remove();
    }
  });
});

// ------------------------------------------------------------------------------------ resolver cache

describe('resolver cache metrics', () => {
  it('MX lookups count toward the cache hit ratio, and the events reach /metrics', async () => {
    const store = new TieredStore({ lruEntries: 100, prefix: 'test:', log });
    const cache = new ResolverCache({ timings: DEFAULT_RESOLVER, store, log });
    let calls = 0;
    const lookup = async (): Promise<MxLookup> => (calls++, { kind: 'mx', hosts: [{ exchange: 'mx.example.net', priority: 10 }], nullMx: false, dnssec: 'validated', ttl: 300 });
    const events = (e: string) => ['dime_resolver_events_total', { event: e }] as [string, Labels];
    const delta = snapshot([events('mx_lookups'), events('memory_hits'), events('dns_lookups')]);
    for (let i = 0; i < 3; i++) assert.equal((await cache.mx('example.net', lookup)).kind, 'mx');
    assert.equal(calls, 1);
    assert.deepEqual([cache.metrics.get('mx_lookups'), cache.metrics.get('memory_hits'), cache.metrics.get('dns_lookups')], [3, 2, 1]);
    // hit ratio = (memory_hits + redis_fresh_hits) / (record_lookups + org_lookups + user_lookups + mx_lookups)
    const hits = cache.metrics.get('memory_hits') + cache.metrics.get('redis_fresh_hits');
    const lookups = ['record', 'org', 'user', 'mx'].reduce((n, k) => n + cache.metrics.get(`${k}_lookups`), 0);
    assert.equal(hits / lookups, 2 / 3);
    // The registry gets the events in batches, once a second.
    await new Promise((r) => setTimeout(r, 1_200));
    assert.deepEqual(delta(), [3, 2, 1]);
    await cache.close();
  });
});

// ------------------------------------------------------------------------------------ dime start

describe('GET /metrics on `dime start`', () => {
  it('lists every service metric, and the gateway counters move with the mail the milter sees', async () => {
    const { file, ports: p } = await initDomain('a.test', 'dime-metrics-start-');
    const ports = [p.milter, p.policy, p.socketmap, p.relay, p.lmtp, p.metrics];
    const child = spawn(process.execPath, [DIME_BIN, 'start', '--config', file, '--metrics', `inet:127.0.0.1:${ports[5]}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const scrape = async () => {
      const res = await fetch(`http://127.0.0.1:${ports[5]}/metrics`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
      return res.text();
    };
    try {
      await waitForOutput(child, () => stderr, /dime started/, 20_000);
      const first = await scrape();
      for (const [name, type] of Object.entries(NEW_METRICS)) assert.equal(typeOf(first, name), type, `${name} on /metrics`);
      // An ordinary account of our domain writing to our domain: a local decision. A DIME part that
      // does not decode, arriving inbound: refused with its code.
      assert.equal((await drive(ports[0]!, 'frank@a.test', ['grace@a.test'], MESSAGE('grace@a.test'), 'frank')).final.type, 'continue');
      const bad = ['From: <x@b.test>', 'To: <grace@a.test>', 'Content-Type: application/x-dime-message', 'Content-Transfer-Encoding: base64', '', '%%%', ''].join('\r\n');
      assert.equal((await drive(ports[0]!, 'x@b.test', ['grace@a.test'], bad)).final.type, 'replycode');
      const second = await scrape();
      assert.equal(valueIn(second, 'dime_outbound_decisions_total', { decision: 'local' }) - valueIn(first, 'dime_outbound_decisions_total', { decision: 'local' }), 1);
      assert.equal(valueIn(second, 'dime_messages_rejected_total', { direction: 'inbound', reason: 'GATEWAY_BAD_WRAPPER' }) - valueIn(first, 'dime_messages_rejected_total', { direction: 'inbound', reason: 'GATEWAY_BAD_WRAPPER' }), 1);
      assert.ok(!second.includes('a.test') && !second.includes('@'), 'no address or domain on /metrics');
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await new Promise<number | null>((r) => child.once('exit', (c) => r(c))), 0, stderr);
  });
});
