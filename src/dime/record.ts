/**
 * DIME management records: the TXT record at `_dx.<domain>` (dime-formats.md §4,
 * architecture.md §2). Pure codec, no I/O. docs/management-record.md says what we emit and accept
 * and where we differ from libdime.
 *
 * Reading follows libdime's `_parse_dime_record` tokenizer exactly (so we accept and reject the
 * same token shapes); value checks are stricter where libdime is lax (duplicates, `exp=`, `dx=`).
 * Writing follows libdime's `genrec` byte for byte, except that `syn=` gets its separating space.
 */
import type { CryptoBackend } from '../crypto/backend.js';
import { DimeError, type ErrorCode } from '../errors.js';
import { base64DecodeStrict, base64EncodeNoPad } from './base64.js';

export const RECORD_VERSION = 1;
export const RECORD_DNS_PREFIX = '_dx';

export const POLICIES = ['experimental', 'mixed', 'strict'] as const;
export const SUBDOMAIN_POLICIES = ['strict', 'relaxed', 'explicit'] as const;
export type RecordPolicy = (typeof POLICIES)[number];
export type SubdomainPolicy = (typeof SUBDOMAIN_POLICIES)[number];

export interface DimeRecord {
  version: 1;
  /** Raw 32-byte Ed25519 POKs, in record order. At least one. */
  poks: Uint8Array[];
  /** 64-byte Ed25519 signatures over SHA-512(DER of a DX certificate), in record order. */
  tls: Uint8Array[];
  /** `pol=`; experimental when absent. */
  policy: RecordPolicy;
  /** `sub=`; strict when absent. */
  subdomain: SubdomainPolicy;
  /** DX host names, in the order they are to be tried. */
  dx: string[];
  /** `exp=` in days; absent when the record has none. */
  expiryDays?: number;
  /** `syn=`, verbatim; no software interprets it yet. */
  syndicates?: string;
}

/**
 * The longest record value parseRecordValue accepts. A TXT RR's RDATA is at most 65,535 octets
 * (length bytes included), so nothing longer can come from DNS; the cap bounds the work per parse.
 */
export const MAX_RECORD_CHARS = 65_535;
/** parseRecord's cap on operator input: room for quotes, spaces and `\DDD` escapes (4× the value). */
export const MAX_RECORD_INPUT_CHARS = 4 * 65_536;
/** A character-string inside a TXT RR holds at most 255 octets (RFC 1035 §3.3). */
export const TXT_STRING_MAX = 255;
/** genrec prints records longer than TXT_STRING_MAX as pieces of this many characters. */
export const TXT_SPLIT_CHUNK = 254;
/** 100 years. A longer cache lifetime means nothing, and the cap keeps days→ms arithmetic exact. */
export const MAX_EXPIRY_DAYS = 36_500;
/** TTL of the zone-file line we print. One hour lets a rotated POK or tls= pin spread quickly. */
export const DEFAULT_ZONE_TTL = 3600;

const POK_B64_CHARS = 43;
const TLS_B64_CHARS = 86;
const POK_BYTES = 32;
const TLS_BYTES = 64;

type FieldName = 'version' | 'pok' | 'tls' | 'policy' | 'syndicates' | 'dx' | 'expiry' | 'subdomain';

/** Short and long names, compared ASCII-case-insensitively like libdime's strcasecmp. */
const FIELD_NAMES: ReadonlyMap<string, FieldName> = new Map([
  ['ver', 'version'],
  ['version', 'version'],
  ['pok', 'pok'],
  ['primary', 'pok'],
  ['tls', 'tls'],
  ['pol', 'policy'],
  ['policy', 'policy'],
  ['syn', 'syndicates'],
  ['syndicates', 'syndicates'],
  ['dx', 'dx'],
  ['deliver', 'dx'],
  ['exp', 'expiry'],
  ['expiry', 'expiry'],
  ['sub', 'subdomain'],
  ['subdomain', 'subdomain'],
]);

const SINGLE_VALUED: ReadonlySet<FieldName> = new Set(['version', 'policy', 'syndicates', 'expiry', 'subdomain']);

/**
 * ASCII-only lower-casing. String.prototype.toLowerCase would fold e.g. U+212A KELVIN SIGN to `k`,
 * letting `po\u212A=` pass as `pok=` where libdime (strcasecmp) sees an unknown name.
 */
export function asciiLower(s: string): string {
  return s.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));
}

/** C isspace() in the C locale: the characters that stop a `=` from starting a value. */
function isCSpace(c: string | undefined): boolean {
  return c === ' ' || c === '\t' || c === '\n' || c === '\v' || c === '\f' || c === '\r';
}

export function parsePolicy(value: string): RecordPolicy | undefined {
  const v = asciiLower(value);
  return POLICIES.find((p) => p === v);
}

export function parseSubdomainPolicy(value: string): SubdomainPolicy | undefined {
  const v = asciiLower(value);
  return SUBDOMAIN_POLICIES.find((p) => p === v);
}

const LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/**
 * A syntactically valid host name (RFC 1123 letters-digits-hyphens labels of 1–63 characters, at
 * most 253 characters), optionally with one trailing dot. No underscores: a DX is a host to connect to.
 */
export function isHostName(name: string): boolean {
  const bare = name.endsWith('.') ? name.slice(0, -1) : name;
  if (bare.length === 0 || bare.length > 253) return false;
  return bare.split('.').every((label) => LABEL.test(label));
}

/** Parse a decimal field strictly: digits only (no sign, no trailing junk as C's atoi allows). */
function decimal(value: string): number | undefined {
  if (!/^[0-9]{1,16}$/.test(value)) return undefined;
  return Number(value);
}

function isPrintableAscii(value: string): boolean {
  return /^[\x21-\x7e]+$/.test(value);
}

/**
 * True when `value` would come back unchanged from the tokenizer as the value of a `syn=` token:
 * no separators, not starting with `=`, and every `=` followed by another `=` or by the end
 * (any other `=` would restart the value).
 */
function survivesTokenizer(value: string): boolean {
  return isPrintableAscii(value) && !value.includes(';') && !value.startsWith('=') && !/=[^=]/.test(value);
}

type Fail = (code: ErrorCode, detail: string, cause?: unknown) => DimeError;

function decodeFixed(value: string, chars: number, bytes: number, code: ErrorCode, what: string, fail: Fail): Uint8Array {
  if (value.length !== chars) throw fail(code, `${what} has ${value.length} characters, expected ${chars}`);
  let decoded: Uint8Array;
  try {
    decoded = base64DecodeStrict(value);
  } catch (err) {
    throw fail(code, `${what} is not canonical unpadded base64`, err);
  }
  // Unreachable with `chars` matched, but a wrong length must never leave this function.
  if (decoded.length !== bytes) throw fail(code, `${what} decodes to ${decoded.length} bytes, expected ${bytes}`);
  return decoded;
}

interface Token {
  raw: string;
  name: string;
  /** undefined when no `=` in the token starts a value. */
  value: string | undefined;
  /** More than one `=` started a value, so the value is only the part after the last one. */
  restarted: boolean;
}

/**
 * libdime's tokenizer: tokens end at a space or `;` (not a tab). Inside a token, an `=` starts a
 * value when the next character exists and is neither `=` nor whitespace; the name is everything
 * before the first such `=`, the value everything after the last one. So `pok=abc==` keeps its `==`,
 * `a=b=c` is name `a` value `c`, and `pok=` (nothing after the `=`) is a token named `pok=`.
 */
function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  for (const raw of text.split(/[ ;]/)) {
    let first = -1;
    let last = -1;
    for (let i = 0; i + 1 < raw.length; i++) {
      const next = raw[i + 1];
      if (raw[i] === '=' && next !== '=' && !isCSpace(next)) {
        if (first < 0) first = i;
        last = i;
      }
    }
    tokens.push(
      first < 0
        ? { raw, name: raw, value: undefined, restarted: false }
        : { raw, name: raw.slice(0, first), value: raw.slice(last + 1), restarted: last !== first },
    );
  }
  return tokens;
}

/**
 * Parse a record value exactly as it comes from DNS: the TXT RR's character-strings already
 * concatenated. No trimming and no quote handling (use parseRecord for operator input).
 */
export function parseRecordValue(text: string): DimeRecord {
  if (text.length > MAX_RECORD_CHARS) throw new DimeError('RECORD_TOO_LARGE', `${text.length} characters, limit ${MAX_RECORD_CHARS}`);
  // libdime ends the record at a NUL on the DNS path but treats it as a separator when reading a
  // file; refusing it avoids choosing either reading.
  if (text.includes('\0')) throw new DimeError('RECORD_SYNTAX', 'the record contains a NUL character');

  const record: DimeRecord = { version: 1, poks: [], tls: [], policy: 'experimental', subdomain: 'strict', dx: [] };
  const seen = new Set<FieldName>();

  for (const { raw, name, value, restarted } of tokenize(text)) {
    const field = FIELD_NAMES.get(asciiLower(name));
    if (!field) continue; // unknown names (and empty tokens) are ignored, as in libdime
    // A restarted value is the usual cause of a puzzling rejection (genrec's `pol=experimentalsyn=…`).
    const fail: Fail = (code, detail, cause) =>
      new DimeError(code, restarted ? `${detail} (in token ${JSON.stringify(raw)}: an '=' inside a value restarts the value)` : detail, cause === undefined ? undefined : { cause });
    // libdime would reuse the previous token's value here; we refuse instead.
    if (value === undefined) throw fail('RECORD_SYNTAX', `${JSON.stringify(name)} has no value`);
    if (SINGLE_VALUED.has(field)) {
      if (seen.has(field)) throw fail('RECORD_DUPLICATE', `${field} appears more than once`);
      seen.add(field);
    }
    switch (field) {
      case 'version':
        if (decimal(value) !== RECORD_VERSION) throw fail('RECORD_BAD_VERSION', JSON.stringify(value));
        break;
      case 'pok':
        record.poks.push(decodeFixed(value, POK_B64_CHARS, POK_BYTES, 'RECORD_BAD_POK', 'pok=', fail));
        break;
      case 'tls':
        record.tls.push(decodeFixed(value, TLS_B64_CHARS, TLS_BYTES, 'RECORD_BAD_TLS', 'tls=', fail));
        break;
      case 'policy': {
        const policy = parsePolicy(value);
        if (!policy) throw fail('RECORD_BAD_POLICY', JSON.stringify(value));
        record.policy = policy;
        break;
      }
      case 'subdomain': {
        const sub = parseSubdomainPolicy(value);
        if (!sub) throw fail('RECORD_BAD_SUBDOMAIN', JSON.stringify(value));
        record.subdomain = sub;
        break;
      }
      case 'dx':
        if (!isHostName(value)) throw fail('RECORD_BAD_DX', JSON.stringify(value));
        record.dx.push(value);
        break;
      case 'expiry': {
        const days = decimal(value);
        if (days === undefined || days < 1 || days > MAX_EXPIRY_DAYS) {
          throw fail('RECORD_BAD_EXPIRY', `${JSON.stringify(value)} (1 to ${MAX_EXPIRY_DAYS} days)`);
        }
        record.expiryDays = days;
        break;
      }
      case 'syndicates':
        // Shown to operators verbatim, so no control characters may pass.
        if (!isPrintableAscii(value)) throw fail('RECORD_BAD_SYNDICATES', JSON.stringify(value));
        record.syndicates = value;
        break;
    }
  }
  if (record.poks.length === 0) throw new DimeError('RECORD_NO_POK');
  return record;
}

/**
 * Undo DNS presentation form: one or more `"…"` character-strings separated by whitespace,
 * optionally inside `( … )`, with RFC 1035 escapes (`\"`, `\\`, `\DDD`). The strings are
 * concatenated with no separator, as resolvers do.
 */
export function joinTxtStrings(presentation: string): string {
  let s = presentation.trim();
  if (s.startsWith('(') && s.endsWith(')')) s = s.slice(1, -1).trim();
  const parts: string[] = [];
  let i = 0;
  while (i < s.length) {
    if (s[i] !== '"') throw new DimeError('RECORD_SYNTAX', `expected a quoted string at offset ${i} of the input`);
    i++;
    let part = '';
    for (;;) {
      if (i >= s.length) throw new DimeError('RECORD_SYNTAX', 'a quoted string has no closing quote');
      const c = s[i] as string;
      if (c === '"') break;
      if (c === '\\') {
        const digits = /^[0-9]{3}/.exec(s.slice(i + 1, i + 4));
        if (digits) {
          const code = Number(digits[0]);
          if (code > 255) throw new DimeError('RECORD_SYNTAX', `escape \\${digits[0]} is not a byte`);
          part += String.fromCharCode(code);
          i += 4;
          continue;
        }
        if (i + 1 >= s.length) throw new DimeError('RECORD_SYNTAX', 'a quoted string ends in a backslash');
        part += s[i + 1];
        i += 2;
        continue;
      }
      part += c;
      i++;
    }
    // A zone with a longer string would be refused by the name server, so tell the operator now.
    if (part.length > TXT_STRING_MAX) throw new DimeError('RECORD_SYNTAX', `a quoted string holds ${part.length} characters, DNS allows ${TXT_STRING_MAX}`);
    parts.push(part);
    i++; // closing quote
    const rest = s.slice(i);
    const gap = rest.length - rest.trimStart().length;
    if (gap === 0 && i < s.length) throw new DimeError('RECORD_SYNTAX', `no space after a quoted string at offset ${i} of the input`);
    i += gap;
  }
  if (parts.length === 0) throw new DimeError('RECORD_SYNTAX', 'no quoted string');
  return parts.join('');
}

/**
 * Parse a record as an operator gives it: the bare value (`ver=1 pok=…`) or DNS presentation form
 * (`"ver=1 pok=…" "…"`, as genrec prints long records). Surrounding whitespace, such as a file's
 * final newline, is ignored.
 */
export function parseRecord(text: string): DimeRecord {
  if (text.length > MAX_RECORD_INPUT_CHARS) throw new DimeError('RECORD_TOO_LARGE', `${text.length} characters of input, limit ${MAX_RECORD_INPUT_CHARS}`);
  const trimmed = text.trim();
  return parseRecordValue(trimmed.startsWith('"') || trimmed.startsWith('(') ? joinTxtStrings(trimmed) : trimmed);
}

/** Refuse to emit anything parseRecordValue would reject or read back differently. */
function validateForOutput(record: DimeRecord): void {
  if (record.version !== RECORD_VERSION) throw new DimeError('RECORD_BAD_VERSION', String(record.version));
  if (record.poks.length === 0) throw new DimeError('RECORD_NO_POK');
  for (const pok of record.poks) {
    if (!(pok instanceof Uint8Array) || pok.length !== POK_BYTES) throw new DimeError('RECORD_BAD_POK', `a POK must be ${POK_BYTES} bytes`);
  }
  for (const sig of record.tls) {
    if (!(sig instanceof Uint8Array) || sig.length !== TLS_BYTES) throw new DimeError('RECORD_BAD_TLS', `a tls= signature must be ${TLS_BYTES} bytes`);
  }
  if (!POLICIES.includes(record.policy)) throw new DimeError('RECORD_BAD_POLICY', JSON.stringify(record.policy));
  if (!SUBDOMAIN_POLICIES.includes(record.subdomain)) throw new DimeError('RECORD_BAD_SUBDOMAIN', JSON.stringify(record.subdomain));
  for (const host of record.dx) {
    if (!isHostName(host)) throw new DimeError('RECORD_BAD_DX', JSON.stringify(host));
  }
  const days = record.expiryDays;
  if (days !== undefined && (!Number.isInteger(days) || days < 1 || days > MAX_EXPIRY_DAYS)) {
    throw new DimeError('RECORD_BAD_EXPIRY', `${days} (1 to ${MAX_EXPIRY_DAYS} days)`);
  }
  if (record.syndicates !== undefined && !survivesTokenizer(record.syndicates)) {
    throw new DimeError('RECORD_BAD_SYNDICATES', `${JSON.stringify(record.syndicates)} (printable ASCII without ';', and '=' only at the end)`);
  }
}

/**
 * The record value in genrec's field order: ver, pok…, tls…, pol, syn, dx…, exp, sub, separated by
 * single spaces. `pol` and `sub` are always written, even at their defaults, as genrec does.
 */
export function formatRecord(record: DimeRecord): string {
  validateForOutput(record);
  const out = [`ver=${record.version}`];
  for (const pok of record.poks) out.push(`pok=${base64EncodeNoPad(pok)}`);
  for (const sig of record.tls) out.push(`tls=${base64EncodeNoPad(sig)}`);
  out.push(`pol=${record.policy}`);
  if (record.syndicates !== undefined) out.push(`syn=${record.syndicates}`); // genrec omits this space (a bug)
  for (const host of record.dx) out.push(`dx=${host}`);
  if (record.expiryDays !== undefined) out.push(`exp=${record.expiryDays}`);
  out.push(`sub=${record.subdomain}`);
  const text = out.join(' ');
  if (text.length > MAX_RECORD_CHARS) throw new DimeError('RECORD_TOO_LARGE', `${text.length} characters, limit ${MAX_RECORD_CHARS}`);
  return text;
}

/**
 * genrec's split: a value of up to 255 characters stays one string; a longer one is cut every 254
 * characters (wherever that falls, even inside a token, since resolvers concatenate without a
 * separator). The text must be one octet per character; formatRecord's output is ASCII.
 */
export function splitForTxt(text: string): string[] {
  if (/[^\x00-\xff]/.test(text)) throw new DimeError('RECORD_SYNTAX', 'TXT text must be one octet per character');
  if (text.length <= TXT_STRING_MAX) return [text];
  const pieces: string[] = [];
  for (let i = 0; i < text.length; i += TXT_SPLIT_CHUNK) pieces.push(text.slice(i, i + TXT_SPLIT_CHUNK));
  return pieces;
}

/** One character-string in zone-file syntax: quoted, with `"` and `\` escaped (RFC 1035 §5.1). */
function quoteTxtString(piece: string): string {
  return `"${piece.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** Presentation form of the whole value: the splitForTxt pieces quoted and joined by one space. */
export function txtPresentation(text: string): string {
  return splitForTxt(text).map(quoteTxtString).join(' ');
}

/**
 * What `dime record generate` prints, like genrec: the bare value when it fits one string, else the
 * quoted pieces (genrec also leaves a trailing space after the last piece; we do not).
 */
export function recordOutputLine(text: string): string {
  return text.length <= TXT_STRING_MAX ? text : txtPresentation(text);
}

/** `_dx.<domain>. <ttl> IN TXT "…" ["…"…]` on one line, always quoted, for pasting into a zone file. */
export function zoneFileLine(domain: string, text: string, ttl: number = DEFAULT_ZONE_TTL): string {
  if (!isHostName(domain)) throw new DimeError('RECORD_SYNTAX', `${JSON.stringify(domain)} is not a domain name`);
  if (!Number.isInteger(ttl) || ttl < 0 || ttl > 0x7fffffff) throw new DimeError('RECORD_SYNTAX', `TTL ${ttl} is not a 31-bit number of seconds`);
  const fqdn = domain.endsWith('.') ? domain : `${domain}.`;
  return `${RECORD_DNS_PREFIX}.${fqdn} ${ttl} IN TXT ${txtPresentation(text)}`;
}

// ---- tls= pins (dime-formats.md §4.3) ------------------------------------------------------------

/** The message a tls= value signs: SHA-512 over the whole DER certificate (not just the TBS part). */
export function tlsPinDigest(certDer: Uint8Array, crypto: Pick<CryptoBackend, 'sha512'>): Uint8Array {
  return crypto.sha512(certDer);
}

/** A tls= value: pure Ed25519 by the POK seed over tlsPinDigest(certDer). */
export function signTlsPin(seed: Uint8Array, certDer: Uint8Array, crypto: Pick<CryptoBackend, 'sha512' | 'ed25519Sign'>): Uint8Array {
  return crypto.ed25519Sign(seed, tlsPinDigest(certDer, crypto));
}

export interface TlsPinMatch {
  /** Index into record.poks of the key whose signature matched. */
  pokIndex: number;
  /** Index into record.tls of the matching signature. */
  tlsIndex: number;
  pok: Uint8Array;
}

/**
 * Which POK pins this certificate, if any. Every tls= value is tried against every POK; libdime's
 * loop effectively checks only the first tls= value (dime-formats.md §9.16), which would break pin
 * rotation where the new certificate's value is listed second.
 */
export function verifyTlsPin(
  record: Pick<DimeRecord, 'poks' | 'tls'>,
  certDer: Uint8Array,
  crypto: Pick<CryptoBackend, 'sha512' | 'ed25519Verify'>,
): TlsPinMatch | undefined {
  if (record.tls.length === 0) return undefined;
  const digest = tlsPinDigest(certDer, crypto);
  for (let tlsIndex = 0; tlsIndex < record.tls.length; tlsIndex++) {
    for (let pokIndex = 0; pokIndex < record.poks.length; pokIndex++) {
      const pok = record.poks[pokIndex] as Uint8Array;
      if (crypto.ed25519Verify(pok, digest, record.tls[tlsIndex] as Uint8Array)) return { pokIndex, tlsIndex, pok };
    }
  }
  return undefined;
}

const PEM_BEGIN = '-----BEGIN CERTIFICATE-----';
const PEM_END = '-----END CERTIFICATE-----';

/**
 * Check the outer DER framing: one SEQUENCE whose definite length covers the input exactly. Trailing
 * bytes would change the pin digest without changing what TLS presents, so they are refused. Full
 * X.509 parsing is left to the caller (the CLI uses node:crypto's X509Certificate).
 */
function checkDerFraming(der: Uint8Array): void {
  if (der.length < 2 || der[0] !== 0x30) throw new DimeError('TLS_BAD_CERTIFICATE', 'DER does not start with a SEQUENCE');
  const first = der[1] as number;
  let header = 2;
  let length = first;
  if (first >= 0x80) {
    const n = first & 0x7f;
    if (n === 0 || n > 4) throw new DimeError('TLS_BAD_CERTIFICATE', 'DER length is indefinite or too large');
    if (der.length < 2 + n) throw new DimeError('TLS_BAD_CERTIFICATE', 'DER length is truncated');
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + (der[2 + i] as number);
    header = 2 + n;
  }
  if (header + length !== der.length) {
    throw new DimeError('TLS_BAD_CERTIFICATE', `DER SEQUENCE says ${header + length} bytes, the input has ${der.length}`);
  }
}

/**
 * The DER bytes of a certificate given as DER or PEM. For PEM (possibly a chain, possibly with
 * `openssl x509 -text` output around it) the first CERTIFICATE block is taken: the leaf.
 */
export function certificateDer(input: Uint8Array | string): Uint8Array {
  if (input instanceof Uint8Array && input[0] === 0x30) {
    checkDerFraming(input);
    return input.slice();
  }
  const text = typeof input === 'string' ? input : Buffer.from(input.buffer, input.byteOffset, input.length).toString('latin1');
  const begin = text.indexOf(PEM_BEGIN);
  if (begin < 0) throw new DimeError('TLS_BAD_CERTIFICATE', 'neither DER nor a PEM CERTIFICATE block');
  const end = text.indexOf(PEM_END, begin);
  if (end < 0) throw new DimeError('TLS_BAD_CERTIFICATE', 'the PEM CERTIFICATE block has no END line');
  const body = text.slice(begin + PEM_BEGIN.length, end).replace(/\s+/g, '');
  let der: Uint8Array;
  try {
    der = base64DecodeStrict(body);
  } catch (err) {
    throw new DimeError('TLS_BAD_CERTIFICATE', 'the PEM CERTIFICATE block is not valid base64', { cause: err });
  }
  checkDerFraming(der);
  return der;
}
