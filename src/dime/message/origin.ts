/**
 * The origin stage (dime-formats.md §5.7e, §5.9): the author's server checks the author's
 * signatures, then signs with the organisation's key (through `Signer`, so an HSM can do it).
 * It learns only the author, the destination domain and their fingerprints.
 *
 * One deliberate difference from libdime: a bounce signature that was not requested is removed, the
 * display bounce included. libdime leaves a zero "signature" in 249, which its own verifiers then
 * reject (§9.11); removing it gives a message every verifier accepts.
 */
import type { CryptoBackend, Signer } from '../../crypto/backend.js';
import { DimeError } from '../../errors.js';
import { bytesEqual } from '../bytes.js';
import { signingKeyOf } from '../signet/index.js';
import { CHUNK, CHUNK_HEADER_LENGTH, decodeMessage, encodeMessage, MESSAGE_HEADER_LENGTH, SIGNATURE_PAYLOAD_LENGTH, type Chunk } from './chunks.js';
import { decodeOriginEnvelope, type OriginEnvelope } from './headers.js';
import { ActorReader, checkOriginEnvelope, type ActorKeys, type ActorSignets } from './open.js';
import { ALL_SECTIONS, DISPLAY_BOUNCE_SECTIONS, META_BOUNCE_SECTIONS, sectionInput } from './signatures.js';

export interface OriginSignOptions {
  /** The organisation's encryption key (ECDH), to open the origin chunk and the signature chunks. */
  keys: ActorKeys;
  /** The organisation's POK: libdime's verifiers check origin signatures with the POK only (§9.12). */
  signer: Signer;
  /** The author's signet is required; the origin's is checked against `signer`; the destination's, if given, against the envelope. */
  signets: ActorSignets;
  /** Which bounce signatures to add: meta (248: envelope and headers), display (249: also the display parts). */
  bounce?: { meta?: boolean; display?: boolean };
}

export interface OriginSigned {
  message: Uint8Array;
  envelope: OriginEnvelope;
}

export async function signAsOrigin(crypto: CryptoBackend, bytes: Uint8Array, options: OriginSignOptions): Promise<OriginSigned> {
  const author = options.signets.author;
  if (!author) throw new DimeError('MESSAGE_BAD_ARGUMENT', "origin signing needs the author's signet");
  const origin = options.signets.origin;
  if (!origin) throw new DimeError('MESSAGE_BAD_ARGUMENT', "origin signing needs the origin's signet");
  const pok = signingKeyOf(origin);
  if (!pok || !bytesEqual(pok, options.signer.publicKey)) throw new DimeError('MESSAGE_BAD_ARGUMENT', "the origin signer is not the origin signet's POK");

  const reader = await ActorReader.create(crypto, bytes, 'origin', options.keys);
  const authorKey = signingKeyOf(author)!;
  const payload = reader.standard(reader.one(CHUNK.origin), authorKey);
  let envelope: OriginEnvelope;
  try {
    envelope = decodeOriginEnvelope(payload.data);
  } catch (err) {
    throw new DimeError('MESSAGE_BAD_ENVELOPE', `origin chunk: ${(err as Error).message}`, { cause: err });
  }
  checkOriginEnvelope(crypto, envelope, options.signets);
  const originDomain = envelope.author.slice(envelope.author.lastIndexOf('@') + 1).toLowerCase();
  const ourDomain = (signetDomain(origin) ?? originDomain).toLowerCase();
  if (originDomain !== ourDomain) throw new DimeError('MESSAGE_SIGNET_MISMATCH', `the author ${envelope.author} is not in our domain ${ourDomain}`);
  reader.verifyAuthorSignatures(authorKey);

  // Keep the requested bounce chunks (placeholders the author wrote), drop the others.
  const wanted = (c: Chunk): boolean =>
    (c.type !== CHUNK.originMetaBounce || !!options.bounce?.meta) && (c.type !== CHUNK.originDisplayBounce || !!options.bounce?.display);
  const keys = new Map<number, ReturnType<ActorReader['chunkKey']>>();
  for (const type of [CHUNK.originMetaBounce, CHUNK.originDisplayBounce, CHUNK.originFull]) {
    const chunk = reader.optional(type);
    if (chunk && wanted(chunk)) keys.set(type, reader.chunkKey(chunk));
  }
  for (const [type, requested] of [[CHUNK.originMetaBounce, options.bounce?.meta], [CHUNK.originDisplayBounce, options.bounce?.display]] as const) {
    if (requested && !keys.has(type)) throw new DimeError('MESSAGE_INCOMPLETE', `a ${type === CHUNK.originMetaBounce ? 'meta' : 'display'} bounce signature was requested but the author left no placeholder for it`);
  }
  const kept = reader.message.chunks.filter(wanted);
  const out = encodeMessage(kept.map((c) => c.bytes));
  const layout: { type: number; bytes: Uint8Array; offset: number }[] = [];
  let at = MESSAGE_HEADER_LENGTH;
  for (const c of kept) {
    layout.push({ type: c.type, bytes: out.subarray(at, at + c.bytes.length), offset: at });
    at += c.bytes.length;
  }

  // Each signature is encrypted with the chunk's existing key and IV; the keyslots stay as they are.
  const place = async (type: number, mask: number): Promise<void> => {
    const chunk = layout.find((c) => c.type === type)!;
    const signature = await options.signer.sign(sectionInput(out, layout, mask, type));
    const key = keys.get(type)!;
    const sealed = crypto.aes256CbcEncrypt(key.key, key.iv, signature);
    if (sealed.length !== SIGNATURE_PAYLOAD_LENGTH) throw new DimeError('MESSAGE_BAD_CHUNK', 'signature chunk payload size');
    out.set(sealed, chunk.offset + CHUNK_HEADER_LENGTH);
  };
  if (keys.has(CHUNK.originMetaBounce)) await place(CHUNK.originMetaBounce, META_BOUNCE_SECTIONS);
  if (keys.has(CHUNK.originDisplayBounce)) await place(CHUNK.originDisplayBounce, DISPLAY_BOUNCE_SECTIONS);
  await place(CHUNK.originFull, ALL_SECTIONS);
  // A last structural check of what we emit.
  decodeMessage(out);
  return { message: out, envelope };
}

function signetDomain(signet: NonNullable<ActorSignets['origin']>): string | undefined {
  const id = signet.fields.find((f) => f.id === 254)?.value;
  return id ? new TextDecoder().decode(id) : undefined;
}
