/**
 * THE DMTP reply table: every reply the relay sends, and which error codes become which reply.
 * Nothing else in src/dmtp/ writes reply text; docs/dmtp.md reproduces this table (a test checks
 * that every entry is documented).
 *
 * Codes and texts follow the prototype magma DMTP server where it had one (architecture.md §5.4:
 * `503 DMTP COMMAND REQUIRES STARTTLS FIRST`, `454 SESSION IS ALREADY ENCRYPTED`, `450 SIGNET NOT
 * FOUND`, …) and SMTP's meaning of each code otherwise. 4xx tells the sending relay to try again
 * later, 5xx to give up on this message: a message is refused permanently only when sending the
 * same bytes again cannot succeed.
 *
 * Texts may hold `{name}` placeholders; render() fills them with values it checks (host names,
 * ids, base64), so a reply line can never carry a line break.
 */
import { DimeError, isDimeError, type ErrorCode } from '../errors.js';
import { DMTP_MODE, DMTP_VERBS, checkReplyText, type Reply } from './codec.js';

export interface ReplySpec {
  code: number;
  text: string;
  /** The session ends after this reply. */
  close?: boolean;
  /** A protocol violation: counts towards the invalid-command cut-off. */
  violation?: boolean;
}

/** Replies the session sends in the normal course of a conversation. */
export const REPLIES = {
  banner: { code: 220, text: `<{host}> ${DMTP_MODE} dime-relay ready` },
  bye: { code: 221, text: 'BYE', close: true },
  ok: { code: 250, text: 'OK' },
  mode: { code: 200, text: `OK ${DMTP_MODE}` },
  helo: { code: 250, text: '{host}' },
  starttlsReady: { code: 220, text: 'READY' },
  starttlsDone: { code: 250, text: `OK ${DMTP_MODE}` },
  dataContinue: { code: 354, text: 'CONTINUE [{id}]' },
  accepted: { code: 250, text: 'OK [{id}]' },
  signet: { code: 250, text: 'OK [{signet}]' },
  historyLine: { code: 250, text: '[{signet}]' },
  vrfyCurrent: { code: 250, text: 'CURRENT' },
  vrfyUpdate: { code: 250, text: 'UPDATE [{fingerprint}]' },
  helpEnd: { code: 214, text: 'OK' },
  notImplemented: { code: 502, text: 'COMMAND NOT IMPLEMENTED' },
  alreadySecure: { code: 454, text: 'SESSION IS ALREADY ENCRYPTED', violation: true },
  noFallback: { code: 554, text: 'DMTP SESSION CANNOT FALLBACK AFTER ESTABLISHMENT', violation: true },
  needEhlo: { code: 503, text: 'PLEASE PROVIDE AN EHLO FIRST', violation: true },
  needMail: { code: 503, text: 'PLEASE PROVIDE A MAIL FROM FIRST', violation: true },
  needRcpt: { code: 503, text: 'PLEASE PROVIDE A RCPT TO FIRST', violation: true },
  oneRecipient: { code: 503, text: 'ONE RCPT TO PER MESSAGE', violation: true },
  pipelinedStarttls: { code: 503, text: 'NOTHING MAY FOLLOW STARTTLS BEFORE THE HANDSHAKE', close: true, violation: true },
  historyRange: { code: 501, text: 'INVALID HIST RANGE', violation: true },
  idleTimeout: { code: 421, text: '<{host}> IDLE TIMEOUT, CLOSING CONNECTION', close: true },
  dataTimeout: { code: 421, text: 'DATA FAILED - TIMED OUT WAITING FOR DATA', close: true },
} as const satisfies Record<string, ReplySpec>;

export type ReplyName = keyof typeof REPLIES;

const INVALID_DMIME: ReplySpec = { code: 554, text: 'INVALID DMIME DATA RECEIVED' };
const NOT_FOR_US: ReplySpec = { code: 554, text: 'MESSAGE IS NOT ENCRYPTED FOR THIS DESTINATION' };
const ORIGIN_TEMPORARY: ReplySpec = { code: 451, text: 'ORIGIN SIGNET TEMPORARILY UNAVAILABLE, TRY AGAIN LATER' };

/** What a failure becomes on the wire. Codes absent here get LOCAL_ERROR (temporary). */
export const ERROR_REPLIES: Partial<Record<ErrorCode, ReplySpec>> = {
  // The command line and the session
  DMTP_LINE_TOO_LONG: { code: 500, text: 'LINE TOO LONG', close: true, violation: true },
  DMTP_BAD_CHARACTER: { code: 501, text: 'INVALID CHARACTERS IN COMMAND', violation: true },
  DMTP_UNKNOWN_COMMAND: { code: 500, text: 'INVALID COMMAND', violation: true },
  DMTP_BAD_SYNTAX: { code: 501, text: 'INVALID COMMAND SYNTAX', violation: true },
  DMTP_BAD_SEQUENCE: { code: 503, text: 'BAD SEQUENCE OF COMMANDS', violation: true },
  DMTP_TLS_REQUIRED: { code: 503, text: 'DMTP COMMAND REQUIRES STARTTLS FIRST', violation: true },
  DMTP_SMTP_FALLBACK: { code: 554, text: '<{host}> SMTP SERVICE NOT AVAILABLE', violation: true },
  DMTP_TOO_MANY_ERRORS: { code: 421, text: 'TOO MANY INVALID COMMANDS, CLOSING CONNECTION', close: true },
  DMTP_TIMEOUT: { code: 421, text: 'TIMED OUT, CLOSING CONNECTION', close: true },
  DMTP_SHUTTING_DOWN: { code: 421, text: '<{host}> SERVICE SHUTTING DOWN', close: true },
  // MAIL FROM, RCPT TO and the data
  DMTP_SIZE_EXCEEDED: { code: 552, text: 'MESSAGE SIZE LIMIT EXCEEDED - THIS RELAY ACCEPTS MESSAGES UP TO {size} BYTES' },
  DMTP_BUSY: { code: 452, text: 'INSUFFICIENT SYSTEM STORAGE, TRY AGAIN LATER' },
  DMTP_SIZE_MISMATCH: { code: 554, text: 'DATA DID NOT END AFTER SIZE OCTETS', close: true },
  DMTP_NOT_OUR_DOMAIN: { code: 550, text: 'DESTINATION DOMAIN NOT SERVED HERE' },
  DMTP_FINGERPRINT_MISMATCH: { code: 554, text: 'SIGNET FINGERPRINT MISMATCH' },
  DMTP_ORIGIN_MISMATCH: { code: 554, text: 'MESSAGE ORIGIN DOES NOT MATCH MAIL FROM' },
  DMTP_RECIPIENT_UNKNOWN: { code: 550, text: 'RECIPIENT UNKNOWN' },
  SIGNET_NOT_FOUND: { code: 450, text: 'SIGNET NOT FOUND' },
  // The DMIME object
  OBJECT_TRUNCATED: INVALID_DMIME,
  OBJECT_LENGTH_MISMATCH: INVALID_DMIME,
  OBJECT_TOO_LARGE: INVALID_DMIME,
  OBJECT_BAD_MAGIC: INVALID_DMIME,
  MESSAGE_TRUNCATED: INVALID_DMIME,
  MESSAGE_UNKNOWN_CHUNK: INVALID_DMIME,
  MESSAGE_CHUNK_ORDER: INVALID_DMIME,
  MESSAGE_INCOMPLETE: INVALID_DMIME,
  MESSAGE_BAD_CHUNK: INVALID_DMIME,
  MESSAGE_BAD_PAYLOAD: INVALID_DMIME,
  MESSAGE_BAD_ENVELOPE: INVALID_DMIME,
  MESSAGE_UNSUPPORTED: INVALID_DMIME,
  MESSAGE_DECRYPT_FAILED: NOT_FOR_US,
  MESSAGE_NOT_ALLOWED: NOT_FOR_US,
  MESSAGE_SIGNATURE_INVALID: { code: 554, text: 'INVALID ORIGIN SIGNATURE' },
  MESSAGE_SIGNET_MISMATCH: { code: 554, text: 'ENVELOPE NAMES ANOTHER SIGNET' },
  // The origin's organisational signet, fetched from the origin's DX
  DMTP_NO_RECORD: { code: 554, text: 'ORIGIN HAS NO DIME MANAGEMENT RECORD' },
  DMTP_SIGNET_REJECTED: { code: 554, text: 'INVALID ORIGIN SIGNET' },
  DMTP_RECORD_BOGUS: { code: 451, text: 'ORIGIN DIME RECORD FAILED DNSSEC VALIDATION, TRY AGAIN LATER' },
  DMTP_CONNECT_FAILED: ORIGIN_TEMPORARY,
  DMTP_CERTIFICATE_REJECTED: ORIGIN_TEMPORARY,
  DMTP_BAD_BANNER: ORIGIN_TEMPORARY,
  DMTP_BAD_REPLY: ORIGIN_TEMPORARY,
  DMTP_REFUSED: ORIGIN_TEMPORARY,
  DMTP_CONNECTION_LOST: ORIGIN_TEMPORARY,
  DNS_SERVFAIL: ORIGIN_TEMPORARY,
  DNS_TIMEOUT: ORIGIN_TEMPORARY,
  // Hand-off to the local MTA and local resources
  DMTP_MTA_UNAVAILABLE: { code: 451, text: 'LOCAL MTA UNAVAILABLE, TRY AGAIN LATER' },
  DMTP_MTA_TEMPFAIL: { code: 451, text: 'LOCAL MTA DEFERRED THE MESSAGE, TRY AGAIN LATER' },
  DMTP_MTA_REJECTED: { code: 554, text: 'LOCAL MTA REFUSED THE MESSAGE' },
  HSM_UNAVAILABLE: { code: 451, text: 'ORGANISATION KEY UNAVAILABLE, TRY AGAIN LATER' },
  DEADLINE_EXCEEDED: { code: 451, text: 'LOCAL PROCESSING TIMED OUT, TRY AGAIN LATER' },
};

/** Anything unexpected: temporary, so the sender keeps the message and tries again. */
export const LOCAL_ERROR: ReplySpec = { code: 451, text: 'LOCAL ERROR, TRY AGAIN LATER' };

export function replySpecFor(code: ErrorCode | undefined): ReplySpec {
  return (code && ERROR_REPLIES[code]) || LOCAL_ERROR;
}

export function replySpecForError(err: unknown): ReplySpec {
  return replySpecFor(isDimeError(err) ? err.code : undefined);
}

/** Values that may fill a placeholder: host names, ids, base64, fingerprints, decimal sizes. */
const PLACEHOLDER_VALUE = /^[A-Za-z0-9.+/=_-]*$/;

/** A spec with its placeholders filled; DMTP_BAD_ARGUMENT for a missing or unsafe value. */
export function render(spec: ReplySpec, vars: Record<string, string | number> = {}): Reply {
  const text = spec.text.replace(/\{([a-z]+)\}/g, (_, name: string) => {
    const v = vars[name];
    if (v === undefined) throw new DimeError('DMTP_BAD_ARGUMENT', `reply placeholder {${name}} has no value`);
    const s = String(v);
    if (!PLACEHOLDER_VALUE.test(s)) throw new DimeError('DMTP_BAD_ARGUMENT', `reply placeholder {${name}} holds characters outside host names and base64`);
    return s;
  });
  return { code: spec.code, lines: [checkReplyText(text)] };
}

/** EHLO: the extensions, then OK (the prototype server's shape; RETURN is not offered: no bounces yet). */
export function ehloReply(maxSize: number): Reply {
  return { code: 250, lines: ['PIPELINING', '8BITDIME', `SIZE ${maxSize}`, 'OK'] };
}

/** Syntax of each verb, as HELP shows it (the canonical forms; docs/dmtp.md lists the accepted variants). */
export const HELP_SYNTAX: Record<(typeof DMTP_VERBS)[number], string> = {
  EHLO: 'EHLO <sending-domain>',
  HELO: 'HELO <sending-domain>',
  STARTTLS: `STARTTLS <dx-host> MODE=${DMTP_MODE}`,
  MODE: 'MODE',
  MAIL: 'MAIL FROM: <origin-domain> [origin-org-fingerprint] SIZE=<octets> [RETURN=FULL|DISPLAY|HEADER] [DATA=7BIT|8BIT]',
  RCPT: 'RCPT TO: <destination-domain> [destination-org-fingerprint]',
  DATA: 'DATA, then exactly SIZE octets of DMIME and CRLF',
  SGNT: 'SGNT <domain|user@domain> [fingerprint]',
  HIST: 'HIST <domain|user@domain> [start-fingerprint] [stop-fingerprint]',
  VRFY: 'VRFY <domain|user@domain> [fingerprint]',
  NOOP: 'NOOP',
  RSET: 'RSET',
  HELP: 'HELP [verb]',
  QUIT: 'QUIT',
};

export function helpReply(topic?: string): Reply {
  const known = topic !== undefined && Object.hasOwn(HELP_SYNTAX, topic);
  const lines = known ? [HELP_SYNTAX[topic as keyof typeof HELP_SYNTAX]] : [`${DMTP_MODE} commands: ${DMTP_VERBS.join(' ')}`];
  return { code: 214, lines: [...lines, REPLIES.helpEnd.text] };
}
