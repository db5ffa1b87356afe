/**
 * The inbound half of the gateway (docs/mail-flow.md "Inbound"): at end of message on the path the
 * relay and the Internet deliver to, a DIME message for a local user is verified and then
 *
 *   trustful recipient   opened with the user's key (unsealed from the user store) and replaced by
 *                        the original, headers and body byte for byte, under an
 *                        `Authentication-Results: <host>; dime=pass …` header (a key sealed only
 *                        under the user's password and not unlocked now: as a cautious user's);
 *   cautious, paranoid   left sealed, with the Authentication-Results header on top. The server
 *                        holds no key of theirs, so it verifies as the destination (the origin's
 *                        signatures) with the organisation's key when `orgKeys` is given; without
 *                        it nothing is verifiable here and the header says `dime=neutral`;
 *   forged or invalid    refused by the `invalid` policy: `550 5.7.0 DIME message failed
 *                        verification: <reason>`, or held (quarantine) with `dime=fail`.
 *
 * A message is DIME when its top-level entity, or a direct part of a top-level multipart, is
 * `application/x-dime-message` (the relay's wrapper, src/dmtp/server.ts inboundWrapper, or a client's
 * own). Anything else passes untouched, apart from forged Authentication-Results headers that claim
 * our host name (RFC 8601 §5), which are deleted from every message, DIME or not.
 *
 * What a pass means, for a trustful recipient (openMessage as the recipient, given all four signets):
 * the author's per-chunk, tree and full signatures with the author's signet, the origin's bounce and
 * full signatures with the origin's signet, and the envelopes bound to exactly those signets. The
 * author and origin signets come from `signets` by the fingerprints the envelopes name (validated
 * against the origin's record by the resolver); the destination and recipient signets must be
 * versions we published (`store`); the author must be in the origin's domain, the destination must
 * be our domain and the recipient the SMTP envelope recipient.
 *
 * Failures: anything the message itself gets wrong is permanent (the invalid policy). Anything that
 * may pass (a signet fetch that failed for a retryable reason, DNS, the keystore, the deadline) is
 * thrown as a DimeError, so the milter's failure policy answers (tempfail by default): nothing is
 * ever accepted unprocessed. A signet source that answers "no such signet" or "does not validate" is
 * permanent; the same codes the relay treats as permanent (src/dmtp/server.ts).
 *
 * Several envelope recipients: a DMIME object is sealed for one recipient, and a milter answers once
 * per message at end of data, so it cannot accept the message for one recipient and defer the
 * others; replacing the body would also show one recipient's plaintext to the rest. The relay always
 * hands over one recipient per transaction, so a DIME message with several distinct recipients did
 * not come from a relay: it is refused by the invalid policy (`550 5.5.3`, GATEWAY_TOO_MANY_RECIPIENTS)
 * rather than deferred, because a retry of the same transaction could never succeed.
 *
 * Exactness: the mailbox gets what Postfix would have stored had the original come to it directly.
 * The rebuilt original is split into header fields the way Postfix's cleanup does (mime-scan.ts),
 * every visible header of the wrapper is deleted (Postfix's own Received header is never shown to a
 * milter and stays), the original fields are added in order, less those cleanup drops from any
 * incoming message (POSTFIX_DROPPED_HEADERS), and the body is replaced.
 * With SMFIP_HDR_LEADSPC negotiated (src/gateway/handler.ts does) each field's value goes back
 * exactly, including the white space after the colon. A field value that is not UTF-8 or holds a NUL
 * cannot travel through the milter's string API exactly, so such a message stays sealed
 * (GATEWAY_UNREPRESENTABLE) instead of being altered silently.
 *
 * Logs carry an `event` (gateway.inbound.<outcome>) and a stable `code`, never header values, the
 * author or content.
 */
import type { CryptoBackend } from '../crypto/backend.js';
import { ActorReader, CHUNK, decodeDestinationEnvelope, decodeMessage, decodeOriginEnvelope, openMessage, type ActorKeys, type DestinationEnvelope, type DmimeMessage, type OriginEnvelope } from '../dime/message/index.js';
import { encryptionKeyOf, type Signet } from '../dime/signet/index.js';
import { bytesEqual } from '../dime/bytes.js';
import type { SignetSource } from '../dmtp/client.js';
import { DimeError, ERROR_CODES, isDimeError, type ErrorCode } from '../errors.js';
import type { SignetStore } from '../keystore/signets.js';
import type { UnsealedUserKey, UserKeyStore } from '../keystore/users.js';
import type { Logger } from '../log.js';
import { headerIndexAt, modify, verdict, type ActionName, type EomResult, type Header, type MilterContext, type MilterMessage, type Modification } from '../milter/handler.js';
import { recordOpened, recordRejected } from '../service-metrics.js';
import { partsToMime } from './mime.js';
import { CR, LF, decodeMimeBase64, fieldName, parseHeaderBlock, parseMimeValue, scanHeaderBlock, splitMultipart, unfoldedText } from './mime-scan.js';

/** The MIME type of a DMIME object in mail (the relay's wrapper, bundles, DIME clients). */
export const DIME_CONTENT_TYPE = 'application/x-dime-message';

/**
 * What the inbound processor may ask Postfix to do: add and delete headers (the original's and
 * Authentication-Results), replace the body, and hold a message under the quarantine policy.
 */
export const INBOUND_ACTIONS: readonly ActionName[] = ['addHeader', 'changeHeader', 'replaceBody', 'quarantine'];

/** The processor writes header values exactly only when the handler negotiates SMFIP_HDR_LEADSPC. */
export const INBOUND_HEADER_LEADING_SPACE = true;

export interface InboundOptions {
  /** Our dark domain. */
  domain: string;
  /** authserv-id for Authentication-Results (our host name). */
  hostname: string;
  crypto: CryptoBackend;
  /** Local users: custody mode (show) and trustful users' keys (unseal). */
  users: Pick<UserKeyStore, 'show' | 'unseal'>;
  /** Our published signets: destination (org) and recipient (user) versions. */
  store: Pick<SignetStore, 'byFingerprint'>;
  /** Other domains' signets (author, origin), validated by the resolver. */
  signets: SignetSource;
  /**
   * The organisation's encryption key (OrgKeystore.actorKeys): verifies the origin's signatures of a
   * message for a cautious or paranoid user as the destination. Without it such messages get
   * `dime=neutral` (nothing verifiable here; the user's client verifies).
   */
  orgKeys?: ActorKeys;
  /** Forged or invalid DIME mail: reject (550 5.7.0, the default) or quarantine (hold queue). */
  invalid?: 'reject' | 'quarantine';
  log?: Logger;
}

// ------------------------------------------------------------------------------------ finding the DMIME object

export interface HeaderLike {
  name: string;
  value: string;
}

/** The text of the first header called `name` (case-insensitive), folds removed. */
function headerText(headers: readonly HeaderLike[], name: string): string | undefined {
  const h = headers.find((x) => x.name.toLowerCase() === name);
  return h === undefined ? undefined : h.value.replace(/\r?\n/g, '');
}

/** RFC 2045 base64 content: line breaks and blanks between groups are allowed, nothing else. */
function decodeBase64Body(buf: Buffer, start: number, end: number): Uint8Array {
  const bytes = decodeMimeBase64(buf, start, end);
  if (!bytes) throw new DimeError('GATEWAY_BAD_WRAPPER', 'the DIME part is not base64');
  return bytes;
}

function checkEncoding(cte: string | undefined): void {
  if (cte === undefined || cte.trim().toLowerCase() !== 'base64') throw new DimeError('GATEWAY_BAD_WRAPPER', 'the DIME part is not in base64 transfer encoding');
}

/** Most parts a top-level multipart may have before we stop looking: the relay's wrapper has two. */
const MAX_WRAPPER_PARTS = 1000;

/**
 * The DMIME object a message carries: undefined when it carries none (not DIME), the object when
 * exactly one top-level entity or direct part of a top-level multipart is application/x-dime-message.
 * GATEWAY_BAD_WRAPPER when there are several such parts or the one there does not decode. Works on
 * what a milter sees (headers as fields, body from after the blank line, CRLF or LF) and generalises
 * src/dmtp/server.ts extractDimeMessage, which reads a whole wrapper as one text.
 */
export function findDimeObject(headers: readonly HeaderLike[], body: Uint8Array): Uint8Array | undefined {
  const ct = headerText(headers, 'content-type');
  if (ct === undefined) return undefined;
  const type = parseMimeValue(ct);
  const buf = Buffer.from(body.buffer, body.byteOffset, body.length);
  if (type.value === DIME_CONTENT_TYPE) {
    checkEncoding(headerText(headers, 'content-transfer-encoding'));
    return decodeBase64Body(buf, 0, buf.length);
  }
  const boundary = type.params.get('boundary');
  if (!type.value.startsWith('multipart/') || !boundary) return undefined;
  const parts = splitMultipart(buf, 0, buf.length, Buffer.from(boundary, 'latin1'), MAX_WRAPPER_PARTS);
  if (!parts) return undefined;
  const found: Array<{ start: number; end: number; cte: string | undefined }> = [];
  for (const [start, end] of parts) {
    let isDime = false;
    let cte: string | undefined;
    const block = scanHeaderBlock(buf, start, end, (f) => {
      const name = fieldName(buf, f);
      if (name === 'content-type') isDime ||= parseMimeValue(unfoldedText(buf, f)).value === DIME_CONTENT_TYPE;
      else if (name === 'content-transfer-encoding') cte ??= unfoldedText(buf, f);
    });
    if (isDime) found.push({ start: block.bodyStart, end, cte });
  }
  if (found.length === 0) return undefined;
  if (found.length > 1) throw new DimeError('GATEWAY_BAD_WRAPPER', `${found.length} DIME parts in one message`);
  checkEncoding(found[0]!.cte);
  return decodeBase64Body(buf, found[0]!.start, found[0]!.end);
}

// ------------------------------------------------------------------------------------ the original as header edits

export interface OriginalMessage {
  /** Header fields in order: the name without white space before the colon, the value's bytes after the colon without the final line end. */
  fields: Array<{ name: string; value: Uint8Array }>;
  /** Everything after the header block (after the blank line, or from the first line that is not a field). */
  body: Uint8Array;
}

/** Split a message the way Postfix's cleanup does (mime-scan.ts scanHeaderBlock documents the rule). */
export function splitOriginal(raw: Uint8Array): OriginalMessage {
  const buf = Buffer.from(raw.buffer, raw.byteOffset, raw.length);
  const block = parseHeaderBlock(buf, 0, buf.length);
  const fields = block.fields.map((f) => {
    let end = f.end;
    if (end > f.colon + 1 && buf[end - 1] === LF) end--;
    if (end > f.colon + 1 && buf[end - 1] === CR) end--;
    return { name: buf.toString('latin1', f.start, f.colon).replace(/[ \t]+$/, ''), value: raw.subarray(f.colon + 1, end) };
  });
  return { fields, body: raw.subarray(block.bodyStart) };
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Fields Postfix's cleanup (3.7, hard-coded) removes from every message it receives, before a milter
 * sees them: the message as Postfix would have stored it had it come directly has none of them (a
 * Return-Path is the delivery agent's, Bcc must not reach the recipients). Fields a milter adds are
 * not filtered, so the processor leaves these out itself.
 */
export const POSTFIX_DROPPED_HEADERS: ReadonlySet<string> = new Set(['return-path', 'content-length', 'bcc', 'resent-bcc']);

/** A field value as the milter API takes it, or undefined when it cannot be carried exactly. */
function milterValue(value: Uint8Array, leadingSpace: boolean): string | undefined {
  if (value.includes(0)) return undefined;
  let text: string;
  try {
    text = strictUtf8.decode(value);
  } catch {
    return undefined;
  }
  if (leadingSpace) return text;
  // Without HDR_LEADSPC Postfix writes `Name: value`: one space is ours to drop, any other spacing is lost.
  return text.startsWith(' ') ? text.slice(1) : text;
}

// ------------------------------------------------------------------------------------ Authentication-Results

/** The authserv-id of an Authentication-Results value (RFC 8601 §2.2): the token before the first `;`. */
function authservId(value: string): string {
  return value
    .replace(/\([^)]*\)/g, ' ')
    .split(';')[0]!
    .trim()
    .split(/\s+/)[0]!
    .toLowerCase();
}

/** Deletions of every Authentication-Results header that claims to be ours: only we may write those. */
/** Deletions of the Authentication-Results headers that claim our host name (RFC 8601 §5); the outbound side uses it too. */
export function forgedResults(headers: readonly Header[], hostname: string): Modification[] {
  const mine = hostname.toLowerCase();
  const mods: Modification[] = [];
  for (let i = headers.length - 1; i >= 0; i--) {
    const h = headers[i]!;
    if (h.name.toLowerCase() === 'authentication-results' && authservId(h.value) === mine) mods.push(modify.deleteHeader(h.name, headerIndexAt(headers, i)));
  }
  return mods;
}

/** A value RFC 8601 takes as a plain token (no spaces, comments, quotes or separators). */
function token(value: string): string | undefined {
  return /^[\x21-\x7e]+$/.test(value) && !/[()";\\]/.test(value) ? value : undefined;
}

/** Printable ASCII on one line, for SMTP replies and logs. */
function printable(text: string, max = 300): string {
  return text.replace(/[^\x20-\x7e]+/g, ' ').trim().slice(0, max);
}

/** Text for an RFC 8601 comment: no parentheses or backslashes, which would end or escape it. */
function commentText(text: string, max = 400): string {
  return printable(text, max).replace(/[()]/g, (c) => (c === '(' ? '[' : ']')).replace(/\\/g, '/');
}

/** What a DimeError says beyond its code's description: the reason a peer or a log reader needs. */
function detailOf(err: DimeError): string {
  const prefix = `${ERROR_CODES[err.code]}: `;
  return err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
}

// ------------------------------------------------------------------------------------ outcomes

type Sealed = { kind: 'sealed'; result: 'pass' | 'neutral'; comment: string; code: 'sealed' | 'unverified' | 'GATEWAY_UNREPRESENTABLE' | 'USER_LOCKED'; origin?: string };
type Outcome = { kind: 'open'; original: OriginalMessage; author: string; origin: string } | Sealed;

/** Codes of a message that is wrong in itself, wherever they come from: permanent, never retried. */
const MESSAGE_FAULT_PREFIXES = ['MESSAGE_', 'OBJECT_', 'BASE64_', 'SIGNET_', 'MIME_'];
const MESSAGE_FAULT_CODES: ReadonlySet<ErrorCode> = new Set(['CRYPTO_BAD_INPUT', 'CRYPTO_BAD_KEY', 'CRYPTO_AUTH_FAILED']);

/** Signet lookups that say "this will not get better" (as the relay reads them, src/dmtp/server.ts). */
const PERMANENT_SIGNET_CODES: ReadonlySet<ErrorCode> = new Set([
  'SIGNET_NOT_FOUND',
  'DMTP_NO_RECORD',
  'DMTP_SIGNET_REJECTED',
  'DMTP_FINGERPRINT_MISMATCH',
  'RESOLVE_SIGNET_INVALID',
  'RESOLVE_CUSTODY_BROKEN',
  'RESOLVE_BAD_NAME',
  'DNS_NO_RECORD',
]);

/** The GATEWAY_ codes that are a verdict on the message (the invalid policy). */
const INVALID_CODES: ReadonlySet<ErrorCode> = new Set([
  'GATEWAY_BAD_WRAPPER',
  'GATEWAY_UNDECODABLE',
  'GATEWAY_TOO_MANY_RECIPIENTS',
  'GATEWAY_NOT_LOCAL_RECIPIENT',
  'GATEWAY_NOT_FOR_RECIPIENT',
  'GATEWAY_RECIPIENT_MISMATCH',
  'GATEWAY_WRONG_DESTINATION',
  'GATEWAY_ORIGIN_MISMATCH',
  'GATEWAY_NOT_OUR_SIGNET',
  'GATEWAY_UNKNOWN_SIGNET',
  'GATEWAY_VERIFY_FAILED',
]);

function isMessageFault(err: unknown): err is DimeError {
  return isDimeError(err) && (MESSAGE_FAULT_CODES.has(err.code) || MESSAGE_FAULT_PREFIXES.some((p) => err.code.startsWith(p)));
}

/** Run a step over message data: a fault of the message becomes `code` (permanent); anything else propagates. */
async function judged<T>(code: ErrorCode, what: string, fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (isMessageFault(err)) throw new DimeError(code, `${what}: ${err.message}`, { cause: err });
    throw err;
  }
}

function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

function checkDeadline(signal: AbortSignal): void {
  if (signal.aborted) throw new DimeError('DEADLINE_EXCEEDED', 'inbound DIME processing');
}

// ------------------------------------------------------------------------------------ the processor

export function createInboundProcessor(o: InboundOptions): (ctx: MilterContext, message: MilterMessage) => Promise<EomResult> {
  const domain = o.domain.toLowerCase().replace(/\.$/, '');
  const hostname = o.hostname.toLowerCase();
  const invalidPolicy = o.invalid ?? 'reject';
  if (!token(hostname)) throw new DimeError('USAGE', `${JSON.stringify(o.hostname)} cannot be an authserv-id`);

  /** An author or origin signet by fingerprint: our own domain's from the store, others' through the signet source. */
  async function fetchSignet(kind: 'org' | 'user', name: string, fp: string): Promise<Signet> {
    try {
      if (domainOf(name) === domain) {
        const s = await o.store.byFingerprint(name, fp);
        if (!s) throw new DimeError('SIGNET_NOT_FOUND', `${name}: no published version with that fingerprint`);
        return s;
      }
      return kind === 'org' ? await o.signets.org(name, fp) : await o.signets.user(name, fp);
    } catch (err) {
      if (isDimeError(err) && (PERMANENT_SIGNET_CODES.has(err.code) || isMessageFault(err))) {
        throw new DimeError('GATEWAY_UNKNOWN_SIGNET', `${kind === 'org' ? 'origin' : 'author'} signet: ${err.code}`, { cause: err });
      }
      // Retryable (network, DNS, deadline): the failure policy decides, never a verdict on the message.
      if (isDimeError(err)) throw err;
      throw new DimeError('RESOLVE_FETCH_FAILED', `${kind} signet of ${name}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Author and origin signets together; a definite "no such signet" wins over a retryable failure. */
  async function fetchBoth(author: string, authorFp: string, origin: string, originFp: string): Promise<{ author: Signet; origin: Signet }> {
    const [a, g] = await Promise.allSettled([fetchSignet('user', author, authorFp), fetchSignet('org', origin, originFp)]);
    for (const r of [g, a]) if (r.status === 'rejected' && isDimeError(r.reason, 'GATEWAY_UNKNOWN_SIGNET')) throw r.reason;
    for (const r of [g, a]) if (r.status === 'rejected') throw r.reason;
    return { author: (a as PromiseFulfilledResult<Signet>).value, origin: (g as PromiseFulfilledResult<Signet>).value };
  }

  /** Our published version of a destination or recipient signet, or GATEWAY_NOT_OUR_SIGNET. */
  async function ours(name: string, fp: string, what: string): Promise<Signet> {
    const s = await o.store.byFingerprint(name, fp);
    if (!s) throw new DimeError('GATEWAY_NOT_OUR_SIGNET', `the envelope's ${what} signet is not one we published`);
    return s;
  }

  /** The trustful recipient's key generation the message opens with (old mail may use an older one). */
  async function recipientReader(dmime: DmimeMessage, rcpt: string, current: number): Promise<{ key: UnsealedUserKey; reader: ActorReader; destination: DestinationEnvelope } | undefined> {
    for (let g = current; g >= 1; g--) {
      let key: UnsealedUserKey;
      try {
        key = await o.users.unseal(rcpt, { generation: g });
      } catch (err) {
        // A key sealed only under the user's password waits for their login: no key now (undefined).
        // Otherwise the current key must open; an older generation that is gone (purged) is just not a candidate.
        if (g === current && isDimeError(err, 'USER_LOCKED')) return undefined;
        if (g === current) throw err;
        continue;
      }
      const reader = await judged('GATEWAY_UNDECODABLE', 'the ephemeral key', () => ActorReader.create(o.crypto, dmime, 'recipient', key.actorKeys));
      try {
        const destination = decodeDestinationEnvelope(reader.standard(reader.one(CHUNK.destination), undefined).data);
        return { key, reader, destination };
      } catch (err) {
        if (isDimeError(err, 'MESSAGE_DECRYPT_FAILED')) continue;
        if (isMessageFault(err)) throw new DimeError('GATEWAY_VERIFY_FAILED', `destination envelope: ${err.message}`, { cause: err });
        throw err;
      }
    }
    throw new DimeError('GATEWAY_NOT_FOR_RECIPIENT', "no key generation of the recipient opens the message");
  }

  async function openForTrustful(object: Uint8Array, dmime: DmimeMessage, rcpt: string, generation: number, signal: AbortSignal): Promise<Outcome> {
    const opened = await recipientReader(dmime, rcpt, generation);
    if (!opened) {
      // Deliver it sealed, verified as far as the organisation can, rather than hold it until the user logs in.
      const s = await verifyForSealedAccount(object, dmime, rcpt, signal);
      return { ...s, code: 'USER_LOCKED', comment: `${s.comment}; the recipient's key is locked` };
    }
    const { key, reader, destination } = opened;
    const origin: OriginEnvelope = await judged('GATEWAY_VERIFY_FAILED', 'origin envelope', () => decodeOriginEnvelope(reader.standard(reader.one(CHUNK.origin), undefined).data));
    if (destination.recipient.toLowerCase() !== rcpt) throw new DimeError('GATEWAY_RECIPIENT_MISMATCH', 'the message is sealed for another recipient');
    if (origin.destination.toLowerCase() !== domain) throw new DimeError('GATEWAY_WRONG_DESTINATION', `the message is addressed to ${printable(origin.destination, 100)}`);
    const originDomain = destination.origin.toLowerCase();
    if (domainOf(origin.author) !== originDomain) throw new DimeError('GATEWAY_ORIGIN_MISMATCH', `the author is not in ${printable(originDomain, 100)}`);
    const destSignet = await ours(domain, origin.destinationSignet, 'destination');
    const rcptSignet = await ours(rcpt, destination.recipientSignet, 'recipient');
    const rcptKey = encryptionKeyOf(rcptSignet);
    if (!rcptKey || !bytesEqual(rcptKey, key.encryptionPublicKey)) throw new DimeError('GATEWAY_NOT_OUR_SIGNET', "the envelope's recipient signet is not the key the message opened with");
    checkDeadline(signal);
    const fetched = await fetchBoth(origin.author, origin.authorSignet, originDomain, destination.originSignet);
    checkDeadline(signal);
    const view = await judged('GATEWAY_VERIFY_FAILED', 'signatures', () =>
      openMessage(o.crypto, object, { actor: 'recipient', keys: key.actorKeys, signets: { author: fetched.author, origin: fetched.origin, destination: destSignet, recipient: rcptSignet } }),
    );
    let raw: Uint8Array;
    try {
      raw = partsToMime({ common: view.common!, otherHeaders: view.otherHeaders!, display: view.display!, attachments: view.attachments! });
    } catch (err) {
      // Authentic, but its parts do not describe a message we can rebuild: the user's client can.
      if (isDimeError(err) && err.code.startsWith('MIME_')) return unrepresentable(originDomain, `the content does not rebuild as a message (${err.code})`);
      throw err;
    }
    return { kind: 'open', original: splitOriginal(raw), author: origin.author.toLowerCase(), origin: originDomain };
  }

  function unrepresentable(origin: string, why: string): Sealed {
    return { kind: 'sealed', result: 'pass', code: 'GATEWAY_UNREPRESENTABLE', origin, comment: `origin=${origin}, author and origin signatures verified; left sealed: ${why}` };
  }

  async function verifyForSealedAccount(object: Uint8Array, dmime: DmimeMessage, rcpt: string, signal: AbortSignal): Promise<Sealed> {
    if (!o.orgKeys) return { kind: 'sealed', result: 'neutral', code: 'unverified', comment: 'sealed for the recipient; this server holds no key to verify it' };
    const reader = await judged('GATEWAY_UNDECODABLE', 'the ephemeral key', () => ActorReader.create(o.crypto, dmime, 'destination', o.orgKeys!));
    let destination: DestinationEnvelope;
    try {
      destination = decodeDestinationEnvelope(reader.standard(reader.one(CHUNK.destination), undefined).data);
    } catch (err) {
      if (isDimeError(err, 'MESSAGE_DECRYPT_FAILED')) throw new DimeError('GATEWAY_NOT_FOR_RECIPIENT', "the message does not open with our organisation's key");
      if (isMessageFault(err)) throw new DimeError('GATEWAY_VERIFY_FAILED', `destination envelope: ${err.message}`, { cause: err });
      throw err;
    }
    if (destination.recipient.toLowerCase() !== rcpt) throw new DimeError('GATEWAY_RECIPIENT_MISMATCH', 'the message is sealed for another recipient');
    const rcptSignet = await ours(rcpt, destination.recipientSignet, 'recipient');
    const originDomain = destination.origin.toLowerCase();
    checkDeadline(signal);
    const origin = await fetchSignet('org', originDomain, destination.originSignet);
    checkDeadline(signal);
    await judged('GATEWAY_VERIFY_FAILED', 'signatures', () => openMessage(o.crypto, object, { actor: 'destination', keys: o.orgKeys!, signets: { origin, recipient: rcptSignet } }));
    return { kind: 'sealed', result: 'pass', code: 'sealed', origin: originDomain, comment: `origin=${originDomain}, origin signature verified; sealed for the recipient, whose client verifies the author` };
  }

  async function verify(object: Uint8Array, message: MilterMessage, signal: AbortSignal): Promise<{ outcome: Outcome; rcpt: string }> {
    const dmime = await judged('GATEWAY_UNDECODABLE', 'DMIME object', () => decodeMessage(object));
    const rcpts = [...new Set(message.recipients.map((r) => r.address.toLowerCase()))];
    if (rcpts.length !== 1) throw new DimeError('GATEWAY_TOO_MANY_RECIPIENTS', `${rcpts.length} envelope recipients`);
    const rcpt = rcpts[0]!;
    if (domainOf(rcpt) !== domain) throw new DimeError('GATEWAY_NOT_LOCAL_RECIPIENT', `the recipient is not in ${domain}`);
    let info: Awaited<ReturnType<InboundOptions['users']['show']>>;
    try {
      info = await o.users.show(rcpt);
    } catch (err) {
      if (isDimeError(err, 'USER_NOT_FOUND') || isDimeError(err, 'USER_BAD_ADDRESS')) throw new DimeError('GATEWAY_NOT_LOCAL_RECIPIENT', 'no such DIME user here', { cause: err });
      throw err;
    }
    if (info.removed) throw new DimeError('GATEWAY_NOT_LOCAL_RECIPIENT', 'the DIME user was removed');
    checkDeadline(signal);
    const outcome = info.mode === 'trustful' ? await openForTrustful(object, dmime, rcpt, info.generation, signal) : await verifyForSealedAccount(object, dmime, rcpt, signal);
    return { outcome, rcpt };
  }

  function results(ctx: MilterContext, value: string): Modification {
    // 1 = just below Postfix's own (hidden) Received header: the first line a reader sees after it.
    return modify.insertHeader(1, 'Authentication-Results', `${ctx.headerLeadingSpace ? ' ' : ''}${hostname}; ${value}`);
  }

  /** The message, opened: every visible header out, the original's in, the body replaced. */
  function replacement(ctx: MilterContext, message: MilterMessage, out: Extract<Outcome, { kind: 'open' }>): Modification[] | undefined {
    const adds: Modification[] = [];
    for (const f of out.original.fields) {
      if (POSTFIX_DROPPED_HEADERS.has(f.name.toLowerCase())) continue;
      const value = milterValue(f.value, ctx.headerLeadingSpace);
      if (value === undefined) return undefined;
      if (f.name.toLowerCase() === 'authentication-results' && authservId(value) === hostname) continue; // RFC 8601 §5: only we speak for us
      adds.push(modify.addHeader(f.name, value));
    }
    const deletes: Modification[] = [];
    for (let i = message.headers.length - 1; i >= 0; i--) {
      // From the last header up: each deletion is the highest index of its name, so the lower ones stay valid.
      deletes.push(modify.deleteHeader(message.headers[i]!.name, headerIndexAt(message.headers, i)));
    }
    const from = token(out.author);
    const ar = `dime=pass${from ? ` header.from=${from}` : ''} (origin=${commentText(out.origin, 255)}, author and origin signatures verified)`;
    // After the deletions only Postfix's Received is left, so AR and then the original's fields follow it in order.
    return [...deletes, results(ctx, ar), ...adds, modify.replaceBody(out.original.body)];
  }

  function refuse(ctx: MilterContext, message: MilterMessage, err: DimeError, strip: Modification[]): EomResult {
    const reason = printable(detailOf(err), 300);
    if (invalidPolicy === 'quarantine') {
      return {
        verdict: verdict.quarantine(`DIME message failed verification (${err.code})`),
        modifications: [...strip, results(ctx, `dime=fail (${commentText(reason)})`)],
      };
    }
    return err.code === 'GATEWAY_TOO_MANY_RECIPIENTS'
      ? verdict.reply('550', `DIME message failed verification: ${reason}; send one copy per recipient`, '5.5.3')
      : verdict.reply('550', `DIME message failed verification: ${reason}`, '5.7.0');
  }

  return async function processInbound(ctx: MilterContext, message: MilterMessage): Promise<EomResult> {
    const log = o.log ?? ctx.log;
    const base = { queueId: message.queueId };
    const strip = forgedResults(message.headers, hostname);
    if (strip.length > 0) log.warn({ event: 'gateway.inbound.forged_results', code: 'forged-authentication-results', count: strip.length, ...base }, 'deleted Authentication-Results headers that claim our host name');
    const fail = (err: DimeError): EomResult => {
      recordRejected('inbound', err.code);
      log.warn({ event: 'gateway.inbound.invalid', code: err.code, action: invalidPolicy, reason: printable(detailOf(err), 300), ...base }, 'DIME message failed verification');
      return refuse(ctx, message, err, strip);
    };

    let object: Uint8Array | undefined;
    try {
      object = findDimeObject(message.headers, await message.body.bytes());
    } catch (err) {
      if (isDimeError(err, 'GATEWAY_BAD_WRAPPER')) return fail(err);
      throw err;
    }
    if (object === undefined) {
      log.debug({ event: 'gateway.inbound.legacy', code: 'legacy', ...base }, 'not a DIME message');
      return strip.length > 0 ? { modifications: strip } : verdict.continue();
    }

    let verified: { outcome: Outcome; rcpt: string };
    try {
      verified = await verify(object, message, ctx.signal);
    } catch (err) {
      if (isDimeError(err) && INVALID_CODES.has(err.code)) return fail(err);
      log.warn({ event: 'gateway.inbound.tempfail', code: isDimeError(err) ? err.code : 'internal', ...base }, 'DIME message not processed; the failure policy answers');
      throw err;
    }
    const { outcome, rcpt } = verified;
    if (outcome.kind === 'open') {
      const mods = replacement(ctx, message, outcome);
      if (mods) {
        recordOpened('pass');
        log.info({ event: 'gateway.inbound.pass', code: 'pass', recipient: rcpt, origin: outcome.origin, ...base }, 'DIME message verified and opened for a trustful recipient');
        return { modifications: mods };
      }
      return sealedResult(unrepresentable(outcome.origin, 'a header of the original is not UTF-8 or holds a NUL'));
    }
    return sealedResult(outcome);

    function sealedResult(s: Sealed): EomResult {
      const event = s.code === 'unverified' ? 'gateway.inbound.unverified' : 'gateway.inbound.sealed';
      recordOpened(s.result === 'neutral' ? 'neutral' : 'sealed');
      log[s.code === 'sealed' || s.code === 'unverified' ? 'info' : 'warn']({ event, code: s.code, recipient: rcpt, ...(s.origin ? { origin: s.origin } : {}), ...base }, 'DIME message left sealed for the recipient');
      return { modifications: [...strip, results(ctx, `dime=${s.result} (${commentText(s.comment)})`)] };
    }
  };
}
