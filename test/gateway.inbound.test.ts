/**
 * The inbound gateway (src/gateway/inbound.ts) with real parties: a.test (origin, alice the author)
 * made in memory, and our dark domain example.test on a real file keystore, signet store and user
 * store in a scratch directory (bob and erin trustful, carol cautious, dave paranoid; frank has a
 * mailbox but no DIME account). Messages are sealed by alice, signed by a.test and wrapped as the
 * relay hands them over (inboundWrapper).
 *
 *  - direct calls: what the processor decides for each kind of message, and fuzzing: random bodies,
 *    mutated objects and wrappers never crash (only DimeErrors are thrown) and never pass anything
 *    but the authentic original;
 *  - through our milter server, driven by the Postfix-like MilterClient: the modifications on the
 *    wire rebuild the original exactly;
 *  - through a real Postfix (smtpd_milters → our server): every corpus message arrives in the
 *    trustful recipient's Maildir as the original, byte for byte apart from Postfix's trace headers
 *    and our Authentication-Results line; sealed accounts get the wrapper plus the header; forged
 *    mail is refused with 550 5.7.0 or held; a retryable signet failure is a 451 and nothing is
 *    delivered or queued.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { defaultCrypto } from '../src/crypto/index.js';
import { generateKeys, type DimeKeys } from '../src/dime/keys.js';
import { CHUNK, decodeMessage, localActorKeys, sealMessage, signAsOrigin } from '../src/dime/message/index.js';
import { createOrgSignet, createSigningRequest, fingerprints, identifierOf, signUserSignet, fingerprint, type Signet } from '../src/dime/signet/index.js';
import type { SignetSource } from '../src/dmtp/client.js';
import { extractDimeMessage, inboundWrapper } from '../src/dmtp/server.js';
import { sendMail } from '../src/dmtp/smtp-client.js';
import { DimeError, isDimeError } from '../src/errors.js';
import { createInboundProcessor, findDimeObject, INBOUND_ACTIONS, INBOUND_HEADER_LEADING_SPACE, POSTFIX_DROPPED_HEADERS, splitOriginal, type InboundOptions } from '../src/gateway/inbound.js';
import { mimeToParts } from '../src/gateway/mime.js';
import { createKeystore, type OrgKeystore } from '../src/keystore/keystore.js';
import { dataLayout } from '../src/keystore/layout.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { UserKeyStore } from '../src/keystore/users.js';
import { createLogger } from '../src/log.js';
import { applyHeaderModifications, type EomResult, type Header, type MilterContext, type MilterHandler, type MilterMessage, type Modification } from '../src/milter/handler.js';
import type { MilterResponse } from '../src/milter/codec.js';
import { postfixMilterSpec, startMilterServer, type MilterServer } from '../src/milter/server.js';
import { scratchDir } from './helpers/cli.js';
import { MilterClient } from './helpers/milter-client.js';
import { RIG_DOMAIN, startPostfix, waitFor, type Postfix } from './helpers/postfix.js';

const crypto = defaultCrypto();
const quiet = createLogger({ level: 'silent' });
const DOMAIN = RIG_DOMAIN; // example.test: the rig's mailboxes are our users'
const HOST = 'mx.example.test';
const ORIGIN = 'a.test';
const AUTHOR = `alice@${ORIGIN}`;
const CORPUS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test/fixtures/mail');
const corpus = (name: string): Buffer => fs.readFileSync(path.join(CORPUS, name));
const CORPUS_FILES = fs.readdirSync(CORPUS).filter((f) => f.endsWith('.eml')).sort();
const PASS = `Authentication-Results: ${HOST}; dime=pass header.from=${AUTHOR} (origin=${ORIGIN}, author and origin signatures verified)`;

// ------------------------------------------------------------------------------------ parties

interface Org {
  domain: string;
  keys: DimeKeys;
  signer: ReturnType<typeof crypto.ed25519Signer>;
  signet: Signet;
}

async function makeOrg(domain: string): Promise<Org> {
  const keys = generateKeys('org', crypto);
  const signer = crypto.ed25519Signer(keys.signingKey);
  const signet = await createOrgSignet({ signer, encryptionKey: crypto.secp256k1PublicKey(keys.encryptionKey), domain });
  return { domain, keys, signer, signet };
}

async function makeUser(org: Org, address: string) {
  const keys = generateKeys('user', crypto);
  const signer = crypto.ed25519Signer(keys.signingKey);
  const ssr = await createSigningRequest({ signer, encryptionKey: crypto.secp256k1PublicKey(keys.encryptionKey) });
  return { address, keys, signer, signet: await signUserSignet(crypto, ssr, { orgSigner: org.signer, address }) };
}

type SourceMode = 'ok' | 'retryable' | 'not-found' | 'throws-plain';

/** The other domains' signets, as the resolver would serve them (by any fingerprint), or failing on demand. */
class FakeSource implements SignetSource {
  mode: SourceMode = 'ok';
  calls = 0;
  constructor(private readonly known: Signet[]) {}

  private find(name: string, fp: string | undefined): Signet {
    this.calls++;
    if (this.mode === 'retryable') throw new DimeError('DMTP_CONNECT_FAILED', `${name}: no DX answered`);
    if (this.mode === 'throws-plain') throw new Error('socket hang up');
    const s = this.mode === 'ok' ? this.known.find((k) => identifierOf(k)?.toLowerCase() === name.toLowerCase() && (fp === undefined || Object.values(fingerprints(crypto, k)).includes(fp))) : undefined;
    if (!s) throw new DimeError('SIGNET_NOT_FOUND', name);
    return s;
  }
  async org(domain: string, fp?: string) {
    return this.find(domain, fp);
  }
  async user(address: string, fp?: string) {
    return this.find(address, fp);
  }
}

interface World {
  origin: Org;
  author: Awaited<ReturnType<typeof makeUser>>;
  /** a.test's name with other keys: a signet a.test never published. */
  impostor: Org;
  /** a.test's encryption key (say, stolen) with another signing key: can sign as origin, not with a.test's POK. */
  forger: Org;
  keystore: OrgKeystore;
  store: FileSignetStore;
  users: UserKeyStore;
  org: Signet;
  source: FakeSource;
}

let world: World;

async function makeWorld(): Promise<World> {
  const dir = scratchDir('dime-inbound-');
  const origin = await makeOrg(ORIGIN);
  const author = await makeUser(origin, AUTHOR);
  const impostor = await makeOrg(ORIGIN);
  const forgerKeys = generateKeys('org', crypto);
  const forgerSigner = crypto.ed25519Signer(forgerKeys.signingKey);
  const forger: Org = {
    domain: ORIGIN,
    keys: { ...forgerKeys, encryptionKey: origin.keys.encryptionKey },
    signer: forgerSigner,
    signet: await createOrgSignet({ signer: forgerSigner, encryptionKey: crypto.secp256k1PublicKey(origin.keys.encryptionKey), domain: ORIGIN }),
  };
  const keystore = await createKeystore({ type: 'file', file: path.join(dir, 'org.keys') }, { crypto, logger: quiet });
  const store = new FileSignetStore(dataLayout(dir).signets, crypto);
  const org = await createOrgSignet({ signer: keystore.pok, encryptionKey: keystore.encryptionPublicKey, domain: DOMAIN });
  await store.put(org);
  const users = new UserKeyStore({ dataDir: dir, domain: DOMAIN, keystore, signets: store, crypto, logger: quiet });
  for (const u of ['bob', 'erin']) await users.add(`${u}@${DOMAIN}`);
  for (const [u, mode] of [['carol', 'cautious'], ['dave', 'paranoid']] as const) {
    const keys = generateKeys('user', crypto);
    const request = await createSigningRequest({ signer: crypto.ed25519Signer(keys.signingKey), encryptionKey: crypto.secp256k1PublicKey(keys.encryptionKey) });
    await users.add(`${u}@${DOMAIN}`, { mode, request, ...(mode === 'cautious' ? { encryptedKey: crypto.randomBytes(118) } : {}) });
  }
  return { origin, author, impostor, forger, keystore, store, users, org, source: new FakeSource([origin.signet, author.signet]) };
}

interface SealOptions {
  /** The organisation the author seals for as origin (the envelope names its signet). */
  sealOrigin?: Org;
  /** The organisation that signs as origin. */
  signOrigin?: Org;
}

/** A DMIME object from alice to `to`, as a.test's gateway would make it. */
async function seal(raw: Uint8Array, to: string, o: SealOptions = {}): Promise<Uint8Array> {
  const sealOrigin = o.sealOrigin ?? world.origin;
  const signOrigin = o.signOrigin ?? sealOrigin;
  const recipient = (await world.store.user(to))!;
  const parts = mimeToParts(raw);
  const sealed = await sealMessage(
    crypto,
    {
      author: { address: AUTHOR, signet: world.author.signet, signer: world.author.signer },
      origin: { domain: ORIGIN, signet: sealOrigin.signet },
      destination: { domain: DOMAIN, signet: world.org },
      recipient: { address: to, signet: recipient },
    },
    { commonHeaders: parts.common, otherHeaders: parts.otherHeaders, display: parts.display, attachments: parts.attachments },
  );
  const signets = { author: world.author.signet, origin: signOrigin.signet, destination: world.org, recipient };
  return (await signAsOrigin(crypto, sealed, { keys: localActorKeys(crypto, signOrigin.keys.encryptionKey), signer: signOrigin.signer, signets, bounce: { meta: true } })).message;
}

let txCounter = 0;
/** The relay's hand-off of a DMIME object (docs/dmtp.md "MIME wrapper"). */
async function wrap(object: Uint8Array, to: string): Promise<Buffer> {
  const recipient = (await world.store.user(to)) ?? world.org;
  const envelope = { recipient: to, recipientSignet: fingerprint(crypto, recipient, 'crypto')!, origin: ORIGIN, originSignet: fingerprint(crypto, world.origin.signet, 'crypto')! };
  return Buffer.concat([...inboundWrapper({ message: object, envelope, domain: DOMAIN, hostname: 'relay.example.test', id: `tx${++txCounter}`, ehlo: ORIGIN, peerAddress: '192.0.2.7', date: new Date() })]);
}

/** Flip one byte in the middle of a chunk's encrypted payload. */
function tamper(object: Uint8Array, type: number): Uint8Array {
  const copy = new Uint8Array(object);
  const chunk = decodeMessage(object).chunks.find((c) => c.type === type)!;
  const at = chunk.payload.byteOffset - object.byteOffset + Math.floor(chunk.payload.length / 2);
  copy[at]! ^= 0x01;
  return copy;
}

function processor(o: Partial<InboundOptions> = {}) {
  return createInboundProcessor({ domain: DOMAIN, hostname: HOST, crypto, users: world.users, store: world.store, signets: world.source, orgKeys: world.keystore.actorKeys, log: quiet, ...o });
}

// ------------------------------------------------------------------------------------ direct calls

/** The message as a milter with HDR_LEADSPC sees it: header values with their leading space, folds as bare LF. */
function asMilter(raw: Uint8Array, rcpts: string[]): MilterMessage {
  const split = splitOriginal(raw);
  const headers: Header[] = split.fields.map((f) => {
    const valueBytes = Buffer.from(Buffer.from(f.value).toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
    return { name: f.name, value: new TextDecoder().decode(valueBytes), valueBytes };
  });
  const body = split.body;
  return {
    sender: { address: '', raw: '<>', args: [] },
    recipients: rcpts.map((address) => ({ address, raw: `<${address}>`, args: [], rejectedByMta: false })),
    headers,
    body: {
      size: body.length,
      spilled: false,
      bytes: async () => body,
      chunks: async function* () {
        yield body;
      },
    },
    queueId: 'TESTQ1',
  };
}

function context(signal = new AbortController().signal): MilterContext {
  return {
    id: 'test',
    negotiated: { version: 6, actions: 0x1ff, protocol: 0, macros: {} } as unknown as MilterContext['negotiated'],
    connection: undefined,
    helo: undefined,
    headerLeadingSpace: true,
    macro: () => undefined,
    macros: () => new Map(),
    signal,
    log: quiet,
  };
}

function decisionOf(r: EomResult): { verdict?: { kind: string; reply?: { code: string; xcode?: string; text: string | readonly string[] }; reason?: string }; modifications: Modification[] } {
  if (r === undefined) return { modifications: [] };
  if ('kind' in r) return { verdict: r as never, modifications: [] };
  return { ...(r.verdict ? { verdict: r.verdict as never } : {}), modifications: [...(r.modifications ?? [])] };
}

async function bodyBytes(m: Modification | undefined): Promise<Buffer> {
  assert.ok(m && m.kind === 'replaceBody');
  const b = m.body;
  if (b instanceof Uint8Array) return Buffer.from(b);
  const out: Uint8Array[] = [];
  for await (const x of b as AsyncIterable<Uint8Array>) out.push(x);
  return Buffer.concat(out);
}

/**
 * The message Postfix would store after these modifications: its hidden Received first (so insert
 * indexes count it, as Postfix's do), header values written as given (HDR_LEADSPC), then the body.
 */
async function rebuild(message: MilterMessage, mods: Modification[]): Promise<{ headers: { name: string; value: string }[]; text: Buffer }> {
  const start = [{ name: 'Received', value: ' (postfix)' }, ...message.headers.map((h) => ({ name: h.name, value: h.value }))];
  const headers = applyHeaderModifications(start, mods.filter((m) => m.kind !== 'replaceBody'));
  const replaced = mods.find((m) => m.kind === 'replaceBody');
  const body = replaced ? await bodyBytes(replaced) : Buffer.from(await message.body.bytes());
  const head = headers.map((h) => `${h.name}:${h.value.replace(/\r?\n/g, '\r\n')}\r\n`).join('');
  return { headers, text: Buffer.concat([Buffer.from(head, 'utf8'), Buffer.from('\r\n'), body]) };
}

/**
 * The original as the rebuilt message should read it: its fields less those Postfix drops from any
 * incoming message, a separator (Postfix inserts a missing one), its body.
 */
function expectedOriginal(raw: Uint8Array): Buffer {
  const s = splitOriginal(raw);
  s.fields = s.fields.filter((f) => !POSTFIX_DROPPED_HEADERS.has(f.name.toLowerCase()));
  const eol = (v: Uint8Array) => Buffer.from(Buffer.from(v).toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
  return Buffer.concat([...s.fields.map((f) => Buffer.concat([Buffer.from(`${f.name}:`, 'latin1'), eol(f.value), Buffer.from('\r\n')])), Buffer.from('\r\n'), Buffer.from(s.body)]);
}

describe('inbound DIME processing (direct calls)', () => {
  before(async () => {
    world = await makeWorld();
  });

  it('findDimeObject: the relay wrapper with CRLF and with LF, a bare application/x-dime-message message, and no DIME at all', async () => {
    const object = await seal(corpus('01-plain-ascii.eml'), `bob@${DOMAIN}`);
    const wrapper = await wrap(object, `bob@${DOMAIN}`);
    for (const variant of [wrapper, Buffer.from(wrapper.toString('latin1').replace(/\r\n/g, '\n'), 'latin1')]) {
      const m = asMilter(variant, [`bob@${DOMAIN}`]);
      assert.deepEqual(findDimeObject(m.headers, await m.body.bytes()), object);
    }
    const bare = Buffer.from(`Content-Type: Application/X-DIME-Message\r\nContent-Transfer-Encoding: BASE64\r\n\r\n${Buffer.from(object).toString('base64').replace(/(.{76})/g, '$1\r\n')}\r\n`, 'latin1');
    const mb = asMilter(bare, []);
    assert.deepEqual(findDimeObject(mb.headers, await mb.body.bytes()), object);
    for (const name of ['03-alternative.eml', '04-mixed-pdf-png.eml', '12-smime-signed.eml', '22-pgp-encrypted.eml', '21-malformed-header-no-colon.eml']) {
      const m = asMilter(corpus(name), []);
      assert.equal(findDimeObject(m.headers, await m.body.bytes()), undefined, name);
    }
    // Two DIME parts, or one that is not base64: a broken wrapper, never "not DIME".
    const part = `--B\r\nContent-Type: application/x-dime-message\r\nContent-Transfer-Encoding: base64\r\n\r\n${Buffer.from(object).toString('base64')}\r\n`;
    const twice = Buffer.from(`Content-Type: multipart/mixed; boundary="B"\r\n\r\n${part}${part}--B--\r\n`, 'latin1');
    assert.throws(() => findDimeObject(asMilter(twice, []).headers, splitOriginal(twice).body), (e) => isDimeError(e, 'GATEWAY_BAD_WRAPPER'));
    const qp = Buffer.from(wrapper.toString('latin1').replace('Content-Transfer-Encoding: base64', 'Content-Transfer-Encoding: quoted-printable'), 'latin1');
    assert.throws(() => findDimeObject(asMilter(qp, []).headers, splitOriginal(qp).body), (e) => isDimeError(e, 'GATEWAY_BAD_WRAPPER'));
  });

  it('trustful recipient: every corpus message comes back exactly, under the Authentication-Results header', async () => {
    const run = processor();
    for (const name of CORPUS_FILES) {
      const raw = corpus(name);
      const m = asMilter(await wrap(await seal(raw, `bob@${DOMAIN}`), `bob@${DOMAIN}`), [`bob@${DOMAIN}`]);
      const d = decisionOf(await run(context(), m));
      assert.equal(d.verdict, undefined, name);
      const out = await rebuild(m, d.modifications);
      assert.equal(out.headers[0]!.name, 'Received', name);
      assert.equal(`${out.headers[1]!.name}:${out.headers[1]!.value}`, PASS, name);
      const rest = out.text.subarray(out.text.indexOf('\r\n', out.text.indexOf('Authentication-Results:')) + 2);
      assert.ok(rest.equals(expectedOriginal(raw)), `${name}: the rebuilt message differs from the original`);
    }
  });

  it('a message sealed for an older key generation of the recipient still opens', async () => {
    await world.users.add(`gina@${DOMAIN}`);
    const raw = corpus('06-encoded-words.eml');
    const object = await seal(raw, `gina@${DOMAIN}`);
    await world.users.rotate(`gina@${DOMAIN}`);
    const m = asMilter(await wrap(object, `gina@${DOMAIN}`), [`gina@${DOMAIN}`]);
    const d = decisionOf(await processor()(context(), m));
    assert.equal(d.verdict, undefined);
    assert.ok((await rebuild(m, d.modifications)).text.subarray(-100).equals(expectedOriginal(raw).subarray(-100)));
  });

  it('cautious and paranoid recipients: left sealed, with dime=pass (origin verified) or dime=neutral without the organisation key', async () => {
    for (const who of ['carol', 'dave']) {
      const rcpt = `${who}@${DOMAIN}`;
      const m = asMilter(await wrap(await seal(corpus('02-utf8-8bit.eml'), rcpt), rcpt), [rcpt]);
      const d = decisionOf(await processor()(context(), m));
      assert.equal(d.verdict, undefined);
      assert.deepEqual(
        d.modifications.map((x) => x.kind),
        ['insertHeader'],
      );
      const ins = d.modifications[0] as Extract<Modification, { kind: 'insertHeader' }>;
      assert.equal(ins.index, 1);
      assert.equal(ins.value, ` ${HOST}; dime=pass (origin=${ORIGIN}, origin signature verified; sealed for the recipient, whose client verifies the author)`);
      const n = decisionOf(await processor({ orgKeys: undefined })(context(), m));
      assert.match((n.modifications[0] as { value: string }).value, /^ mx\.example\.test; dime=neutral \(/);
    }
  });

  it('a trustful key sealed only under the password (locked): delivered sealed, verified as the destination', async () => {
    await world.users.add(`hank@${DOMAIN}`, { password: 'correct horse battery staple', escrow: false });
    const rcpt = `hank@${DOMAIN}`;
    const m = asMilter(await wrap(await seal(corpus('01-plain-ascii.eml'), rcpt), rcpt), [rcpt]);
    const d = decisionOf(await processor()(context(), m));
    assert.deepEqual(
      d.modifications.map((x) => x.kind),
      ['insertHeader'],
    );
    assert.match((d.modifications[0] as { value: string }).value, /dime=pass \(origin=a\.test, origin signature verified; .*the recipient's key is locked\)$/);
  });

  it('forged and invalid messages: 550 5.7.0 with the reason, or quarantine with dime=fail', async () => {
    const bob = `bob@${DOMAIN}`;
    const raw = corpus('01-plain-ascii.eml');
    const good = await seal(raw, bob);
    const carol = `carol@${DOMAIN}`;
    const forCarol = await seal(raw, carol);
    const cases: Array<[string, Promise<Buffer>, string[], string]> = [
      ['author full signature flipped', wrap(tamper(good, CHUNK.authorFull), bob), [bob], 'GATEWAY_VERIFY_FAILED'],
      ['origin full signature flipped', wrap(tamper(good, CHUNK.originFull), bob), [bob], 'GATEWAY_VERIFY_FAILED'],
      ['display chunk flipped', wrap(tamper(good, CHUNK.display), bob), [bob], 'GATEWAY_VERIFY_FAILED'],
      ['signed by another a.test key', seal(raw, bob, { signOrigin: world.forger }).then((x) => wrap(x, bob)), [bob], 'GATEWAY_VERIFY_FAILED'],
      ['an origin signet a.test never published', seal(raw, bob, { sealOrigin: world.impostor }).then((x) => wrap(x, bob)), [bob], 'GATEWAY_UNKNOWN_SIGNET'],
      ['sealed for bob, sent to erin', wrap(good, bob), [`erin@${DOMAIN}`], 'GATEWAY_NOT_FOR_RECIPIENT'],
      ['sent to a mailbox without a DIME account', wrap(good, bob), [`frank@${DOMAIN}`], 'GATEWAY_NOT_LOCAL_RECIPIENT'],
      ['sent to another domain', wrap(good, bob), ['bob@elsewhere.test'], 'GATEWAY_NOT_LOCAL_RECIPIENT'],
      ['several envelope recipients', wrap(good, bob), [bob, `erin@${DOMAIN}`], 'GATEWAY_TOO_MANY_RECIPIENTS'],
      ['truncated object', wrap(good.subarray(0, good.length - 40), bob), [bob], 'GATEWAY_UNDECODABLE'],
      ['cautious recipient, origin full signature flipped', wrap(tamper(forCarol, CHUNK.originFull), carol), [carol], 'GATEWAY_VERIFY_FAILED'],
      ['cautious recipient, an origin signet a.test never published', seal(raw, carol, { sealOrigin: world.impostor }).then((x) => wrap(x, carol)), [carol], 'GATEWAY_UNKNOWN_SIGNET'],
      ["sealed for carol, sent to dave (both sealed accounts: the organisation's key reads the envelope)", wrap(forCarol, carol), [`dave@${DOMAIN}`], 'GATEWAY_RECIPIENT_MISMATCH'],
    ];
    for (const [what, wrapper, rcpts, code] of cases) {
      const m = asMilter(await wrapper, rcpts);
      const r = decisionOf(await processor()(context(), m));
      assert.equal(r.verdict?.kind, 'reply', what);
      const xcode = code === 'GATEWAY_TOO_MANY_RECIPIENTS' ? '5.5.3' : '5.7.0';
      assert.deepEqual([r.verdict!.reply!.code, r.verdict!.reply!.xcode], ['550', xcode], what);
      assert.match(String(r.verdict!.reply!.text), /^DIME message failed verification: /, what);
      assert.equal(r.modifications.length, 0, what);
      const q = decisionOf(await processor({ invalid: 'quarantine' })(context(), m));
      assert.equal(q.verdict?.kind, 'quarantine', what);
      assert.equal(q.verdict?.reason, `DIME message failed verification (${code})`, what);
      assert.ok(q.modifications.some((x) => x.kind === 'insertHeader' && x.value.startsWith(` ${HOST}; dime=fail (`)), what);
      assert.ok(!q.modifications.some((x) => x.kind === 'replaceBody'), what);
    }
  });

  it('a retryable signet failure, a plain exception from the source and the deadline are thrown (the failure policy tempfails), never a verdict', async () => {
    const bob = `bob@${DOMAIN}`;
    const m = asMilter(await wrap(await seal(corpus('01-plain-ascii.eml'), bob), bob), [bob]);
    try {
      world.source.mode = 'retryable';
      await assert.rejects(processor()(context(), m), (e) => isDimeError(e, 'DMTP_CONNECT_FAILED'));
      world.source.mode = 'throws-plain';
      await assert.rejects(processor()(context(), m), (e) => isDimeError(e, 'RESOLVE_FETCH_FAILED'));
    } finally {
      world.source.mode = 'ok';
    }
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(processor()(context(ac.signal), m), (e) => isDimeError(e, 'DEADLINE_EXCEEDED'));
  });

  it('legacy mail passes untouched; Authentication-Results claiming our host name are deleted from any message', async () => {
    const raw = corpus('03-alternative.eml');
    assert.deepEqual(await processor()(context(), asMilter(raw, [`bob@${DOMAIN}`])), { kind: 'continue' });
    const forged = Buffer.concat([Buffer.from(`Authentication-Results: ${HOST.toUpperCase()}; dime=pass header.from=ceo@${DOMAIN}\r\nAuthentication-Results: other.example; spf=pass\r\n`), raw]);
    const d = decisionOf(await processor()(context(), asMilter(forged, [`bob@${DOMAIN}`])));
    assert.deepEqual(d.modifications, [{ kind: 'deleteHeader', name: 'Authentication-Results', index: 1 }]);
    // Inside a sealed message too: the author cannot speak for our host.
    const inner = Buffer.concat([Buffer.from(`Authentication-Results: ${HOST}; dime=pass header.from=ceo@${DOMAIN}\r\n`), corpus('01-plain-ascii.eml')]);
    const m = asMilter(await wrap(await seal(inner, `bob@${DOMAIN}`), `bob@${DOMAIN}`), [`bob@${DOMAIN}`]);
    const out = await rebuild(m, decisionOf(await processor()(context(), m)).modifications);
    assert.equal(out.headers.filter((h) => h.name === 'Authentication-Results').length, 1);
  });

  it('an original whose header is not UTF-8 stays sealed (GATEWAY_UNREPRESENTABLE) rather than being altered', async () => {
    const raw = Buffer.concat([Buffer.from('Subject: caf'), Buffer.from([0xe9]), Buffer.from('\r\n'), corpus('01-plain-ascii.eml')]);
    const m = asMilter(await wrap(await seal(raw, `bob@${DOMAIN}`), `bob@${DOMAIN}`), [`bob@${DOMAIN}`]);
    const d = decisionOf(await processor()(context(), m));
    assert.deepEqual(
      d.modifications.map((x) => x.kind),
      ['insertHeader'],
    );
    assert.match((d.modifications[0] as { value: string }).value, /dime=pass \(origin=a\.test, author and origin signatures verified; left sealed: /);
  });

  describe('fuzzing', () => {
    const bob = `bob@${DOMAIN}`;
    let object: Uint8Array;
    let wrapper: Buffer;
    const raw = corpus('05-quoted-printable.eml');

    before(async () => {
      object = await seal(raw, bob);
      wrapper = await wrap(object, bob);
    });

    /** Whatever comes back: a DimeError thrown, a refusal, or a pass that carries exactly the original. */
    async function check(message: MilterMessage): Promise<string> {
      let r: EomResult;
      try {
        r = await processor()(context(), message);
      } catch (err) {
        assert.ok(err instanceof DimeError, `only DimeErrors are thrown, got ${String(err)}`);
        return 'thrown';
      }
      const d = decisionOf(r);
      if (d.verdict) {
        assert.ok(['reply', 'quarantine', 'continue'].includes(d.verdict.kind));
        return d.verdict.kind;
      }
      const passed = d.modifications.some((x) => (x.kind === 'insertHeader' || x.kind === 'addHeader') && /dime=pass/.test(x.value));
      if (d.modifications.some((x) => x.kind === 'replaceBody')) {
        assert.ok(passed);
        const out = await rebuild(message, d.modifications);
        const rest = out.text.subarray(out.text.indexOf('\r\n', out.text.indexOf('Authentication-Results:')) + 2);
        assert.ok(rest.equals(expectedOriginal(raw)), 'a pass delivers exactly the authentic original');
        return 'pass';
      }
      assert.ok(!passed, 'no pass without the opened original');
      return 'untouched';
    }

    it('random bodies under a DIME content type never crash and never pass', async () => {
      await fc.assert(
        fc.asyncProperty(fc.uint8Array({ maxLength: 3000 }), fc.boolean(), async (bytes, asBase64) => {
          const body = asBase64 ? Buffer.from(Buffer.from(bytes).toString('base64').replace(/(.{76})/g, '$1\r\n')) : Buffer.from(bytes);
          const m = asMilter(Buffer.concat([Buffer.from('Content-Type: application/x-dime-message\r\nContent-Transfer-Encoding: base64\r\n\r\n'), body]), [bob]);
          assert.notEqual(await check(m), 'pass');
        }),
        { numRuns: 150 },
      );
    });

    it('every kind of mutation of the DMIME object or the wrapper: a refusal, an error, or the authentic original', async () => {
      const outcomes = new Map<string, number>();
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(
            fc.record({ where: fc.constant('object' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
            fc.record({ where: fc.constant('wrapper' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
            fc.record({ where: fc.constant('cut' as const), at: fc.nat(), xor: fc.constant(0) }),
          ),
          async ({ where, at, xor }) => {
            let bytes: Buffer;
            if (where === 'object') {
              const o = new Uint8Array(object);
              o[at % o.length]! ^= xor;
              bytes = await wrap(o, bob);
            } else if (where === 'wrapper') {
              bytes = Buffer.from(wrapper);
              bytes[at % bytes.length]! ^= xor;
            } else {
              bytes = wrapper.subarray(0, at % wrapper.length);
            }
            const r = await check(asMilter(bytes, [bob]));
            outcomes.set(r, (outcomes.get(r) ?? 0) + 1);
          },
        ),
        { numRuns: 300 },
      );
      // The fuzzer reached refusals, not just one branch.
      assert.ok((outcomes.get('reply') ?? 0) > 50, JSON.stringify([...outcomes]));
    });
  });
});

// ------------------------------------------------------------------------------------ the milter on the wire

function responsesToModifications(rs: MilterResponse[]): Modification[] {
  return rs.map((r): Modification => {
    switch (r.type) {
      case 'addHeader':
        return { kind: 'addHeader', name: r.name, value: r.value };
      case 'insertHeader':
        return { kind: 'insertHeader', index: r.index, name: r.name, value: r.value };
      case 'changeHeader':
        return { kind: 'changeHeader', name: r.name, index: r.index, value: r.value };
      case 'replaceBody':
        return { kind: 'replaceBody', body: r.chunk };
      case 'quarantine':
        return { kind: 'quarantine', reason: r.reason };
      default:
        throw new Error(`unexpected response ${r.type}`);
    }
  });
}

function handlerFor(run: ReturnType<typeof processor>): MilterHandler {
  return { name: 'inbound-test', actions: INBOUND_ACTIONS, headerLeadingSpace: INBOUND_HEADER_LEADING_SPACE, eom: (ctx, m) => run(ctx, m) };
}

describe('inbound DIME processing through our milter server (MilterClient)', () => {
  let server: MilterServer;
  let quarantineServer: MilterServer;

  before(async () => {
    world ??= await makeWorld();
    server = await startMilterServer({ listen: 'inet:127.0.0.1:0', handler: handlerFor(processor()), logger: quiet });
    quarantineServer = await startMilterServer({ listen: 'inet:127.0.0.1:0', handler: handlerFor(processor({ invalid: 'quarantine' })), logger: quiet });
  });
  after(async () => {
    await server?.close();
    await quarantineServer?.close();
  });

  async function drive(srv: MilterServer, bytes: Buffer, rcpt: string) {
    const spec = srv.address!.spec;
    assert.ok(spec.kind === 'inet');
    const client = await MilterClient.connect({ port: spec.port });
    try {
      const neg = await client.negotiate();
      await client.connectEvent();
      const m = asMilter(bytes, [rcpt]);
      const r = await client.sendMessage({ from: '<>', rcpts: [`<${rcpt}>`], headers: m.headers.map((h) => [h.name, h.value]), body: await m.body.bytes() });
      return { neg, m, eom: r.eom! };
    } finally {
      client.quit();
      client.destroy();
    }
  }

  it('negotiates HDR_LEADSPC and the actions it needs; the modifications on the wire rebuild the original', async () => {
    for (const name of ['07-long-folded.eml', '09-duplicate-headers.eml', '14-bare-lf.eml', '21-malformed-header-no-colon.eml']) {
      const raw = corpus(name);
      const { neg, m, eom } = await drive(server, await wrap(await seal(raw, `bob@${DOMAIN}`), `bob@${DOMAIN}`), `bob@${DOMAIN}`);
      assert.ok((neg.protocol & 0x100000) !== 0, 'SMFIP_HDR_LEADSPC');
      assert.equal(neg.actions & 0x3f, 0x01 | 0x10 | 0x02 | 0x20, 'ADDHDRS CHGHDRS CHGBODY QUARANTINE');
      assert.equal(eom.final.type, 'continue', name);
      const out = await rebuild(m, responsesToModifications(eom.modifications));
      assert.equal(`${out.headers[1]!.name}:${out.headers[1]!.value}`, PASS, name);
      const rest = out.text.subarray(out.text.indexOf('\r\n', out.text.indexOf('Authentication-Results:')) + 2);
      assert.ok(rest.equals(expectedOriginal(raw)), name);
    }
  });

  it('a forged message: a 550 5.7.0 reply code, or q and dime=fail with the quarantine policy', async () => {
    const bob = `bob@${DOMAIN}`;
    const forged = await wrap(tamper(await seal(corpus('01-plain-ascii.eml'), bob), CHUNK.originFull), bob);
    const r = await drive(server, forged, bob);
    assert.equal(r.eom.final.type, 'replycode');
    assert.match((r.eom.final as { reply: string }).reply, /^550 5\.7\.0 DIME message failed verification: /);
    assert.equal(r.eom.modifications.length, 0);
    const q = await drive(quarantineServer, forged, bob);
    assert.equal(q.eom.final.type, 'continue');
    assert.deepEqual(
      q.eom.modifications.map((x) => x.type),
      ['insertHeader', 'quarantine'],
    );
  });
});

// ------------------------------------------------------------------------------------ a real Postfix

/** Postfix's trace headers on top of a delivered message: Return-Path, X-Original-To, Delivered-To, its Received. */
function stripTrace(content: string): { trace: string[]; rest: string } {
  const lines = content.split('\n');
  const trace: string[] = [];
  let i = 0;
  // Postfix's delivery headers, then its one Received; an original's own Return-Path or Received below stay.
  for (const name of ['Return-Path', 'X-Original-To', 'Delivered-To', 'Received']) {
    if (!lines[i]?.startsWith(`${name}: `)) continue;
    let field = lines[i++]!;
    while (i < lines.length && /^[ \t]/.test(lines[i]!)) field += `\n${lines[i++]!}`;
    trace.push(field);
  }
  return { trace, rest: lines.slice(i).join('\n') };
}

describe('inbound DIME mail through a real Postfix (smtpd_milters)', () => {
  let pf: Postfix;
  let server: MilterServer;
  let current: ReturnType<typeof processor>;

  before(async () => {
    world ??= await makeWorld();
    current = processor();
    server = await startMilterServer({ listen: 'inet:127.0.0.1:0', handler: handlerFor((ctx, m) => current(ctx, m)), logger: quiet });
    pf = await startPostfix({ users: ['bob', 'carol', 'dave', 'erin', 'frank'], main: { smtpd_milters: postfixMilterSpec(server.address!.spec), milter_default_action: 'tempfail' } });
  });
  after(async () => {
    await pf?.stop();
    await server?.close();
  });

  function send(bytes: Uint8Array, to: string[], from = '') {
    return sendMail({ target: { kind: 'inet', host: '127.0.0.1', port: pf.smtpPort }, helo: 'relay.example.test', from, to, body: [bytes] });
  }

  /** The original as a mailbox stores it: LF line ends, a final line end, a blank line after the header block. */
  function asStored(raw: Uint8Array): string {
    const text = expectedOriginal(raw).toString('utf8').replace(/\r\n/g, '\n');
    return text.endsWith('\n') ? text : `${text}\n`; // SMTP data ends with a line end: Postfix stores one
  }

  it('trustful recipient: each corpus message is delivered as the original, byte for byte, with dime=pass on top', async () => {
    const bob = `bob@${DOMAIN}`;
    const extra = [
      ['raw UTF-8 headers', Buffer.from('From: Jürgen <juergen@a.test>\r\nTo: bob@example.test\r\nSubject: Grüße aus Köln — ½ € ✓\r\nX-Tab:\tstarts with a tab\r\nX-Empty:\r\nX-Tight:no space\r\nX-Folded: one\r\n  two\r\n\tthree\r\n\r\nBody ü\r\n')],
      ['a long line', Buffer.concat([Buffer.from('From: alice@a.test\r\nTo: bob@example.test\r\nSubject: long\r\n\r\n'), Buffer.from('x'.repeat(5000)), Buffer.from('\r\nend\r\n')])],
    ] as const;
    const messages: Array<[string, Buffer]> = [...CORPUS_FILES.map((n): [string, Buffer] => [n, corpus(n)]), ...extra.map(([n, b]): [string, Buffer] => [n, b])];
    for (const [name, raw] of messages) {
      const r = await send(await wrap(await seal(raw, bob), bob), [bob]);
      assert.ok(r.accepted, `${name}: ${JSON.stringify(r)}`);
      const got = stripTrace((await pf.waitForDelivery('bob')).content);
      assert.deepEqual(
        got.trace.map((t) => t.split(':')[0]),
        ['Return-Path', 'X-Original-To', 'Delivered-To', 'Received'],
        name,
      );
      assert.match(got.trace[3]!, /by mail\.example\.test \(Postfix\)/, `${name}: Postfix's own Received stays; the relay's is gone`);
      const [ar, ...rest] = got.rest.split('\n');
      assert.equal(ar, PASS, name);
      assert.equal(rest.join('\n'), asStored(raw), `${name}: the delivered message differs from the original`);
    }
  });

  it('the original is what Postfix would have stored had it come directly (legacy path: untouched by the milter)', async () => {
    const dropped = Buffer.from('Return-Path: <x@a.test>\r\nContent-Length: 5\r\nBcc: hidden@a.test\r\nResent-Bcc: hidden2@a.test\r\nFrom: alice@a.test\r\nSubject: fields Postfix drops\r\nMessage-ID: <drop@a.test>\r\n\r\nhi\r\n');
    for (const [name, raw] of [...CORPUS_FILES.map((n): [string, Buffer] => [n, corpus(n)]), ['dropped fields', dropped] as [string, Buffer]]) {
      // An SMTP client sends CRLF line ends, whatever the file has.
      const direct = await send(Buffer.from(raw.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1'), [`frank@${DOMAIN}`], 'sender@example.test');
      assert.ok(direct.accepted, name);
      const plain = stripTrace((await pf.waitForDelivery('frank')).content).rest;
      const r = await send(await wrap(await seal(raw, `bob@${DOMAIN}`), `bob@${DOMAIN}`), [`bob@${DOMAIN}`]);
      assert.ok(r.accepted, name);
      const dark = stripTrace((await pf.waitForDelivery('bob')).content).rest.split('\n').slice(1).join('\n');
      // Postfix adds Message-Id and Date to a local client's message that lacks them: only on the direct path.
      const has = (field: string) => splitOriginal(raw).fields.some((f) => f.name.toLowerCase() === field);
      let expected = plain;
      if (!has('message-id')) expected = expected.replace(/^Message-Id: <[^>]+@mail\.example\.test>\n/m, '');
      if (!has('date')) expected = expected.replace(/^Date: .* \(UTC\)\n/m, '');
      // And the Resent- trio to a message with a Resent- field (here Resent-Bcc, which it then drops).
      expected = expected.replace(/^(Resent-Message-Id: <[^>]+@mail\.example\.test>|Resent-Date: .* \(UTC\)|Resent-From: sender@example\.test)\n/gm, '');
      assert.equal(dark, expected, name);
      assert.equal(dark, asStored(raw), name);
    }
  });

  it('cautious and paranoid recipients get the sealed wrapper and the header; the object inside is the one sent', async () => {
    for (const who of ['carol', 'dave']) {
      const rcpt = `${who}@${DOMAIN}`;
      const object = await seal(corpus('04-mixed-pdf-png.eml'), rcpt);
      const r = await send(await wrap(object, rcpt), [rcpt]);
      assert.ok(r.accepted, JSON.stringify(r));
      const got = stripTrace((await pf.waitForDelivery(who)).content);
      assert.equal(got.rest.split('\n')[0], `Authentication-Results: ${HOST}; dime=pass (origin=${ORIGIN}, origin signature verified; sealed for the recipient, whose client verifies the author)`);
      assert.match(got.rest, /^Received: from a\.test \(192\.0\.2\.7\) by relay\.example\.test \(dime relay\)/m);
      assert.deepEqual(extractDimeMessage(got.rest), object);
      assert.ok(!got.rest.includes('Subject:'), 'no plaintext');
    }
  });

  it('forged mail: 550 5.7.0 to the client and nothing delivered; with the quarantine policy, held with dime=fail', async () => {
    const bob = `bob@${DOMAIN}`;
    const before = pf.messages('bob').length;
    const forged = await wrap(await seal(corpus('01-plain-ascii.eml'), bob, { signOrigin: world.forger }), bob);
    const r = await send(forged, [bob]);
    assert.equal(r.accepted, false);
    assert.ok(!r.accepted && r.reply);
    assert.equal(r.reply!.code, 550);
    assert.match(r.reply!.lines.join(' '), /^5\.7\.0 DIME message failed verification: signatures: a message signature does not verify: origin meta bounce signature \(248\)$/);
    const tampered = await send(await wrap(tamper(await seal(corpus('02-utf8-8bit.eml'), bob), CHUNK.authorTree), bob), [bob]);
    assert.equal(!tampered.accepted && tampered.reply?.code, 550);

    current = processor({ invalid: 'quarantine' });
    try {
      const q = await send(forged, [bob]);
      assert.ok(q.accepted, JSON.stringify(q));
      const held = await waitFor(() => pf.queue().find((e) => e.queueName === 'hold'), 10_000, 'a held message');
      assert.deepEqual(
        held.recipients.map((x) => x.address),
        [bob],
      );
      const text = spawnSync('/usr/sbin/postcat', ['-c', pf.configDir, '-bh', '-q', held.queueId], { encoding: 'utf8' }).stdout;
      assert.match(text, new RegExp(`Authentication-Results: ${HOST.replace(/\./g, '\\.')}; dime=fail \\(`));
      spawnSync('/usr/sbin/postsuper', ['-c', pf.configDir, '-d', held.queueId, 'hold']);
    } finally {
      current = processor();
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(pf.messages('bob').length, before, 'nothing forged was delivered');
  });

  it('several recipients: 550 5.5.3, nothing delivered to anyone', async () => {
    const bob = `bob@${DOMAIN}`;
    const r = await send(await wrap(await seal(corpus('01-plain-ascii.eml'), bob), bob), [bob, `erin@${DOMAIN}`]);
    assert.ok(!r.accepted && r.reply);
    assert.equal(`${r.reply.code} ${r.reply.lines[0]!.split(' ')[0]}`, '550 5.5.3');
  });

  it('a retryable signet failure: 451 to the client, nothing delivered, nothing queued; the retry then delivers', async () => {
    const bob = `bob@${DOMAIN}`;
    const before = pf.messages('bob').length;
    const wrapper = await wrap(await seal(corpus('03-alternative.eml'), bob), bob);
    world.source.mode = 'retryable';
    try {
      const r = await send(wrapper, [bob]);
      assert.ok(!r.accepted && r.temporary, JSON.stringify(r));
      assert.equal(r.reply?.code, 451);
    } finally {
      world.source.mode = 'ok';
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(pf.messages('bob').length, before);
    assert.deepEqual(pf.queue(), []);
    const again = await send(wrapper, [bob]);
    assert.ok(again.accepted);
    assert.equal(stripTrace((await pf.waitForDelivery('bob')).content).rest.split('\n')[0], PASS);
  });
});
