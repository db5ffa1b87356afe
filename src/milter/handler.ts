/**
 * What a milter handler sees and returns: one optional callback per stage, each returning a
 * verdict value; end-of-message modifications as values; the failure policy that turns an error or
 * a missed deadline into a verdict; the pass-through handler. docs/milter.md is the user's guide.
 */
import type { Logger } from '../log.js';
import { DimeError, type ErrorCode } from '../errors.js';
import { checkHeaderName, formatReply, SMFIF, SMFIP, type CommandCode, type ConnectFamily, type MacroStage, type Negotiated, type OptionRequest, type SmtpReply } from './codec.js';

// ---------------------------------------------------------------------------------------------
// Verdicts

export type Verdict =
  /** Go on; at end of message: accept the message (with any modifications). */
  | { kind: 'continue' }
  /** Accept: at CONNECT/HELO the whole connection, later this message, with no further events. */
  | { kind: 'accept' }
  /** 550 5.7.1 (the MTA's text); at RCPT only this recipient. */
  | { kind: 'reject' }
  /** 451 4.7.1 (the MTA's text); at RCPT only this recipient. */
  | { kind: 'tempfail' }
  /** Accept and silently drop the message. Not at CONNECT/HELO (Postfix ignores it there). */
  | { kind: 'discard' }
  /** Hold the message (Postfix: hold queue). Sent at end of message, then the message is accepted. */
  | { kind: 'quarantine'; reason: string }
  /** A custom 4xx/5xx reply; like tempfail/reject, at RCPT only this recipient. */
  | { kind: 'reply'; reply: SmtpReply }
  /** BODY only: send no more body chunks (needs SMFIP_SKIP; else the chunks are just not passed on). */
  | { kind: 'skip' };
export type VerdictKind = Verdict['kind'];

const CONTINUE: Verdict = Object.freeze({ kind: 'continue' });
const ACCEPT: Verdict = Object.freeze({ kind: 'accept' });
const REJECT: Verdict = Object.freeze({ kind: 'reject' });
const TEMPFAIL: Verdict = Object.freeze({ kind: 'tempfail' });
const DISCARD: Verdict = Object.freeze({ kind: 'discard' });
const SKIP: Verdict = Object.freeze({ kind: 'skip' });

function checkReason(reason: unknown): asserts reason is string {
  if (typeof reason !== 'string' || reason.length === 0 || reason.includes('\0')) {
    throw new DimeError('MILTER_BAD_VERDICT', `quarantine reason must be a non-empty string without NUL, got ${JSON.stringify(reason)}`);
  }
}

/** Verdict constructors; `reply` and `quarantine` validate their arguments here, at the boundary. */
export const verdict = {
  continue: (): Verdict => CONTINUE,
  accept: (): Verdict => ACCEPT,
  reject: (): Verdict => REJECT,
  tempfail: (): Verdict => TEMPFAIL,
  discard: (): Verdict => DISCARD,
  skip: (): Verdict => SKIP,
  quarantine(reason: string): Verdict {
    checkReason(reason);
    return { kind: 'quarantine', reason };
  },
  /** A custom reply, e.g. `verdict.reply('550', 'no such user', '5.1.1')`; text may be several lines. */
  reply(code: string, text: string | readonly string[], xcode?: string): Verdict {
    const reply: SmtpReply = xcode === undefined ? { code, text } : { code, xcode, text };
    formatReply(reply);
    return { kind: 'reply', reply };
  },
};

/** Stages a verdict comes from. */
export type Stage = 'connect' | 'helo' | 'mailFrom' | 'rcptTo' | 'data' | 'header' | 'eoh' | 'body' | 'eom' | 'unknown';

/** Which verdicts each stage may return; anything else is a handler bug (MILTER_BAD_VERDICT). */
export function checkVerdict(stage: Stage, v: unknown): Verdict {
  if (v === undefined) return CONTINUE;
  if (typeof v !== 'object' || v === null || typeof (v as { kind?: unknown }).kind !== 'string') {
    throw new DimeError('MILTER_BAD_VERDICT', `${stage} handler returned ${describe(v)}, not a verdict`);
  }
  const value = v as Verdict;
  switch (value.kind) {
    case 'continue':
    case 'accept':
    case 'reject':
    case 'tempfail':
      return value;
    case 'discard':
      if (stage === 'connect' || stage === 'helo') throw new DimeError('MILTER_BAD_VERDICT', `discard at ${stage}: discard applies to a message`);
      return value;
    case 'quarantine':
      checkReason(value.reason);
      return value;
    case 'reply':
      formatReply(value.reply);
      return value;
    case 'skip':
      if (stage !== 'body') throw new DimeError('MILTER_BAD_VERDICT', `skip at ${stage}: skip is for body chunks`);
      return value;
    default:
      throw new DimeError('MILTER_BAD_VERDICT', `${stage} handler returned unknown verdict kind ${JSON.stringify((value as { kind: string }).kind)}`);
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  return typeof v === 'object' ? 'an object without a verdict kind' : `${typeof v} ${JSON.stringify(v)}`;
}

// ---------------------------------------------------------------------------------------------
// End-of-message modifications

export type Modification =
  /** Append a header after the last one (SMFIR_ADDHEADER). */
  | { kind: 'addHeader'; name: string; value: string }
  /** Insert at a global position, 0 = top-most (SMFIR_INSHEADER; Postfix counts its own Received:). */
  | { kind: 'insertHeader'; index: number; name: string; value: string }
  /** Replace the index-th (1-based) header called name, case-insensitive; '' deletes it (SMFIR_CHGHEADER). */
  | { kind: 'changeHeader'; name: string; index: number; value: string }
  /** Delete the index-th (1-based) header called name (a CHGHEADER with an empty value). */
  | { kind: 'deleteHeader'; name: string; index: number }
  /** Replace the body (all recipients); sent as REPLBODY chunks of ≤ 65,535 bytes. */
  | { kind: 'replaceBody'; body: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array> }
  /** Add a recipient; with ESMTP args it is SMFIR_ADDRCPT_PAR. */
  | { kind: 'addRecipient'; recipient: string; args?: readonly string[] }
  | { kind: 'deleteRecipient'; recipient: string }
  /** Change the envelope sender (SMFIR_CHGFROM; Postfix ignores the args with a warning). */
  | { kind: 'changeSender'; sender: string; args?: readonly string[] }
  /** Hold the message; not a decision by itself. */
  | { kind: 'quarantine'; reason: string };
export type ModificationKind = Modification['kind'];

function checkHeaderIndex(name: string, index: unknown, min: number): asserts index is number {
  if (typeof index !== 'number' || !Number.isInteger(index) || index < min || index > 0xffffffff) {
    throw new DimeError('MILTER_BAD_MODIFICATION', `${name} must be an integer ≥ ${min}, got ${String(index)}`);
  }
}

function checkString(name: string, value: unknown, allowEmpty = false): asserts value is string {
  if (typeof value !== 'string' || (!allowEmpty && value.length === 0) || value.includes('\0')) {
    throw new DimeError('MILTER_BAD_MODIFICATION', `${name} must be a ${allowEmpty ? '' : 'non-empty '}string without NUL, got ${JSON.stringify(value)}`);
  }
}

function checkArgs(args: unknown): void {
  if (args === undefined) return;
  if (!Array.isArray(args)) throw new DimeError('MILTER_BAD_MODIFICATION', 'args must be an array of ESMTP parameters');
  for (const a of args) {
    if (typeof a !== 'string' || a.length === 0 || /[\s\0]/.test(a)) {
      throw new DimeError('MILTER_BAD_MODIFICATION', `ESMTP parameter must be non-empty without spaces, got ${JSON.stringify(a)}`);
    }
  }
}

/** Check one modification (the session calls this on everything an eom handler returns). */
export function checkModification(m: unknown): Modification {
  if (typeof m !== 'object' || m === null) throw new DimeError('MILTER_BAD_MODIFICATION', 'modification must be an object');
  const mod = m as Modification;
  switch (mod.kind) {
    case 'addHeader':
      checkHeaderName(mod.name);
      checkString('header value', mod.value, true);
      break;
    case 'insertHeader':
      checkHeaderIndex('insertHeader index', mod.index, 0);
      checkHeaderName(mod.name);
      checkString('header value', mod.value, true);
      break;
    case 'changeHeader':
      checkHeaderIndex('changeHeader index', mod.index, 1);
      checkHeaderName(mod.name);
      checkString('header value', mod.value, true);
      break;
    case 'deleteHeader':
      checkHeaderIndex('deleteHeader index', mod.index, 1);
      checkHeaderName(mod.name);
      break;
    case 'replaceBody': {
      const b = mod.body as unknown;
      const iterable = typeof b === 'object' && b !== null && (Symbol.iterator in b || Symbol.asyncIterator in b);
      if (!(b instanceof Uint8Array) && !iterable) throw new DimeError('MILTER_BAD_MODIFICATION', 'replaceBody body must be a Uint8Array or an (async) iterable of them');
      break;
    }
    case 'addRecipient':
      checkString('recipient', mod.recipient);
      checkArgs(mod.args);
      break;
    case 'deleteRecipient':
      checkString('recipient', mod.recipient);
      break;
    case 'changeSender':
      checkString('sender', mod.sender, true);
      checkArgs(mod.args);
      break;
    case 'quarantine':
      checkString('quarantine reason', mod.reason);
      break;
    default:
      throw new DimeError('MILTER_BAD_MODIFICATION', `unknown modification kind ${JSON.stringify((mod as { kind?: unknown }).kind)}`);
  }
  return mod;
}

/** Modification constructors, validated at the boundary. Header indexes follow libmilter (see docs/milter.md). */
export const modify = {
  addHeader: (name: string, value: string): Modification => checkModification({ kind: 'addHeader', name, value }),
  insertHeader: (index: number, name: string, value: string): Modification => checkModification({ kind: 'insertHeader', index, name, value }),
  changeHeader: (name: string, index: number, value: string): Modification => checkModification({ kind: 'changeHeader', name, index, value }),
  deleteHeader: (name: string, index = 1): Modification => checkModification({ kind: 'deleteHeader', name, index }),
  replaceBody: (body: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Modification => checkModification({ kind: 'replaceBody', body }),
  addRecipient: (recipient: string, args?: readonly string[]): Modification =>
    checkModification(args === undefined ? { kind: 'addRecipient', recipient } : { kind: 'addRecipient', recipient, args }),
  deleteRecipient: (recipient: string): Modification => checkModification({ kind: 'deleteRecipient', recipient }),
  changeSender: (sender: string, args?: readonly string[]): Modification =>
    checkModification(args === undefined ? { kind: 'changeSender', sender } : { kind: 'changeSender', sender, args }),
  quarantine: (reason: string): Modification => checkModification({ kind: 'quarantine', reason }),
};

/** The SMFIF action a modification needs from option negotiation. */
export function actionFor(m: Modification): number {
  switch (m.kind) {
    case 'addHeader':
    case 'insertHeader':
      return SMFIF.ADDHDRS;
    case 'changeHeader':
    case 'deleteHeader':
      return SMFIF.CHGHDRS;
    case 'replaceBody':
      return SMFIF.CHGBODY;
    case 'addRecipient':
      return m.args && m.args.length > 0 ? SMFIF.ADDRCPT_PAR : SMFIF.ADDRCPT;
    case 'deleteRecipient':
      return SMFIF.DELRCPT;
    case 'changeSender':
      return SMFIF.CHGFROM;
    case 'quarantine':
      return SMFIF.QUARANTINE;
  }
}

// ---------------------------------------------------------------------------------------------
// Header index semantics (spec §1.7)

export interface HeaderField {
  name: string;
  value: string;
}

/** The 1-based per-name index (case-insensitive) of headers[position]: what change/delete take. */
export function headerIndexAt(headers: readonly HeaderField[], position: number): number {
  if (!Number.isInteger(position) || position < 0 || position >= headers.length) {
    throw new DimeError('MILTER_BAD_MODIFICATION', `position must be 0-${headers.length - 1}, got ${String(position)}`);
  }
  const name = headers[position]!.name.toLowerCase();
  let n = 0;
  for (let i = 0; i <= position; i++) if (headers[i]!.name.toLowerCase() === name) n++;
  return n;
}

/** Delete every header called name: highest index first, because each deletion shifts the later ones. */
export function deleteAllHeaders(headers: readonly HeaderField[], name: string): Modification[] {
  checkHeaderName(name);
  const count = headers.filter((h) => h.name.toLowerCase() === name.toLowerCase()).length;
  const mods: Modification[] = [];
  for (let index = count; index >= 1; index--) mods.push({ kind: 'deleteHeader', name, index });
  return mods;
}

/**
 * A model of how Postfix applies header modifications to the headers it showed the milter, in the
 * order sent (cleanup_milter.c semantics, spec §1.7). Useful for handlers that want to predict the
 * result and for tests. What it leaves out: Postfix's own Received: header, which the milter never
 * sees but which INSHEADER indexes count (index 0 lands above it, 1 below it).
 */
export function applyHeaderModifications(headers: readonly HeaderField[], mods: readonly Modification[]): HeaderField[] {
  const out = headers.map((h) => ({ ...h }));
  const find = (name: string, index: number): number => {
    const want = name.toLowerCase();
    let n = 0;
    for (let i = 0; i < out.length; i++) {
      if (out[i]!.name.toLowerCase() === want && ++n === Math.max(index, 1)) return i;
    }
    return -1;
  };
  for (const m of mods) {
    switch (m.kind) {
      case 'addHeader':
        out.push({ name: m.name, value: m.value });
        break;
      case 'insertHeader':
        out.splice(Math.min(m.index, out.length), 0, { name: m.name, value: m.value });
        break;
      case 'changeHeader':
      case 'deleteHeader': {
        const value = m.kind === 'deleteHeader' ? '' : m.value;
        const at = find(m.name, m.index);
        if (at >= 0 && value === '') out.splice(at, 1);
        else if (at >= 0) out[at] = { name: out[at]!.name, value };
        // A change of a header that is not there adds it; deleting a missing header does nothing.
        else if (value !== '') out.push({ name: m.name, value });
        break;
      }
      default:
        break;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// What handlers receive

export interface ConnectInfo {
  /** Client host name, or `[addr]` when Postfix could not resolve it. */
  hostname: string;
  family: ConnectFamily;
  port: number;
  address: string;
}

export interface Sender {
  /** Without angle brackets; '' for the null sender `<>`. */
  address: string;
  /** As the MTA sent it (with brackets from smtpd, without from non_smtpd_milters). */
  raw: string;
  args: readonly string[];
}

export interface Recipient {
  address: string;
  raw: string;
  args: readonly string[];
  /** Postfix already rejected it (only with SMFIP_RCPT_REJ, shown by `{rcpt_mailer}` = error). */
  rejectedByMta: boolean;
}

export interface Header {
  name: string;
  /** Without the one leading space Postfix strips, unless HDR_LEADSPC was negotiated. Folded lines keep bare LF. */
  value: string;
  valueBytes: Uint8Array;
}

/** The buffered message body; readable any number of times during eom. */
export interface MessageBody {
  readonly size: number;
  /** Whether it went past the spill threshold to a private temporary file. */
  readonly spilled: boolean;
  bytes(): Promise<Uint8Array>;
  chunks(): AsyncIterable<Uint8Array>;
}

export interface MilterMessage {
  readonly sender: Sender | undefined;
  /** Accepted recipients (those Postfix rejected are not here). */
  readonly recipients: readonly Recipient[];
  readonly headers: readonly Header[];
  readonly body: MessageBody;
  /** The `i` macro, once Postfix has assigned one. */
  readonly queueId: string | undefined;
}

export interface MilterContext {
  /** Connection id for logs. */
  readonly id: string;
  readonly negotiated: Negotiated;
  readonly connection: ConnectInfo | undefined;
  readonly helo: string | undefined;
  /** HDR_LEADSPC was negotiated: values carry their leading space, and edits must include it. */
  readonly headerLeadingSpace: boolean;
  /** A macro, searched from the latest stage back to CONNECT; `name` with or without braces. */
  macro(name: string): string | undefined;
  /** The macros the MTA sent before the given command (SMFIC code), if any. */
  macros(stage: CommandCode): ReadonlyMap<string, string>;
  /** Aborted when the stage's deadline passes, the message is aborted or the connection drops. */
  readonly signal: AbortSignal;
  readonly log: Logger;
}

export interface EomDecision {
  verdict?: Verdict;
  modifications?: readonly Modification[];
}
export type EomResult = Verdict | EomDecision | void;
type Result<T> = T | Promise<T>;
type StageResult = Result<Verdict | void>;

/** Modifications a handler may ask for, by name; negotiated as SMFIF_* actions. */
export const ACTION_FLAGS = {
  addHeader: SMFIF.ADDHDRS,
  changeHeader: SMFIF.CHGHDRS,
  replaceBody: SMFIF.CHGBODY,
  addRecipient: SMFIF.ADDRCPT,
  addRecipientWithArgs: SMFIF.ADDRCPT_PAR,
  deleteRecipient: SMFIF.DELRCPT,
  changeSender: SMFIF.CHGFROM,
  quarantine: SMFIF.QUARANTINE,
} as const;
export type ActionName = keyof typeof ACTION_FLAGS;

/**
 * A milter handler. Every callback is optional; a stage without one is negotiated away (SMFIP_NO*)
 * or, when the session still needs its data for the message, received without a reply (SMFIP_NR_*).
 * A callback returns a verdict (undefined = continue) or throws; a throw or a missed deadline gives
 * the failure-policy verdict.
 */
export interface MilterHandler {
  readonly name?: string;
  /** Modifications the eom handler may return; others fail the message (MILTER_BAD_MODIFICATION). */
  readonly actions?: readonly ActionName[];
  /** Macros to request per stage (v6 MTAs; Postfix otherwise sends its defaults). */
  readonly macros?: Partial<Record<MacroStage, readonly string[]>>;
  /** Buffer envelope, headers and body for eom. Default: true when eom is defined. */
  readonly wantsMessage?: boolean;
  /** Also see recipients Postfix rejected (SMFIP_RCPT_REJ). */
  readonly rejectedRecipients?: boolean;
  /** Exact header values with their leading whitespace (SMFIP_HDR_LEADSPC). */
  readonly headerLeadingSpace?: boolean;

  connect?(ctx: MilterContext, info: ConnectInfo): StageResult;
  helo?(ctx: MilterContext, name: string): StageResult;
  mailFrom?(ctx: MilterContext, sender: Sender): StageResult;
  rcptTo?(ctx: MilterContext, recipient: Recipient): StageResult;
  data?(ctx: MilterContext): StageResult;
  header?(ctx: MilterContext, header: Header): StageResult;
  eoh?(ctx: MilterContext): StageResult;
  body?(ctx: MilterContext, chunk: Uint8Array): StageResult;
  eom?(ctx: MilterContext, message: MilterMessage): Result<EomResult>;
  unknown?(ctx: MilterContext, line: string): StageResult;
  /** The message in progress was aborted (not called for the ABORTs that follow a finished message). */
  abort?(ctx: MilterContext): Result<void>;
  /** The connection ended (QUIT, QUIT_NC, drop or server close). */
  close?(ctx: MilterContext): Result<void>;
}

/**
 * With no real handler the milter passes everything through untouched, as cheaply as the protocol
 * allows: it asks for no event but CONNECT (no HELO, MAIL, RCPT, DATA, headers, EOH, body, unknown
 * commands) and no actions, and answers CONNECT with ACCEPT, after which Postfix closes the milter
 * connection and sends nothing more for that SMTP session.
 */
export const passThroughHandler: MilterHandler = Object.freeze({
  name: 'pass-through',
  connect: () => ACCEPT,
});

/** Whether the session must buffer the message for this handler. */
export function wantsMessage(handler: MilterHandler): boolean {
  return handler.wantsMessage ?? typeof handler.eom === 'function';
}

/** What the session asks the MTA for on behalf of a handler (see MilterHandler). */
export function handlerOptionRequest(handler: MilterHandler, policy: FailurePolicy): OptionRequest {
  const message = wantsMessage(handler);
  const has = (k: keyof MilterHandler): boolean => typeof handler[k] === 'function';
  // [stage has a callback (or needs a reply), session needs the event anyway, NO* flag, NR_* flag]
  const stages: Array<[boolean, boolean, number, number]> = [
    [has('connect'), false, SMFIP.NOCONNECT, SMFIP.NR_CONN],
    [has('helo'), false, SMFIP.NOHELO, SMFIP.NR_HELO],
    [has('mailFrom'), message, SMFIP.NOMAIL, SMFIP.NR_MAIL],
    [has('rcptTo'), message, SMFIP.NORCPT, SMFIP.NR_RCPT],
    // DATA is answered (CONTINUE) whenever the message is wanted. smtpd writes the unanswered MAIL
    // and RCPT, then cleanup(8) writes the content on the same socket; Postfix leaves Nagle on, so
    // that write waits for our ACK of the first, which the kernel delays by 40 ms (measured: 40 ms
    // per milter per message). A reply to DATA carries the ACK for one round trip instead.
    [has('data') || message, false, SMFIP.NODATA, SMFIP.NR_DATA],
    [has('header'), message, SMFIP.NOHDRS, SMFIP.NR_HDR],
    [has('eoh'), false, SMFIP.NOEOH, SMFIP.NR_EOH],
    [has('body'), message, SMFIP.NOBODY, SMFIP.NR_BODY],
    [has('unknown'), false, SMFIP.NOUNKNOWN, SMFIP.NR_UNKN],
  ];
  let protocol = 0;
  for (const [callback, needed, no, nr] of stages) {
    if (!callback && !needed) protocol |= no;
    else if (!callback) protocol |= nr;
  }
  if (has('body')) protocol |= SMFIP.SKIP;
  if (handler.rejectedRecipients) protocol |= SMFIP.RCPT_REJ;
  if (handler.headerLeadingSpace) protocol |= SMFIP.HDR_LEADSPC;

  let actions = 0;
  for (const name of handler.actions ?? []) {
    const flag = ACTION_FLAGS[name];
    if (flag === undefined) throw new DimeError('MILTER_BAD_MODIFICATION', `handler action must be one of ${Object.keys(ACTION_FLAGS).join(', ')}, got ${JSON.stringify(name)}`);
    actions |= flag;
  }
  // The failure policy may need to quarantine even if the handler never does.
  if (Object.values(policy).includes('quarantine')) actions |= SMFIF.QUARANTINE;
  const request: OptionRequest = { actions, protocol };
  if (handler.macros) request.macros = handler.macros;
  return request;
}

// ---------------------------------------------------------------------------------------------
// Failure policy

/** Failure classes: what went wrong, coarsely, so an operator can choose a verdict for each. */
export const FAILURE_CLASSES = ['internal', 'dns', 'signet-not-found', 'hsm', 'deadline'] as const;
export type FailureClass = (typeof FAILURE_CLASSES)[number];
export const FAILURE_ACTIONS = ['tempfail', 'accept', 'reject', 'quarantine'] as const;
export type FailureAction = (typeof FAILURE_ACTIONS)[number];
export type FailurePolicy = Record<FailureClass, FailureAction>;

/**
 * Tempfail everywhere: the MTA keeps the mail and retries, so a transient fault costs a delay and
 * never a lost or unprocessed message. `accept` must be chosen explicitly.
 */
export const DEFAULT_FAILURE_POLICY: Readonly<FailurePolicy> = Object.freeze({
  internal: 'tempfail',
  dns: 'tempfail',
  'signet-not-found': 'tempfail',
  hsm: 'tempfail',
  deadline: 'tempfail',
});

/** Error codes that name a class outright; codes not here fall to the prefix rules, then to internal. */
const CLASS_BY_CODE: Partial<Record<ErrorCode, FailureClass>> = {
  DEADLINE_EXCEEDED: 'deadline',
  RESOLVE_DEADLINE: 'deadline',
  SERVICE_DEADLINE: 'deadline',
  SIGNET_NOT_FOUND: 'signet-not-found',
  // A signet that cannot be fetched or trusted is, for the message, a signet not found.
  RESOLVE_FETCH_FAILED: 'signet-not-found',
  RESOLVE_SIGNET_INVALID: 'signet-not-found',
  RESOLVE_CUSTODY_BROKEN: 'signet-not-found',
  DMTP_SIGNET_REJECTED: 'signet-not-found',
  // A management record that cannot be used is a DNS failure, never "no record".
  RECORD_AMBIGUOUS: 'dns',
  RECORD_NOT_DIME: 'dns',
  DMTP_NO_RECORD: 'dns',
  DMTP_RECORD_BOGUS: 'dns',
  KEYSTORE_CORRUPT: 'hsm',
  SEALED_KEY_CORRUPT: 'hsm',
};
const CLASS_BY_PREFIX: Array<[prefix: string, cls: FailureClass]> = [
  ['DNS_', 'dns'],
  ['HSM_', 'hsm'],
];

/** The failure class of an error: DimeError codes by table then prefix; anything else is internal. */
export function failureClass(err: unknown): FailureClass {
  if (!(err instanceof DimeError)) return 'internal';
  const direct = CLASS_BY_CODE[err.code];
  if (direct) return direct;
  for (const [prefix, cls] of CLASS_BY_PREFIX) if (err.code.startsWith(prefix)) return cls;
  return 'internal';
}

/** A complete policy from a partial one, every key and value checked. */
export function resolveFailurePolicy(partial: Partial<Record<string, string>> = {}): FailurePolicy {
  const policy: FailurePolicy = { ...DEFAULT_FAILURE_POLICY };
  for (const [cls, action] of Object.entries(partial)) {
    if (action === undefined) continue;
    if (!(FAILURE_CLASSES as readonly string[]).includes(cls)) {
      throw new DimeError('USAGE', `failure class must be one of ${FAILURE_CLASSES.join(', ')}, got ${JSON.stringify(cls)}`);
    }
    if (!(FAILURE_ACTIONS as readonly string[]).includes(action)) {
      throw new DimeError('USAGE', `failure action for ${cls} must be one of ${FAILURE_ACTIONS.join(', ')}, got ${JSON.stringify(action)}`);
    }
    policy[cls as FailureClass] = action as FailureAction;
  }
  return policy;
}

/** The verdict a failure action stands for. */
export function failureVerdict(action: FailureAction, cls: FailureClass): Verdict {
  switch (action) {
    case 'accept':
      return ACCEPT;
    case 'reject':
      return REJECT;
    case 'quarantine':
      return { kind: 'quarantine', reason: `dime milter failure (${cls})` };
    default:
      return TEMPFAIL;
  }
}
