/**
 * One milter connection: a state machine fed with bytes, talking to the MTA through a small
 * transport interface (the server wires it to a socket). It negotiates from the handler's needs,
 * collects macros per stage, buffers the message for the eom handler (spilling the body to a private
 * temporary file past a threshold), enforces one deadline per stage, turns failures into the
 * failure-policy verdict, and never sends a reply the MTA asked not to get.
 *
 * Rules it keeps (shared/spec/milter-and-postfix.md §1.11): OPTNEG first; commands strictly in
 * order; no reply to MACRO, ABORT, QUIT, QUIT_NC or to a stage with a negotiated NR_* flag; always
 * one final decision for end-of-message; repeated ABORTs are harmless; several messages per
 * connection. Protocol errors: an unparseable packet, an unknown command or anything before OPTNEG
 * closes the connection, as libmilter does (Postfix then applies milter_default_action). A
 * well-formed command out of order fails the message in progress with the `internal` failure verdict
 * and the connection goes on.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Logger } from '../log.js';
import { DimeError, isDimeError } from '../errors.js';
import { recordMilterFailure } from '../service-metrics.js';
import {
  decodeCommand,
  encodeReplaceBody,
  encodeResponse,
  formatReply,
  FrameReader,
  MAX_DATA_CHUNK,
  MAX_PACKET_LENGTH,
  negotiate,
  optnegResponse,
  SMFIF,
  SMFIP,
  type CommandCode,
  type Frame,
  type MilterCommand,
  type MilterResponse,
  type Negotiated,
} from './codec.js';
import {
  actionFor,
  checkModification,
  checkVerdict,
  failureClass,
  failureVerdict,
  handlerOptionRequest,
  resolveFailurePolicy,
  wantsMessage,
  type ConnectInfo,
  type EomResult,
  type FailurePolicy,
  type Header,
  type MessageBody,
  type MilterContext,
  type MilterHandler,
  type MilterMessage,
  type Modification,
  type Recipient,
  type Sender,
  type Stage,
  type Verdict,
} from './handler.js';

// ---------------------------------------------------------------------------------------------
// Configuration

export interface Deadlines {
  /** The connect handler. Below Postfix's milter_connect_timeout (30 s). */
  connect: number;
  /** HELO, MAIL, RCPT, DATA, unknown-command handlers. Below milter_command_timeout (30 s). */
  command: number;
  /** Header, EOH, body and end-of-message handlers. Below milter_content_timeout (300 s). */
  content: number;
}

/**
 * 5 s under each Postfix default (60 s for content), so that our failure verdict reaches Postfix
 * before Postfix gives up on us and applies its own milter_default_action.
 */
export const DEFAULT_DEADLINES: Readonly<Deadlines> = Object.freeze({ connect: 25_000, command: 25_000, content: 240_000 });

/**
 * SMFIR_PROGRESS while an eom handler runs. Each one restarts Postfix's milter_content_timeout
 * (300 s by default, and sites lower it); every 10 s stays far inside any sensible setting.
 */
export const DEFAULT_PROGRESS_INTERVAL = 10_000;

/** Body bytes kept in memory before spilling to a temporary file: most mail is smaller. */
export const DEFAULT_SPILL_THRESHOLD = 1024 * 1024;

/**
 * Largest message (headers + body) buffered for the eom handler. Postfix's message_size_limit is
 * 10,240,000 bytes by default; 64 MiB leaves room for sites that raise it. Set Postfix's limit
 * below this one so that Postfix refuses oversized mail with the right 552 reply first.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** Decoded packets waiting for the handler beyond this many bytes pause the socket (NR_* streams). */
export const MAX_QUEUED_BYTES = 1024 * 1024;

export interface SessionLimits {
  maxPacketLength: number;
  maxMessageBytes: number;
  spillThreshold: number;
  spillDir: string;
}

export interface SessionOptions {
  handler: MilterHandler;
  logger: Logger;
  failurePolicy?: Partial<Record<string, string>>;
  deadlines?: Partial<Deadlines>;
  /** 0 disables progress packets. */
  progressInterval?: number;
  limits?: Partial<SessionLimits>;
}

/** Everything a session needs, validated once and shared by all sessions of a server. */
export interface SessionConfig {
  handler: MilterHandler;
  logger: Logger;
  policy: FailurePolicy;
  deadlines: Deadlines;
  progressInterval: number;
  limits: SessionLimits;
}

function positiveInt(name: string, value: unknown, allowZero = false): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < (allowZero ? 0 : 1)) {
    throw new DimeError('USAGE', `${name} must be a ${allowZero ? 'non-negative' : 'positive'} integer, got ${String(value)}`);
  }
  return value;
}

export function resolveSessionConfig(options: SessionOptions): SessionConfig {
  const { handler } = options;
  if (typeof handler !== 'object' || handler === null) throw new DimeError('USAGE', 'handler must be an object');
  const d = { ...DEFAULT_DEADLINES, ...options.deadlines };
  const deadlines: Deadlines = {
    connect: positiveInt('deadlines.connect', d.connect),
    command: positiveInt('deadlines.command', d.command),
    content: positiveInt('deadlines.content', d.content),
  };
  const l = options.limits ?? {};
  const limits: SessionLimits = {
    maxPacketLength: positiveInt('limits.maxPacketLength', l.maxPacketLength ?? MAX_PACKET_LENGTH),
    maxMessageBytes: positiveInt('limits.maxMessageBytes', l.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES),
    spillThreshold: positiveInt('limits.spillThreshold', l.spillThreshold ?? DEFAULT_SPILL_THRESHOLD, true),
    spillDir: l.spillDir ?? os.tmpdir(),
  };
  if (typeof limits.spillDir !== 'string' || limits.spillDir.length === 0) throw new DimeError('USAGE', 'limits.spillDir must be a directory path');
  const config: SessionConfig = {
    handler,
    logger: options.logger,
    policy: resolveFailurePolicy(options.failurePolicy),
    deadlines,
    progressInterval: positiveInt('progressInterval', options.progressInterval ?? DEFAULT_PROGRESS_INTERVAL, true),
    limits,
  };
  // Fail at start-up, not at the first connection, on a bad action name.
  handlerOptionRequest(handler, config.policy);
  return config;
}

/** How a session reaches its peer; the server implements it over a socket. */
export interface SessionTransport {
  /** Queue bytes; false when the buffer is full (then await drained()). */
  write(data: Uint8Array): boolean;
  drained(): Promise<void>;
  pause(): void;
  resume(): void;
  /** Flush what was written, then close. */
  close(): void;
}

// ---------------------------------------------------------------------------------------------
// The buffered body

let spillSerial = 0;

/**
 * The message body, in memory up to a threshold and then in a temporary file created with mode 0600
 * and O_EXCL in the spill directory. The file is unlinked as soon as it is open: the data lives on
 * only through our descriptor, so nothing is left on disk whatever happens to the process (abort,
 * dropped connection, crash, kill -9), and no other user can open it by name.
 */
export class BodyBuffer implements MessageBody {
  private memory: Buffer[] = [];
  private file: fs.promises.FileHandle | undefined;
  private disposed = false;
  size = 0;

  constructor(
    private readonly threshold: number,
    private readonly dir: string,
  ) {}

  get spilled(): boolean {
    return this.file !== undefined;
  }

  async append(chunk: Uint8Array): Promise<void> {
    if (this.disposed) throw new DimeError('MILTER_PROTOCOL', 'body buffer already released');
    if (chunk.length === 0) return;
    if (!this.file && this.size + chunk.length <= this.threshold) {
      this.memory.push(Buffer.from(chunk));
      this.size += chunk.length;
      return;
    }
    if (!this.file) await this.spill();
    const file = this.file!;
    await writeAll(file, chunk, this.size);
    this.size += chunk.length;
  }

  private async spill(): Promise<void> {
    const name = path.join(this.dir, `dime-milter-${process.pid}-${++spillSerial}-${randomBytes(8).toString('hex')}.spill`);
    const file = await fs.promises.open(name, 'wx+', 0o600);
    try {
      await fs.promises.unlink(name);
      let at = 0;
      for (const part of this.memory) {
        await writeAll(file, part, at);
        at += part.length;
      }
    } catch (err) {
      await file.close().catch(() => undefined);
      await fs.promises.unlink(name).catch(() => undefined);
      throw err;
    }
    this.file = file;
    this.memory = [];
  }

  async bytes(): Promise<Uint8Array> {
    const out = new Uint8Array(this.size);
    let at = 0;
    for await (const chunk of this.chunks()) {
      out.set(chunk, at);
      at += chunk.length;
    }
    return out;
  }

  async *chunks(): AsyncIterable<Uint8Array> {
    if (this.disposed) throw new DimeError('MILTER_PROTOCOL', 'message body read after the message ended');
    if (!this.file) {
      for (const part of this.memory) yield new Uint8Array(part);
      return;
    }
    const size = this.size;
    for (let at = 0; at < size; ) {
      if (this.disposed || !this.file) throw new DimeError('MILTER_PROTOCOL', 'message body read after the message ended');
      const want = Math.min(MAX_DATA_CHUNK + 1, size - at);
      const buf = Buffer.allocUnsafe(want);
      const { bytesRead } = await this.file.read(buf, 0, want, at);
      if (bytesRead === 0) throw new DimeError('FILE_UNREADABLE', 'spilled body ended early');
      at += bytesRead;
      yield new Uint8Array(buf.buffer, buf.byteOffset, bytesRead);
    }
  }

  /** Release memory and the file descriptor; idempotent. */
  async dispose(): Promise<void> {
    this.disposed = true;
    this.memory = [];
    const file = this.file;
    this.file = undefined;
    if (file) await file.close().catch(() => undefined);
  }
}

async function writeAll(file: fs.promises.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await file.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

// ---------------------------------------------------------------------------------------------
// The session

/** Order of the message stages; a command may not come after a later stage (rank) has begun. */
const RANK = { mail: 0, rcpt: 1, data: 2, header: 3, eoh: 4, body: 5, eom: 6 } as const;
type MessageCommandType = keyof typeof RANK;
/** Stages that may repeat within one message. */
const REPEATABLE = new Set<MessageCommandType>(['rcpt', 'header', 'body']);

/** NR_* flag per command type that can be answered. */
const NO_REPLY_FLAG: Partial<Record<MilterCommand['type'], number>> = {
  connect: SMFIP.NR_CONN,
  helo: SMFIP.NR_HELO,
  mail: SMFIP.NR_MAIL,
  rcpt: SMFIP.NR_RCPT,
  data: SMFIP.NR_DATA,
  unknown: SMFIP.NR_UNKN,
  header: SMFIP.NR_HDR,
  eoh: SMFIP.NR_EOH,
  body: SMFIP.NR_BODY,
};

/** Message-stage macro packets, dropped when a message ends. */
const MESSAGE_MACRO_STAGES: CommandCode[] = ['M', 'R', 'T', 'L', 'N', 'B', 'E'];
/** Lookup order for ctx.macro: latest stage first, CONNECT last. */
const MACRO_LOOKUP_ORDER: CommandCode[] = ['E', 'B', 'N', 'L', 'T', 'R', 'M', 'U', 'H', 'C'];

/** Marker for a handler cut short because the connection is going away. */
class SessionEnding extends Error {
  constructor(readonly forced: boolean) {
    super(forced ? 'server shutting down' : 'connection closed');
  }
}

// Allocated once: an abort reason needs no stack trace, and one per closing connection showed in
// the Postfix benchmark's profile.
const CONNECTION_CLOSED = new SessionEnding(false);
const SERVER_SHUTDOWN = new SessionEnding(true);

interface MessageState {
  rank: number;
  sender: Sender | undefined;
  recipients: Recipient[];
  headers: Header[];
  body: BodyBuffer;
  /** Bytes of headers and body counted against maxMessageBytes. */
  bytes: number;
  /** A final decision already made (accept/reject/…): later events get it without the handler. */
  latched: Verdict | undefined;
  /** A failure verdict owed to the MTA at the next reply, and at end of message. */
  failed: Verdict | undefined;
  quarantine: string | undefined;
  bodySkipped: boolean;
  tooLarge: boolean;
}

interface ConnectionState {
  info: ConnectInfo | undefined;
  helo: string | undefined;
  latched: Verdict | undefined;
  quarantine: string | undefined;
}

let sessionSerial = 0;

export class MilterSession {
  readonly id: string;
  /** Settles when the session has closed and released everything (buffers, files). */
  readonly done: Promise<void>;

  private readonly cfg: SessionConfig;
  private readonly log: Logger;
  private readonly reader: FrameReader;
  private readonly queue: Frame[] = [];
  private queuedBytes = 0;
  private paused = false;
  private pumping = false;
  private negotiated: Negotiated | undefined;
  private conn: ConnectionState = { info: undefined, helo: undefined, latched: undefined, quarantine: undefined };
  private msg: MessageState | undefined;
  private readonly macroStore = new Map<CommandCode, Map<string, string>>();
  private readonly inFlight = new Set<AbortController>();
  private closed = false;
  private draining = false;
  private forced = false;
  private endSignal!: (reason: SessionEnding) => void;
  private readonly ending: Promise<never>;
  private resolveDone!: () => void;

  constructor(
    config: SessionConfig,
    private readonly transport: SessionTransport,
    id?: string,
  ) {
    this.cfg = config;
    this.id = id ?? `m${++sessionSerial}`;
    this.log = config.logger.child({ conn: this.id });
    this.reader = new FrameReader(config.limits.maxPacketLength);
    this.ending = new Promise<never>((_, reject) => {
      this.endSignal = reject;
    });
    this.ending.catch(() => undefined);
    this.done = new Promise<void>((resolve) => {
      this.resolveDone = resolve;
    });
  }

  /** Bytes from the MTA. */
  receive(chunk: Uint8Array): void {
    if (this.closed) return;
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (err) {
      this.fatal(err);
      return;
    }
    for (const frame of frames) {
      this.queue.push(frame);
      this.queuedBytes += frame.data.length;
    }
    if (this.queuedBytes > MAX_QUEUED_BYTES && !this.paused) {
      this.paused = true;
      this.transport.pause();
    }
    void this.pump();
  }

  /** The MTA closed its side (or the socket died). */
  end(): void {
    if (this.closed) return;
    try {
      this.reader.end();
    } catch (err) {
      this.log.warn({ code: (err as DimeError).code }, (err as Error).message);
    }
    void this.shutdown(false, 'peer closed');
  }

  /**
   * Graceful stop: close now if idle, else after the message in progress ends. `force` gives up on
   * a handler still running: its command gets TEMPFAIL, then the connection closes.
   */
  drain(force = false): void {
    if (this.closed) return;
    this.draining = true;
    if (force) {
      // A running handler loses its race at once; the pump answers TEMPFAIL and then closes.
      this.forced = true;
      this.endSignal(SERVER_SHUTDOWN);
      if (!this.pumping) void this.shutdown(false, 'server closing (grace period over)');
      return;
    }
    if (!this.msg && !this.pumping) void this.shutdown(true, 'server closing');
  }

  // -------------------------------------------------------------------------------------------
  // Reading loop

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length > 0 && !this.closed) {
        const frame = this.queue.shift()!;
        this.queuedBytes -= frame.data.length;
        if (this.paused && this.queuedBytes <= MAX_QUEUED_BYTES / 2) {
          this.paused = false;
          this.transport.resume();
        }
        await this.handleFrame(frame);
        if (this.forced) await this.shutdown(false, 'server closing (grace period over)');
        else if (this.draining && !this.msg) await this.shutdown(true, 'server closing');
      }
    } catch (err) {
      this.fatal(err);
    } finally {
      this.pumping = false;
      if (this.closed) await this.finalize();
    }
  }

  private async handleFrame(frame: Frame): Promise<void> {
    let cmd: MilterCommand;
    try {
      cmd = decodeCommand(frame);
    } catch (err) {
      this.fatal(err);
      return;
    }
    this.log.trace({ cmd: cmd.type }, 'command');
    if (!this.negotiated && cmd.type !== 'optneg') {
      if (cmd.type === 'quit') return this.shutdown(true, 'quit before negotiation');
      this.fatal(new DimeError('MILTER_PROTOCOL', `${cmd.type} before option negotiation`));
      return;
    }
    switch (cmd.type) {
      case 'optneg':
        return this.onOptneg(cmd.version, cmd.actions, cmd.protocol);
      case 'macro':
        this.macroStore.set(cmd.stage, new Map(cmd.macros));
        return;
      case 'connect':
        return this.onConnect(cmd);
      case 'helo':
        return this.onHelo(cmd.name);
      case 'unknown':
        return this.onUnknown(cmd.line);
      case 'abort':
        return this.endMessage(true);
      case 'quit':
        return this.shutdown(true, 'quit');
      case 'quitNc':
        await this.resetConnection();
        return;
      case 'mail':
      case 'rcpt':
      case 'data':
      case 'header':
      case 'eoh':
      case 'body':
      case 'eom':
        return this.onMessageCommand(cmd);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Connection-level commands

  private async onOptneg(version: number, actions: number, protocol: number): Promise<void> {
    if (this.msg) {
      this.fatal(new DimeError('MILTER_PROTOCOL', 'option negotiation inside a message'));
      return;
    }
    let n: Negotiated;
    try {
      n = negotiate({ version, actions, protocol }, handlerOptionRequest(this.cfg.handler, this.cfg.policy));
    } catch (err) {
      this.fatal(err);
      return;
    }
    this.negotiated = n;
    if (this.log.isLevelEnabled('debug')) {
      this.log.debug(
        { mta: { version, actions: hex(actions), protocol: hex(protocol) }, reply: { version: n.version, actions: hex(n.actions), protocol: hex(n.protocol) } },
        'negotiated',
      );
    }
    await this.send(optnegResponse(n));
  }

  private async onConnect(cmd: Extract<MilterCommand, { type: 'connect' }>): Promise<void> {
    // A second CONNECT starts a new SMTP connection on this milter connection: finish the old one.
    if (this.conn.info) {
      const macros = this.macroStore.get('C');
      await this.resetConnection();
      if (macros) this.macroStore.set('C', macros);
    } else if (this.msg) {
      await this.endMessage(true);
    }
    const info: ConnectInfo = { hostname: cmd.hostname, family: cmd.family, port: cmd.port, address: cmd.address };
    this.conn.info = info;
    const handler = this.cfg.handler;
    const v = handler.connect ? await this.runVerdict('connect', (ctx) => handler.connect!(ctx, info)) : CONTINUE_V;
    await this.connectionVerdict('connect', v);
  }

  private async onHelo(name: string): Promise<void> {
    this.conn.helo = name;
    if (this.conn.latched) return this.replyIfWanted('helo', this.conn.latched);
    const handler = this.cfg.handler;
    const v = handler.helo ? await this.runVerdict('helo', (ctx) => handler.helo!(ctx, name)) : CONTINUE_V;
    await this.connectionVerdict('helo', v);
  }

  private async onUnknown(line: string): Promise<void> {
    const latched = this.conn.latched ?? this.msg?.latched ?? this.msg?.failed;
    if (latched) return this.replyIfWanted('unknown', latched);
    const handler = this.cfg.handler;
    const v = handler.unknown ? await this.runVerdict('unknown', (ctx) => handler.unknown!(ctx, line)) : CONTINUE_V;
    // The verdict answers this one SMTP command; nothing is latched.
    await this.replyIfWanted('unknown', v.kind === 'quarantine' ? CONTINUE_V : v);
  }

  /** A verdict at CONNECT/HELO: decisions hold for the rest of the connection. */
  private async connectionVerdict(stage: 'connect' | 'helo', v: Verdict): Promise<void> {
    if (v.kind === 'quarantine') {
      this.conn.quarantine = v.reason;
      v = CONTINUE_V;
    } else if (v.kind !== 'continue') {
      this.conn.latched = v;
    }
    await this.replyIfWanted(stage, v);
  }

  // -------------------------------------------------------------------------------------------
  // Message commands

  private newMessage(): MessageState {
    return {
      rank: -1,
      sender: undefined,
      recipients: [],
      headers: [],
      body: new BodyBuffer(this.cfg.limits.spillThreshold, this.cfg.limits.spillDir),
      bytes: 0,
      latched: undefined,
      failed: undefined,
      quarantine: undefined,
      bodySkipped: false,
      tooLarge: false,
    };
  }

  private async onMessageCommand(cmd: Extract<MilterCommand, { type: MessageCommandType }>): Promise<void> {
    const rank = RANK[cmd.type];
    if (cmd.type === 'mail') {
      // MAIL during a message: the MTA skipped its ABORT; end the old message first.
      if (this.msg) {
        const macros = this.macroStore.get('M');
        await this.endMessage(true);
        if (macros) this.macroStore.set('M', macros);
      }
      this.msg = this.newMessage();
    } else if (!this.msg) {
      if ((this.negotiated!.protocol & SMFIP.NOMAIL) === 0) {
        await this.protocolFailure(cmd.type, `${cmd.type} outside a message`);
        return;
      }
      this.msg = this.newMessage();
    }
    const msg = this.msg;
    if (rank < msg.rank || (rank === msg.rank && !REPEATABLE.has(cmd.type))) {
      await this.protocolFailure(cmd.type, `${cmd.type} after a later stage of the message`);
      return;
    }
    msg.rank = rank;

    switch (cmd.type) {
      case 'mail':
        return this.onMail(msg, cmd.sender, cmd.args);
      case 'rcpt':
        return this.onRcpt(msg, cmd.recipient, cmd.args);
      case 'data':
        return this.simpleStage(msg, 'data', (ctx) => this.cfg.handler.data?.(ctx), !!this.cfg.handler.data);
      case 'header':
        return this.onHeader(msg, { name: cmd.name, value: cmd.value, valueBytes: cmd.valueBytes ?? new TextEncoder().encode(cmd.value) });
      case 'eoh':
        return this.simpleStage(msg, 'eoh', (ctx) => this.cfg.handler.eoh?.(ctx), !!this.cfg.handler.eoh);
      case 'body':
        await this.onBody(msg, cmd.chunk, true);
        return;
      case 'eom':
        return this.onEom(msg, cmd.chunk);
    }
  }

  /** A message decision already made: answer with it and skip the handler. */
  private decided(msg: MessageState): Verdict | undefined {
    return this.conn.latched ?? msg.latched ?? msg.failed;
  }

  private async onMail(msg: MessageState, raw: string, args: string[]): Promise<void> {
    const sender: Sender = { address: unbracket(raw), raw, args };
    msg.sender = sender;
    const decided = this.decided(msg);
    if (decided) return this.replyIfWanted('mail', decided);
    const handler = this.cfg.handler;
    const v = handler.mailFrom ? await this.runVerdict('mailFrom', (ctx) => handler.mailFrom!(ctx, sender)) : CONTINUE_V;
    await this.messageVerdict(msg, 'mail', v);
  }

  private async onRcpt(msg: MessageState, raw: string, args: string[]): Promise<void> {
    const rejectedByMta = (this.negotiated!.protocol & SMFIP.RCPT_REJ) !== 0 && this.macroStore.get('R')?.get('{rcpt_mailer}') === 'error';
    const recipient: Recipient = { address: unbracket(raw), raw, args, rejectedByMta };
    const decided = this.decided(msg);
    if (decided) return this.replyIfWanted('rcpt', decided);
    const handler = this.cfg.handler;
    let v = handler.rcptTo ? await this.runVerdict('rcptTo', (ctx) => handler.rcptTo!(ctx, recipient)) : CONTINUE_V;
    // reject, tempfail and custom replies refuse only this recipient; the message goes on.
    const refused = v.kind === 'reject' || v.kind === 'tempfail' || v.kind === 'reply';
    if (!refused && !rejectedByMta) msg.recipients.push(recipient);
    if (v.kind === 'quarantine') {
      msg.quarantine = v.reason;
      v = CONTINUE_V;
    } else if (v.kind === 'accept' || v.kind === 'discard') {
      msg.latched = v;
    }
    await this.replyIfWanted('rcpt', v);
  }

  private async simpleStage(msg: MessageState, type: 'data' | 'eoh', call: (ctx: MilterContext) => ReturnType<NonNullable<MilterHandler['data']>>, has: boolean): Promise<void> {
    const decided = this.decided(msg);
    if (decided) return this.replyIfWanted(type, decided);
    const v = has ? await this.runVerdict(type, call) : CONTINUE_V;
    await this.messageVerdict(msg, type, v);
  }

  private async onHeader(msg: MessageState, header: Header): Promise<void> {
    if (wantsMessage(this.cfg.handler) && !msg.tooLarge) {
      // Name, ": ", value and CRLF: about what the header costs in the message.
      this.account(msg, header.name.length + header.valueBytes.length + 4);
      if (!msg.tooLarge) msg.headers.push(header);
    }
    const decided = this.decided(msg);
    if (decided) return this.replyIfWanted('header', decided);
    const handler = this.cfg.handler;
    const v = handler.header ? await this.runVerdict('header', (ctx) => handler.header!(ctx, header)) : CONTINUE_V;
    await this.messageVerdict(msg, 'header', v);
  }

  /** A body chunk; `reply` is false for the data an EOM packet carries. */
  private async onBody(msg: MessageState, chunk: Uint8Array, reply: boolean): Promise<void> {
    if (wantsMessage(this.cfg.handler) && !msg.tooLarge && !this.decided(msg)) {
      this.account(msg, chunk.length);
      if (!msg.tooLarge) {
        try {
          await msg.body.append(chunk);
        } catch (err) {
          this.fail(msg, 'body', err);
        }
      }
    }
    const decided = this.decided(msg);
    if (decided) return reply ? this.replyIfWanted('body', decided) : undefined;
    const handler = this.cfg.handler;
    let v: Verdict = CONTINUE_V;
    if (handler.body && !msg.bodySkipped) v = await this.runVerdict('body', (ctx) => handler.body!(ctx, chunk));
    if (v.kind === 'skip') {
      msg.bodySkipped = true;
      // The MTA may stop sending the body only if nobody else needs it.
      const canSkip = (this.negotiated!.protocol & SMFIP.SKIP) !== 0 && !wantsMessage(handler);
      if (!canSkip) v = CONTINUE_V;
    }
    if (!reply) {
      if (v.kind !== 'continue' && v.kind !== 'skip') await this.messageVerdict(msg, 'body', v, false);
      return;
    }
    await this.messageVerdict(msg, 'body', v);
  }

  private account(msg: MessageState, n: number): void {
    msg.bytes += n;
    if (msg.bytes > this.cfg.limits.maxMessageBytes) {
      msg.tooLarge = true;
      void msg.body.dispose();
      msg.headers = [];
      this.fail(msg, 'body', new DimeError('MILTER_MESSAGE_TOO_LARGE', `more than ${this.cfg.limits.maxMessageBytes} bytes of headers and body`));
    }
  }

  /** A verdict from a message stage other than RCPT and EOM: decisions hold for the message. */
  private async messageVerdict(msg: MessageState, type: MilterCommand['type'], v: Verdict, reply = true): Promise<void> {
    if (v.kind === 'quarantine') {
      msg.quarantine = v.reason;
      v = CONTINUE_V;
    } else if (v.kind !== 'continue' && v.kind !== 'skip') {
      msg.latched = v;
    }
    if (reply) await this.replyIfWanted(type, v);
  }

  /** Record a failure on the message: its policy verdict is owed from now on. */
  private fail(msg: MessageState, stage: Stage, err: unknown): void {
    if (msg.failed) return;
    msg.failed = this.failureVerdictFor(stage, err);
  }

  private async protocolFailure(type: MilterCommand['type'], detail: string): Promise<void> {
    const err = new DimeError('MILTER_PROTOCOL', detail);
    const v = this.failureVerdictFor('protocol', err);
    if (this.msg && !this.msg.failed) this.msg.failed = v;
    if (type === 'eom') {
      await this.finishEom(this.msg, v, []);
      return;
    }
    await this.replyIfWanted(type, v.kind === 'quarantine' ? CONTINUE_V : v);
  }

  // -------------------------------------------------------------------------------------------
  // End of message

  private async onEom(msg: MessageState, chunk: Uint8Array): Promise<void> {
    if (chunk.length > 0) await this.onBody(msg, chunk, false);
    const handler = this.cfg.handler;
    let final: Verdict = this.decided(msg) ?? CONTINUE_V;
    let mods: Modification[] = [];
    if (!this.decided(msg) && handler.eom) {
      const message: MilterMessage = {
        sender: msg.sender,
        recipients: msg.recipients,
        headers: msg.headers,
        body: msg.body,
        queueId: this.macroLookup('i'),
      };
      const outcome = await this.runStage('eom', (ctx) => handler.eom!(ctx, message), true);
      if (outcome.ok) {
        try {
          ({ verdict: final, modifications: mods } = this.checkEomResult(outcome.value));
        } catch (err) {
          final = this.failureVerdictFor('eom', err);
          mods = [];
        }
      } else {
        final = this.failureFromOutcome('eom', outcome.error);
      }
    }
    await this.finishEom(msg, final, mods);
  }

  private checkEomResult(result: EomResult): { verdict: Verdict; modifications: Modification[] } {
    let v: unknown = result;
    let raw: readonly unknown[] = [];
    if (result !== undefined && typeof result === 'object' && result !== null && !('kind' in result)) {
      v = result.verdict;
      if (result.modifications !== undefined && !Array.isArray(result.modifications)) {
        throw new DimeError('MILTER_BAD_MODIFICATION', 'modifications must be an array');
      }
      raw = result.modifications ?? [];
    }
    const verdict = checkVerdict('eom', v);
    const modifications = raw.map(checkModification);
    const granted = this.negotiated!.actions;
    for (const m of modifications) {
      const need = actionFor(m);
      if ((granted & need) === 0) {
        throw new DimeError('MILTER_BAD_MODIFICATION', `${m.kind} needs action 0x${need.toString(16)}, which the MTA did not grant (granted 0x${granted.toString(16)}; declare it in handler.actions)`);
      }
    }
    return { verdict, modifications };
  }

  /**
   * The end-of-message reply stream: modifications (header, envelope, quarantine) in the order given,
   * then the REPLBODY packets contiguously, then one final decision. A failure after part of the
   * stream went out can no longer be accepted (the message would carry a half-written change), so
   * it becomes TEMPFAIL whatever the policy says.
   */
  private async finishEom(msg: MessageState | undefined, final: Verdict, mods: Modification[]): Promise<void> {
    const accepting = final.kind === 'continue' || final.kind === 'accept' || final.kind === 'quarantine';
    const quarantine = final.kind === 'quarantine' ? final.reason : (msg?.quarantine ?? this.conn.quarantine);
    let packets: Uint8Array[] = [];
    let body: ReplaceBody | undefined;
    let finalPacket: Uint8Array;
    try {
      if (accepting) {
        for (const m of mods) {
          if (m.kind === 'replaceBody') body = body ? concatBodies(body, m) : m;
          else packets.push(this.encodeModification(m));
        }
        if (quarantine !== undefined) {
          if ((this.negotiated!.actions & SMFIF.QUARANTINE) === 0) {
            throw new DimeError('MILTER_BAD_MODIFICATION', 'quarantine needs the QUARANTINE action, which was not negotiated');
          }
          packets.push(encodeResponse({ type: 'quarantine', reason: quarantine }));
        }
      }
      finalPacket = encodeResponse(verdictResponse(final.kind === 'quarantine' ? CONTINUE_V : final, this.negotiated!));
    } catch (err) {
      // Nothing has been sent yet: the failure verdict replaces the whole reply.
      const v = this.failureVerdictFor('eom', err);
      packets = [];
      body = undefined;
      const fallback = v.kind === 'quarantine' || v.kind === 'continue' ? TEMPFAIL_V : v;
      finalPacket = encodeResponse(verdictResponse(fallback, this.negotiated!));
    }
    for (const p of packets) await this.write(p);
    if (body) {
      try {
        await this.writeBody(body);
      } catch (err) {
        this.log.warn({ code: errorCode(err), class: failureClass(err) }, `replacement body failed after part of it was sent: tempfail (${errorMessage(err)})`);
        finalPacket = encodeResponse({ type: 'tempfail' });
      }
    }
    await this.write(finalPacket);
    if (msg) await this.endMessage(false);
  }

  private encodeModification(m: Modification): Uint8Array {
    switch (m.kind) {
      case 'addHeader':
        return encodeResponse({ type: 'addHeader', name: m.name, value: wireHeaderValue(m.value) });
      case 'insertHeader':
        return encodeResponse({ type: 'insertHeader', index: m.index, name: m.name, value: wireHeaderValue(m.value) });
      case 'changeHeader':
        return encodeResponse({ type: 'changeHeader', index: m.index, name: m.name, value: wireHeaderValue(m.value) });
      case 'deleteHeader':
        return encodeResponse({ type: 'changeHeader', index: m.index, name: m.name, value: '' });
      case 'addRecipient':
        return m.args && m.args.length > 0
          ? encodeResponse({ type: 'addRecipientPar', recipient: m.recipient, args: m.args.join(' ') })
          : encodeResponse({ type: 'addRecipient', recipient: m.recipient });
      case 'deleteRecipient':
        return encodeResponse({ type: 'deleteRecipient', recipient: m.recipient });
      case 'changeSender':
        return m.args && m.args.length > 0
          ? encodeResponse({ type: 'changeFrom', sender: m.sender, args: m.args.join(' ') })
          : encodeResponse({ type: 'changeFrom', sender: m.sender });
      case 'quarantine':
        return encodeResponse({ type: 'quarantine', reason: m.reason });
      case 'replaceBody':
        throw new DimeError('MILTER_BAD_MODIFICATION', 'replaceBody is streamed, not encoded whole');
    }
  }

  private async writeBody(m: ReplaceBody): Promise<void> {
    if (m.body instanceof Uint8Array) {
      for (const p of encodeReplaceBody(m.body)) await this.write(p);
      return;
    }
    // Re-chunk whatever the iterable yields into full packets of MAX_DATA_CHUNK.
    let pending = Buffer.alloc(0);
    let sent = false;
    for await (const part of m.body as AsyncIterable<Uint8Array>) {
      if (!(part instanceof Uint8Array)) throw new DimeError('MILTER_BAD_MODIFICATION', 'replaceBody iterable yielded a non-Uint8Array');
      pending = Buffer.concat([pending, part]);
      while (pending.length >= MAX_DATA_CHUNK) {
        await this.write(encodeResponse({ type: 'replaceBody', chunk: pending.subarray(0, MAX_DATA_CHUNK) }));
        pending = pending.subarray(MAX_DATA_CHUNK);
        sent = true;
      }
    }
    if (pending.length > 0 || !sent) await this.write(encodeResponse({ type: 'replaceBody', chunk: pending }));
  }

  /** The message is over (EOM answered, ABORT, or superseded): call abort if unfinished, free its buffer. */
  private async endMessage(aborted: boolean): Promise<void> {
    const msg = this.msg;
    this.msg = undefined;
    for (const stage of MESSAGE_MACRO_STAGES) this.macroStore.delete(stage);
    if (!msg) return;
    try {
      const handler = this.cfg.handler;
      if (aborted && handler.abort) await this.callQuietly('abort', (ctx) => handler.abort!(ctx));
    } finally {
      await msg.body.dispose();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Running handlers

  private deadlineFor(stage: Stage | 'abort' | 'close'): number {
    if (stage === 'connect') return this.cfg.deadlines.connect;
    if (stage === 'header' || stage === 'eoh' || stage === 'body' || stage === 'eom') return this.cfg.deadlines.content;
    return this.cfg.deadlines.command;
  }

  /**
   * Run one handler call under its stage's deadline. The call is raced against the deadline and the
   * end of the session; a handler that loses keeps running on its own (its signal is aborted) and
   * whatever it returns later is dropped.
   */
  private async runStage<T>(
    stage: Stage | 'abort' | 'close',
    call: (ctx: MilterContext) => T | Promise<T>,
    progress: boolean,
  ): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
    const controller = new AbortController();
    this.inFlight.add(controller);
    const ms = this.deadlineFor(stage);
    let timer: NodeJS.Timeout | undefined;
    let ticker: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DimeError('DEADLINE_EXCEEDED', `${stage} handler took longer than ${ms} ms`)), ms);
    });
    deadline.catch(() => undefined);
    if (progress && this.cfg.progressInterval > 0) {
      ticker = setInterval(() => {
        if (!this.closed) this.transport.write(encodeResponse({ type: 'progress' }));
      }, this.cfg.progressInterval);
    }
    try {
      const work = Promise.resolve().then(() => call(this.context(controller.signal)));
      work.catch(() => undefined);
      const value = await Promise.race([work, deadline, this.ending]);
      return { ok: true, value };
    } catch (error) {
      controller.abort(error);
      return { ok: false, error };
    } finally {
      clearTimeout(timer);
      clearInterval(ticker);
      this.inFlight.delete(controller);
    }
  }

  /** Run a stage handler and check its verdict; a failure gives the policy verdict. */
  private async runVerdict(stage: Stage, call: (ctx: MilterContext) => Verdict | void | Promise<Verdict | void>): Promise<Verdict> {
    const outcome = await this.runStage(stage, call, false);
    if (!outcome.ok) return this.failureFromOutcome(stage, outcome.error);
    try {
      return checkVerdict(stage, outcome.value);
    } catch (err) {
      return this.failureVerdictFor(stage, err);
    }
  }

  private failureFromOutcome(stage: Stage, error: unknown): Verdict {
    // Shutting down: "finish or tempfail", whatever the policy says.
    if (error instanceof SessionEnding) return TEMPFAIL_V;
    return this.failureVerdictFor(stage, error);
  }

  /** Log a failure and return its policy verdict. Quarantine needs the action; without it, tempfail. */
  private failureVerdictFor(stage: Stage | 'protocol', err: unknown): Verdict {
    const cls = failureClass(err);
    let action = this.cfg.policy[cls];
    if (action === 'quarantine' && this.negotiated && (this.negotiated.actions & SMFIF.QUARANTINE) === 0) action = 'tempfail';
    recordMilterFailure(cls, action);
    this.log.warn({ stage, class: cls, action, code: errorCode(err) }, `milter ${stage} failed: ${errorMessage(err)}`);
    return failureVerdict(action, cls);
  }

  private context(signal: AbortSignal): MilterContext {
    const session = this;
    return {
      id: this.id,
      negotiated: this.negotiated!,
      connection: this.conn.info,
      helo: this.conn.helo,
      headerLeadingSpace: ((this.negotiated?.protocol ?? 0) & SMFIP.HDR_LEADSPC) !== 0,
      macro: (name: string) => session.macroLookup(name),
      macros: (stage: CommandCode) => new Map(session.macroStore.get(stage) ?? []),
      signal,
      log: this.log,
    };
  }

  private macroLookup(name: string): string | undefined {
    const bare = name.replace(/^\{(.*)\}$/, '$1');
    for (const stage of MACRO_LOOKUP_ORDER) {
      const macros = this.macroStore.get(stage);
      if (!macros) continue;
      for (const [key, value] of macros) {
        if (key === name || key.replace(/^\{(.*)\}$/, '$1') === bare) return value;
      }
    }
    return undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Output

  /** Reply to a command unless it takes no reply or its NR_* flag was negotiated. */
  private async replyIfWanted(type: MilterCommand['type'], v: Verdict): Promise<void> {
    const flag = NO_REPLY_FLAG[type];
    if (flag === undefined && type !== 'eom') return;
    if (flag !== undefined && (this.negotiated!.protocol & flag) !== 0) return;
    await this.write(encodeResponse(verdictResponse(v, this.negotiated!)));
  }

  private async send(resp: MilterResponse): Promise<void> {
    await this.write(encodeResponse(resp));
  }

  private async write(packet: Uint8Array): Promise<void> {
    if (this.closed) return;
    if (!this.transport.write(packet)) await Promise.race([this.transport.drained(), this.ending.catch(() => undefined)]);
  }

  // -------------------------------------------------------------------------------------------
  // Ending

  /** QUIT_NC (and a second CONNECT): end the SMTP connection's state, keep the negotiation. */
  private async resetConnection(): Promise<void> {
    await this.endMessage(true);
    await this.callClose();
    this.conn = { info: undefined, helo: undefined, latched: undefined, quarantine: undefined };
    this.macroStore.clear();
  }

  private async callClose(): Promise<void> {
    const handler = this.cfg.handler;
    if (handler.close && this.negotiated) await this.callQuietly('close', (ctx) => handler.close!(ctx));
  }

  /**
   * abort and close callbacks: their result does not matter, a failure is only logged, and they are
   * bounded by the command deadline (they also run while the session is ending, so no race with it).
   */
  private async callQuietly(stage: 'abort' | 'close', call: (ctx: MilterContext) => void | Promise<void>): Promise<void> {
    const controller = new AbortController();
    if (this.closed) controller.abort(CONNECTION_CLOSED);
    let timer: NodeJS.Timeout | undefined;
    const ms = this.cfg.deadlines.command;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DimeError('DEADLINE_EXCEEDED', `${stage} handler took longer than ${ms} ms`)), ms);
    });
    limit.catch(() => undefined);
    try {
      const work = Promise.resolve().then(() => call(this.context(controller.signal)));
      work.catch(() => undefined);
      await Promise.race([work, limit]);
    } catch (err) {
      controller.abort(err);
      this.log.warn({ code: errorCode(err) }, `${stage} handler failed: ${errorMessage(err)}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** A protocol or internal error on the connection: log it and drop the connection. */
  private fatal(err: unknown): void {
    if (this.closed) return;
    if (isDimeError(err)) this.log.warn({ code: err.code }, `closing milter connection: ${err.message}`);
    else this.log.error({ err }, 'closing milter connection after an internal error');
    void this.shutdown(false, 'error');
  }

  private async shutdown(graceful: boolean, reason: string): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.endSignal(CONNECTION_CLOSED);
    for (const c of this.inFlight) c.abort(CONNECTION_CLOSED);
    this.log.debug({ reason, graceful }, 'milter connection closing');
    this.transport.close();
    // While a command is being processed the pump finalizes when it returns, so that state is not
    // released under it.
    if (!this.pumping) await this.finalize();
  }

  private finalized = false;

  /** Release everything once: the unfinished message (abort callback, buffer), then close. */
  private async finalize(): Promise<void> {
    if (this.finalized) return;
    this.finalized = true;
    try {
      await this.endMessage(true);
      await this.callClose();
    } catch (err) {
      this.log.warn({ code: errorCode(err) }, `cleanup after close failed: ${errorMessage(err)}`);
    } finally {
      this.resolveDone();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

const CONTINUE_V: Verdict = { kind: 'continue' };
const TEMPFAIL_V: Verdict = { kind: 'tempfail' };

/** The response for a verdict; SKIP only where negotiated (else CONTINUE). */
function verdictResponse(v: Verdict, n: Negotiated): MilterResponse {
  switch (v.kind) {
    case 'continue':
    case 'quarantine':
      return { type: 'continue' };
    case 'skip':
      return (n.protocol & SMFIP.SKIP) !== 0 ? { type: 'skip' } : { type: 'continue' };
    case 'reply':
      return { type: 'replycode', reply: formatReply(v.reply) };
    default:
      return { type: v.kind };
  }
}

/** Multi-line values use bare LF (CRLF gives doubled CRs in Postfix); NUL would end the string early. */
function wireHeaderValue(value: string): string {
  return value.replace(/\r\n/g, '\n').replace(/\0/g, ' ');
}

function unbracket(address: string): string {
  const a = address.trim();
  return a.startsWith('<') && a.endsWith('>') ? a.slice(1, -1) : a;
}

type ReplaceBody = Extract<Modification, { kind: 'replaceBody' }>;

function concatBodies(a: ReplaceBody, b: ReplaceBody): ReplaceBody {
  async function* both(): AsyncIterable<Uint8Array> {
    for (const m of [a, b]) {
      if (m.body instanceof Uint8Array) yield m.body;
      else yield* m.body as AsyncIterable<Uint8Array>;
    }
  }
  return { kind: 'replaceBody', body: both() };
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function errorCode(err: unknown): string | undefined {
  return err instanceof DimeError ? err.code : undefined;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
