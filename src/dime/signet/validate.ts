/**
 * Signet validation (dime-formats.md §3.7) and fingerprints (§3.8).
 *
 * States, worst to best, as libdime orders them: unknown-pok (libdime's UNKNOWN after a POK
 * mismatch), malformed, overflow, incomplete, broken-custody, invalid, ssr, crypto, full, id.
 * Deliberate differences from libdime, each safer and documented in docs/signets.md:
 *  - an SSR's chain-of-custody signature (field 4) is checked against the previous key; libdime
 *    checks field 5 there (§9.4) and so refuses every rotation SSR;
 *  - a user signet's own signature (field 5) is verified too, not only the organisation's;
 *  - fields after the closing signature of a level make the signet incomplete (structuralState).
 */
import { bytesEqual } from '../bytes.js';
import { base64EncodeNoPad } from '../base64.js';
import type { CryptoBackend } from '../../crypto/backend.js';
import { encryptionKeyOf, signetSigningKeys, signingKeyOf } from './access.js';
import { fieldsThrough, getField, hasField, type Signet } from './codec.js';
import {
  CRYPTO_SIGNATURE_FIELD,
  CUSTODY_FIELD,
  FULL_SIGNATURE_FIELD,
  ID_SIGNATURE_FIELD,
  SSR_SIGNATURE_FIELD,
  fieldSpecs,
  type SignetType,
} from './fields.js';

export const SIGNET_STATES = ['unknown-pok', 'malformed', 'overflow', 'incomplete', 'broken-custody', 'invalid', 'ssr', 'crypto', 'full', 'id'] as const;
export type SignetState = (typeof SIGNET_STATES)[number];

export function stateRank(state: SignetState): number {
  return SIGNET_STATES.indexOf(state);
}

/** Good states: the signet validated up to this level. */
export function isValidState(state: SignetState): boolean {
  return stateRank(state) >= stateRank('ssr');
}

export interface ValidationResult {
  state: SignetState;
  /** Why the state is not the structural one (a failed check), for people and logs. */
  reason?: string;
}

export interface ValidationContext {
  /** Org signets: the POKs of the domain's management record. */
  poks?: readonly Uint8Array[];
  /** User signets: the organisation's signet (trusted by the caller). Absent: only the SSR part is checked. */
  org?: Signet;
  /** The previous signet (or SSR) of this user, for the chain of custody. */
  previous?: Signet;
}

function requiredBelow(signet: Signet, fid: number): boolean {
  return fieldSpecs(signet.type).every((s) => !s.required || s.id >= fid || hasField(signet, s.id));
}

/**
 * The level the signet's fields claim, before any signature is checked. Stricter than libdime in one
 * respect: fields after the closing signature of the level (an unsigned field 254 behind a full
 * signature, informational fields behind a crypto signature) make the signet incomplete, because
 * nobody vouches for them and anyone on the path could have appended them. No libdime tool writes
 * such a signet; its split forms end exactly at a signature.
 */
export function structuralState(signet: Signet): SignetState {
  const levels: [number, SignetState][] =
    signet.type === 'ssr'
      ? [[SSR_SIGNATURE_FIELD, 'ssr']]
      : [
          [ID_SIGNATURE_FIELD, 'id'],
          [FULL_SIGNATURE_FIELD, 'full'],
          [CRYPTO_SIGNATURE_FIELD[signet.type], 'crypto'],
        ];
  for (const [fid, state] of levels) {
    if (!hasField(signet, fid)) continue;
    const unsignedTail = signet.fields.some((f) => f.id > fid);
    return requiredBelow(signet, fid) && !unsignedTail ? state : 'incomplete';
  }
  return 'incomplete';
}

function signatureValid(crypto: CryptoBackend, signet: Signet, sigId: number, keys: readonly Uint8Array[]): boolean {
  const sig = getField(signet, sigId)?.value;
  if (!sig) return true; // absent signatures are a structural matter, judged by structuralState
  const covered = fieldsThrough(signet, sigId - 1);
  return keys.some((k) => crypto.ed25519Verify(k, covered, sig));
}

/** Org signatures present on the signet, in the order libdime checks them. */
function orgSignatureIds(type: SignetType): number[] {
  return [CRYPTO_SIGNATURE_FIELD[type], FULL_SIGNATURE_FIELD, ID_SIGNATURE_FIELD];
}

function custodyState(crypto: CryptoBackend, signet: Signet, previous: Signet | undefined): ValidationResult | undefined {
  const hasCustody = hasField(signet, CUSTODY_FIELD);
  if (!hasCustody && !previous) return undefined;
  if (!hasCustody) return { state: 'broken-custody', reason: 'a previous signet was given but this one has no custody signature' };
  if (!previous) return { state: 'broken-custody', reason: 'custody signature present but no previous signet to check it against' };
  const previousKey = signingKeyOf(previous);
  if (!previousKey || !signatureValid(crypto, signet, CUSTODY_FIELD, [previousKey])) {
    return { state: 'broken-custody', reason: "custody signature does not verify under the previous signet's signing key" };
  }
  return undefined;
}

export function validateSignet(crypto: CryptoBackend, signet: Signet, ctx: ValidationContext = {}): ValidationResult {
  const structure = structuralState(signet);
  if (!isValidState(structure)) return { state: structure };
  const enc = encryptionKeyOf(signet);
  if (!enc || !crypto.secp256k1IsValidPublicKey(enc)) return { state: 'malformed', reason: 'the encryption key is not a point on secp256k1' };
  const ownKey = signingKeyOf(signet) as Uint8Array; // present: required below every signature

  if (signet.type === 'org') {
    const poks = ctx.poks ?? [];
    if (!poks.some((p) => bytesEqual(p, ownKey))) return { state: 'unknown-pok', reason: 'no POK from the management record matches the signet signing key' };
    for (const sigId of orgSignatureIds('org')) {
      if (!signatureValid(crypto, signet, sigId, [ownKey])) return { state: 'invalid', reason: `field ${sigId} signature does not verify under the POK` };
    }
    return { state: structure };
  }

  // SSR part, common to SSRs and user signets: the user's own signature.
  if (!signatureValid(crypto, signet, SSR_SIGNATURE_FIELD, [ownKey])) {
    return { state: 'invalid', reason: "field 5 (the user's own signature) does not verify" };
  }
  if (signet.type === 'user') {
    if (ctx.org) {
      const keys = signetSigningKeys(ctx.org);
      for (const sigId of orgSignatureIds('user')) {
        if (!signatureValid(crypto, signet, sigId, keys)) {
          return { state: 'invalid', reason: `field ${sigId} signature does not verify under the organisation's signet-signing keys` };
        }
      }
    }
  }
  const custody = custodyState(crypto, signet, ctx.previous);
  if (custody) return custody;
  if (signet.type === 'user' && !ctx.org) return { state: 'ssr', reason: 'organisational signatures not verified (no organisational signet given)' };
  return { state: structure };
}

export type FingerprintKind = 'ssr' | 'crypto' | 'full' | 'id';

/** Which fingerprints a signet type has, and the last field each covers (§3.8). */
const FINGERPRINT_FIELDS: Record<SignetType, Partial<Record<FingerprintKind, number>>> = {
  org: { crypto: 4, full: 253, id: 255 },
  user: { ssr: 5, crypto: 6, full: 253, id: 255 },
  ssr: { ssr: 5 },
};

export function fingerprint(crypto: CryptoBackend, signet: Signet, kind: FingerprintKind): string | undefined {
  const last = FINGERPRINT_FIELDS[signet.type][kind];
  return last === undefined ? undefined : base64EncodeNoPad(crypto.sha512(fieldsThrough(signet, last)));
}

/** Every fingerprint of the signet's type, computed as libdime does whether or not the closing field exists. */
export function fingerprints(crypto: CryptoBackend, signet: Signet): Partial<Record<FingerprintKind, string>> {
  const out: Partial<Record<FingerprintKind, string>> = {};
  for (const kind of Object.keys(FINGERPRINT_FIELDS[signet.type]) as FingerprintKind[]) out[kind] = fingerprint(crypto, signet, kind);
  return out;
}
