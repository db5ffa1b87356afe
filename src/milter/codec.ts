/**
 * The Sendmail milter wire protocol (versions 2–6) as Postfix speaks it: framing, every SMFIC_*
 * command and SMFIR_* response as typed values, SMTP reply formatting and option negotiation.
 * Pure: bytes in, values out, no I/O. Both directions are here (the MTA side too) so that test
 * clients and a future milter chain speak exactly the same bytes.
 *
 * Wire format (shared/spec/milter-and-postfix.md §1.2): u32 length (big-endian, counting the command
 * byte and the data), one command byte, data. Strings are NUL-terminated; integers are u32 BE except
 * the u16 port in CONNECT.
 */
import { DimeError } from '../errors.js';

// ---------------------------------------------------------------------------------------------
// Constants

/** Commands, MTA to milter. */
export const SMFIC = {
  ABORT: 'A',
  BODY: 'B',
  CONNECT: 'C',
  MACRO: 'D',
  BODYEOB: 'E',
  HELO: 'H',
  QUIT_NC: 'K',
  HEADER: 'L',
  MAIL: 'M',
  EOH: 'N',
  OPTNEG: 'O',
  QUIT: 'Q',
  RCPT: 'R',
  DATA: 'T',
  UNKNOWN: 'U',
} as const;
export type CommandCode = (typeof SMFIC)[keyof typeof SMFIC];

/** Responses, milter to MTA. */
export const SMFIR = {
  ADDRCPT: '+',
  DELRCPT: '-',
  ADDRCPT_PAR: '2',
  SHUTDOWN: '4',
  ACCEPT: 'a',
  REPLBODY: 'b',
  CONTINUE: 'c',
  DISCARD: 'd',
  CHGFROM: 'e',
  CONNFAIL: 'f',
  ADDHEADER: 'h',
  INSHEADER: 'i',
  SETSYMLIST: 'l',
  CHGHEADER: 'm',
  PROGRESS: 'p',
  QUARANTINE: 'q',
  REJECT: 'r',
  SKIP: 's',
  TEMPFAIL: 't',
  REPLYCODE: 'y',
  OPTNEG: 'O',
} as const;
export type ResponseCode = (typeof SMFIR)[keyof typeof SMFIR];

/** Action flags: what the milter may change (it must declare each one in OPTNEG). */
export const SMFIF = {
  ADDHDRS: 0x001,
  CHGBODY: 0x002,
  ADDRCPT: 0x004,
  DELRCPT: 0x008,
  CHGHDRS: 0x010,
  QUARANTINE: 0x020,
  CHGFROM: 0x040,
  ADDRCPT_PAR: 0x080,
  SETSYMLIST: 0x100,
} as const;

/** Protocol flags: events the milter does not want (NO*), events it will not answer (NR_*), extras. */
export const SMFIP = {
  NOCONNECT: 0x01,
  NOHELO: 0x02,
  NOMAIL: 0x04,
  NORCPT: 0x08,
  NOBODY: 0x10,
  NOHDRS: 0x20,
  NOEOH: 0x40,
  NR_HDR: 0x80,
  NOUNKNOWN: 0x100,
  NODATA: 0x200,
  SKIP: 0x400,
  RCPT_REJ: 0x800,
  NR_CONN: 0x1000,
  NR_HELO: 0x2000,
  NR_MAIL: 0x4000,
  NR_RCPT: 0x8000,
  NR_DATA: 0x10000,
  NR_UNKN: 0x20000,
  NR_EOH: 0x40000,
  NR_BODY: 0x80000,
  HDR_LEADSPC: 0x100000,
  MDS_256K: 0x10000000,
  MDS_1M: 0x20000000,
} as const;

/** Macro stages for the lists a v6 milter sends in its OPTNEG reply (SMFIM_*). */
export const SMFIM = { connect: 0, helo: 1, envfrom: 2, envrcpt: 3, data: 4, eom: 5, eoh: 6 } as const;
export type MacroStage = keyof typeof SMFIM;
export const MACRO_STAGES = Object.keys(SMFIM) as MacroStage[];

/** The newest protocol version; what Postfix 3.x and miltertest offer. */
export const MILTER_VERSION = 6;
/** Version 1 had no OPTNEG flags worth the name; libmilter and Postfix start at 2. */
export const MILTER_MIN_VERSION = 2;

/**
 * Actions and protocol flags each version defines (Sendmail's SMFI_V2_* masks for 2, the v6 set
 * for 6; 3 added the header no-reply flag and UNKNOWN, 4 added DATA). A peer on an older version
 * must never see a newer bit.
 */
export function versionMasks(version: number): { actions: number; protocol: number } {
  if (version >= 6) return { actions: 0x1ff, protocol: 0x1fffff };
  if (version >= 4) return { actions: 0x3f, protocol: 0x3ff };
  if (version === 3) return { actions: 0x3f, protocol: 0x1ff };
  return { actions: 0x3f, protocol: 0x7f };
}

/**
 * Largest packet we read (length field: command byte + data). Postfix sends BODY chunks of at most
 * 65,535 bytes, but a HEADER packet carries a whole folded header, up to Postfix's
 * header_size_limit (102,400 bytes by default), and MACRO/MAIL packets are unbounded in principle.
 * libmilter reads at most 64 KiB − 1 unless SMFIP_MDS_256K/1M is negotiated, when it reads up to
 * 1 MiB − 1; Postfix itself tolerates up to INT_MAX/2. 1 MiB admits every packet Postfix sends with
 * its default limits and still bounds what one connection can make us buffer.
 */
export const MAX_PACKET_LENGTH = 1024 * 1024;

/**
 * Largest data part of any packet we send. Sendmail's MTA side and libmilter refuse more unless the
 * MDS bits were negotiated, and Postfix never offers those bits (spec §1.2, §1.8).
 */
export const MAX_DATA_CHUNK = 65535;

/** Bytes of the length prefix. */
const LENGTH_BYTES = 4;
/** Largest value of the u32 length field; used to validate a configured maximum. */
const U32_MAX = 0xffffffff;

// ---------------------------------------------------------------------------------------------
// Framing

export interface Frame {
  /** The command or response byte as a one-character string. */
  code: string;
  data: Uint8Array;
}

/** Serialise one packet. */
export function encodeFrame(code: string, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  if (typeof code !== 'string' || code.length !== 1 || code.charCodeAt(0) > 0x7f) {
    throw new DimeError('MILTER_BAD_PACKET', `code must be one ASCII character, got ${JSON.stringify(code)}`);
  }
  const out = Buffer.allocUnsafe(LENGTH_BYTES + 1 + data.length);
  out.writeUInt32BE(data.length + 1, 0);
  out[LENGTH_BYTES] = code.charCodeAt(0);
  out.set(data, LENGTH_BYTES + 1);
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/**
 * Streaming frame reader: feed it bytes as they arrive (several packets per chunk, or one packet
 * split over many) and take whole frames out, in order. It refuses a length of 0 and a length over
 * its maximum as soon as the 4-byte prefix is in, before buffering the data. After an error the
 * reader stays failed: the stream has lost its framing and cannot be resynchronised.
 */
export class FrameReader {
  readonly maxPacketLength: number;
  private pending: Buffer = Buffer.alloc(0);
  private failure: DimeError | undefined;

  constructor(maxPacketLength: number = MAX_PACKET_LENGTH) {
    if (!Number.isInteger(maxPacketLength) || maxPacketLength < 1 || maxPacketLength > U32_MAX) {
      throw new DimeError('MILTER_BAD_PACKET', `maxPacketLength must be an integer from 1 to ${U32_MAX}, got ${String(maxPacketLength)}`);
    }
    this.maxPacketLength = maxPacketLength;
  }

  /** Bytes held that do not yet form a whole frame. */
  get buffered(): number {
    return this.pending.length;
  }

  push(chunk: Uint8Array): Frame[] {
    if (this.failure) throw this.failure;
    if (!(chunk instanceof Uint8Array)) throw new DimeError('MILTER_BAD_PACKET', 'chunk must be a Uint8Array');
    this.pending = this.pending.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.pending, chunk]);
    const frames: Frame[] = [];
    let offset = 0;
    while (this.pending.length - offset >= LENGTH_BYTES) {
      const length = this.pending.readUInt32BE(offset);
      if (length < 1) return this.fail(new DimeError('MILTER_BAD_PACKET', 'packet length 0 (a packet holds at least its command byte)'));
      if (length > this.maxPacketLength) {
        return this.fail(new DimeError('MILTER_PACKET_TOO_LARGE', `packet length ${length} exceeds the limit of ${this.maxPacketLength} bytes`));
      }
      if (this.pending.length - offset - LENGTH_BYTES < length) break;
      const start = offset + LENGTH_BYTES;
      const code = String.fromCharCode(this.pending[start]!);
      // Copy the data out: the pending buffer is reused and frames may be kept (spilled bodies).
      const data = new Uint8Array(this.pending.subarray(start + 1, start + length));
      frames.push({ code, data });
      offset = start + length;
    }
    this.pending = offset === 0 ? this.pending : this.pending.subarray(offset);
    if (this.pending.length === 0) this.pending = Buffer.alloc(0);
    return frames;
  }

  /** The stream ended: anything still buffered is a truncated packet. */
  end(): void {
    if (this.failure) throw this.failure;
    if (this.pending.length > 0) {
      this.fail(new DimeError('MILTER_BAD_PACKET', `stream ended inside a packet (${this.pending.length} bytes of a partial packet)`));
    }
  }

  private fail(err: DimeError): never {
    this.failure = err;
    this.pending = Buffer.alloc(0);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Byte helpers

const utf8 = new TextDecoder('utf-8');

function text(bytes: Uint8Array): string {
  return utf8.decode(bytes);
}

/** Split data into NUL-terminated strings; every string must be terminated. */
function nulStrings(data: Uint8Array, what: string): Uint8Array[] {
  const out: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] === 0) {
      out.push(data.subarray(start, i));
      start = i + 1;
    }
  }
  if (start !== data.length) throw new DimeError('MILTER_BAD_PACKET', `${what}: string not NUL-terminated`);
  return out;
}

function expectEmpty(data: Uint8Array, what: string): void {
  if (data.length !== 0) throw new DimeError('MILTER_BAD_PACKET', `${what} carries ${data.length} unexpected data bytes`);
}

function u32(data: Uint8Array, offset: number, what: string): number {
  if (data.length < offset + 4) throw new DimeError('MILTER_BAD_PACKET', `${what}: truncated 32-bit integer`);
  return ((data[offset]! << 24) | (data[offset + 1]! << 16) | (data[offset + 2]! << 8) | data[offset + 3]!) >>> 0;
}

function checkU32(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) {
    throw new DimeError('MILTER_BAD_PACKET', `${name} must be an unsigned 32-bit integer, got ${String(value)}`);
  }
}

/** Encode strings as concatenated NUL-terminated UTF-8; a string must not contain NUL. */
function cstrings(fields: Array<[name: string, value: string]>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of fields) {
    if (typeof value !== 'string') throw new DimeError('MILTER_BAD_PACKET', `${name} must be a string`);
    if (value.includes('\0')) throw new DimeError('MILTER_BAD_PACKET', `${name} must not contain NUL`);
    parts.push(Buffer.from(value, 'utf8'), Buffer.alloc(1));
  }
  return Buffer.concat(parts);
}

function u32Bytes(...values: number[]): Buffer {
  const out = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => out.writeUInt32BE(v, 4 * i));
  return out;
}

function bytes(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
}

// ---------------------------------------------------------------------------------------------
// Commands (MTA → milter)

export type ConnectFamily = 'unknown' | 'unix' | 'inet' | 'inet6';
const FAMILY_CODES: Record<string, ConnectFamily> = { U: 'unknown', L: 'unix', '4': 'inet', '6': 'inet6' };
const FAMILY_BYTES: Record<ConnectFamily, string> = { unknown: 'U', unix: 'L', inet: '4', inet6: '6' };

export interface OptnegCommand {
  type: 'optneg';
  version: number;
  actions: number;
  protocol: number;
}
export interface MacroCommand {
  type: 'macro';
  /** The command these macros belong to (C, H, M, R, T, L, N, B, E, U). */
  stage: CommandCode;
  macros: Array<[name: string, value: string]>;
}
export interface ConnectCommand {
  type: 'connect';
  hostname: string;
  family: ConnectFamily;
  /** 0 for the unknown family (and for Postfix's non-SMTP mail). */
  port: number;
  /** '' for the unknown family. An "IPv6:" prefix is stripped. */
  address: string;
}
export interface HeloCommand {
  type: 'helo';
  name: string;
}
export interface MailCommand {
  type: 'mail';
  /** As sent: with angle brackets from smtpd, without from non_smtpd_milters. */
  sender: string;
  args: string[];
}
export interface RcptCommand {
  type: 'rcpt';
  recipient: string;
  args: string[];
}
export interface HeaderCommand {
  type: 'header';
  name: string;
  value: string;
  /**
   * The value's exact bytes (the string is decoded as UTF-8, which is lossy for 8-bit legacy
   * headers). Always set by decodeCommand; optional when encoding.
   */
  valueBytes?: Uint8Array;
}
export interface BodyCommand {
  type: 'body';
  chunk: Uint8Array;
}
export interface EomCommand {
  type: 'eom';
  /** A final body chunk; Postfix sends none, libmilter accepts one. */
  chunk: Uint8Array;
}
export interface UnknownCommand {
  type: 'unknown';
  line: string;
}
export type MilterCommand =
  | OptnegCommand
  | MacroCommand
  | ConnectCommand
  | HeloCommand
  | MailCommand
  | RcptCommand
  | { type: 'data' }
  | HeaderCommand
  | { type: 'eoh' }
  | BodyCommand
  | EomCommand
  | { type: 'abort' }
  | { type: 'quit' }
  | { type: 'quitNc' }
  | UnknownCommand;
export type CommandType = MilterCommand['type'];

const COMMAND_CODES = new Set<string>(Object.values(SMFIC));

/** The SMFIC byte each command type is sent as. */
export const COMMAND_CODE_OF: Record<CommandType, CommandCode> = {
  optneg: 'O',
  macro: 'D',
  connect: 'C',
  helo: 'H',
  mail: 'M',
  rcpt: 'R',
  data: 'T',
  header: 'L',
  eoh: 'N',
  body: 'B',
  eom: 'E',
  abort: 'A',
  quit: 'Q',
  quitNc: 'K',
  unknown: 'U',
};

/** Decode one MTA-to-milter frame. Throws MILTER_UNKNOWN_COMMAND or MILTER_BAD_PACKET. */
export function decodeCommand(frame: Frame): MilterCommand {
  const { code, data } = frame;
  switch (code) {
    case SMFIC.OPTNEG: {
      // Exactly 12 bytes from Postfix and Sendmail; libmilter ignores anything after them, and so do we.
      if (data.length < 12) throw new DimeError('MILTER_BAD_PACKET', `OPTNEG needs 12 data bytes, got ${data.length}`);
      return { type: 'optneg', version: u32(data, 0, 'OPTNEG'), actions: u32(data, 4, 'OPTNEG'), protocol: u32(data, 8, 'OPTNEG') };
    }
    case SMFIC.MACRO: {
      if (data.length < 1) throw new DimeError('MILTER_BAD_PACKET', 'MACRO without its command code');
      const stage = String.fromCharCode(data[0]!);
      if (!COMMAND_CODES.has(stage)) throw new DimeError('MILTER_BAD_PACKET', `MACRO for unknown command ${JSON.stringify(stage)}`);
      const strings = nulStrings(data.subarray(1), 'MACRO');
      if (strings.length % 2 !== 0) throw new DimeError('MILTER_BAD_PACKET', 'MACRO has a name without a value');
      const macros: Array<[string, string]> = [];
      for (let i = 0; i < strings.length; i += 2) macros.push([text(strings[i]!), text(strings[i + 1]!)]);
      return { type: 'macro', stage: stage as CommandCode, macros };
    }
    case SMFIC.CONNECT: {
      const nul = data.indexOf(0);
      if (nul < 0) throw new DimeError('MILTER_BAD_PACKET', 'CONNECT: host name not NUL-terminated');
      const hostname = text(data.subarray(0, nul));
      if (data.length < nul + 2) throw new DimeError('MILTER_BAD_PACKET', 'CONNECT: no address family');
      const familyByte = String.fromCharCode(data[nul + 1]!);
      const family = FAMILY_CODES[familyByte];
      if (!family) throw new DimeError('MILTER_BAD_PACKET', `CONNECT: unknown address family ${JSON.stringify(familyByte)}`);
      const rest = data.subarray(nul + 2);
      if (family === 'unknown') {
        expectEmpty(rest, 'CONNECT with family U');
        return { type: 'connect', hostname, family, port: 0, address: '' };
      }
      if (rest.length < 2) throw new DimeError('MILTER_BAD_PACKET', 'CONNECT: truncated port');
      const port = (rest[0]! << 8) | rest[1]!;
      const strings = nulStrings(rest.subarray(2), 'CONNECT address');
      if (strings.length !== 1) throw new DimeError('MILTER_BAD_PACKET', `CONNECT: expected one address string, got ${strings.length}`);
      let address = text(strings[0]!);
      // Postfix sends plain IPv6 addresses; Sendmail prefixes them. Accept both.
      if (family === 'inet6' && address.slice(0, 5).toLowerCase() === 'ipv6:') address = address.slice(5);
      return { type: 'connect', hostname, family, port, address };
    }
    case SMFIC.HELO: {
      const strings = nulStrings(data, 'HELO');
      if (strings.length !== 1) throw new DimeError('MILTER_BAD_PACKET', `HELO: expected one string, got ${strings.length}`);
      return { type: 'helo', name: text(strings[0]!) };
    }
    case SMFIC.MAIL:
    case SMFIC.RCPT: {
      const what = code === SMFIC.MAIL ? 'MAIL' : 'RCPT';
      const strings = nulStrings(data, what);
      if (strings.length < 1) throw new DimeError('MILTER_BAD_PACKET', `${what}: no address`);
      const [first, ...rest] = strings.map(text);
      return code === SMFIC.MAIL ? { type: 'mail', sender: first!, args: rest } : { type: 'rcpt', recipient: first!, args: rest };
    }
    case SMFIC.HEADER: {
      const strings = nulStrings(data, 'HEADER');
      if (strings.length !== 2) throw new DimeError('MILTER_BAD_PACKET', `HEADER: expected name and value, got ${strings.length} strings`);
      const valueBytes = new Uint8Array(strings[1]!);
      return { type: 'header', name: text(strings[0]!), value: text(valueBytes), valueBytes };
    }
    case SMFIC.BODY:
      return { type: 'body', chunk: data };
    case SMFIC.BODYEOB:
      return { type: 'eom', chunk: data };
    case SMFIC.UNKNOWN: {
      const strings = nulStrings(data, 'UNKNOWN');
      if (strings.length !== 1) throw new DimeError('MILTER_BAD_PACKET', `UNKNOWN: expected one string, got ${strings.length}`);
      return { type: 'unknown', line: text(strings[0]!) };
    }
    case SMFIC.DATA:
      expectEmpty(data, 'DATA');
      return { type: 'data' };
    case SMFIC.EOH:
      expectEmpty(data, 'EOH');
      return { type: 'eoh' };
    case SMFIC.ABORT:
      expectEmpty(data, 'ABORT');
      return { type: 'abort' };
    case SMFIC.QUIT:
      expectEmpty(data, 'QUIT');
      return { type: 'quit' };
    case SMFIC.QUIT_NC:
      expectEmpty(data, 'QUIT_NC');
      return { type: 'quitNc' };
    default:
      throw new DimeError('MILTER_UNKNOWN_COMMAND', `command byte 0x${code.charCodeAt(0).toString(16).padStart(2, '0')}`);
  }
}

/** Encode an MTA-to-milter command (the MTA side: test clients, a milter chain). */
export function encodeCommand(cmd: MilterCommand): Uint8Array {
  switch (cmd.type) {
    case 'optneg':
      checkU32('version', cmd.version);
      checkU32('actions', cmd.actions);
      checkU32('protocol', cmd.protocol);
      return encodeFrame('O', bytes(u32Bytes(cmd.version, cmd.actions, cmd.protocol)));
    case 'macro': {
      if (!COMMAND_CODES.has(cmd.stage)) throw new DimeError('MILTER_BAD_PACKET', `macro stage must be an SMFIC code, got ${JSON.stringify(cmd.stage)}`);
      const fields: Array<[string, string]> = [];
      for (const [name, value] of cmd.macros) fields.push(['macro name', name], ['macro value', value]);
      return encodeFrame('D', bytes(Buffer.concat([Buffer.from(cmd.stage, 'latin1'), cstrings(fields)])));
    }
    case 'connect': {
      const host = cstrings([['hostname', cmd.hostname]]);
      const family = Buffer.from(FAMILY_BYTES[cmd.family] ?? '', 'latin1');
      if (family.length !== 1) throw new DimeError('MILTER_BAD_PACKET', `family must be unknown, unix, inet or inet6, got ${String(cmd.family)}`);
      if (cmd.family === 'unknown') return encodeFrame('C', bytes(Buffer.concat([host, family])));
      if (!Number.isInteger(cmd.port) || cmd.port < 0 || cmd.port > 0xffff) throw new DimeError('MILTER_BAD_PACKET', `port must be 0-65535, got ${String(cmd.port)}`);
      const port = Buffer.alloc(2);
      port.writeUInt16BE(cmd.port);
      return encodeFrame('C', bytes(Buffer.concat([host, family, port, cstrings([['address', cmd.address]])])));
    }
    case 'helo':
      return encodeFrame('H', bytes(cstrings([['helo', cmd.name]])));
    case 'mail':
      return encodeFrame('M', bytes(cstrings([['sender', cmd.sender], ...cmd.args.map((a): [string, string] => ['ESMTP argument', a])])));
    case 'rcpt':
      return encodeFrame('R', bytes(cstrings([['recipient', cmd.recipient], ...cmd.args.map((a): [string, string] => ['ESMTP argument', a])])));
    case 'header': {
      const value = cmd.valueBytes ?? Buffer.from(cmd.value, 'utf8');
      if (value.includes(0)) throw new DimeError('MILTER_BAD_PACKET', 'header value must not contain NUL');
      return encodeFrame('L', bytes(Buffer.concat([cstrings([['header name', cmd.name]]), value, Buffer.alloc(1)])));
    }
    case 'body':
      return encodeFrame('B', cmd.chunk);
    case 'eom':
      return encodeFrame('E', cmd.chunk);
    case 'unknown':
      return encodeFrame('U', bytes(cstrings([['command line', cmd.line]])));
    case 'data':
    case 'eoh':
    case 'abort':
    case 'quit':
    case 'quitNc':
      return encodeFrame(COMMAND_CODE_OF[cmd.type]);
    default:
      throw new DimeError('MILTER_UNKNOWN_COMMAND', `command type ${JSON.stringify((cmd as { type?: unknown }).type)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Responses (milter → MTA)

export interface MacroList {
  stage: MacroStage;
  /** Macro names as Postfix spells them: `i`, `{auth_type}`, … */
  names: string[];
}
export interface OptnegResponse {
  type: 'optneg';
  version: number;
  actions: number;
  protocol: number;
  /** v6 macro-list overrides carried on the OPTNEG reply (needs SMFIF_SETSYMLIST). */
  macros?: MacroList[];
}
export type SimpleResponseType = 'continue' | 'accept' | 'reject' | 'tempfail' | 'discard' | 'shutdown' | 'connfail' | 'progress' | 'skip';
export type MilterResponse =
  | OptnegResponse
  | { type: SimpleResponseType }
  | { type: 'replycode'; reply: string }
  | { type: 'addHeader'; name: string; value: string }
  | { type: 'insertHeader'; index: number; name: string; value: string }
  | { type: 'changeHeader'; index: number; name: string; value: string }
  | { type: 'replaceBody'; chunk: Uint8Array }
  | { type: 'addRecipient'; recipient: string }
  | { type: 'addRecipientPar'; recipient: string; args?: string }
  | { type: 'deleteRecipient'; recipient: string }
  | { type: 'changeFrom'; sender: string; args?: string }
  | { type: 'quarantine'; reason: string }
  | { type: 'setSymList'; list: MacroList };
export type ResponseType = MilterResponse['type'];

export const RESPONSE_CODE_OF: Record<ResponseType, ResponseCode> = {
  optneg: 'O',
  continue: 'c',
  accept: 'a',
  reject: 'r',
  tempfail: 't',
  discard: 'd',
  shutdown: '4',
  connfail: 'f',
  progress: 'p',
  skip: 's',
  replycode: 'y',
  addHeader: 'h',
  insertHeader: 'i',
  changeHeader: 'm',
  replaceBody: 'b',
  addRecipient: '+',
  addRecipientPar: '2',
  deleteRecipient: '-',
  changeFrom: 'e',
  quarantine: 'q',
  setSymList: 'l',
};
const RESPONSE_TYPE_OF: Record<string, ResponseType> = Object.fromEntries(Object.entries(RESPONSE_CODE_OF).map(([t, c]) => [c, t as ResponseType]));
const SIMPLE_RESPONSES = new Set<ResponseType>(['continue', 'accept', 'reject', 'tempfail', 'discard', 'shutdown', 'connfail', 'progress', 'skip']);

/** Header field names: printable US-ASCII except colon (RFC 5322 §3.6.8 ftext). */
const HEADER_NAME = /^[\x21-\x39\x3b-\x7e]+$/;

export function checkHeaderName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !HEADER_NAME.test(name)) {
    throw new DimeError('MILTER_BAD_MODIFICATION', `header name must be printable ASCII without a colon or space, got ${JSON.stringify(name)}`);
  }
}

function checkIndex(index: number): void {
  if (!Number.isInteger(index) || index < 0 || index > U32_MAX) {
    throw new DimeError('MILTER_BAD_MODIFICATION', `header index must be an unsigned 32-bit integer, got ${String(index)}`);
  }
}

function macroListBytes(list: MacroList): Buffer {
  const stage = SMFIM[list.stage];
  if (stage === undefined) throw new DimeError('MILTER_BAD_PACKET', `macro stage must be one of ${MACRO_STAGES.join(', ')}, got ${JSON.stringify(list.stage)}`);
  for (const name of list.names) {
    if (typeof name !== 'string' || name.length === 0 || /[\s\0]/.test(name)) {
      throw new DimeError('MILTER_BAD_PACKET', `macro name must be non-empty without spaces or NUL, got ${JSON.stringify(name)}`);
    }
  }
  return Buffer.concat([u32Bytes(stage), cstrings([['macro names', list.names.join(' ')]])]);
}

/** Encode a milter-to-MTA response. Every data part must fit MAX_DATA_CHUNK. */
export function encodeResponse(resp: MilterResponse): Uint8Array {
  let data: Buffer;
  switch (resp.type) {
    case 'optneg':
      checkU32('version', resp.version);
      checkU32('actions', resp.actions);
      checkU32('protocol', resp.protocol);
      data = Buffer.concat([u32Bytes(resp.version, resp.actions, resp.protocol), ...(resp.macros ?? []).map(macroListBytes)]);
      break;
    case 'replycode':
      data = cstrings([['reply', resp.reply]]);
      break;
    case 'addHeader':
      checkHeaderName(resp.name);
      data = cstrings([['header name', resp.name], ['header value', resp.value]]);
      break;
    case 'insertHeader':
    case 'changeHeader':
      checkIndex(resp.index);
      checkHeaderName(resp.name);
      data = Buffer.concat([u32Bytes(resp.index), cstrings([['header name', resp.name], ['header value', resp.value]])]);
      break;
    case 'replaceBody':
      if (!(resp.chunk instanceof Uint8Array)) throw new DimeError('MILTER_BAD_MODIFICATION', 'body chunk must be a Uint8Array');
      data = Buffer.from(resp.chunk.buffer, resp.chunk.byteOffset, resp.chunk.length);
      break;
    case 'addRecipient':
    case 'deleteRecipient':
      data = cstrings([['recipient', resp.recipient]]);
      break;
    case 'addRecipientPar':
      data = cstrings([['recipient', resp.recipient], ...(resp.args ? [['ESMTP arguments', resp.args] as [string, string]] : [])]);
      break;
    case 'changeFrom':
      data = cstrings([['sender', resp.sender], ...(resp.args ? [['ESMTP arguments', resp.args] as [string, string]] : [])]);
      break;
    case 'quarantine':
      if (resp.reason.length === 0) throw new DimeError('MILTER_BAD_MODIFICATION', 'quarantine reason must not be empty');
      data = cstrings([['quarantine reason', resp.reason]]);
      break;
    case 'setSymList':
      data = macroListBytes(resp.list);
      break;
    default:
      if (!SIMPLE_RESPONSES.has(resp.type)) throw new DimeError('MILTER_BAD_PACKET', `response type ${JSON.stringify(resp.type)}`);
      // c a d r t 4 s p must carry no data: Postfix calls extra bytes a protocol error.
      data = Buffer.alloc(0);
  }
  if (data.length > MAX_DATA_CHUNK) {
    throw new DimeError('MILTER_PACKET_TOO_LARGE', `${resp.type} response carries ${data.length} data bytes, more than ${MAX_DATA_CHUNK}`);
  }
  return encodeFrame(RESPONSE_CODE_OF[resp.type], bytes(data));
}

/** Split a replacement body into REPLBODY packets of at most MAX_DATA_CHUNK bytes each. */
export function encodeReplaceBody(body: Uint8Array, chunkSize: number = MAX_DATA_CHUNK): Uint8Array[] {
  if (!(body instanceof Uint8Array)) throw new DimeError('MILTER_BAD_MODIFICATION', 'body must be a Uint8Array');
  if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_DATA_CHUNK) {
    throw new DimeError('MILTER_BAD_MODIFICATION', `chunkSize must be from 1 to ${MAX_DATA_CHUNK}, got ${String(chunkSize)}`);
  }
  const packets: Uint8Array[] = [];
  for (let at = 0; at < body.length; at += chunkSize) packets.push(encodeResponse({ type: 'replaceBody', chunk: body.subarray(at, at + chunkSize) }));
  // An empty replacement is still a replacement: one empty REPLBODY (libmilter sends the same).
  if (body.length === 0) packets.push(encodeResponse({ type: 'replaceBody', chunk: body }));
  return packets;
}

/** Decode a milter-to-MTA frame (the MTA side). */
export function decodeResponse(frame: Frame): MilterResponse {
  const type = RESPONSE_TYPE_OF[frame.code];
  if (!type) throw new DimeError('MILTER_UNKNOWN_COMMAND', `response byte 0x${frame.code.charCodeAt(0).toString(16).padStart(2, '0')}`);
  const data = frame.data;
  const strings = (what: string, min: number, max: number): string[] => {
    const list = nulStrings(data, what).map(text);
    if (list.length < min || list.length > max) throw new DimeError('MILTER_BAD_PACKET', `${what}: expected ${min}-${max} strings, got ${list.length}`);
    return list;
  };
  switch (type) {
    case 'optneg': {
      if (data.length < 12) throw new DimeError('MILTER_BAD_PACKET', `OPTNEG reply needs 12 data bytes, got ${data.length}`);
      const resp: OptnegResponse = { type, version: u32(data, 0, 'OPTNEG'), actions: u32(data, 4, 'OPTNEG'), protocol: u32(data, 8, 'OPTNEG') };
      let at = 12;
      const macros: MacroList[] = [];
      while (at < data.length) {
        const list = decodeMacroList(data.subarray(at));
        macros.push(list.list);
        at += list.length;
      }
      if (macros.length > 0) resp.macros = macros;
      return resp;
    }
    case 'replycode':
      return { type, reply: strings('REPLYCODE', 1, 1)[0]! };
    case 'addHeader': {
      const [name, value] = strings('ADDHEADER', 2, 2);
      return { type, name: name!, value: value! };
    }
    case 'insertHeader':
    case 'changeHeader': {
      const index = u32(data, 0, type);
      const list = nulStrings(data.subarray(4), type).map(text);
      if (list.length !== 2) throw new DimeError('MILTER_BAD_PACKET', `${type}: expected name and value`);
      return { type, index, name: list[0]!, value: list[1]! };
    }
    case 'replaceBody':
      return { type, chunk: data };
    case 'addRecipient':
    case 'deleteRecipient':
      return { type, recipient: strings(type, 1, 1)[0]! };
    case 'addRecipientPar': {
      const [recipient, args] = strings(type, 1, 2);
      return args === undefined ? { type, recipient: recipient! } : { type, recipient: recipient!, args };
    }
    case 'changeFrom': {
      const [sender, args] = strings(type, 1, 2);
      return args === undefined ? { type, sender: sender! } : { type, sender: sender!, args };
    }
    case 'quarantine':
      return { type, reason: strings(type, 1, 1)[0]! };
    case 'setSymList': {
      const list = decodeMacroList(data);
      if (list.length !== data.length) throw new DimeError('MILTER_BAD_PACKET', 'SETSYMLIST: trailing bytes');
      return { type, list: list.list };
    }
    default:
      expectEmpty(data, `response ${frame.code}`);
      return { type } as MilterResponse;
  }
}

function decodeMacroList(data: Uint8Array): { list: MacroList; length: number } {
  const stageNumber = u32(data, 0, 'macro list');
  const stage = MACRO_STAGES.find((s) => SMFIM[s] === stageNumber);
  if (!stage) throw new DimeError('MILTER_BAD_PACKET', `macro list for unknown stage ${stageNumber}`);
  const nul = data.indexOf(0, 4);
  if (nul < 0) throw new DimeError('MILTER_BAD_PACKET', 'macro list not NUL-terminated');
  const names = text(data.subarray(4, nul)).split(' ').filter((n) => n.length > 0);
  return { list: { stage, names }, length: nul + 1 };
}

// ---------------------------------------------------------------------------------------------
// SMTP replies (SMFIR_REPLYCODE)

/** libmilter's smfi_setmlreply takes at most 32 lines; Postfix would take more, Sendmail not. */
export const MAX_REPLY_LINES = 32;
/** RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including CRLF. */
export const MAX_REPLY_LINE = 510;

export interface SmtpReply {
  /** Three digits, 4xx or 5xx: a milter may only refuse (libmilter smfi_setreply). */
  code: string;
  /** Enhanced status code (RFC 3463) `c.s.d`; its class must be the reply code's first digit. */
  xcode?: string;
  /** One line, or several for a multi-line reply. No CR, LF or NUL inside a line. */
  text: string | readonly string[];
}

const REPLY_CODE = /^[45][0-9][0-9]$/;
const ENHANCED_CODE = /^([245])\.[0-9]{1,3}\.[0-9]{1,3}$/;

/**
 * The REPLYCODE text for a reply: `ddd x.y.z text`, or for several lines `ddd-x.y.z line` CRLF … and
 * `ddd x.y.z last`. `%` is written `%%` because the MTA formats the text (spec §1.5).
 */
export function formatReply(reply: SmtpReply): string {
  if (typeof reply !== 'object' || reply === null) throw new DimeError('MILTER_BAD_REPLY_CODE', 'reply must be an object');
  const { code, xcode } = reply;
  if (typeof code !== 'string' || !REPLY_CODE.test(code)) throw new DimeError('MILTER_BAD_REPLY_CODE', `code must be three digits starting 4 or 5, got ${JSON.stringify(code)}`);
  if (xcode !== undefined) {
    const m = typeof xcode === 'string' ? ENHANCED_CODE.exec(xcode) : null;
    if (!m) throw new DimeError('MILTER_BAD_REPLY_CODE', `xcode must be an enhanced status code like 5.7.1, got ${JSON.stringify(xcode)}`);
    if (m[1] !== code[0]) throw new DimeError('MILTER_BAD_REPLY_CODE', `xcode ${xcode} must start with ${code[0]} to match code ${code}`);
  }
  const lines = typeof reply.text === 'string' ? [reply.text] : [...(reply.text as readonly string[])];
  if (lines.length < 1 || lines.length > MAX_REPLY_LINES) throw new DimeError('MILTER_BAD_REPLY_CODE', `text must have 1 to ${MAX_REPLY_LINES} lines, got ${lines.length}`);
  const out = lines.map((line, i) => {
    if (typeof line !== 'string' || /[\r\n\0]/.test(line)) throw new DimeError('MILTER_BAD_REPLY_CODE', `text line ${i + 1} must be a string without CR, LF or NUL`);
    const sep = i === lines.length - 1 ? ' ' : '-';
    const formatted = `${code}${sep}${xcode !== undefined ? `${xcode} ` : ''}${line.replace(/%/g, '%%')}`;
    if (Buffer.byteLength(formatted, 'utf8') > MAX_REPLY_LINE) throw new DimeError('MILTER_BAD_REPLY_CODE', `text line ${i + 1} is longer than ${MAX_REPLY_LINE} bytes`);
    return formatted;
  });
  return out.join('\r\n');
}

// ---------------------------------------------------------------------------------------------
// Option negotiation

export interface OptionOffer {
  version: number;
  actions: number;
  protocol: number;
}

export interface OptionRequest {
  /** Actions (SMFIF_*) the milter will use. */
  actions: number;
  /** Protocol flags (SMFIP_*) the milter would like. */
  protocol: number;
  /** Macros to ask for per stage (needs v6 and SMFIF_SETSYMLIST from the MTA). */
  macros?: Partial<Record<MacroStage, readonly string[]>>;
}

export interface Negotiated {
  version: number;
  actions: number;
  protocol: number;
  /** Macro lists sent in the OPTNEG reply; empty when the MTA cannot take them. */
  macros: MacroList[];
}

/**
 * Negotiate down to what both sides support: our version is min(MTA's, 6); actions and protocol
 * flags are what we want, what the MTA offered and what that version defines; the MDS size bits are
 * never taken (we keep every packet ≤ 64 KiB − 1). Macro lists ride on a v6 OPTNEG reply when the
 * MTA offers SMFIF_SETSYMLIST, which we then set. A version below 2 is refused.
 */
export function negotiate(offer: OptionOffer, want: OptionRequest): Negotiated {
  if (!Number.isInteger(offer.version) || offer.version < MILTER_MIN_VERSION) {
    throw new DimeError('MILTER_PROTOCOL', `MTA offers milter protocol version ${offer.version}; versions ${MILTER_MIN_VERSION}-${MILTER_VERSION} are supported`);
  }
  const version = Math.min(offer.version, MILTER_VERSION);
  const masks = versionMasks(version);
  let actions = (want.actions & offer.actions & masks.actions & ~SMFIF.SETSYMLIST) >>> 0;
  const protocol = (want.protocol & offer.protocol & masks.protocol) >>> 0;
  const macros: MacroList[] = [];
  if (version >= 6 && (offer.actions & SMFIF.SETSYMLIST) !== 0 && want.macros) {
    for (const stage of MACRO_STAGES) {
      const names = want.macros[stage];
      if (names && names.length > 0) macros.push({ stage, names: [...names] });
    }
    if (macros.length > 0) actions |= SMFIF.SETSYMLIST;
  }
  return { version, actions, protocol, macros };
}

/** The OPTNEG reply for a negotiation result. */
export function optnegResponse(n: Negotiated): OptnegResponse {
  const resp: OptnegResponse = { type: 'optneg', version: n.version, actions: n.actions, protocol: n.protocol };
  if (n.macros.length > 0) resp.macros = n.macros;
  return resp;
}
