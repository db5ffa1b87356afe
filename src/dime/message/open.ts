/**
 * Opening a DMIME message as one of its four actors (dime-formats.md §5.9–5.10). Each view holds
 * only what that actor may read; an origin or destination view has no headers or body by
 * construction, because those actors hold no keyslot for them. Every signature the actor can check
 * is checked, in libdime's order, and a failure is a typed error naming the check; no plaintext is
 * returned from a message that fails any check.
 */
import type { CryptoBackend } from '../../crypto/backend.js';
import { DimeError, isDimeError } from '../../errors.js';
import { fingerprint, identifierOf, signingKeyOf, type Signet } from '../signet/index.js';
import { CHUNK, chunkSpec, decodeMessage, slotIndex, type Actor, type Chunk, type DmimeMessage } from './chunks.js';
import {
  decodeCommonHeaders,
  decodeDestinationEnvelope,
  decodeOriginEnvelope,
  type CommonHeaders,
  type DestinationEnvelope,
  type OriginEnvelope,
} from './headers.js';
import { PAYLOAD_FLAGS, deriveKek, readStandardPayload, unwrapKeyslot, type ChunkKey, type Kek, type StandardPayload } from './payload.js';
import { ALL_SECTIONS, DISPLAY_BOUNCE_SECTIONS, META_BOUNCE_SECTIONS, sectionInput, treeSignatureInput } from './signatures.js';

/** An actor's private encryption key, wherever it lives (file, memory, HSM): only ECDH is needed. */
export interface ActorKeys {
  /** The 32-byte x-coordinate of ECDH between the actor's private key and `publicKey`. */
  ecdh(publicKey: Uint8Array): Promise<Uint8Array> | Uint8Array;
}

export function localActorKeys(crypto: CryptoBackend, privateKey: Uint8Array): ActorKeys {
  return { ecdh: (publicKey) => crypto.secp256k1Ecdh(privateKey, publicKey) };
}

export interface ActorSignets {
  author?: Signet;
  origin?: Signet;
  destination?: Signet;
  recipient?: Signet;
}

export type Envelope = Partial<OriginEnvelope & DestinationEnvelope>;

export interface MessageView {
  actor: Actor;
  envelope: Envelope;
  /** Chunk 33 as sent, and parsed. */
  commonHeaders?: Uint8Array;
  common?: CommonHeaders;
  otherHeaders?: Uint8Array;
  display?: Uint8Array[];
  attachments?: Uint8Array[];
  /** Which origin signatures were present and verified (destination and recipient views). */
  originSignatures?: { metaBounce: boolean; displayBounce: boolean; full: true };
}

/** Per-message state of one actor: its KEK and access to the chunks it holds a keyslot for. */
export class ActorReader {
  private constructor(
    readonly crypto: CryptoBackend,
    readonly message: DmimeMessage,
    readonly actor: Actor,
    private readonly kek: Kek,
  ) {}

  static async create(crypto: CryptoBackend, bytes: Uint8Array | DmimeMessage, actor: Actor, keys: ActorKeys): Promise<ActorReader> {
    const message = bytes instanceof Uint8Array ? decodeMessage(bytes) : bytes;
    const ephemeral = message.chunks.find((c) => c.type === CHUNK.ephemeral)!.payload;
    let shared: Uint8Array;
    try {
      shared = await keys.ecdh(ephemeral);
    } catch (err) {
      if (isDimeError(err, 'CRYPTO_BAD_KEY')) throw new DimeError('MESSAGE_BAD_CHUNK', 'the ephemeral key is not a secp256k1 point', { cause: err });
      throw err;
    }
    return new ActorReader(crypto, message, actor, deriveKek(crypto, shared));
  }

  chunkKey(chunk: Chunk): ChunkKey {
    const slot = slotIndex(chunk.type, this.actor);
    if (slot < 0) throw new DimeError('MESSAGE_NOT_ALLOWED', `the ${this.actor} has no keyslot in the ${chunkSpec(chunk.type)!.name} chunk`);
    return unwrapKeyslot(this.crypto, this.kek, chunk.keyslots[slot]!);
  }

  decrypt(chunk: Chunk): Uint8Array {
    const key = this.chunkKey(chunk);
    return this.crypto.aes256CbcDecrypt(key.key, key.iv, chunk.payload);
  }

  /** Decrypt and parse a standard payload; with `authorKey`, verify its per-chunk signature. */
  standard(chunk: Chunk, authorKey: Uint8Array | undefined): StandardPayload {
    const name = chunkSpec(chunk.type)!.name;
    let payload: StandardPayload;
    try {
      payload = readStandardPayload(this.decrypt(chunk));
    } catch (err) {
      if (isDimeError(err, 'MESSAGE_UNSUPPORTED')) throw err;
      throw new DimeError('MESSAGE_DECRYPT_FAILED', `the ${name} chunk does not decrypt with the ${this.actor}'s key (wrong key, or the chunk was altered)`, { cause: err });
    }
    if (authorKey && !this.crypto.ed25519Verify(authorKey, payload.signed, payload.signature)) {
      throw new DimeError('MESSAGE_SIGNATURE_INVALID', `author signature of the ${name} chunk (${chunk.type})`);
    }
    return payload;
  }

  one(type: number): Chunk {
    return this.message.chunks.find((c) => c.type === type)!;
  }

  optional(type: number): Chunk | undefined {
    return this.message.chunks.find((c) => c.type === type);
  }

  offsetOf(chunk: Chunk): number {
    return chunk.bytes.byteOffset - this.message.bytes.byteOffset;
  }

  wireChunks(): { type: number; bytes: Uint8Array; offset: number }[] {
    return this.message.chunks.map((c) => ({ type: c.type, bytes: c.bytes, offset: this.offsetOf(c) }));
  }

  /** Verify the signature held (encrypted) in chunk `type` over `input` with any of `keys`. */
  verifySignatureChunk(type: number, input: Uint8Array, key: Uint8Array, what: string): void {
    const chunk = this.one(type);
    const signature = this.decrypt(chunk);
    if (!this.crypto.ed25519Verify(key, input, signature)) throw new DimeError('MESSAGE_SIGNATURE_INVALID', `${what} (${type})`);
  }

  /** Author tree (225) and full (226) signatures. */
  verifyAuthorSignatures(authorKey: Uint8Array): void {
    this.verifySignatureChunk(CHUNK.authorTree, treeSignatureInput(this.crypto, this.message.chunks), authorKey, 'author tree signature');
    const tree = this.one(CHUNK.authorTree);
    const first = this.message.chunks[0]!;
    const fullInput = this.message.bytes.subarray(this.offsetOf(first), this.offsetOf(tree) + tree.bytes.length);
    this.verifySignatureChunk(CHUNK.authorFull, fullInput, authorKey, 'author full signature');
  }

  /** Origin meta bounce (248) and display bounce (249) when present, then origin full (255), with the origin POK. */
  verifyOriginSignatures(originKey: Uint8Array): { metaBounce: boolean; displayBounce: boolean; full: true } {
    const bytes = this.message.bytes;
    const chunks = this.wireChunks();
    const meta = this.optional(CHUNK.originMetaBounce) !== undefined;
    const display = this.optional(CHUNK.originDisplayBounce) !== undefined;
    if (meta) this.verifySignatureChunk(CHUNK.originMetaBounce, sectionInput(bytes, chunks, META_BOUNCE_SECTIONS, CHUNK.originMetaBounce), originKey, 'origin meta bounce signature');
    if (display) this.verifySignatureChunk(CHUNK.originDisplayBounce, sectionInput(bytes, chunks, DISPLAY_BOUNCE_SECTIONS, CHUNK.originMetaBounce), originKey, 'origin display bounce signature');
    this.verifySignatureChunk(CHUNK.originFull, sectionInput(bytes, chunks, ALL_SECTIONS, CHUNK.originFull), originKey, 'origin full signature');
    return { metaBounce: meta, displayBounce: display, full: true };
  }
}

function need(signets: ActorSignets, role: keyof ActorSignets, actor: Actor): Signet {
  const s = signets[role];
  if (!s) throw new DimeError('MESSAGE_BAD_ARGUMENT', `opening as ${actor} needs the ${role}'s signet`);
  return s;
}

/** The envelope must name exactly the signets we verify with, or a valid signature proves nothing. */
function checkEnvelopeSignet(crypto: CryptoBackend, label: string, fp: string, identity: string, signet: Signet | undefined): void {
  if (!signet) return;
  if (fingerprint(crypto, signet, 'crypto') !== fp) throw new DimeError('MESSAGE_SIGNET_MISMATCH', `${label} fingerprint in the envelope is not that of the ${label.toLowerCase()} signet given`);
  const id = identifierOf(signet);
  if (id !== null && id.toLowerCase() !== identity.toLowerCase()) throw new DimeError('MESSAGE_SIGNET_MISMATCH', `the envelope names ${identity} but the ${label.toLowerCase()} signet belongs to ${id}`);
}

export function checkOriginEnvelope(crypto: CryptoBackend, e: OriginEnvelope, signets: ActorSignets): void {
  checkEnvelopeSignet(crypto, 'Author', e.authorSignet, e.author, signets.author);
  checkEnvelopeSignet(crypto, 'Destination', e.destinationSignet, e.destination, signets.destination);
}

export function checkDestinationEnvelope(crypto: CryptoBackend, e: DestinationEnvelope, signets: ActorSignets): void {
  checkEnvelopeSignet(crypto, 'Recipient', e.recipientSignet, e.recipient, signets.recipient);
  checkEnvelopeSignet(crypto, 'Origin', e.originSignet, e.origin, signets.origin);
}

function parseEnvelope<T>(decode: (d: Uint8Array) => T, payload: StandardPayload, name: string): T {
  try {
    return decode(payload.data);
  } catch (err) {
    throw new DimeError('MESSAGE_BAD_ENVELOPE', `${name} chunk: ${(err as Error).message}`, { cause: err });
  }
}

/** Display or attachment parts: consecutive chunks joined where the continuation flag says so. */
function contentParts(reader: ActorReader, type: number, authorKey: Uint8Array): Uint8Array[] {
  const parts: Uint8Array[] = [];
  let pending: Uint8Array[] = [];
  for (const chunk of reader.message.chunks.filter((c) => c.type === type)) {
    const p = reader.standard(chunk, authorKey);
    pending.push(p.data);
    if ((p.flags & PAYLOAD_FLAGS.continuation) === 0) {
      parts.push(pending.length === 1 ? pending[0]! : Buffer.concat(pending));
      pending = [];
    }
  }
  if (pending.length > 0) throw new DimeError('MESSAGE_BAD_PAYLOAD', `the last ${chunkSpec(type)!.name} chunk says its data continues`);
  return parts;
}

export interface OpenOptions {
  actor: Actor;
  keys: ActorKeys;
  signets: ActorSignets;
}

export async function openMessage(crypto: CryptoBackend, bytes: Uint8Array, options: OpenOptions): Promise<MessageView> {
  const { actor, signets } = options;
  const reader = await ActorReader.create(crypto, bytes, actor, options.keys);

  if (actor === 'destination') {
    const origin = need(signets, 'origin', actor);
    // The destination cannot check the author's per-chunk signature: it does not know the author.
    const envelope = parseEnvelope(decodeDestinationEnvelope, reader.standard(reader.one(CHUNK.destination), undefined), 'destination');
    checkDestinationEnvelope(crypto, envelope, signets);
    const originSignatures = reader.verifyOriginSignatures(signingKeyOf(origin)!);
    return { actor, envelope, originSignatures };
  }

  const author = need(signets, 'author', actor);
  const authorKey = signingKeyOf(author)!;
  const originEnvelope = parseEnvelope(decodeOriginEnvelope, reader.standard(reader.one(CHUNK.origin), authorKey), 'origin');
  checkOriginEnvelope(crypto, originEnvelope, signets);
  if (actor === 'origin') {
    reader.verifyAuthorSignatures(authorKey);
    return { actor, envelope: originEnvelope };
  }

  // Author and recipient: the whole message.
  const origin = actor === 'recipient' ? need(signets, 'origin', actor) : signets.origin;
  const destinationEnvelope = parseEnvelope(decodeDestinationEnvelope, reader.standard(reader.one(CHUNK.destination), authorKey), 'destination');
  checkDestinationEnvelope(crypto, destinationEnvelope, signets);
  reader.verifyAuthorSignatures(authorKey);
  // libdime's author view skips the origin signatures: the author may read its message before the origin signs.
  const originSignatures = actor === 'recipient' ? reader.verifyOriginSignatures(signingKeyOf(origin!)!) : undefined;
  const commonHeaders = reader.standard(reader.one(CHUNK.commonHeaders), authorKey).data;
  let common: CommonHeaders;
  try {
    common = decodeCommonHeaders(commonHeaders);
  } catch (err) {
    throw new DimeError('MESSAGE_BAD_HEADERS', `common headers chunk: ${(err as Error).message}`, { cause: err });
  }
  const otherHeaders = reader.standard(reader.one(CHUNK.otherHeaders), authorKey).data;
  const display = contentParts(reader, CHUNK.display, authorKey);
  const attachments = contentParts(reader, CHUNK.attachment, authorKey);
  return {
    actor,
    envelope: { ...originEnvelope, ...destinationEnvelope },
    commonHeaders,
    common,
    otherHeaders,
    display,
    attachments,
    ...(originSignatures ? { originSignatures } : {}),
  };
}
