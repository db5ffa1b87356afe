/**
 * Sealing a DMIME message as its author (dime-formats.md §5.6–5.8), byte-compatible with libdime:
 * every content chunk signed then encrypted under a fresh AES key with keyslots for exactly the
 * actors allowed to read it, the tree signature with libdime's quirk, the full signature, and zero
 * placeholders for the origin's signatures.
 *
 * Memory: chunk sizes are known before anything is encrypted, so the message is allocated once and
 * each chunk is encrypted into place from one reused plaintext buffer.
 */
import type { CryptoBackend, Signer } from '../../crypto/backend.js';
import { DimeError } from '../../errors.js';
import { bytesEqual, uintBytes } from '../bytes.js';
import { MAGIC } from '../magic.js';
import { encryptionKeyOf, fingerprint, identifierOf, signingKeyOf, type Signet } from '../signet/index.js';
import {
  ACTORS,
  CHUNK,
  CHUNK_HEADER_LENGTH,
  KEYSLOT_LENGTH,
  MAX_MESSAGE_LENGTH,
  MESSAGE_HEADER_LENGTH,
  SIGNATURE_PAYLOAD_LENGTH,
  chunkLength,
  chunkSpec,
  writeChunkHeader,
  type Actor,
} from './chunks.js';
import { encodeCommonHeaders, encodeDestinationEnvelope, encodeOriginEnvelope, type CommonHeaders } from './headers.js';
import { MAX_CHUNK_DATA, PAYLOAD_FLAGS, deriveKek, standardPayloadLength, wrapKeyslot, writeStandardPayload, type ChunkKey, type Kek } from './payload.js';
import { treeSignatureInput } from './signatures.js';

export interface SealParties {
  author: { address: string; signet: Signet; signer: Signer };
  origin: { domain: string; signet: Signet };
  destination: { domain: string; signet: Signet };
  recipient: { address: string; signet: Signet };
}

export interface MessageContent {
  /** Chunk 33: structured, or already encoded in libdime's `Label: value\r\n` form. */
  commonHeaders: CommonHeaders | Uint8Array;
  /** Chunk 34, opaque. */
  otherHeaders: Uint8Array;
  /** Chunks 67: at least one. Parts above MAX_CHUNK_DATA continue in further chunks (flag 0x80). */
  display: readonly Uint8Array[];
  /** Chunks 131. */
  attachments?: readonly Uint8Array[];
}

function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

function checkSignet(role: Actor, signet: Signet, type: 'org' | 'user', identity: string): void {
  if (signet.type !== type) throw new DimeError('MESSAGE_BAD_ARGUMENT', `the ${role} signet is a ${signet.type} signet, not ${type}`);
  const id = identifierOf(signet);
  if (id !== null && id.toLowerCase() !== identity.toLowerCase()) throw new DimeError('MESSAGE_BAD_ARGUMENT', `the ${role} signet belongs to ${id}, not ${identity}`);
  const enc = encryptionKeyOf(signet);
  if (!enc) throw new DimeError('MESSAGE_BAD_ARGUMENT', `the ${role} signet has no encryption key`);
}

/** Validate the four parties at the boundary: types, identities, the author's key pair. */
export function checkParties(p: SealParties): void {
  if (!/^[^@\s]+@[^@\s]+$/.test(p.author.address)) throw new DimeError('MESSAGE_BAD_ARGUMENT', `author ${JSON.stringify(p.author.address)} is not an address`);
  if (!/^[^@\s]+@[^@\s]+$/.test(p.recipient.address)) throw new DimeError('MESSAGE_BAD_ARGUMENT', `recipient ${JSON.stringify(p.recipient.address)} is not an address`);
  checkSignet('author', p.author.signet, 'user', p.author.address);
  checkSignet('origin', p.origin.signet, 'org', p.origin.domain);
  checkSignet('destination', p.destination.signet, 'org', p.destination.domain);
  checkSignet('recipient', p.recipient.signet, 'user', p.recipient.address);
  if (domainOf(p.author.address) !== p.origin.domain.toLowerCase()) throw new DimeError('MESSAGE_BAD_ARGUMENT', `the author ${p.author.address} is not in the origin domain ${p.origin.domain}`);
  if (domainOf(p.recipient.address) !== p.destination.domain.toLowerCase()) throw new DimeError('MESSAGE_BAD_ARGUMENT', `the recipient ${p.recipient.address} is not in the destination domain ${p.destination.domain}`);
  const authorKey = signingKeyOf(p.author.signet);
  if (!authorKey || !bytesEqual(authorKey, p.author.signer.publicKey)) throw new DimeError('MESSAGE_BAD_ARGUMENT', "the author's signing key is not the one in the author signet");
}

interface Piece {
  type: number;
  data: Uint8Array;
  flags: number;
  /** Random byte drawn for the padding. */
  r: number;
  payloadLength: number;
}

/** Content chunks in wire order, each part cut into MAX_CHUNK_DATA pieces with the continuation flag. */
function contentPieces(crypto: CryptoBackend, parts: readonly [number, Uint8Array][]): Piece[] {
  const pieces: Piece[] = [];
  const rand = crypto.randomBytes(parts.length + 64);
  let ri = 0;
  const nextR = (): number => (ri < rand.length ? (rand[ri++] as number) : (crypto.randomBytes(1)[0] as number));
  for (const [type, data] of parts) {
    for (let at = 0; at === 0 || at < data.length; at += MAX_CHUNK_DATA) {
      const piece = data.subarray(at, Math.min(data.length, at + MAX_CHUNK_DATA));
      const last = at + MAX_CHUNK_DATA >= data.length;
      if (!last && type !== CHUNK.display && type !== CHUNK.attachment) throw new DimeError('MESSAGE_BAD_ARGUMENT', `chunk ${type} data exceeds ${MAX_CHUNK_DATA} bytes`);
      const r = nextR();
      pieces.push({ type, data: piece, flags: last ? 0 : PAYLOAD_FLAGS.continuation, r, payloadLength: standardPayloadLength(piece.length, r) });
    }
  }
  return pieces;
}

class MessageBuffer {
  readonly bytes: Uint8Array;
  private at = MESSAGE_HEADER_LENGTH;
  /** [start, end) of every chunk written, in order, with its type. */
  readonly chunks: { type: number; start: number; end: number }[] = [];

  constructor(total: number) {
    if (total > MAX_MESSAGE_LENGTH) throw new DimeError('OBJECT_TOO_LARGE', `the sealed message would be ${total} bytes, the maximum is ${MAX_MESSAGE_LENGTH}`);
    this.bytes = new Uint8Array(MESSAGE_HEADER_LENGTH + total);
    this.bytes.set(uintBytes(MAGIC.dmimeMessage, 2), 0);
    this.bytes.set(uintBytes(total, 4), 2);
  }

  /** Reserve a chunk and return its offset; the caller fills payload and slots. */
  begin(type: number, payloadLength: number): number {
    const start = this.at;
    writeChunkHeader(this.bytes, start, type, payloadLength);
    this.at += chunkLength(type, payloadLength);
    this.chunks.push({ type, start, end: this.at });
    return start;
  }

  chunkBytes(i: number): Uint8Array {
    const c = this.chunks[i]!;
    return this.bytes.subarray(c.start, c.end);
  }

  /** Everything from the first chunk to the end of the last chunk written. */
  written(): Uint8Array {
    return this.bytes.subarray(MESSAGE_HEADER_LENGTH, this.at);
  }
}

/** Encrypt `plain` into chunk `start` under a fresh key and write one keyslot per allowed actor. */
export function encryptChunkInto(crypto: CryptoBackend, out: Uint8Array, start: number, type: number, plain: Uint8Array, keks: Record<Actor, Kek>): ChunkKey {
  const chunkKey: ChunkKey = { iv: crypto.randomBytes(16), key: crypto.randomBytes(32) };
  const payloadAt = start + CHUNK_HEADER_LENGTH;
  crypto.aes256CbcEncryptInto(chunkKey.key, chunkKey.iv, plain, out, payloadAt);
  const actors = chunkSpec(type)!.actors;
  const rnd = crypto.randomBytes(16 * actors.length);
  actors.forEach((actor, i) => {
    out.set(wrapKeyslot(crypto, keks[actor], chunkKey, rnd.subarray(16 * i, 16 * i + 16)), payloadAt + plain.length + i * KEYSLOT_LENGTH);
  });
  return chunkKey;
}

const SIGNATURE_CHUNKS = [CHUNK.authorTree, CHUNK.authorFull, CHUNK.originMetaBounce, CHUNK.originDisplayBounce, CHUNK.originFull];

/** Seal `content` from the author to the recipient. Returns the 1847 object, ready for the origin. */
export async function sealMessage(crypto: CryptoBackend, parties: SealParties, content: MessageContent): Promise<Uint8Array> {
  checkParties(parties);
  if (content.display.length === 0) throw new DimeError('MESSAGE_BAD_ARGUMENT', 'a message needs at least one display part');
  const common = content.commonHeaders instanceof Uint8Array ? content.commonHeaders : encodeCommonHeaders(content.commonHeaders);
  const cryptoFp = (s: Signet): string => fingerprint(crypto, s, 'crypto')!;
  const originEnvelope = encodeOriginEnvelope({
    author: parties.author.address,
    authorSignet: cryptoFp(parties.author.signet),
    destination: parties.destination.domain,
    destinationSignet: cryptoFp(parties.destination.signet),
  });
  const destinationEnvelope = encodeDestinationEnvelope({
    recipient: parties.recipient.address,
    recipientSignet: cryptoFp(parties.recipient.signet),
    origin: parties.origin.domain,
    originSignet: cryptoFp(parties.origin.signet),
  });
  const pieces = contentPieces(crypto, [
    [CHUNK.origin, originEnvelope],
    [CHUNK.destination, destinationEnvelope],
    [CHUNK.commonHeaders, common],
    [CHUNK.otherHeaders, content.otherHeaders],
    ...content.display.map((d): [number, Uint8Array] => [CHUNK.display, d]),
    ...(content.attachments ?? []).map((a): [number, Uint8Array] => [CHUNK.attachment, a]),
  ]);

  // A fresh ephemeral key per message; each actor's KEK comes from ECDH with its signet key.
  let ephemeral = crypto.randomBytes(32);
  while (!crypto.secp256k1IsValidPrivateKey(ephemeral)) ephemeral = crypto.randomBytes(32);
  const keks = {} as Record<Actor, Kek>;
  const actorSignets: Record<Actor, Signet> = {
    author: parties.author.signet,
    origin: parties.origin.signet,
    destination: parties.destination.signet,
    recipient: parties.recipient.signet,
  };
  for (const actor of ACTORS) keks[actor] = deriveKek(crypto, crypto.secp256k1Ecdh(ephemeral, encryptionKeyOf(actorSignets[actor])!));
  const ephemeralPublic = crypto.secp256k1PublicKey(ephemeral);
  ephemeral.fill(0);

  let total = chunkLength(CHUNK.ephemeral, ephemeralPublic.length);
  for (const p of pieces) total += chunkLength(p.type, p.payloadLength);
  for (const t of SIGNATURE_CHUNKS) total += chunkLength(t, SIGNATURE_PAYLOAD_LENGTH);
  const msg = new MessageBuffer(total);

  msg.bytes.set(ephemeralPublic, msg.begin(CHUNK.ephemeral, ephemeralPublic.length) + CHUNK_HEADER_LENGTH);
  const signer = parties.author.signer;
  // One plaintext buffer, reused for every piece (each is encrypted before the next is written),
  // so a large message never holds more than one part's plaintext besides its own bytes.
  const scratch = new Uint8Array(Math.max(...pieces.map((p) => p.payloadLength)));
  for (const p of pieces) {
    const start = msg.begin(p.type, p.payloadLength);
    const plain = scratch.subarray(0, p.payloadLength);
    writeStandardPayload(plain, p.data, p.flags);
    plain.set(await signer.sign(plain.subarray(64)), 0);
    encryptChunkInto(crypto, msg.bytes, start, p.type, plain, keks);
  }

  const addSignature = (type: number, signature: Uint8Array): void => {
    encryptChunkInto(crypto, msg.bytes, msg.begin(type, SIGNATURE_PAYLOAD_LENGTH), type, signature, keks);
  };
  const chunkList = msg.chunks.map((c, i) => ({ type: c.type, bytes: msg.chunkBytes(i) }));
  addSignature(CHUNK.authorTree, await signer.sign(treeSignatureInput(crypto, chunkList)));
  addSignature(CHUNK.authorFull, await signer.sign(msg.written()));
  // The origin replaces these: libdime's author always writes all three (§5.7d).
  for (const type of [CHUNK.originMetaBounce, CHUNK.originDisplayBounce, CHUNK.originFull]) addSignature(type, new Uint8Array(SIGNATURE_PAYLOAD_LENGTH));
  return msg.bytes;
}
