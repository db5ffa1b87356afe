/**
 * DMTP line codec (architecture.md §5, dime-formats.md §6.3–6.5): bytes ↔ typed commands and
 * replies. Pure, no I/O.
 *
 * Input is liberal: verbs in any case, spaces or tabs between arguments, CRLF or a bare LF, and
 * every argument spelling the references use (`MAIL FROM <d>`, `MAIL FROM: <d>`, `MAIL FROM:<d>`,
 * `MAIL FROM=<d> FINGERPRINT=[fp]`, `SGNT <name>`, `SGNT USER=<a>`, …). Output is one canonical
 * form: the dialect of libdime's resolver, the only DMTP client that exists (dime-formats.md §6.4),
 * with CRLF. docs/dmtp.md lists both.
 *
 * Injection is impossible by construction: a line is split at the first LF and may hold no other
 * control character, and every value that goes into an outgoing command or reply is checked
 * against its grammar (domain, address, fingerprint, printable text) before anything is written.
 */
import { DimeError } from '../errors.js';
import { isHostName } from '../dime/record.js';

/** The protocol token in banners, MODE and STARTTLS replies. */
export const DMTP_MODE = 'DMTPv1';
export const CRLF = '\r\n';

/**
 * Longest command line we buffer, CRLF included. The longest valid command (HIST with a 318-octet
 * address and two 86-character fingerprints) is about 510 octets; libdime's formatter caps lines at
 * 512. Twice that leaves room for the `NAME=` spellings and extra blanks and still bounds what an
 * unauthenticated peer can make us hold.
 */
export const MAX_COMMAND_LINE = 1024;
/**
 * Longest reply line a client buffers. SGNT answers carry a whole signet in base64 on one line;
 * libdime's 4 KiB line buffer truncates larger ones (dime-formats.md §9.18). 1 MiB admits a signet
 * of 750 KiB (a photo field included) without letting a hostile server exhaust memory.
 */
export const MAX_REPLY_LINE = 1024 * 1024;
/** Lines in one multi-line reply (HIST returns one per signet version; HELP and EHLO a few). */
export const MAX_REPLY_LINES = 1000;
/** Bytes in one multi-line reply: a long HIST of large signets, bounded. */
export const MAX_REPLY_BYTES = 8 * 1024 * 1024;
/** A fingerprint is SHA-512 in unpadded standard base64 (architecture.md §3.7). */
export const FINGERPRINT_CHARS = 86;
/** SIZE= digits: more than 15 cannot be a message size (MAX_SAFE_INTEGER has 16). */
const MAX_SIZE_DIGITS = 15;
/** Free text in brackets that is not a fingerprint (the DATA "hash", a STATS nonce). */
const MAX_TOKEN_CHARS = 128;

// ------------------------------------------------------------------------------------ grammar

const FINGERPRINT = /^[A-Za-z0-9+/]{86}$/;
/** RFC 5321 dot-atom local part; quoted local parts are not accepted (nor stored: keystore/signets.ts). */
const LOCAL_PART = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;
const MAX_LOCAL_PART = 64;
/** Printable ASCII: the only octets a reply line's text or a bracketed token may hold. */
const PRINTABLE = /^[\x20-\x7e]*$/;

export function isFingerprint(value: string): boolean {
  return FINGERPRINT.test(value);
}

/** A host name (LDH labels), without a trailing dot. */
export function isDomain(value: string): boolean {
  return !value.endsWith('.') && isHostName(value);
}

export function isAddress(value: string): boolean {
  const at = value.lastIndexOf('@');
  if (at <= 0) return false;
  const local = value.slice(0, at);
  return local.length <= MAX_LOCAL_PART && LOCAL_PART.test(local) && isDomain(value.slice(at + 1));
}

/** `domain` lower-cased, one trailing dot removed; DMTP_BAD_ARGUMENT if it is not a host name. */
export function normalizeDomain(value: string): string {
  const v = value.endsWith('.') ? value.slice(0, -1) : value;
  if (!isDomain(v)) throw new DimeError('DMTP_BAD_ARGUMENT', `${JSON.stringify(value)} is not a domain name`);
  return v.toLowerCase();
}

/** An address with its domain lower-cased (the local part is kept as written). */
export function normalizeAddress(value: string): string {
  const at = value.lastIndexOf('@');
  const normal = at > 0 ? `${value.slice(0, at)}@${value.slice(at + 1).replace(/\.$/, '').toLowerCase()}` : value;
  if (!isAddress(normal)) throw new DimeError('DMTP_BAD_ARGUMENT', `${JSON.stringify(value)} is not an address`);
  return normal;
}

/** A signet name: an address (user signet) or a domain (organisational signet), normalised. */
export function normalizeName(value: string): string {
  return value.includes('@') ? normalizeAddress(value) : normalizeDomain(value);
}

export function domainOfName(name: string): string {
  return name.slice(name.lastIndexOf('@') + 1);
}

function checkFingerprint(value: string, what: string): string {
  if (!isFingerprint(value)) throw new DimeError('DMTP_BAD_ARGUMENT', `${what} is not an 86-character base64 fingerprint`);
  return value;
}

function checkToken(value: string, what: string): string {
  if (value.length === 0 || value.length > MAX_TOKEN_CHARS || !/^[\x21-\x7e]+$/.test(value) || /[[\]<>]/.test(value)) {
    throw new DimeError('DMTP_BAD_ARGUMENT', `${what} must be 1–${MAX_TOKEN_CHARS} printable characters without brackets`);
  }
  return value;
}

// ------------------------------------------------------------------------------------ framing

const LF = 0x0a;
const CR = 0x0d;
const EMPTY = Buffer.alloc(0);

/**
 * The input side of a connection: command (or reply) lines, and raw octets for DATA. Bytes are
 * held only until a line is complete; readLine refuses a line as soon as `max` octets are buffered
 * without its LF, so a peer that never sends one costs at most `max` plus one network read.
 */
export class LineBuffer {
  private buf: Buffer = EMPTY;
  private pos = 0;

  /** Octets received and not yet consumed. */
  get buffered(): number {
    return this.buf.length - this.pos;
  }

  push(chunk: Uint8Array): void {
    const view = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    if (this.buffered === 0) {
      this.buf = view;
      this.pos = 0;
    } else {
      this.buf = Buffer.concat([this.buf.subarray(this.pos), view]);
      this.pos = 0;
    }
  }

  /**
   * The next line without its line end (LF, or CRLF), as latin1 text so every octet survives for
   * checking; null until one is complete. DMTP_LINE_TOO_LONG when `max` octets (line end
   * included) hold no LF.
   */
  readLine(max: number): string | null {
    const end = Math.min(this.buf.length, this.pos + max);
    const lf = this.buf.indexOf(LF, this.pos);
    if (lf < 0 || lf >= end) {
      if (this.buffered >= max) throw new DimeError('DMTP_LINE_TOO_LONG', `no line end within ${max} octets`);
      return null;
    }
    const stop = lf > this.pos && this.buf[lf - 1] === CR ? lf - 1 : lf;
    const line = this.buf.toString('latin1', this.pos, stop);
    this.pos = lf + 1;
    if (this.pos === this.buf.length) this.clear();
    return line;
  }

  /** Up to `n` octets (for DATA), or null when nothing is buffered. Returns a view, not a copy. */
  take(n: number): Buffer | null {
    if (this.buffered === 0 || n <= 0) return null;
    const count = Math.min(n, this.buffered);
    const out = this.buf.subarray(this.pos, this.pos + count);
    this.pos += count;
    if (this.pos === this.buf.length) {
      this.buf = EMPTY;
      this.pos = 0;
    }
    return out;
  }

  /** Drop everything buffered; returns how many octets were dropped. */
  clear(): number {
    const n = this.buffered;
    this.buf = EMPTY;
    this.pos = 0;
    return n;
  }
}

/** A command line may hold printable ASCII and tabs only (its CRLF already removed). */
export function checkCommandLine(line: string): void {
  if (!/^[\x20-\x7e\t]*$/.test(line)) throw new DimeError('DMTP_BAD_CHARACTER', 'a control character, NUL or non-ASCII octet in the command');
}

// ------------------------------------------------------------------------------------ commands

export type ReturnOption = 'FULL' | 'DISPLAY' | 'HEADER';
export type DataOption = '7BIT' | '8BIT';

export type DmtpCommand =
  | { verb: 'EHLO'; domain: string }
  | { verb: 'HELO'; domain: string }
  /** An SMTP-style EHLO/HELO (no angle brackets, or an address) or a bare STARTTLS: a fallback attempt. */
  | { verb: 'SMTP'; what: 'EHLO' | 'HELO' | 'STARTTLS' }
  | { verb: 'STARTTLS'; host: string }
  | { verb: 'MODE' }
  | { verb: 'NOOP' }
  | { verb: 'RSET' }
  | { verb: 'QUIT' }
  | { verb: 'VERB' }
  | { verb: 'HELP'; topic?: string }
  | { verb: 'STATS'; nonce?: string }
  | { verb: 'MAIL'; domain: string; fingerprint: string; size: number; ret?: ReturnOption; data?: DataOption }
  | { verb: 'RCPT'; domain: string; fingerprint: string }
  | { verb: 'DATA'; hash?: string }
  | { verb: 'SGNT'; name: string; fingerprint?: string }
  | { verb: 'HIST'; name: string; start?: string; stop?: string }
  | { verb: 'VRFY'; name: string; fingerprint: string };

export type DmtpVerb = DmtpCommand['verb'];

/** Verbs of the DMTP command set, as HELP lists them. */
export const DMTP_VERBS = ['EHLO', 'HELO', 'STARTTLS', 'MODE', 'MAIL', 'RCPT', 'DATA', 'SGNT', 'HIST', 'VRFY', 'NOOP', 'RSET', 'HELP', 'QUIT'] as const;

type Token =
  | { kind: 'angle'; value: string }
  | { kind: 'square'; value: string }
  | { kind: 'kv'; name: string; value: string; wrap: '<' | '[' | '' }
  | { kind: 'bare'; value: string };

function syntax(verb: string, detail: string): DimeError {
  return new DimeError('DMTP_BAD_SYNTAX', `${verb}: ${detail}`);
}

function unwrap(text: string): { value: string; wrap: '<' | '[' | '' } | undefined {
  if (text.startsWith('<')) return text.endsWith('>') && text.length >= 2 ? { value: text.slice(1, -1), wrap: '<' } : undefined;
  if (text.startsWith('[')) return text.endsWith(']') && text.length >= 2 ? { value: text.slice(1, -1), wrap: '[' } : undefined;
  if (/[<>[\]]/.test(text)) return undefined;
  return { value: text, wrap: '' };
}

/** Split arguments at blanks; `NAME=value` is a kv token only for the names `keys` allows. */
function tokenize(verb: string, rest: string, keys: readonly string[]): Token[] {
  const out: Token[] = [];
  for (const raw of rest.split(/[ \t]+/)) {
    if (raw.length === 0) continue;
    const eq = raw.indexOf('=');
    if (eq > 0 && keys.includes(raw.slice(0, eq).toUpperCase())) {
      const u = unwrap(raw.slice(eq + 1));
      if (!u) throw syntax(verb, `unbalanced brackets in ${raw.slice(0, eq)}=`);
      out.push({ kind: 'kv', name: raw.slice(0, eq).toUpperCase(), value: u.value, wrap: u.wrap });
      continue;
    }
    const u = unwrap(raw);
    if (!u) throw syntax(verb, 'unbalanced or misplaced brackets');
    out.push(u.wrap === '<' ? { kind: 'angle', value: u.value } : u.wrap === '[' ? { kind: 'square', value: u.value } : { kind: 'bare', value: u.value });
  }
  return out;
}

function asDomain(verb: string, value: string): string {
  try {
    return normalizeDomain(value);
  } catch {
    throw syntax(verb, 'not a domain name');
  }
}

function asName(verb: string, value: string): string {
  try {
    return normalizeName(value);
  } catch {
    throw syntax(verb, 'not a domain name or an address');
  }
}

function asFingerprint(verb: string, value: string): string {
  if (!isFingerprint(value)) throw syntax(verb, 'the fingerprint is not 86 characters of base64');
  return value;
}

/** The leading domain of MAIL/RCPT/EHLO: `<d>` or `NAME=<d>`. */
function takeAngle(verb: string, tokens: Token[], key: string): string | undefined {
  const t = tokens[0];
  if (t?.kind === 'angle' || (t?.kind === 'kv' && t.name === key && t.wrap === '<')) {
    tokens.shift();
    return t.value;
  }
  return undefined;
}

/** A fingerprint in `[fp]` or `KEY=[fp]` form at the head of `tokens`. */
function takeFingerprint(tokens: Token[], keys: readonly string[]): string | undefined {
  const t = tokens[0];
  if (t?.kind === 'square' || (t?.kind === 'kv' && keys.includes(t.name) && t.wrap !== '<')) {
    tokens.shift();
    return t.value;
  }
  return undefined;
}

function noMore(verb: string, tokens: Token[]): void {
  if (tokens.length > 0) throw syntax(verb, 'unexpected trailing arguments');
}

/** `<name>`, a bare name, `USER=<a>` or `DOMAIN=<d>` at the head of `tokens`. */
function takeName(verb: string, tokens: Token[]): string {
  const t = tokens.shift();
  if (!t) throw syntax(verb, 'a name is required');
  if (t.kind === 'angle' || t.kind === 'bare') return asName(verb, t.value);
  if (t.kind === 'kv' && (t.name === 'USER' || t.name === 'DOMAIN') && t.wrap !== '[') {
    const name = asName(verb, t.value);
    if ((t.name === 'USER') !== name.includes('@')) throw syntax(verb, `${t.name}= does not hold ${t.name === 'USER' ? 'an address' : 'a domain'}`);
    return name;
  }
  throw syntax(verb, 'a name is required');
}

function parseMail(rest: string): DmtpCommand {
  const m = /^FROM(?::|=)?[ \t]*(.*)$/i.exec(rest);
  if (!m) throw syntax('MAIL', 'expected FROM');
  const tokens = tokenize('MAIL', m[1]!, ['FINGERPRINT', 'SIZE', 'RETURN', 'DATA']);
  const domain = takeAngle('MAIL', tokens, 'FROM');
  if (domain === undefined) throw syntax('MAIL', 'expected <origin-domain>');
  const fingerprint = takeFingerprint(tokens, ['FINGERPRINT']);
  if (fingerprint === undefined) throw syntax('MAIL', "the origin organisation's signet fingerprint is required");
  const out: { verb: 'MAIL'; domain: string; fingerprint: string; size?: number; ret?: ReturnOption; data?: DataOption } = {
    verb: 'MAIL',
    domain: asDomain('MAIL', domain),
    fingerprint: asFingerprint('MAIL', fingerprint),
  };
  for (const t of tokens) {
    if (t.kind !== 'kv' || t.wrap !== '') throw syntax('MAIL', 'parameters are SIZE=, RETURN= and DATA=');
    const v = t.value.toUpperCase();
    if (t.name === 'SIZE' && out.size === undefined) {
      if (!/^[0-9]+$/.test(t.value) || t.value.length > MAX_SIZE_DIGITS || Number(t.value) < 1) throw syntax('MAIL', 'SIZE= must be a positive whole number');
      out.size = Number(t.value);
    } else if (t.name === 'RETURN' && out.ret === undefined && (v === 'FULL' || v === 'DISPLAY' || v === 'HEADER')) {
      out.ret = v;
    } else if (t.name === 'DATA' && out.data === undefined && (v === '7BIT' || v === '8BIT')) {
      out.data = v;
    } else {
      throw syntax('MAIL', `unsupported or repeated parameter ${t.name}=`);
    }
  }
  if (out.size === undefined) throw syntax('MAIL', 'SIZE= is required (the data is read as exactly SIZE octets)');
  return out as DmtpCommand;
}

function parseRcpt(rest: string): DmtpCommand {
  const m = /^TO(?::|=)?[ \t]*(.*)$/i.exec(rest);
  if (!m) throw syntax('RCPT', 'expected TO');
  const tokens = tokenize('RCPT', m[1]!, ['FINGERPRINT']);
  const domain = takeAngle('RCPT', tokens, 'TO');
  if (domain === undefined) throw syntax('RCPT', 'expected <destination-domain>');
  const fingerprint = takeFingerprint(tokens, ['FINGERPRINT']);
  if (fingerprint === undefined) throw syntax('RCPT', "the destination organisation's signet fingerprint is required");
  noMore('RCPT', tokens);
  return { verb: 'RCPT', domain: asDomain('RCPT', domain), fingerprint: asFingerprint('RCPT', fingerprint) };
}

function parseHello(verb: 'EHLO' | 'HELO', rest: string): DmtpCommand {
  const tokens = tokenize(verb, rest, ['HOST']);
  if (tokens.length === 0) throw syntax(verb, 'a domain is required');
  const t = tokens[0]!;
  if (rest.includes('@') || t.kind === 'bare') return { verb: 'SMTP', what: verb };
  const domain = takeAngle(verb, tokens, 'HOST');
  if (domain === undefined) throw syntax(verb, 'expected <domain>');
  noMore(verb, tokens);
  return { verb, domain: asDomain(verb, domain) };
}

function parseStartTls(rest: string): DmtpCommand {
  const tokens = tokenize('STARTTLS', rest, ['HOST', 'MODE']);
  if (tokens.length === 0) return { verb: 'SMTP', what: 'STARTTLS' };
  const t = tokens.shift()!;
  let host: string;
  if (t.kind === 'angle' || t.kind === 'bare' || (t.kind === 'kv' && t.name === 'HOST' && t.wrap !== '[')) host = asDomain('STARTTLS', t.value);
  else throw syntax('STARTTLS', 'expected <host>');
  const mode = tokens.shift();
  if (mode) {
    if (mode.kind !== 'kv' || mode.name !== 'MODE' || !['DMTPV1', 'DMTP'].includes(mode.value.toUpperCase())) throw syntax('STARTTLS', `only MODE=${DMTP_MODE} is offered`);
  }
  noMore('STARTTLS', tokens);
  return { verb: 'STARTTLS', host };
}

function parseSgnt(rest: string): DmtpCommand {
  const tokens = tokenize('SGNT', rest, ['USER', 'DOMAIN', 'FINGERPRINT']);
  const name = takeName('SGNT', tokens);
  const fp = takeFingerprint(tokens, ['FINGERPRINT']);
  noMore('SGNT', tokens);
  return fp === undefined ? { verb: 'SGNT', name } : { verb: 'SGNT', name, fingerprint: asFingerprint('SGNT', fp) };
}

function parseHist(rest: string): DmtpCommand {
  const tokens = tokenize('HIST', rest, ['USER', 'DOMAIN', 'START', 'STOP', 'END']);
  const name = takeName('HIST', tokens);
  const out: { verb: 'HIST'; name: string; start?: string; stop?: string } = { verb: 'HIST', name };
  const start = takeFingerprint(tokens, ['START']);
  if (start !== undefined) out.start = asFingerprint('HIST', start);
  const stop = takeFingerprint(tokens, ['STOP', 'END']);
  if (stop !== undefined) out.stop = asFingerprint('HIST', stop);
  noMore('HIST', tokens);
  return out;
}

function parseVrfy(rest: string): DmtpCommand {
  const tokens = tokenize('VRFY', rest, ['USER', 'DOMAIN', 'FINGERPRINT']);
  const name = takeName('VRFY', tokens);
  const fp = takeFingerprint(tokens, ['FINGERPRINT']);
  if (fp === undefined) throw syntax('VRFY', 'a fingerprint is required');
  noMore('VRFY', tokens);
  return { verb: 'VRFY', name, fingerprint: asFingerprint('VRFY', fp) };
}

function parseOptionalBracket(verb: 'DATA' | 'STATS', rest: string): string | undefined {
  const tokens = tokenize(verb, rest, []);
  if (tokens.length === 0) return undefined;
  const t = tokens.shift()!;
  noMore(verb, tokens);
  if (t.kind !== 'square') throw syntax(verb, 'the only argument is [token]');
  try {
    return checkToken(t.value, `${verb} [token]`);
  } catch {
    throw syntax(verb, 'the bracketed token is not printable text');
  }
}

function bare(verb: 'MODE' | 'RSET' | 'QUIT' | 'VERB', rest: string): DmtpCommand {
  if (rest.trim().length > 0) throw syntax(verb, 'takes no arguments');
  return { verb };
}

/**
 * Parse one command line (without its line end). DMTP_BAD_CHARACTER, DMTP_UNKNOWN_COMMAND and
 * DMTP_BAD_SYNTAX are the only errors.
 */
export function parseCommand(line: string): DmtpCommand {
  checkCommandLine(line);
  const m = /^[ \t]*([A-Za-z]+)(?:[ \t]+(.*?))?[ \t]*$/.exec(line);
  if (!m) throw new DimeError('DMTP_UNKNOWN_COMMAND', line.length === 0 ? 'empty line' : 'no command verb');
  const verb = m[1]!.toUpperCase();
  const rest = m[2] ?? '';
  switch (verb) {
    case 'EHLO':
    case 'HELO':
      return parseHello(verb, rest);
    case 'STARTTLS':
      return parseStartTls(rest);
    case 'MODE':
    case 'RSET':
    case 'QUIT':
    case 'VERB':
      return bare(verb, rest);
    case 'NOOP':
      return { verb: 'NOOP' };
    case 'HELP': {
      const topic = rest.trim();
      if (topic.length === 0) return { verb: 'HELP' };
      if (!/^[A-Za-z]{1,16}$/.test(topic)) throw syntax('HELP', 'the argument is a command verb');
      return { verb: 'HELP', topic: topic.toUpperCase() };
    }
    case 'STATS': {
      const nonce = parseOptionalBracket('STATS', rest);
      return nonce === undefined ? { verb: 'STATS' } : { verb: 'STATS', nonce };
    }
    case 'MAIL':
      return parseMail(rest);
    case 'RCPT':
      return parseRcpt(rest);
    case 'DATA': {
      const hash = parseOptionalBracket('DATA', rest);
      return hash === undefined ? { verb: 'DATA' } : { verb: 'DATA', hash };
    }
    case 'SGNT':
      return parseSgnt(rest);
    case 'HIST':
      return parseHist(rest);
    case 'VRFY':
      return parseVrfy(rest);
    default:
      throw new DimeError('DMTP_UNKNOWN_COMMAND', `${verb.slice(0, 16)} is not a DMTP command`);
  }
}

/**
 * The canonical line for a command, CRLF included: libdime's resolver dialect. Every argument is
 * validated first (DMTP_BAD_ARGUMENT), so nothing a caller passes can add a line or a field.
 */
export function formatCommand(cmd: DmtpCommand): string {
  const name = (n: string) => normalizeName(n);
  const fp = (v: string, what: string) => checkFingerprint(v, what);
  let line: string;
  switch (cmd.verb) {
    case 'EHLO':
    case 'HELO':
      line = `${cmd.verb} <${normalizeDomain(cmd.domain)}>`;
      break;
    case 'STARTTLS':
      line = `STARTTLS <${normalizeDomain(cmd.host)}> MODE=${DMTP_MODE}`;
      break;
    case 'MODE':
    case 'NOOP':
    case 'RSET':
    case 'QUIT':
    case 'VERB':
      line = cmd.verb;
      break;
    case 'HELP':
      if (cmd.topic !== undefined && !/^[A-Za-z]{1,16}$/.test(cmd.topic)) throw new DimeError('DMTP_BAD_ARGUMENT', 'HELP takes a command verb');
      line = cmd.topic === undefined ? 'HELP' : `HELP ${cmd.topic.toUpperCase()}`;
      break;
    case 'STATS':
      line = cmd.nonce === undefined ? 'STATS' : `STATS [${checkToken(cmd.nonce, 'STATS nonce')}]`;
      break;
    case 'MAIL': {
      if (!Number.isSafeInteger(cmd.size) || cmd.size < 1) throw new DimeError('DMTP_BAD_ARGUMENT', 'SIZE must be a positive whole number');
      if (cmd.ret !== undefined && !['FULL', 'DISPLAY', 'HEADER'].includes(cmd.ret)) throw new DimeError('DMTP_BAD_ARGUMENT', 'RETURN is FULL, DISPLAY or HEADER');
      if (cmd.data !== undefined && !['7BIT', '8BIT'].includes(cmd.data)) throw new DimeError('DMTP_BAD_ARGUMENT', 'DATA is 7BIT or 8BIT');
      line = `MAIL FROM: <${normalizeDomain(cmd.domain)}> [${fp(cmd.fingerprint, 'MAIL FROM fingerprint')}] SIZE=${cmd.size}`;
      if (cmd.ret !== undefined) line += ` RETURN=${cmd.ret}`;
      if (cmd.data !== undefined) line += ` DATA=${cmd.data}`;
      break;
    }
    case 'RCPT':
      line = `RCPT TO: <${normalizeDomain(cmd.domain)}> [${fp(cmd.fingerprint, 'RCPT TO fingerprint')}]`;
      break;
    case 'DATA':
      line = cmd.hash === undefined ? 'DATA' : `DATA [${checkToken(cmd.hash, 'DATA hash')}]`;
      break;
    case 'SGNT':
      line = `SGNT <${name(cmd.name)}>${cmd.fingerprint === undefined ? '' : ` [${fp(cmd.fingerprint, 'SGNT fingerprint')}]`}`;
      break;
    case 'HIST':
      if (cmd.stop !== undefined && cmd.start === undefined) throw new DimeError('DMTP_BAD_ARGUMENT', 'HIST needs a start fingerprint to name a stop fingerprint');
      line = `HIST <${name(cmd.name)}>`;
      if (cmd.start !== undefined) line += ` [${fp(cmd.start, 'HIST start fingerprint')}]`;
      if (cmd.stop !== undefined) line += ` [${fp(cmd.stop, 'HIST stop fingerprint')}]`;
      break;
    case 'VRFY':
      line = `VRFY <${name(cmd.name)}> [${fp(cmd.fingerprint, 'VRFY fingerprint')}]`;
      break;
    case 'SMTP':
      throw new DimeError('DMTP_BAD_ARGUMENT', 'SMTP-style commands are not sent');
  }
  return `${line}${CRLF}`;
}

// ------------------------------------------------------------------------------------ replies

export interface Reply {
  /** 200–599. */
  code: number;
  /** The text of each line after `NNN-` / `NNN `; at least one (possibly empty). */
  lines: string[];
}

/** Reply text: printable ASCII only, so a reply can never carry a line break or a NUL. */
export function checkReplyText(text: string): string {
  if (!PRINTABLE.test(text)) throw new DimeError('DMTP_BAD_ARGUMENT', 'reply text must be printable ASCII');
  if (text.length > MAX_REPLY_LINE - 6) throw new DimeError('DMTP_BAD_ARGUMENT', `reply line longer than ${MAX_REPLY_LINE} octets`);
  return text;
}

/** `NNN-text` lines and a final `NNN text` line, CRLF after each. */
export function formatReply(reply: Reply): string {
  if (!Number.isInteger(reply.code) || reply.code < 200 || reply.code > 599) throw new DimeError('DMTP_BAD_ARGUMENT', `reply code ${reply.code}`);
  if (reply.lines.length === 0) throw new DimeError('DMTP_BAD_ARGUMENT', 'a reply has at least one line');
  let out = '';
  reply.lines.forEach((text, i) => {
    checkReplyText(text);
    const sep = i === reply.lines.length - 1 ? ' ' : '-';
    out += `${reply.code}${sep}${text}${CRLF}`;
  });
  return out;
}

export interface ReplyLimits {
  maxLine: number;
  maxLines: number;
  maxBytes: number;
}

export const DEFAULT_REPLY_LIMITS: ReplyLimits = { maxLine: MAX_REPLY_LINE, maxLines: MAX_REPLY_LINES, maxBytes: MAX_REPLY_BYTES };

/**
 * Reply reader for clients (DMTP and the SMTP hand-off). Lines are `NNN text`, `NNN-text` or a bare
 * `NNN`; every line of a multi-line reply must carry the same code; CRLF or bare LF.
 */
export class ReplyDecoder {
  readonly input = new LineBuffer();
  private pending: string[] = [];
  private code = 0;
  private bytes = 0;

  constructor(private readonly limits: ReplyLimits = DEFAULT_REPLY_LIMITS) {}

  push(chunk: Uint8Array): void {
    this.input.push(chunk);
  }

  /** The next complete reply, or null. Throws DMTP_BAD_REPLY / DMTP_LINE_TOO_LONG. */
  next(): Reply | null {
    for (;;) {
      const line = this.input.readLine(this.limits.maxLine);
      if (line === null) return null;
      const m = /^([2-5][0-9][0-9])(?:([ -])(.*))?$/s.exec(line);
      if (!m) throw new DimeError('DMTP_BAD_REPLY', `not a reply line: ${JSON.stringify(line.slice(0, 40))}`);
      const code = Number(m[1]);
      const text = m[3] ?? '';
      if (!PRINTABLE.test(text.replace(/\t/g, ' '))) throw new DimeError('DMTP_BAD_REPLY', 'control characters in a reply line');
      if (this.pending.length > 0 && code !== this.code) throw new DimeError('DMTP_BAD_REPLY', `continuation line with code ${code} after ${this.code}`);
      this.code = code;
      this.pending.push(text);
      this.bytes += line.length;
      if (this.pending.length > this.limits.maxLines || this.bytes > this.limits.maxBytes) throw new DimeError('DMTP_BAD_REPLY', 'multi-line reply too long');
      if (m[2] === '-') continue;
      const reply = { code, lines: this.pending };
      this.pending = [];
      this.bytes = 0;
      return reply;
    }
  }
}

/** Decode a whole reply text (tests, tools). */
export function parseReplies(text: string | Uint8Array, limits: ReplyLimits = DEFAULT_REPLY_LIMITS): Reply[] {
  const d = new ReplyDecoder(limits);
  d.push(typeof text === 'string' ? Buffer.from(text, 'latin1') : text);
  const out: Reply[] = [];
  for (let r = d.next(); r !== null; r = d.next()) out.push(r);
  if (d.input.buffered > 0) throw new DimeError('DMTP_BAD_REPLY', 'incomplete reply at the end');
  return out;
}

export function replyText(reply: Reply): string {
  return reply.lines.join('\n');
}

export function isPositive(reply: Reply): boolean {
  return reply.code >= 200 && reply.code < 300;
}

// ------------------------------------------------------------------------------------ reply payloads

/** The value of a `[…]` token: the last character of the token is `]`. */
function bracketed(token: string | undefined): string | undefined {
  if (token === undefined || !token.startsWith('[') || !token.endsWith(']') || token.length < 2) return undefined;
  return token.slice(1, -1);
}

function tokens(text: string): string[] {
  return text.split(/[ \t]+/).filter((t) => t.length > 0);
}

/**
 * `OK [<base64 signet>]` (SGNT), read the way libdime does: blanks allowed before OK and before
 * `[`, and `]` must end the line. Returns the base64 text.
 */
export function parseSignetReply(reply: Reply): string {
  const m = /^[ \t]*OK[ \t]*\[([^\]]*)\]$/.exec(reply.lines.join(''));
  if (reply.lines.length !== 1 || !m) throw new DimeError('DMTP_BAD_REPLY', 'SGNT reply is not OK [<signet>]');
  return m[1]!;
}

/** HIST: one `[<signet>]` line per version, then `OK`. Returns the base64 texts, oldest first. */
export function parseHistoryReply(reply: Reply): string[] {
  const lines = reply.lines.map((l) => l.trim());
  if (lines.at(-1) !== 'OK') throw new DimeError('DMTP_BAD_REPLY', 'HIST reply does not end with OK');
  return lines.slice(0, -1).map((l) => {
    const v = bracketed(l);
    if (v === undefined) throw new DimeError('DMTP_BAD_REPLY', 'HIST reply line is not [<signet>]');
    return v;
  });
}

export type VrfyResult = { current: true } | { current: false; fingerprint: string };

/** `CURRENT …` or `UPDATE [<fp>] …` (also `UPDATE <fp>` bare, as libdime reads the token). */
export function parseVrfyReply(reply: Reply): VrfyResult {
  const t = tokens(reply.lines.join(' '));
  const status = t[0]?.toUpperCase();
  if (status === 'CURRENT') return { current: true };
  if (status === 'UPDATE' && t[1] !== undefined) {
    const fp = bracketed(t[1]) ?? t[1];
    if (isFingerprint(fp)) return { current: false, fingerprint: fp };
  }
  throw new DimeError('DMTP_BAD_REPLY', 'VRFY reply is neither CURRENT nor UPDATE [<fingerprint>]');
}

/** `CONTINUE [<token>]` after DATA (libdime requires the bracketed token) → the token. */
export function parseDataContinue(reply: Reply): string {
  const t = tokens(reply.lines.join(' '));
  const v = bracketed(t[1]);
  if (t[0]?.toUpperCase() !== 'CONTINUE' || v === undefined) throw new DimeError('DMTP_BAD_REPLY', 'DATA reply is not CONTINUE [<token>]');
  return v;
}

/** `OK [<transaction id>]` after the data → the id. */
export function parseDataAccepted(reply: Reply): string {
  const t = tokens(reply.lines.at(-1) ?? '');
  const v = bracketed(t[1]);
  if (t[0]?.toUpperCase() !== 'OK' || v === undefined) throw new DimeError('DMTP_BAD_REPLY', 'the final DATA reply is not OK [<transaction id>]');
  return v;
}

/** The banner must be 220 and hold the token DMTPv1 after the host name (dime-formats.md §6.1). */
export function checkBanner(reply: Reply): void {
  const t = tokens(reply.lines[0] ?? '');
  if (reply.code !== 220 || !t.slice(1).includes(DMTP_MODE)) throw new DimeError('DMTP_BAD_BANNER', `${reply.code} ${reply.lines[0] ?? ''}`.slice(0, 120));
}

/** After a dual-mode STARTTLS handshake: `2xx OK DMTPv1`. */
export function checkModeReply(reply: Reply): void {
  const t = tokens(reply.lines.at(-1) ?? '');
  if (!isPositive(reply) || t[0] !== 'OK' || t[1]?.toUpperCase() !== DMTP_MODE.toUpperCase()) {
    throw new DimeError('DMTP_BAD_BANNER', `expected OK ${DMTP_MODE}, got ${reply.code} ${reply.lines.at(-1) ?? ''}`.slice(0, 120));
  }
}

/** SIZE <n> from an EHLO reply, if advertised. */
export function advertisedSize(reply: Reply): number | undefined {
  for (const l of reply.lines) {
    const m = /^SIZE[ \t]+([0-9]{1,15})[ \t]*$/i.exec(l);
    if (m) return Number(m[1]);
  }
  return undefined;
}
