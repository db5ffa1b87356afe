/**
 * The libdime message vectors (test/vectors/libdime/messages): every actor's view and verdict,
 * the KEKs libdime printed, and the chunk table, with both crypto backends.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createNobleBackend, createNodeBackend } from '../src/crypto/index.js';
import { toHex, utf8 } from '../src/dime/bytes.js';
import { CHUNK, decodeMessage, deriveKek, openMessage, signAsOrigin, type Actor } from '../src/dime/message/index.js';
import { isDimeError } from '../src/errors.js';
import { vectorParties } from './helpers/dime-parties.js';
import { vectorBytes, vectorText } from './helpers/vectors.js';

const msg = (name: string) => vectorBytes('libdime/messages', name);
const ACTORS: Actor[] = ['author', 'origin', 'destination', 'recipient'];

const COMMON = 'Date: Sat, 01 Jan 2000 00:00:00 +0000\r\nTo: Bob <bob@example.org>\r\nFrom: Alice <alice@example.com>\r\nOrganization: Example\r\nSubject: Interop vector\r\n';
const DISPLAY = 'Hello from libdime.\r\nThis is the display chunk.\r\n';

describe('libdime message vectors: structure', () => {
  it('decodes the chunk table msg-make printed (type, payload and serialized sizes)', () => {
    const m = decodeMessage(msg('msg-2-origin-signed.dmime'));
    assert.equal(m.bytes.length, 4291);
    const table = vectorText('libdime/messages/msg-make.stdout');
    const rows = [...table.matchAll(/type=\s*(\d+) payload=\s*(\d+) serial=\s*(\d+)/g)].slice(0, 11).map((r) => r.slice(1).map(Number));
    assert.deepEqual(m.chunks.map((c) => [c.type, c.payload.length, c.bytes.length]), rows);
  });

  it('msg-1 and msg-2 differ only in the three origin signature chunks (bytes 3323..4034)', () => {
    const a = msg('msg-1-author.dmime');
    const b = msg('msg-2-origin-signed.dmime');
    const diff = [...a.keys()].filter((i) => a[i] !== b[i]);
    assert.ok(diff.length > 0 && diff[0]! >= 3323 && diff[diff.length - 1]! <= 4034, `${diff[0]}..${diff[diff.length - 1]}`);
  });
});

for (const crypto of [createNodeBackend(), createNobleBackend()]) {
  describe(`libdime message vectors with the ${crypto.name} backend`, () => {
    const p = vectorParties(crypto);
    const open = (bytes: Uint8Array, actor: Actor) => openMessage(crypto, bytes, { actor, keys: p.actorKeys(actor), signets: p.signets });

    it('derives the KEKs libdime printed for each actor', async () => {
      const ephemeral = decodeMessage(msg('msg-2-origin-signed.dmime')).chunks[0]!.payload;
      for (const [actor, file] of [['author', 'open-author'], ['origin', 'open-origin'], ['destination', 'open-destination'], ['recipient', 'open-recipient']] as const) {
        const kek = deriveKek(crypto, await p.actorKeys(actor).ecdh(ephemeral));
        const text = vectorText('libdime/messages', `${file}.stdout`);
        assert.match(text, new RegExp(`kek\\.iv  = ${toHex(kek.iv)}`), actor);
        assert.match(text, new RegExp(`kek\\.key = ${toHex(kek.key)}`), actor);
      }
    });

    it('opens msg-2 as the recipient with libdime’s plaintexts', async () => {
      const v = await open(msg('msg-2-origin-signed.dmime'), 'recipient');
      assert.equal(utf8.decode(v.commonHeaders!), COMMON);
      assert.equal(utf8.decode(v.otherHeaders!), 'X-Interop: libdime\r\n');
      assert.deepEqual(v.display!.map((d) => utf8.decode(d)), [DISPLAY]);
      assert.deepEqual(v.attachments, []);
      assert.equal(utf8.decode(v.common!.Subject!), 'Interop vector');
      assert.deepEqual(
        { author: v.envelope.author, origin: v.envelope.origin, destination: v.envelope.destination, recipient: v.envelope.recipient },
        { author: 'alice@example.com', origin: 'example.com', destination: 'example.org', recipient: 'bob@example.org' },
      );
      assert.deepEqual(v.originSignatures, { metaBounce: true, displayBounce: true, full: true });
      assert.match(vectorText('libdime/messages/open-recipient.stdout'), /decrypt_as_recipient = 0/);
    });

    it('opens msg-2 as the author with the same content and no origin verdict', async () => {
      const v = await open(msg('msg-2-origin-signed.dmime'), 'author');
      assert.equal(utf8.decode(v.commonHeaders!), COMMON);
      assert.deepEqual(v.display!.map((d) => utf8.decode(d)), [DISPLAY]);
      assert.equal(v.originSignatures, undefined);
    });

    it('the origin sees the author and the destination only', async () => {
      const v = await open(msg('msg-2-origin-signed.dmime'), 'origin');
      assert.deepEqual(Object.keys(v.envelope).sort(), ['author', 'authorSignet', 'destination', 'destinationSignet']);
      assert.equal(v.envelope.author, 'alice@example.com');
      assert.equal(v.envelope.destination, 'example.org');
      assert.equal(v.commonHeaders, undefined);
      assert.equal(v.display, undefined);
      assert.match(vectorText('libdime/messages/open-origin.stdout'), /envelope: author=alice@example.com origin=- destination=example.org recipient=-/);
    });

    it('the destination sees the origin and the recipient only, and verifies the origin signatures', async () => {
      const v = await open(msg('msg-2-origin-signed.dmime'), 'destination');
      assert.deepEqual(Object.keys(v.envelope).sort(), ['origin', 'originSignet', 'recipient', 'recipientSignet']);
      assert.equal(v.envelope.recipient, 'bob@example.org');
      assert.equal(v.envelope.origin, 'example.com');
      assert.equal(v.commonHeaders, undefined);
      assert.deepEqual(v.originSignatures, { metaBounce: true, displayBounce: true, full: true });
    });

    it('the author-stage message (msg-1) opens for author and origin, and fails for the recipient at the meta bounce signature', async () => {
      const m1 = msg('msg-1-author.dmime');
      await open(m1, 'author');
      await open(m1, 'origin');
      assert.match(vectorText('libdime/messages/open-author-stage-as-recipient.stderr'), /meta bounce origin signature is invalid/);
      for (const actor of ['recipient', 'destination'] as const) {
        await assert.rejects(open(m1, actor), (e: unknown) => isDimeError(e, 'MESSAGE_SIGNATURE_INVALID') && /origin meta bounce signature \(248\)/.test((e as Error).message));
      }
    });

    it('the tampered message (msg-3) fails for the recipient at the author tree signature', async () => {
      assert.match(vectorText('libdime/messages/open-tampered-recipient.stderr'), /author tree signature is invalid/);
      await assert.rejects(open(msg('msg-3-tampered-byte2700.dmime'), 'recipient'), (e: unknown) => isDimeError(e, 'MESSAGE_SIGNATURE_INVALID') && /author tree signature \(225\)/.test((e as Error).message));
    });

    it('our origin signature over libdime’s author-stage message is what libdime’s origin writes (Ed25519 is deterministic)', async () => {
      const { message } = await signAsOrigin(crypto, msg('msg-1-author.dmime'), {
        keys: p.actorKeys('origin'),
        signer: crypto.ed25519Signer(p.keys.origin.signingKey),
        signets: p.signets,
        bounce: { meta: true, display: true },
      });
      // Same keys, same key and IV per chunk (recovered from the slots), same input: same bytes.
      assert.deepEqual(message, msg('msg-2-origin-signed.dmime'));
      for (const actor of ACTORS) await open(message, actor);
    });

    it('wrong keys or signets fail with typed errors naming the problem', async () => {
      const m2 = msg('msg-2-origin-signed.dmime');
      // The recipient's key used as the author: its slot is someone else's.
      await assert.rejects(openMessage(crypto, m2, { actor: 'author', keys: p.actorKeys('recipient'), signets: p.signets }), (e: unknown) => isDimeError(e, 'MESSAGE_DECRYPT_FAILED'));
      // The origin given as the destination's signet: the envelope names another fingerprint.
      await assert.rejects(
        openMessage(crypto, m2, { actor: 'origin', keys: p.actorKeys('origin'), signets: { ...p.signets, destination: p.signets.origin } }),
        (e: unknown) => isDimeError(e, 'MESSAGE_SIGNET_MISMATCH'),
      );
      // Swapped author signet: the per-chunk signature of the origin chunk fails.
      await assert.rejects(
        openMessage(crypto, m2, { actor: 'origin', keys: p.actorKeys('origin'), signets: { ...p.signets, author: p.signets.recipient } }),
        (e: unknown) => isDimeError(e, 'MESSAGE_SIGNATURE_INVALID') && /origin chunk \(4\)/.test((e as Error).message),
      );
      await assert.rejects(openMessage(crypto, m2, { actor: 'recipient', keys: p.actorKeys('recipient'), signets: { author: p.signets.author } }), (e: unknown) => isDimeError(e, 'MESSAGE_BAD_ARGUMENT'));
    });
  });
}

describe('chunk types are fixed', () => {
  it('the origin chunk is 4 and the display chunk 67, as libdime numbers them', () => {
    assert.equal(CHUNK.origin, 4);
    assert.equal(CHUNK.display, 67);
    assert.equal(CHUNK.originFull, 255);
  });
});
