/**
 * Seal → sign as origin → open as every actor, on random content; large parts across chunks;
 * bad input of every kind the issue lists gives a typed error and no plaintext.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { defaultCrypto } from '../src/crypto/index.js';
import { concatBytes, utf8 } from '../src/dime/bytes.js';
import {
  CHUNK,
  MAX_CHUNK_DATA,
  decodeMessage,
  encodeMessage,
  openMessage,
  sealMessage,
  signAsOrigin,
  withTracing,
  type Actor,
  type MessageContent,
} from '../src/dime/message/index.js';
import { isDimeError, type ErrorCode } from '../src/errors.js';
import { vectorParties } from './helpers/dime-parties.js';

const crypto = defaultCrypto();
const p = vectorParties(crypto);
const te = (s: string) => utf8.encode(s);

const basic: MessageContent = {
  commonHeaders: { Date: te('Sun, 22 Nov 2026 10:00:00 +0000'), To: te('Bob <bob@example.org>'), From: te('Alice <alice@example.com>'), Subject: te('Round trip') },
  otherHeaders: te('Message-ID: <1@example.com>\r\n'),
  display: [te('Hello Bob\r\n')],
};

async function sealAndSign(content: MessageContent, bounce = { meta: true, display: true }): Promise<Uint8Array> {
  const sealed = await sealMessage(crypto, p.seal, content);
  return (await signAsOrigin(crypto, sealed, { keys: p.actorKeys('origin'), signer: crypto.ed25519Signer(p.keys.origin.signingKey), signets: p.signets, bounce })).message;
}

const open = (bytes: Uint8Array, actor: Actor) => openMessage(crypto, bytes, { actor, keys: p.actorKeys(actor), signets: p.signets });

function rejectsWith(code: ErrorCode) {
  return (e: unknown) => {
    assert.ok(isDimeError(e, code), `expected ${code}, got ${(e as Error)?.message}`);
    return true;
  };
}

describe('seal → sign-origin → open', () => {
  it('random content round-trips for author and recipient; origin and destination see envelopes only', async () => {
    const bytesArb = (max: number) => fc.uint8Array({ maxLength: max });
    const line = fc.stringMatching(/^[\x20-\x7e]{0,60}$/).map(te);
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          to: line,
          subject: line,
          cc: fc.option(line, { nil: undefined }),
          org: fc.option(line, { nil: undefined }),
          other: bytesArb(300),
          display: fc.array(bytesArb(2000), { minLength: 1, maxLength: 3 }),
          attachments: fc.array(bytesArb(3000), { maxLength: 3 }),
          bounce: fc.record({ meta: fc.boolean(), display: fc.boolean() }),
        }),
        async (r) => {
          const content: MessageContent = {
            commonHeaders: { Date: te('Sun, 22 Nov 2026 10:00:00 +0000'), To: r.to, From: te('alice@example.com'), Subject: r.subject, ...(r.cc ? { CC: r.cc } : {}), ...(r.org ? { Organization: r.org } : {}) },
            otherHeaders: r.other,
            display: r.display,
            attachments: r.attachments,
          };
          const m = await sealAndSign(content, r.bounce);
          for (const actor of ['author', 'recipient'] as const) {
            const v = await open(m, actor);
            assert.deepEqual(v.display, r.display.map((d) => Uint8Array.from(d)));
            assert.deepEqual(v.attachments, r.attachments.map((a) => Uint8Array.from(a)));
            assert.deepEqual(v.otherHeaders, Uint8Array.from(r.other));
            assert.deepEqual(v.common!.Subject, Uint8Array.from(r.subject));
            assert.equal(v.common!.CC === undefined, r.cc === undefined);
          }
          for (const actor of ['origin', 'destination'] as const) {
            const v = await open(m, actor);
            assert.equal(v.commonHeaders ?? v.otherHeaders ?? v.display ?? v.attachments, undefined);
          }
          const d = await open(m, 'destination');
          assert.deepEqual(d.originSignatures, { metaBounce: r.bounce.meta, displayBounce: r.bounce.display, full: true });
        },
      ),
      { numRuns: 25 },
    );
  });

  it('chunks carry exactly the keyslots of the actors allowed to read them', async () => {
    const m = decodeMessage(await sealAndSign(basic));
    const slots = Object.fromEntries(m.chunks.map((c) => [c.type, c.keyslots.length]));
    assert.deepEqual(slots, { 2: 0, 4: 3, 5: 3, 33: 2, 34: 2, 67: 2, 225: 3, 226: 3, 248: 4, 249: 4, 255: 4 });
    // The origin holds no slot in the content chunks: asking for one is refused, not attempted.
    const { ActorReader } = await import('../src/dime/message/open.js');
    const reader = await ActorReader.create(crypto, m, 'origin', p.actorKeys('origin'));
    assert.throws(() => reader.decrypt(m.chunks.find((c) => c.type === CHUNK.commonHeaders)!), rejectsWith('MESSAGE_NOT_ALLOWED'));
  });

  it('a part larger than one chunk travels in continuation chunks and comes back whole', async () => {
    const big = crypto.randomBytes(MAX_CHUNK_DATA + 1000);
    const m = await sealAndSign({ ...basic, display: [te('short'), big], attachments: [te('a')] });
    const decoded = decodeMessage(m);
    assert.equal(decoded.chunks.filter((c) => c.type === CHUNK.display).length, 3);
    const v = await open(m, 'recipient');
    assert.equal(v.display!.length, 2);
    assert.ok(Buffer.from(v.display![1]!).equals(Buffer.from(big)));
    assert.deepEqual(v.attachments, [te('a')]);
  });

  it('accepts the 1837 tracing prefix libdime parses (and ignores it)', async () => {
    const m = await sealAndSign(basic);
    const v = await open(withTracing(m, te('Received: by relay')), 'recipient');
    assert.deepEqual(v.display, [te('Hello Bob\r\n')]);
  });

  it('refuses to seal for inconsistent parties', async () => {
    await assert.rejects(sealMessage(crypto, { ...p.seal, author: { ...p.seal.author, address: 'mallory@example.com' } }, basic), rejectsWith('MESSAGE_BAD_ARGUMENT'));
    await assert.rejects(sealMessage(crypto, { ...p.seal, origin: { domain: 'example.org', signet: p.signets.destination } }, basic), rejectsWith('MESSAGE_BAD_ARGUMENT'));
    await assert.rejects(sealMessage(crypto, { ...p.seal, author: { ...p.seal.author, signer: crypto.ed25519Signer(p.keys.recipient.signingKey) } }, basic), rejectsWith('MESSAGE_BAD_ARGUMENT'));
    await assert.rejects(sealMessage(crypto, { ...p.seal, recipient: { address: 'bob@example.org', signet: p.signets.destination } }, basic), rejectsWith('MESSAGE_BAD_ARGUMENT'));
    await assert.rejects(sealMessage(crypto, p.seal, { ...basic, display: [] }), rejectsWith('MESSAGE_BAD_ARGUMENT'));
    await assert.rejects(sealMessage(crypto, p.seal, { ...basic, commonHeaders: { Date: te('x'), To: te('y'), From: te('z') } }), rejectsWith('MESSAGE_BAD_HEADERS'));
    await assert.rejects(sealMessage(crypto, p.seal, { ...basic, commonHeaders: { ...(basic.commonHeaders as object), Subject: te('a\r\nBcc: x') } }), rejectsWith('MESSAGE_BAD_HEADERS'));
  });

  it('the origin refuses a message whose author is not in its domain, or a signer that is not its POK', async () => {
    const sealed = await sealMessage(crypto, p.seal, basic);
    await assert.rejects(
      signAsOrigin(crypto, sealed, { keys: p.actorKeys('origin'), signer: crypto.ed25519Signer(p.keys.destination.signingKey), signets: p.signets }),
      rejectsWith('MESSAGE_BAD_ARGUMENT'),
    );
    // Another organisation's keys cannot even open the origin chunk.
    await assert.rejects(
      signAsOrigin(crypto, sealed, { keys: p.actorKeys('destination'), signer: crypto.ed25519Signer(p.keys.destination.signingKey), signets: { ...p.signets, origin: p.signets.destination } }),
      rejectsWith('MESSAGE_DECRYPT_FAILED'),
    );
  });
});

describe('bad input: typed errors, no plaintext', () => {
  it('structure: truncation, trailing bytes, unknown, repeated, reordered and missing chunks, wrong sizes', async () => {
    const m = await sealAndSign(basic);
    const d = decodeMessage(m);
    const rebuild = (chunks: Uint8Array[]) => encodeMessage(chunks);
    const chunkBytes = d.chunks.map((c) => c.bytes);
    const cases: [string, Uint8Array, ErrorCode][] = [
      ['truncated', m.subarray(0, m.length - 10), 'OBJECT_LENGTH_MISMATCH'],
      ['header fixed after truncation', rebuild([...chunkBytes.slice(0, -1), chunkBytes.at(-1)!.subarray(0, 100)]), 'MESSAGE_TRUNCATED'],
      ['extended', concatBytes(m, Uint8Array.of(0)), 'OBJECT_LENGTH_MISMATCH'],
      ['unknown chunk type', rebuild([...chunkBytes.slice(0, 5), Uint8Array.of(100, 0, 0, 0), ...chunkBytes.slice(5)]), 'MESSAGE_UNKNOWN_CHUNK'],
      ['reordered', rebuild([chunkBytes[0]!, chunkBytes[2]!, chunkBytes[1]!, ...chunkBytes.slice(3)]), 'MESSAGE_CHUNK_ORDER'],
      ['repeated single chunk', rebuild([chunkBytes[0]!, chunkBytes[1]!, chunkBytes[1]!, ...chunkBytes.slice(2)]), 'MESSAGE_CHUNK_ORDER'],
      ['missing common headers', rebuild(chunkBytes.filter((_, i) => d.chunks[i]!.type !== CHUNK.commonHeaders)), 'MESSAGE_INCOMPLETE'],
      ['missing origin signature', rebuild(chunkBytes.filter((_, i) => d.chunks[i]!.type !== CHUNK.originFull)), 'MESSAGE_INCOMPLETE'],
      ['not a message', Uint8Array.of(0x06, 0xf0, 0, 0, 0, 0), 'OBJECT_BAD_MAGIC'],
      ['empty', new Uint8Array(0), 'OBJECT_TRUNCATED'],
    ];
    // A keyslot too few on the common headers chunk: the payload length no longer lines up.
    const c33 = d.chunks.find((c) => c.type === CHUNK.commonHeaders)!;
    const lessSlots = c33.bytes.subarray(0, c33.bytes.length - 64);
    const shifted = rebuild(d.chunks.map((c) => (c === c33 ? lessSlots : c.bytes)));
    const badEphemeral = Uint8Array.from(chunkBytes[0]!);
    badEphemeral[3] = 32;
    cases.push(['ephemeral of 32 bytes', rebuild([badEphemeral.subarray(0, 36), ...chunkBytes.slice(1)]), 'MESSAGE_BAD_CHUNK']);
    for (const [name, bytes, code] of cases) {
      await assert.rejects(open(bytes, 'recipient'), rejectsWith(code), name);
    }
    // Every later chunk boundary moves: which structural error comes first depends on the random bytes.
    await assert.rejects(open(shifted, 'recipient'), (e: unknown) => isDimeError(e) && ['MESSAGE_TRUNCATED', 'MESSAGE_UNKNOWN_CHUNK', 'MESSAGE_CHUNK_ORDER', 'MESSAGE_BAD_CHUNK'].includes(e.code));
  });

  it('an ephemeral key that is not on the curve is a typed error', async () => {
    const m = Uint8Array.from(await sealAndSign(basic));
    m.fill(0xff, 6 + 4 + 1, 6 + 4 + 33); // x = 2^256 - 1 is not a field element
    await assert.rejects(open(m, 'recipient'), rejectsWith('MESSAGE_BAD_CHUNK'));
  });
});
