/**
 * The outbound processor through the real milter server, with a real user store over a file
 * keystore (a.test), destination parties made in memory (b.test, c.test), a scripted resolver, and a
 * real SMTP sink as the bundle service. Every bundle that reaches the sink is decoded and opened as
 * the destination and as the recipient: the original message must come back byte for byte.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { defaultCrypto } from '../src/crypto/index.js';
import { generateKeys } from '../src/dime/keys.js';
import { localActorKeys, openMessage, sealMessage } from '../src/dime/message/index.js';
import { utf8 } from '../src/dime/bytes.js';
import { createOrgSignet, createSigningRequest, fingerprint, signUserSignet, type Signet } from '../src/dime/signet/index.js';
import { DimeError } from '../src/errors.js';
import { decodeBundle, encodeBundleBytes, isBundle, partFor } from '../src/gateway/bundle.js';
import { createDimeHandler } from '../src/gateway/handler.js';
import { mimeToParts, partsToMime } from '../src/gateway/mime.js';
import { createOutboundProcessor, OUTBOUND_ACTIONS, type OutboundOptions } from '../src/gateway/outbound.js';
import { createKeystore } from '../src/keystore/keystore.js';
import { dataLayout } from '../src/keystore/layout.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { UserKeyStore } from '../src/keystore/users.js';
import { createLogger } from '../src/log.js';
import { startMilterServer, type MilterServer } from '../src/milter/server.js';
import { parseMtaTarget, sendMail } from '../src/dmtp/smtp-client.js';
import type { Resolution } from '../src/resolver/resolver.js';
import { scratchDir } from './helpers/cli.js';
import { MilterClient } from './helpers/milter-client.js';
import { startMailSink, type MailSink } from './helpers/postfix.js';

const crypto = defaultCrypto();
const log = createLogger({ level: 'silent' });

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
  return { name, orgKeys, org, people };
}

function resolution(status: Resolution['status'], extra: Partial<Resolution> = {}): Resolution {
  return { name: '', domain: '', status, plaintextAllowed: status === 'no-record', steps: {}, path: [], stale: false, warnings: [], timings: { totalMs: 0 }, ...extra };
}

const MESSAGE = [
  'From: Alice <alice@a.test>',
  'To: Bob <bob@b.test>, legacy@plain.test',
  'Subject: The quarterly numbers',
  'Date: Sun, 22 Nov 2026 10:00:00 +0000',
  'Message-ID: <q4@a.test>',
  'X-Folded: first line',
  '\tsecond line',
  '',
  'Bob, the numbers are in. Keep them to yourself.',
  '',
].join('\r\n');

/** Headers as Postfix hands them to a milter that negotiated HDR_LEADSPC, and the body. */
function split(raw: string): { headers: Array<[string, string]>; body: string } {
  const cut = raw.indexOf('\r\n\r\n');
  const block = raw.slice(0, cut + 2);
  const headers: Array<[string, string]> = [];
  for (const m of block.matchAll(/^([^:\r\n]+):((?:.*\r\n)(?:[ \t].*\r\n)*)/gm)) headers.push([m[1]!, m[2]!.slice(0, -2).replace(/\r\n/g, '\n')]);
  return { headers, body: raw.slice(cut + 4) };
}

describe('outbound: sealing on the submission path', () => {
  let dir: string;
  let sink: MailSink;
  let server: MilterServer;
  let port: number;
  let b: Awaited<ReturnType<typeof farDomain>>;
  let c: Awaited<ReturnType<typeof farDomain>>;
  const answers = new Map<string, () => Resolution | Promise<Resolution>>();
  let options: OutboundOptions;
  let carolKeys: ReturnType<typeof generateKeys>;

  before(async () => {
    dir = scratchDir('dime-outbound-');
    const keystore = await createKeystore({ type: 'file', file: path.join(dir, 'org.keys') }, { crypto, logger: log });
    const signets = new FileSignetStore(dataLayout(dir).signets, crypto);
    await signets.put(await createOrgSignet({ signer: keystore.pok, encryptionKey: keystore.encryptionPublicKey, domain: 'a.test' }));
    const users = new UserKeyStore({ dataDir: dir, domain: 'a.test', keystore, signets, crypto, logger: log });
    await users.add('alice@a.test');
    // A trustful key sealed only under its owner's password: the server cannot open it on its own.
    await users.add('pia@a.test', { escrow: false, password: 'pia has a long password' });
    carolKeys = generateKeys('user', crypto);
    await users.add('carol@a.test', { mode: 'cautious', request: await createSigningRequest({ signer: crypto.ed25519Signer(carolKeys.signingKey), encryptionKey: crypto.secp256k1PublicKey(carolKeys.encryptionKey) }), encryptedKey: new Uint8Array([1, 2, 3]) });
    b = await farDomain('b.test', ['bob', 'bea']);
    c = await farDomain('c.test', ['cid']);
    for (const d of [b, c]) {
      for (const [address, p] of d.people) {
        answers.set(address, () =>
          resolution('ok', {
            domain: d.name,
            address,
            policy: 'experimental',
            org: { signet: d.org, state: 'full', fingerprints: { full: fingerprint(crypto, d.org, 'full')! } },
            user: { signet: p.signet, state: 'full', fingerprints: {} },
          }),
        );
      }
    }
    answers.set('legacy@plain.test', () => resolution('no-record', { domain: 'plain.test' }));
    answers.set('nobody@b.test', () => resolution('no-signet', { domain: 'b.test', policy: 'experimental' }));
    answers.set('slow@servfail.test', () => resolution('unknown', { domain: 'servfail.test', error: { code: 'DNS_SERVFAIL', message: 'SERVFAIL from 127.0.0.1' } }));
    answers.set('x@bogus.test', () => resolution('refused', { domain: 'bogus.test', dnssec: 'bogus', error: { code: 'DNS_BOGUS', message: 'bogus' } }));
    sink = await startMailSink();
    const target = parseMtaTarget(`inet:127.0.0.1:${sink.port}`);
    options = {
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
    };
    answers.set('pat@strict-partner.test', () => resolution('no-record', { domain: 'strict-partner.test' }));
    server = await startMilterServer({
      listen: 'inet:127.0.0.1:0',
      logger: log,
      handler: createDimeHandler({ outbound: { process: createOutboundProcessor(options), actions: OUTBOUND_ACTIONS } }),
    });
    const spec = server.address!.spec;
    port = spec.kind === 'inet' ? spec.port : 0;
  });

  after(async () => {
    await server?.close(0);
    await sink?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function submit(from: string, rcpts: string[], raw = MESSAGE, authenticated = true) {
    const client = await MilterClient.connect({ port });
    try {
      await client.negotiate();
      if (authenticated) client.macro('C', { '{auth_authen}': from.split('@')[0]! });
      await client.connectEvent();
      const { headers, body } = split(raw);
      const r = await client.sendMessage({ from: `<${from}>`, rcpts: rcpts.map((x) => `<${x}>`), headers, body });
      return r.eom!;
    } finally {
      client.destroy();
    }
  }

  async function openAs(part: ReturnType<typeof decodeBundle>[number], d: Awaited<ReturnType<typeof farDomain>>) {
    const people = d.people.get(part.recipient)!;
    const users = await (options.store as FileSignetStore);
    const author = (await users.user('alice@a.test'))!;
    const origin = (await users.org('a.test'))!;
    const signets = { author, origin, destination: d.org, recipient: people.signet };
    const dest = await openMessage(crypto, part.message, { actor: 'destination', keys: localActorKeys(crypto, d.orgKeys.encryptionKey), signets });
    const view = await openMessage(crypto, part.message, { actor: 'recipient', keys: localActorKeys(crypto, people.keys.encryptionKey), signets });
    return { dest, mime: Buffer.from(partsToMime({ common: view.common!, otherHeaders: view.otherHeaders!, display: view.display!, attachments: view.attachments! })).toString('latin1') };
  }

  it('every recipient dark: one bundle queued, the original discarded; each part opens to the original, byte for byte', async () => {
    const before = sink.messages.length;
    const eom = await submit('alice@a.test', ['bob@b.test', 'bea@b.test', 'cid@c.test']);
    assert.equal(eom.final.type, 'discard');
    assert.deepEqual(eom.modifications, []);
    const [queued] = (await sink.waitForMessages(before + 1)).slice(before);
    assert.equal(queued!.from, 'alice@a.test');
    assert.deepEqual(queued!.recipients, ['bob@b.test', 'bea@b.test', 'cid@c.test']);
    // Nothing of the message in clear in what gets queued.
    for (const secret of ['quarterly', 'numbers are in', 'Bob <bob', 'X-Folded']) assert.ok(!queued!.data.includes(secret), secret);
    const bytes = Buffer.from(queued!.data, 'latin1');
    assert.ok(isBundle(bytes));
    const parts = decodeBundle(bytes);
    assert.deepEqual(parts.map((p) => p.recipient), ['bob@b.test', 'bea@b.test', 'cid@c.test']);
    for (const p of parts) {
      const d = p.destination.domain === 'b.test' ? b : c;
      assert.equal(p.destination.fingerprint, fingerprint(crypto, d.org, 'full'));
      assert.equal(p.origin.domain, 'a.test');
      const { dest, mime } = await openAs(p, d);
      assert.equal(dest.envelope.recipient, p.recipient);
      assert.equal(mime, MESSAGE);
    }
  });

  it('mixed: the bundle takes the dark recipients, the original goes on to the legacy one only', async () => {
    const before = sink.messages.length;
    const eom = await submit('alice@a.test', ['bob@b.test', 'legacy@plain.test', 'someone@a.test']);
    assert.equal(eom.final.type, 'continue');
    assert.deepEqual(eom.modifications, [{ type: 'deleteRecipient', recipient: '<bob@b.test>' }]);
    const [queued] = (await sink.waitForMessages(before + 1)).slice(before);
    assert.deepEqual(queued!.recipients, ['bob@b.test']);
    assert.deepEqual(decodeBundle(Buffer.from(queued!.data, 'latin1')).map((p) => p.recipient), ['bob@b.test']);
  });

  it("plaintext that goes on carries no Authentication-Results in our name (a forged dime=pass is deleted)", async () => {
    const forged = MESSAGE.replace('Subject:', 'Authentication-Results: mx.a.test; dime=pass header.from=ceo@a.test\r\nAuthentication-Results: other.example; spf=pass\r\nSubject:');
    const eom = await submit('alice@a.test', ['legacy@plain.test', 'someone@a.test'], forged);
    assert.equal(eom.final.type, 'continue');
    assert.deepEqual(eom.modifications, [{ type: 'changeHeader', index: 1, name: 'Authentication-Results', value: '' }]);
  });

  it('8-bit headers and body are sealed byte for byte', async () => {
    const eight = Buffer.from(MESSAGE.replace('Subject: The quarterly numbers', 'Subject: Grüße aus Köln — Zahlen').replace('Bob, the numbers', 'Bob, die Zahlen (€)'), 'utf8').toString('latin1');
    const client = await MilterClient.connect({ port });
    let eom;
    try {
      await client.negotiate();
      client.macro('C', { '{auth_authen}': 'alice' });
      await client.connectEvent();
      const { headers, body } = split(eight);
      // The test client sends strings as UTF-8: hand it the bytes' latin1 view back as real text.
      const asText = (t: string) => Buffer.from(t, 'latin1').toString('utf8');
      eom = (await client.sendMessage({ from: '<alice@a.test>', rcpts: ['<bob@b.test>'], headers: headers.map(([n, v]) => [n, asText(v)]), body: Buffer.from(body, 'latin1') })).eom!;
    } finally {
      client.destroy();
    }
    assert.equal(eom.final.type, 'discard');
    const queued = sink.messages[sink.messages.length - 1]!;
    const [p] = decodeBundle(Buffer.from(queued.data, 'latin1'));
    assert.equal((await openAs(p!, b)).mime, eight);
  });

  it("a trustful key that only its owner's password opens: tempfail, nothing queued", async () => {
    const before = sink.messages.length;
    assert.equal((await submit('pia@a.test', ['bob@b.test'])).final.type, 'tempfail');
    assert.equal(sink.messages.length, before);
  });

  it('no dark recipient: untouched, nothing queued', async () => {
    const before = sink.messages.length;
    const eom = await submit('alice@a.test', ['legacy@plain.test']);
    assert.equal(eom.final.type, 'continue');
    assert.deepEqual(eom.modifications, []);
    assert.equal(sink.messages.length, before);
  });

  it('refusals name the recipient: required DIME, no signet at a dark domain, a cautious sender', async () => {
    const before = sink.messages.length;
    let eom = await submit('alice@a.test', ['bob@b.test', 'pat@strict-partner.test']);
    assert.equal(eom.final.type, 'replycode');
    assert.match((eom.final as { reply: string }).reply, /^550 5\.7\.1 <pat@strict-partner\.test>: cannot be reached by DIME/);
    eom = await submit('alice@a.test', ['nobody@b.test']);
    assert.match((eom.final as { reply: string }).reply, /^550 5\.1\.1 <nobody@b\.test>: .*no DIME signet/);
    eom = await submit('carol@a.test', ['bob@b.test']);
    assert.match((eom.final as { reply: string }).reply, /^550 5\.7\.1 <bob@b\.test>: .*cautious account/);
    assert.equal(sink.messages.length, before, 'nothing queued for a refused message');
  });

  it('a trustful sender address that is not the authenticated user: refused, nothing signed', async () => {
    const client = await MilterClient.connect({ port });
    try {
      await client.negotiate();
      client.macro('C', { '{auth_authen}': 'dave@a.test' });
      await client.connectEvent();
      const { headers, body } = split(MESSAGE);
      const eom = (await client.sendMessage({ from: '<alice@a.test>', rcpts: ['<bob@b.test>'], headers, body })).eom!;
      assert.match((eom.final as { reply: string }).reply, /^550 5\.7\.1 <alice@a\.test>: sender address is not the authenticated user/);
    } finally {
      client.destroy();
    }
  });

  it("a cautious sender's client-sealed message: signed as origin, queued for its one recipient, the original discarded", async () => {
    const store = options.store as FileSignetStore;
    const carol = (await store.user('carol@a.test'))!;
    const origin = (await store.org('a.test'))!;
    const bob = b.people.get('bob@b.test')!;
    const parts = mimeToParts(Buffer.from(MESSAGE.replace('Alice <alice@a.test>', 'Carol <carol@a.test>'), 'latin1'));
    const sealed = await sealMessage(
      crypto,
      {
        author: { address: 'carol@a.test', signet: carol, signer: crypto.ed25519Signer(carolKeys.signingKey) },
        origin: { domain: 'a.test', signet: origin },
        destination: { domain: 'b.test', signet: b.org },
        recipient: { address: 'bob@b.test', signet: bob.signet },
      },
      { commonHeaders: parts.common, otherHeaders: parts.otherHeaders, display: parts.display, attachments: parts.attachments },
    );
    const wrapped = ['From: carol@a.test', 'To: bob@b.test', 'MIME-Version: 1.0', 'Content-Type: application/x-dime-message', 'Content-Transfer-Encoding: base64', '', ...(Buffer.from(sealed).toString('base64').match(/.{1,76}/g) ?? []), ''].join('\r\n');
    const before = sink.messages.length;
    const eom = await submit('carol@a.test', ['bob@b.test'], wrapped);
    assert.equal(eom.final.type, 'discard');
    const [queued] = (await sink.waitForMessages(before + 1)).slice(before);
    const [part] = decodeBundle(Buffer.from(queued!.data, 'latin1'));
    assert.equal(part!.recipient, 'bob@b.test');
    const signets = { author: carol, origin, destination: b.org, recipient: bob.signet };
    const view = await openMessage(crypto, part!.message, { actor: 'recipient', keys: localActorKeys(crypto, bob.keys.encryptionKey), signets });
    assert.equal(utf8.decode(view.common!.Subject!), 'The quarterly numbers');
    // The origin signed it: the destination's view verifies the origin's signatures.
    await openMessage(crypto, part!.message, { actor: 'destination', keys: localActorKeys(crypto, b.orgKeys.encryptionKey), signets });

    // Two recipients, or a tampered object: refused, nothing queued.
    let r = await submit('carol@a.test', ['bob@b.test', 'bea@b.test'], wrapped);
    assert.match((r.final as { reply: string }).reply, /^550 5\.5\.3 /);
    const tampered = Buffer.from(sealed);
    // In the origin envelope chunk, which the origin reads (a byte in a chunk only the recipient reads is for the recipient to catch).
    tampered[120]! ^= 1;
    r = await submit('carol@a.test', ['bob@b.test'], wrapped.replace(Buffer.from(sealed).toString('base64').slice(0, 76), tampered.toString('base64').slice(0, 76)).replace(/\r\n\r\n[\s\S]*$/, `\r\n\r\n${(tampered.toString('base64').match(/.{1,76}/g) ?? []).join('\r\n')}\r\n`));
    assert.match((r.final as { reply: string }).reply ?? JSON.stringify(r.final), /^550 5\.7\.0 the message your DIME client sealed does not verify/);
    assert.equal(sink.messages.length, before + 1);
  });

  it('an ordinary sender (no DIME account) reaches a non-strict dark domain in plaintext', async () => {
    const eom = await submit('dave@a.test', ['bob@b.test']);
    assert.equal(eom.final.type, 'continue');
    assert.deepEqual(eom.modifications, []);
  });

  it('SERVFAIL, bogus DNSSEC, a failing bundle service: tempfail, nothing queued, never plaintext', async () => {
    const before = sink.messages.length;
    assert.equal((await submit('alice@a.test', ['bob@b.test', 'slow@servfail.test'])).final.type, 'tempfail');
    assert.equal((await submit('alice@a.test', ['x@bogus.test'])).final.type, 'tempfail');
    sink.mode = '451';
    try {
      assert.equal((await submit('alice@a.test', ['bob@b.test'])).final.type, 'tempfail');
    } finally {
      sink.mode = 'accept';
    }
    assert.equal(sink.messages.length, before);
  });

  it('a header block beyond the gateway limits: a permanent 552, nothing queued', async () => {
    const before = sink.messages.length;
    const many = Array.from({ length: 5001 }, (_, i) => `X-Trace-${i}: ${i}`).join('\r\n');
    const eom = await submit('alice@a.test', ['bob@b.test'], MESSAGE.replace('X-Folded: first line', `${many}\r\nX-Folded: first line`));
    assert.match((eom.final as { reply: string }).reply, /^552 5\.3\.4 message too large to send by DIME/);
    assert.equal(sink.messages.length, before);
  });

  it('unauthenticated mail is not outbound: no handler for it here, untouched', async () => {
    const eom = await submit('alice@a.test', ['bob@b.test'], MESSAGE, false);
    assert.equal(eom.final.type, 'continue');
    assert.deepEqual(eom.modifications, []);
  });
});

describe('bundle codec', () => {
  const part = (recipient: string, n: number) => ({
    recipient,
    origin: { domain: 'a.test', fingerprint: 'A'.repeat(86) },
    destination: { domain: 'b.test', fingerprint: 'B'.repeat(86) },
    message: new Uint8Array(n).map((_, i) => (i * 7) & 0xff),
  });

  it('round-trips parts of any size, CRLF or LF line ends', () => {
    const parts = [part('bob@b.test', 1), part('Bea@B.test', 57 * 1000 + 5), part('x@b.test', 200_000)];
    const bytes = encodeBundleBytes({ sender: 'alice@a.test', hostname: 'mx.a.test' }, parts);
    for (const form of [bytes, Buffer.from(bytes.toString('latin1').replace(/\r\n/g, '\n'), 'latin1')]) {
      const back = decodeBundle(form);
      assert.deepEqual(back.map((p) => [p.recipient, p.message.length]), parts.map((p) => [p.recipient, p.message.length]));
      assert.deepEqual(Buffer.from(back[2]!.message), Buffer.from(parts[2]!.message));
    }
    assert.equal(partFor(decodeBundle(bytes), 'Bea@b.TEST')?.message.length, 57 * 1000 + 5);
    assert.equal(partFor(decodeBundle(bytes), 'bea@b.test'), undefined, 'local parts are case-sensitive');
  });

  it('property: any parts round-trip; random and mutated bytes only ever fail with GATEWAY_BAD_BUNDLE', () => {
    const recipient = fc.tuple(fc.stringMatching(/^[A-Za-z0-9._+-]{1,20}$/), fc.stringMatching(/^[a-z0-9-]{1,10}\.[a-z]{2,5}$/)).map(([l, d]) => `${l}@${d}`);
    const partArb = fc.record({ recipient, message: fc.uint8Array({ minLength: 1, maxLength: 3000 }) });
    fc.assert(
      fc.property(fc.array(partArb, { minLength: 1, maxLength: 5 }), (ps) => {
        const parts = ps.map((p) => ({ ...part(p.recipient, 1), message: p.message }));
        const back = decodeBundle(encodeBundleBytes({ sender: 'a@b.test', hostname: 'h' }, parts));
        assert.deepEqual(back.map((p) => [p.recipient, Buffer.from(p.message).toString('hex')]), parts.map((p) => [p.recipient, Buffer.from(p.message).toString('hex')]));
      }),
      { numRuns: 100 },
    );
    const good = encodeBundleBytes({ sender: 'a@b.test', hostname: 'h' }, [part('bob@b.test', 300), part('bea@b.test', 10)]);
    const onlyBadBundle = (bytes: Uint8Array) => {
      try {
        decodeBundle(bytes);
      } catch (e) {
        assert.ok(e instanceof DimeError && e.code === 'GATEWAY_BAD_BUNDLE', String(e));
      }
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2000 }), onlyBadBundle), { numRuns: 300 });
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), fc.nat(good.length), (flips, cut) => {
        const m = Buffer.from(good);
        for (const [at, v] of flips) m[at] = v;
        onlyBadBundle(m.subarray(0, cut));
        onlyBadBundle(m);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses what it did not write, with GATEWAY_BAD_BUNDLE', () => {
    const good = encodeBundleBytes({ sender: '', hostname: 'h' }, [part('bob@b.test', 10)]).toString('latin1');
    const bad = [
      'Subject: hi\r\n\r\nplain text',
      good.replace('X-DIME-Bundle: 1', 'X-DIME-Bundle: 2'),
      good.replace('X-DIME-Recipient: bob@b.test', 'X-DIME-Recipient: bob'),
      good.replace(/X-DIME-Origin: .*\r\n/, ''),
      good.replace('base64\r\n', 'quoted-printable\r\n'),
      good.replace(/(X-DIME-Destination: .*\r\n\r\n)[A-Za-z0-9+/]{4}/, '$1!!!!'),
    ];
    for (const t of bad) assert.throws(() => decodeBundle(Buffer.from(t, 'latin1')), (e: unknown) => e instanceof DimeError && e.code === 'GATEWAY_BAD_BUNDLE', t.slice(0, 60));
    assert.throws(() => encodeBundleBytes({ sender: 'a b@c', hostname: 'h' }, [part('bob@b.test', 1)]), /cannot go into a bundle header/);
    assert.throws(() => encodeBundleBytes({ sender: 'a@b', hostname: 'h' }, [part('bob@b.test>\r\nBcc: x', 1)]), /cannot go into a bundle header/);
    assert.throws(() => encodeBundleBytes({ sender: 'a@b', hostname: 'h' }, []), /1 to/);
  });
});
