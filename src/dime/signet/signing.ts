/**
 * Building and signing signets the way libdime's tools do (dime-formats.md §3.5–3.6), so that the
 * same keys and field values give byte-identical signets (Ed25519 is deterministic).
 * Signing goes through `Signer`, so organisation keys can live in an HSM.
 */
import type { CryptoBackend, Signer } from '../../crypto/backend.js';
import { DimeError } from '../../errors.js';
import { bytesEqual, utf8 } from '../bytes.js';
import { signingKeyOf, storedSigningKey } from './access.js';
import { SignetWriter, encodeSignet, fieldsThrough, getField, type Signet, type SignetField } from './codec.js';
import {
  CRYPTO_SIGNATURE_FIELD,
  CUSTODY_FIELD,
  ENCRYPTION_KEY_FIELD,
  FULL_SIGNATURE_FIELD,
  IDENTIFIER_FIELD,
  ID_SIGNATURE_FIELD,
  PHOTO_FIELD,
  SSR_SIGNATURE_FIELD,
  UNDEFINED_FIELD,
  fieldSpec,
  type SignetType,
} from './fields.js';
import { isValidState, validateSignet } from './validate.js';

/** Optional fields between the crypto signature and the full signature (ids 16–252). */
export interface SignetInfo {
  /** Text fields by id; repeatable ids (21 phone, 202 endorsements) take several values. */
  text?: ReadonlyArray<{ id: number; value: string }>;
  /** Undefined fields (251), each with its own name. */
  undefined?: ReadonlyArray<{ name: string; value: Uint8Array }>;
  /** Photo (252): PNG bytes. */
  photo?: Uint8Array;
}

function infoFields(type: SignetType, info: SignetInfo | undefined): SignetField[] {
  const out: SignetField[] = [];
  for (const t of info?.text ?? []) {
    const spec = fieldSpec(type, t.id);
    if (!spec || spec.kind !== 'text') throw new DimeError('SIGNET_BAD_ARGUMENT', `field ${t.id} is not a text field of a ${type} signet`);
    out.push({ id: t.id, value: utf8.encode(t.value) });
  }
  for (const u of info?.undefined ?? []) out.push({ id: UNDEFINED_FIELD, name: utf8.encode(u.name), value: u.value });
  if (info?.photo) out.push({ id: PHOTO_FIELD, value: info.photo });
  // Stable sort keeps the caller's order among repeated ids (phones, endorsements).
  out.sort((a, b) => a.id - b.id);
  for (let i = 1; i < out.length; i++) {
    const prev = out[i - 1] as SignetField;
    const cur = out[i] as SignetField;
    if (prev.id === cur.id && fieldSpec(type, cur.id)?.unique) throw new DimeError('SIGNET_BAD_ARGUMENT', `field ${cur.id} given more than once`);
  }
  return out;
}

/**
 * Sign the fields below `sigId` and put the signature at its ordered place, replacing any existing
 * one. Fields above `sigId` are kept (their own signatures then no longer verify).
 */
export async function signField(signet: Signet, sigId: number, signer: Signer): Promise<Signet> {
  const covered = fieldsThrough(signet, sigId - 1);
  const signature = await signer.sign(covered);
  const fields = signet.fields.filter((f) => f.id !== sigId);
  const at = fields.findIndex((f) => f.id > sigId);
  fields.splice(at < 0 ? fields.length : at, 0, { id: sigId, value: signature });
  return encodeSignet(signet.type, signet.dialect, fields);
}

/** Sign everything written so far and append the signature: how the builders add each signature. */
async function appendSignature(w: SignetWriter, sigId: number, signer: Signer): Promise<void> {
  w.add({ id: sigId, value: await signer.sign(w.encodedFields()) });
}

export interface OrgSignetOptions {
  /** The POK. */
  signer: Signer;
  /** Compressed secp256k1 public key of the organisation. */
  encryptionKey: Uint8Array;
  /** Secondary organisational keys with their permission bits (SOK_PERMISSIONS). */
  secondaryKeys?: ReadonlyArray<{ permissions: number; publicKey: Uint8Array }>;
  info?: SignetInfo;
  /** The domain (field 254). Without it the signet stops at the full signature (a "full" signet). */
  domain?: string;
  /** Stop after the crypto signature (the "crypto signet"). */
  cryptoOnly?: boolean;
}

export async function createOrgSignet(o: OrgSignetOptions): Promise<Signet> {
  const fields: SignetField[] = [{ id: 1, value: storedSigningKey(o.signer.publicKey) }];
  for (const sok of o.secondaryKeys ?? []) {
    if (!Number.isInteger(sok.permissions) || sok.permissions < 0 || sok.permissions > 255) throw new DimeError('SIGNET_BAD_ARGUMENT', 'SOK permissions must be a byte');
    const value = new Uint8Array(34);
    value[0] = sok.permissions;
    value.set(storedSigningKey(sok.publicKey), 1);
    fields.push({ id: 2, value });
  }
  fields.push({ id: ENCRYPTION_KEY_FIELD.org, value: o.encryptionKey });
  const w = new SignetWriter('org', 'libdime');
  for (const f of fields) w.add(f);
  await appendSignature(w, CRYPTO_SIGNATURE_FIELD.org, o.signer);
  if (o.cryptoOnly) return w.finish();
  return finishSignet(w, infoFields('org', o.info), o.signer, o.domain);
}

/** Informational fields, the full signature, then (with an identifier) field 254 and the ID signature: the tail both types share. */
async function finishSignet(w: SignetWriter, info: SignetField[], signer: Signer, identifier: string | undefined): Promise<Signet> {
  if (identifier !== undefined && identifier.length === 0) throw new DimeError('SIGNET_BAD_ARGUMENT', 'the identifier must not be empty');
  for (const f of info) w.add(f);
  await appendSignature(w, FULL_SIGNATURE_FIELD, signer);
  if (identifier !== undefined) {
    w.add({ id: IDENTIFIER_FIELD, value: utf8.encode(identifier) });
    await appendSignature(w, ID_SIGNATURE_FIELD, signer);
  }
  return w.finish();
}

export interface SigningRequestOptions {
  /** The user's (new) signing key. */
  signer: Signer;
  encryptionKey: Uint8Array;
  /** On rotation: the previous signing key, which signs the chain-of-custody field over the new keys. */
  previousSigner?: Signer;
}

export async function createSigningRequest(o: SigningRequestOptions): Promise<Signet> {
  const w = new SignetWriter('ssr', 'libdime')
    .add({ id: 1, value: storedSigningKey(o.signer.publicKey) })
    .add({ id: ENCRYPTION_KEY_FIELD.ssr, value: o.encryptionKey });
  if (o.previousSigner) await appendSignature(w, CUSTODY_FIELD, o.previousSigner);
  await appendSignature(w, SSR_SIGNATURE_FIELD, o.signer);
  return w.finish();
}

export interface SignUserOptions {
  /** The POK, or a SOK with the signet permission. */
  orgSigner: Signer;
  /** The user's address (field 254). Without it the signet stops at the full signature. */
  address?: string;
  info?: SignetInfo;
  /** When the request carries a custody signature: the user's previous signet, to check it first. */
  previous?: Signet;
  /** Stop after the organisation's crypto signature. */
  cryptoOnly?: boolean;
}

/**
 * Turn a signing request into a user signet. The request must carry a valid self-signature; a
 * custody signature is checked when `previous` is given (libdime's tool refuses every SSR that has
 * one, §9.5; we accept it and let verifiers check custody against the published history).
 */
export async function signUserSignet(crypto: CryptoBackend, ssr: Signet, o: SignUserOptions): Promise<Signet> {
  if (ssr.type !== 'ssr') throw new DimeError('SIGNET_NOT_SIGNABLE', `expected a signing request, got a ${ssr.type} signet`);
  const check = validateSignet(crypto, ssr, o.previous ? { previous: o.previous } : {});
  const custodyUnchecked = check.state === 'broken-custody' && !o.previous && getField(ssr, CUSTODY_FIELD) !== undefined;
  if (!isValidState(check.state) && !custodyUnchecked) {
    throw new DimeError('SIGNET_NOT_SIGNABLE', `the signing request is ${check.state}${check.reason ? ` (${check.reason})` : ''}`);
  }
  // Only the magic changes from SSR to user signet, so the user's signatures stay valid.
  const w = SignetWriter.from(ssr, 'user');
  await appendSignature(w, CRYPTO_SIGNATURE_FIELD.user, o.orgSigner);
  if (o.cryptoOnly) return w.finish();
  return finishSignet(w, infoFields('user', o.info), o.orgSigner, o.address);
}

/** Check that a keys file's public halves are the ones in a signet (keys ↔ signet pairing). */
export function keysMatchSignet(crypto: CryptoBackend, signet: Signet, keys: { signingKey: Uint8Array; encryptionKey: Uint8Array }): boolean {
  const sk = signingKeyOf(signet);
  const ek = getField(signet, ENCRYPTION_KEY_FIELD[signet.type])?.value;
  return !!sk && !!ek && bytesEqual(sk, crypto.ed25519PublicKey(keys.signingKey)) && bytesEqual(ek, crypto.secp256k1PublicKey(keys.encryptionKey));
}

/** Split forms libdime produces: everything through the crypto signature, or through the full signature. */
export function splitSignet(signet: Signet, form: 'crypto' | 'full'): Signet {
  const last = form === 'crypto' ? CRYPTO_SIGNATURE_FIELD[signet.type] : FULL_SIGNATURE_FIELD;
  return encodeSignet(signet.type, signet.dialect, signet.fields.filter((f) => f.id <= last));
}
