/**
 * The services' Prometheus metrics (docs/metrics.md), declared in one place so that names, labels
 * and label values stay stable and can be reviewed together. The resolver keeps its own
 * (src/resolver/cache.ts, src/resolver/resolver.ts).
 *
 * Label values come from closed sets (the types below) or are error codes checked against
 * ERROR_CODES at run time: never an address, a domain, a key, a password, a header or any content.
 * Anything else becomes `other`, so a mistake upstream cannot turn into a cardinality explosion or a
 * leak on /metrics.
 */
import { ERROR_CODES, type ErrorCode } from './errors.js';
import type { DmtpHandler, Result } from './dmtp/session.js';
import type { LmtpHandler, LmtpReply } from './dmtp/lmtp.js';
import type { FailureAction, FailureClass } from './milter/handler.js';
import { LATENCY_BUCKETS, metrics } from './metrics.js';

export type Direction = 'outbound' | 'inbound';
export type OutboundDecision = 'dark' | 'legacy' | 'local' | 'refused';
export type OpenedResult = 'pass' | 'sealed' | 'neutral';
/**
 * Why the outbound gateway refused a message when no error code says it: a recipient with no
 * signet at a DIME domain, one that policy requires to be reached dark and cannot be, a cautious or
 * paranoid sender's server-side seal, a client-sealed message for several (or local) recipients, or
 * one whose envelope is not from the sender to the recipient's domain.
 */
export type RefusalKind = 'no-signet' | 'dime-required' | 'sealed-account' | 'client-sealed-recipients' | 'client-sealed-envelope';
export type DeliveryOutcome = 'delivered' | 'retry' | 'fail';
export type HsmOp = 'sign' | 'ecdh' | 'wrap' | 'unwrap';

const REFUSAL_KINDS: ReadonlySet<string> = new Set<RefusalKind>(['no-signet', 'dime-required', 'sealed-account', 'client-sealed-recipients', 'client-sealed-envelope']);

/** DMTP runs for minutes at worst (OUTBOUND_CLIENT_TIMEOUTS), far past LATENCY_BUCKETS' 10 s. */
export const DMTP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** A file keystore signs in tens of microseconds, an HSM in milliseconds: both ends need buckets. */
export const HSM_BUCKETS = [0.0001, 0.00025, ...LATENCY_BUCKETS];

/** A reason label: an error code or a refusal kind, else `other` (never free text). */
export function reasonLabel(reason: string | undefined): string {
  if (reason === undefined) return 'unknown';
  return Object.prototype.hasOwnProperty.call(ERROR_CODES, reason) || REFUSAL_KINDS.has(reason) ? reason : 'other';
}

// ------------------------------------------------------------------------------------ gateway (milter)

const SEALED = metrics.counter('dime_messages_sealed_total', 'DMIME messages sealed and queued by the outbound gateway, one per dark recipient');
const OPENED = metrics.counter('dime_messages_opened_total', 'DIME messages the inbound gateway verified, by result: pass (opened for a trustful recipient), sealed (verified, left sealed), neutral (left sealed unverified)', ['result']);
const REJECTED = metrics.counter('dime_messages_rejected_total', 'Messages the gateway refused permanently (5xx, or quarantine for invalid inbound DIME mail), by direction and reason (error code or refusal kind)', ['direction', 'reason']);
const DECISIONS = metrics.counter('dime_outbound_decisions_total', 'Outbound recipients by decision: dark (sealed), legacy (plaintext), local (our domains), refused', ['decision']);
const MILTER_FAILURES = metrics.counter('dime_milter_failures_total', 'Milter failure policy applications, by failure class and the action taken', ['class', 'action']);

// Closed label sets start at 0, so rate() sees the first event and dashboards show every series.
for (const decision of ['dark', 'legacy', 'local', 'refused'] satisfies OutboundDecision[]) DECISIONS.inc({ decision }, 0);
for (const result of ['pass', 'sealed', 'neutral'] satisfies OpenedResult[]) OPENED.inc({ result }, 0);

export function recordSealed(recipients: number): void {
  SEALED.inc({}, recipients);
}

export function recordOpened(result: OpenedResult): void {
  OPENED.inc({ result });
}

export function recordRejected(direction: Direction, reason: ErrorCode | RefusalKind): void {
  REJECTED.inc({ direction, reason: reasonLabel(reason) });
}

export function recordDecision(kind: 'dark' | 'legacy' | 'local' | 'refuse'): void {
  DECISIONS.inc({ decision: kind === 'refuse' ? 'refused' : kind });
}

export function recordMilterFailure(cls: FailureClass, action: FailureAction): void {
  MILTER_FAILURES.inc({ class: cls, action });
}

// ------------------------------------------------------------------------------------ DMTP relay

const DELIVERIES = metrics.counter('dime_dmtp_deliveries_total', 'Recipients of bundles handed to the relay over LMTP, by the answer to Postfix: delivered (250), retry (4xx), fail (5xx, local refusals included)', ['outcome']);
const DELIVERY_SECONDS = metrics.histogram('dime_dmtp_delivery_seconds', 'Time of one recipient DMTP delivery attempt (connection when one is needed, then the transaction), by outcome', ['outcome'], DMTP_BUCKETS);
const INBOUND = metrics.counter('dime_dmtp_inbound_total', 'DMTP transactions the relay received, by outcome (accepted: handed to the local MTA; refused) and the refusal error code', ['outcome', 'reason']);
const INBOUND_SECONDS = metrics.histogram('dime_dmtp_inbound_seconds', 'Time the relay took from the end of DATA to its answer (verification and the hand-off to the local MTA), by outcome', ['outcome'], DMTP_BUCKETS);

for (const outcome of ['delivered', 'retry', 'fail'] satisfies DeliveryOutcome[]) DELIVERIES.inc({ outcome }, 0);
INBOUND.inc({ outcome: 'accepted' }, 0);

export function recordDeliveryTime(outcome: DeliveryOutcome, seconds: number): void {
  DELIVERY_SECONDS.observe(seconds, { outcome });
}

function outcomeOfLmtp(code: number): DeliveryOutcome {
  return code < 400 ? 'delivered' : code < 500 ? 'retry' : 'fail';
}

/** Counts every LMTP reply of a handler by class; a throw (the session answers 451 to all) counts as retry. */
export function meteredLmtpHandler(inner: LmtpHandler): LmtpHandler {
  return {
    async data(tx, message, ctx) {
      let replies: LmtpReply[];
      try {
        replies = await inner.data(tx, message, ctx);
      } catch (err) {
        DELIVERIES.inc({ outcome: 'retry' }, tx.recipients.length);
        throw err;
      }
      for (let i = 0; i < tx.recipients.length; i++) DELIVERIES.inc({ outcome: replies[i] ? outcomeOfLmtp(replies[i]!.code) : 'retry' });
      return replies;
    },
  };
}

/** Counts what the relay handler decides about each transaction (MAIL FROM, RCPT TO, DATA) and times DATA. */
export function meteredRelayHandler(inner: DmtpHandler): DmtpHandler {
  const refused = <T>(r: Result<T>): Result<T> => {
    if (!r.ok) INBOUND.inc({ outcome: 'refused', reason: reasonLabel(r.code) });
    return r;
  };
  return {
    ...inner,
    mailFrom: async (tx, ctx) => refused(await inner.mailFrom(tx, ctx)),
    rcptTo: async (tx, ctx) => refused(await inner.rcptTo(tx, ctx)),
    async data(tx, message, ctx) {
      const t0 = performance.now();
      let r: Result<void>;
      try {
        r = await inner.data(tx, message, ctx);
      } catch (err) {
        // The session answers 451: a refusal as far as the sender is concerned.
        INBOUND.inc({ outcome: 'refused', reason: 'internal' });
        INBOUND_SECONDS.observe((performance.now() - t0) / 1000, { outcome: 'refused' });
        throw err;
      }
      const outcome = r.ok ? 'accepted' : 'refused';
      INBOUND.inc(r.ok ? { outcome } : { outcome, reason: reasonLabel(r.code) });
      INBOUND_SECONDS.observe((performance.now() - t0) / 1000, { outcome });
      return r;
    },
  };
}

// ------------------------------------------------------------------------------------ keystore

const HSM_SECONDS = metrics.histogram('dime_hsm_operation_seconds', 'Organisation key operations by operation (sign, ecdh, wrap, unwrap) and keystore (pkcs11, file), failures included', ['op', 'keystore'], HSM_BUCKETS);

/** Time `fn` into dime_hsm_operation_seconds, whether it resolves or throws. */
export async function timeHsm<T>(op: HsmOp, keystore: 'file' | 'pkcs11', fn: () => Promise<T> | T): Promise<T> {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    HSM_SECONDS.observe((performance.now() - t0) / 1000, { op, keystore });
  }
}
