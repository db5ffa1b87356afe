/**
 * The policy service rule for our own `pol=strict` (docs/mail-flow.md, last paragraph): a dark
 * domain that publishes `pol=strict` in its `_dx` record accepts only DIME mail, so legacy mail for
 * its users is refused at RCPT, before any data is sent, by `check_policy_service` on the
 * Internet-facing smtpd. DIME mail is not affected: the relay hands it to a port that does not run
 * this check.
 *
 *  - RCPT for a recipient in our domain, our record says `strict`, refusing is on (the default):
 *    `REJECT 5.7.1 <rcpt>: <domain> accepts only DIME mail (pol=strict)`.
 *  - Our policy cannot be determined (the lookup throws): `DEFER_IF_PERMIT 4.7.0 …`. Never DUNNO:
 *    that would let legacy mail in exactly when we cannot tell whether it is allowed. DEFER_IF_PERMIT
 *    rather than DEFER, so a later restriction that rejects the recipient still rejects it.
 *  - Everything else is DUNNO: other stages and domains, `experimental` or `mixed`, no record, and
 *    clients that authenticated (`sasl_username`): a submission is our own users' mail, which the
 *    outbound milter handles, not legacy mail arriving from outside.
 */
import type { Resolver } from '../resolver/resolver.js';
import type { RecordPolicy } from '../dime/record.js';
import type { Logger } from '../log.js';
import { DimeError } from '../errors.js';
import { MAX_ACTION_TEXT, type PolicyAction } from './action.js';
import { domainOfKey, normalizeDomain, type PolicyHandler } from './handler.js';

export interface StrictInboundPolicyOptions {
  /** Our dark domain. */
  domain: string;
  /** Our own published policy (`pol=` of our `_dx` record); undefined when we publish none. */
  localPolicy: () => Promise<RecordPolicy | undefined>;
  /** Refuse legacy mail under `pol=strict` (default true); false answers DUNNO. */
  refuse?: boolean;
  log?: Logger;
}

const DUNNO: PolicyAction = Object.freeze({ action: 'DUNNO' });

export function createStrictInboundPolicy(o: StrictInboundPolicyOptions): PolicyHandler {
  const domain = normalizeDomain(o.domain);
  const refuse = o.refuse ?? true;
  return async (request) => {
    if (!refuse || request.protocolState !== 'RCPT') return DUNNO;
    const rcpt = request.recipient ?? '';
    if (rcpt === '' || !rcpt.includes('@') || domainOfKey(rcpt) !== domain) return DUNNO;
    if ((request.get('sasl_username') ?? '') !== '') return DUNNO;
    let policy: RecordPolicy | undefined;
    try {
      policy = await o.localPolicy();
    } catch (err) {
      o.log?.warn({ event: 'policy.strict.unknown', code: (err as { code?: string }).code ?? 'internal', err: (err as Error).message }, "our own DIME policy could not be determined; deferring");
      return { action: 'DEFER_IF_PERMIT', status: '4.7.0', text: `cannot determine the DIME policy of ${domain}; try again later` };
    }
    if (policy !== 'strict') return DUNNO;
    o.log?.info({ event: 'policy.strict.refused', code: 'pol-strict', recipient: rcpt, client: request.clientAddress }, 'legacy mail refused: our policy is strict');
    const text = `${domain} accepts only DIME mail (pol=strict)`;
    const named = `<${rcpt}>: ${text}`;
    // The address goes into an SMTP reply: only when it is printable ASCII and fits (Postfix prefixes it too).
    return { action: 'REJECT', status: '5.7.1', text: /^[\x21-\x7e]+$/.test(rcpt) && named.length <= MAX_ACTION_TEXT ? named : text };
  };
}

/**
 * Our own published policy as the world sees it: our `_dx` record through the resolver (cached).
 * undefined when we publish none; a lookup that fails throws, so the policy answers DEFER_IF_PERMIT.
 */
export function publishedPolicy(resolver: Pick<Resolver, 'resolve'>, domain: string): () => Promise<RecordPolicy | undefined> {
  return async () => {
    const res = await resolver.resolve(domain, { recordOnly: true });
    if (res.status === 'no-record') return undefined;
    if (!res.record) throw new DimeError(res.error?.code ?? 'RESOLVE_DEADLINE', `our own record _dx.${domain}: ${res.error?.message ?? res.status}`);
    return res.record.policy;
  };
}
