/**
 * Flipping any byte of a sealed, origin-signed message makes the recipient's open fail with a typed
 * error: every byte for a small message, a sample for a large one.
 *
 * The one exception is inherent to the DIME format: the keyslots of the origin full signature chunk
 * (255) that belong to the author, origin and destination are covered by no signature (255 signs
 * every chunk before it, and nothing signs 255). The recipient never uses them, so changing them
 * cannot change what it reads; the test asserts exactly that for those 192 bytes.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { defaultCrypto } from '../src/crypto/index.js';
import { utf8 } from '../src/dime/bytes.js';
import { CHUNK, KEYSLOT_LENGTH, decodeMessage, openMessage, sealMessage, signAsOrigin, type MessageContent, type MessageView } from '../src/dime/message/index.js';
import { DimeError, ERROR_CODES } from '../src/errors.js';
import { vectorParties } from './helpers/dime-parties.js';

const crypto = defaultCrypto();
const p = vectorParties(crypto);
const te = (s: string) => utf8.encode(s);

async function sealed(content: MessageContent): Promise<Uint8Array> {
  const m = await sealMessage(crypto, p.seal, content);
  return (await signAsOrigin(crypto, m, { keys: p.actorKeys('origin'), signer: crypto.ed25519Signer(p.keys.origin.signingKey), signets: p.signets, bounce: { meta: true, display: true } })).message;
}

/** Byte range of the keyslots of chunk 255 that are not the recipient's. */
function unsignedSlots(message: Uint8Array): [number, number] {
  const d = decodeMessage(message);
  const c = d.chunks.find((x) => x.type === CHUNK.originFull)!;
  const slotsStart = c.bytes.byteOffset - message.byteOffset + 4 + c.payload.length;
  return [slotsStart, slotsStart + 3 * KEYSLOT_LENGTH];
}

const open = (bytes: Uint8Array) => openMessage(crypto, bytes, { actor: 'recipient', keys: p.actorKeys('recipient'), signets: p.signets });

function sameView(a: MessageView, b: MessageView): boolean {
  return JSON.stringify([a.envelope, a.display?.map((x) => [...x]), a.commonHeaders && [...a.commonHeaders]]) === JSON.stringify([b.envelope, b.display?.map((x) => [...x]), b.commonHeaders && [...b.commonHeaders]]);
}

async function checkFlip(message: Uint8Array, original: MessageView, i: number, unsigned: [number, number]): Promise<void> {
  const m = Uint8Array.from(message);
  m[i] = (m[i] as number) ^ (1 << (i % 8));
  let view: MessageView | undefined;
  try {
    view = await open(m);
  } catch (err) {
    assert.ok(err instanceof DimeError && Object.hasOwn(ERROR_CODES, err.code), `byte ${i}: ${String(err)}`);
    return;
  }
  assert.ok(i >= unsigned[0] && i < unsigned[1], `byte ${i} flipped and the recipient still opened the message`);
  assert.ok(sameView(view, original), `byte ${i}: an unsigned keyslot changed what the recipient reads`);
}

describe('recipient open under byte flips', () => {
  it('every byte of a small message: typed failure (except other actors’ slots of chunk 255, which change nothing)', async () => {
    const m = await sealed({
      commonHeaders: { Date: te('Sun, 22 Nov 2026 10:00:00 +0000'), To: te('bob@example.org'), From: te('alice@example.com'), Subject: te('flip') },
      otherHeaders: te('X-A: 1\r\n'),
      display: [te('Hello\r\n')],
      attachments: [te('att')],
    });
    const original = await open(m);
    const unsigned = unsignedSlots(m);
    let tolerated = 0;
    for (let i = 0; i < m.length; i++) {
      await checkFlip(m, original, i, unsigned);
      if (i >= unsigned[0] && i < unsigned[1]) tolerated++;
    }
    assert.equal(tolerated, 192);
  });

  it('a sample of bytes across every chunk of a 256 KiB message', async () => {
    const m = await sealed({
      commonHeaders: { Date: te('Sun, 22 Nov 2026 10:00:00 +0000'), To: te('bob@example.org'), From: te('alice@example.com'), Subject: te('big') },
      otherHeaders: te('X-A: 1\r\n'),
      display: [crypto.randomBytes(128 * 1024)],
      attachments: [crypto.randomBytes(128 * 1024)],
    });
    const original = await open(m);
    const unsigned = unsignedSlots(m);
    const d = decodeMessage(m);
    // Every chunk's header, first and last payload bytes and each keyslot, plus random positions.
    const positions = new Set<number>();
    for (const c of d.chunks) {
      const start = c.bytes.byteOffset - m.byteOffset;
      for (const off of [0, 1, 3, 4, 4 + c.payload.length - 1, c.bytes.length - 1]) positions.add(start + off);
      for (let s = 0; s < c.keyslots.length; s++) positions.add(start + 4 + c.payload.length + s * KEYSLOT_LENGTH + 7);
    }
    for (const b of crypto.randomBytes(200)) positions.add(Math.floor((b / 256) * m.length));
    for (let i = 0; i < 6; i++) positions.add(i);
    for (const i of positions) await checkFlip(m, original, i, unsigned);
  });
});
