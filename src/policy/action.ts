/**
 * Policy actions: what a policy server may answer (access(5), SMTPD_POLICY_README). Pure: typed
 * values ↔ the text after `action=`. Everything we emit is validated first, because Postfix copies
 * the text into SMTP replies, headers and the queue file: a newline in it would end the reply early
 * and let a later line be read as a new attribute.
 */
import { DimeError } from '../errors.js';

/** Verbs that take optional free text, which may start with an RFC 3463 enhanced status code. */
export type TextVerb = 'REJECT' | 'DEFER' | 'DEFER_IF_PERMIT' | 'DEFER_IF_REJECT' | 'HOLD';

export type PolicyAction =
  /** No opinion: Postfix goes on with the next restriction. */
  | { action: 'DUNNO' }
  /** Accept this restriction stage. */
  | { action: 'OK' }
  | { action: TextVerb; status?: string; text?: string }
  /** An explicit `4NN`/`5NN` reply (421/521 also disconnect). */
  | { action: 'REPLY'; code: number; status?: string; text: string }
  /** After queueing, send the whole message (all recipients) to `transport:nexthop`. */
  | { action: 'FILTER'; transport: string; nexthop: string }
  /** Prepend `name: value` to the message headers. */
  | { action: 'PREPEND'; name: string; value: string }
  /** Replace all recipients with one address. */
  | { action: 'REDIRECT'; address: string };

const TEXT_VERBS: readonly TextVerb[] = ['REJECT', 'DEFER', 'DEFER_IF_PERMIT', 'DEFER_IF_REJECT', 'HOLD'];

/**
 * Free text in a reply. Postfix puts it after "<rcpt>: Recipient address rejected: ", and RFC 5321
 * caps a reply line at 512 octets; 256 leaves room for that prefix and a long address.
 */
export const MAX_ACTION_TEXT = 256;
/** RFC 5322 §2.1.1: a header line is at most 998 characters. */
export const MAX_HEADER_LINE = 998;
/** RFC 5321 §4.5.3.1.3: a path (address plus angle brackets) is at most 256 octets. */
export const MAX_ADDRESS = 254;
/** A transport:nexthop pair; master.cf service names and host:port fit in far less. */
export const MAX_ROUTE = 255;

const PRINTABLE_TEXT = /^[\x20-\x7e]*$/;
const STATUS = /^([245])\.[0-9]{1,3}\.[0-9]{1,3}$/;
const TRANSPORT = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const NEXTHOP = /^[\x21-\x7e]*$/;
const HEADER_NAME = /^[\x21-\x39\x3b-\x7e]+$/;
const ADDRESS = /^[^\s<>@\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+$/;

function bad(detail: string): never {
  throw new DimeError('POLICY_BAD_ACTION', detail);
}

function checkText(what: string, text: string, max: number): void {
  if (!PRINTABLE_TEXT.test(text)) bad(`${what} must be printable ASCII on one line: ${JSON.stringify(text)}`);
  if (text.length > max) bad(`${what} is ${text.length} characters; at most ${max}`);
}

/** Text that starts like a status code would be read as one; put the code in `status` instead. */
function checkFreeText(what: string, text: string): void {
  checkText(what, text, MAX_ACTION_TEXT);
  if (/^[0-9]\./.test(text)) bad(`${what} starts like a status code; pass it as status: ${JSON.stringify(text)}`);
}

function checkStatus(status: string, classDigit: string, what: string): void {
  const m = STATUS.exec(status);
  if (!m) bad(`${JSON.stringify(status)} is not an enhanced status code (RFC 3463 d.ddd.ddd)`);
  if (m[1] !== classDigit) bad(`${what} needs a ${classDigit}.x.x status code, not ${status}`);
}

function statusClassOf(verb: TextVerb): string | undefined {
  if (verb === 'REJECT') return '5';
  if (verb === 'HOLD') return undefined;
  return '4';
}

/** Check that an action can be sent; throws POLICY_BAD_ACTION naming the fault. */
export function validatePolicyAction(a: PolicyAction): void {
  switch (a.action) {
    case 'DUNNO':
    case 'OK':
      return;
    case 'REPLY': {
      if (!Number.isInteger(a.code) || a.code < 400 || a.code > 599) bad(`reply code ${a.code} is not 4NN or 5NN`);
      if (a.status !== undefined) checkStatus(a.status, String(a.code)[0]!, `reply code ${a.code}`);
      if (a.text.length === 0) bad('a 4NN/5NN reply needs text');
      checkFreeText('reply text', a.text);
      return;
    }
    case 'FILTER':
      if (!TRANSPORT.test(a.transport)) bad(`FILTER transport ${JSON.stringify(a.transport)} is not a master.cf service name`);
      if (!NEXTHOP.test(a.nexthop)) bad(`FILTER nexthop ${JSON.stringify(a.nexthop)} must be printable ASCII without spaces`);
      if (a.transport.length + 1 + a.nexthop.length > MAX_ROUTE) bad(`FILTER route is longer than ${MAX_ROUTE} characters`);
      return;
    case 'PREPEND':
      if (!HEADER_NAME.test(a.name)) bad(`PREPEND header name ${JSON.stringify(a.name)} is not an RFC 5322 field name`);
      checkText('PREPEND header value', a.value, MAX_HEADER_LINE);
      if (a.name.length + 2 + a.value.length > MAX_HEADER_LINE) bad(`PREPEND header line is longer than ${MAX_HEADER_LINE} characters`);
      return;
    case 'REDIRECT':
      if (a.address.length > MAX_ADDRESS || !ADDRESS.test(a.address)) bad(`REDIRECT address ${JSON.stringify(a.address)} is not user@domain`);
      return;
    default: {
      const verb: TextVerb = a.action;
      if (!TEXT_VERBS.includes(verb)) bad(`unknown action ${JSON.stringify(verb)}`);
      const cls = statusClassOf(verb);
      if (a.status !== undefined) {
        if (cls === undefined) bad(`${verb} takes no status code`);
        checkStatus(a.status, cls, verb);
      }
      if (a.text !== undefined) checkFreeText(`${verb} text`, a.text);
      return;
    }
  }
}

function join(...parts: (string | undefined)[]): string {
  return parts.filter((p) => p !== undefined && p.length > 0).join(' ');
}

/** The text after `action=`, validated. */
export function formatPolicyAction(a: PolicyAction): string {
  validatePolicyAction(a);
  switch (a.action) {
    case 'DUNNO':
    case 'OK':
      return a.action;
    case 'REPLY':
      return join(String(a.code), a.status, a.text);
    case 'FILTER':
      return `FILTER ${a.transport}:${a.nexthop}`;
    case 'PREPEND':
      return `PREPEND ${a.name}: ${a.value}`;
    case 'REDIRECT':
      return `REDIRECT ${a.address}`;
    default:
      return join(a.action, a.status, a.text);
  }
}

/** The whole reply on the wire: `action=...\n\n`. */
export function encodePolicyReply(a: PolicyAction): Buffer {
  return Buffer.from(`action=${formatPolicyAction(a)}\n\n`, 'latin1');
}

/**
 * Parse an action as an admin writes it (`--failure-action`) or a policy server sends it.
 * Verbs are case-insensitive as in Postfix; the result is validated like anything we emit.
 */
export function parsePolicyAction(text: string): PolicyAction {
  const m = /^(\S+)(?: (.*))?$/s.exec(text);
  if (!m) bad(`${JSON.stringify(text)} is not an action`);
  const word = m[1]!;
  const rest = m[2];
  const verb = word.toUpperCase();
  let a: PolicyAction;
  if (/^[45][0-9][0-9]$/.test(word)) {
    const { status, text: t } = splitStatus(rest ?? '');
    a = status === undefined ? { action: 'REPLY', code: Number(word), text: t ?? '' } : { action: 'REPLY', code: Number(word), status, text: t ?? '' };
  } else if (verb === 'DUNNO' || verb === 'OK') {
    if (rest !== undefined) bad(`${verb} takes no argument`);
    a = { action: verb };
  } else if (verb === 'FILTER') {
    const route = rest ?? '';
    const colon = route.indexOf(':');
    if (colon <= 0) bad(`FILTER needs transport:nexthop, got ${JSON.stringify(route)}`);
    a = { action: 'FILTER', transport: route.slice(0, colon), nexthop: route.slice(colon + 1) };
  } else if (verb === 'PREPEND') {
    const hm = /^([^:\s]+): ?(.*)$/s.exec(rest ?? '');
    if (!hm) bad(`PREPEND needs "Name: value", got ${JSON.stringify(rest ?? '')}`);
    a = { action: 'PREPEND', name: hm[1]!, value: hm[2]! };
  } else if (verb === 'REDIRECT') {
    a = { action: 'REDIRECT', address: rest ?? '' };
  } else if ((TEXT_VERBS as readonly string[]).includes(verb)) {
    const v = verb as TextVerb;
    const { status, text: t } = statusClassOf(v) === undefined ? { status: undefined, text: rest } : splitStatus(rest ?? '');
    a = { action: v };
    if (status !== undefined) a.status = status;
    if (t !== undefined && t.length > 0) a.text = t;
  } else {
    bad(`unknown action ${JSON.stringify(word)}`);
  }
  validatePolicyAction(a);
  return a;
}

/** "4.7.1 some text" → status and text; a leading word that merely looks numeric stays text. */
function splitStatus(rest: string): { status?: string; text?: string } {
  const m = /^([0-9]\.[0-9]{1,3}\.[0-9]{1,3})(?: (.*))?$/s.exec(rest);
  if (!m) return rest.length > 0 ? { text: rest } : {};
  return m[2] !== undefined && m[2].length > 0 ? { status: m[1]!, text: m[2] } : { status: m[1]! };
}
