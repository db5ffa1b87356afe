/**
 * The relay's outbound leg (docs/mail-flow.md): Postfix's `dmtp` transport delivers each bundle
 * over LMTP (lmtp.ts); for every recipient we take its part of the bundle, deliver the sealed
 * message over DMTP to the destination's DX, and answer that recipient:
 *
 *   250 2.0.0   delivered (the destination relay answered 250 OK [id])
 *   4xx 4.x.x   try again: no answer, connection lost, certificate or DNSSEC trouble, the peer's 4xx
 *   5xx 5.x.x   give up: the peer's 5xx, no DIME record, too large; the text carries the DIME
 *               reason (error code and detail), so Postfix's bounce tells the sender why
 *   554 5.6.0   not a bundle, no part for the recipient, or a part that is not a DMIME object
 *
 * Only an object that parses as a complete DMIME message (decodeMessage: header, every required
 * chunk, the origin's full signature chunk among them) is ever written to a DMTP connection.
 *
 * Recipients of one message are delivered concurrently by destination domain (a few domains at a
 * time), over one DMTP connection per domain, reused for its recipients one after another.
 */
import { decodeMessage } from '../dime/message/index.js';
import { isDimeError, type ErrorCode } from '../errors.js';
import { decodeBundle, isBundle, partFor, type BundlePart } from '../gateway/bundle.js';
import { outcomeOfError, type ClientTimeouts, type DeliveryResult, type DmtpClient, type DmtpConnection, type Envelope } from './client.js';
import { replyText } from './codec.js';
import { startLmtpServer, type LmtpContext, type LmtpHandler, type LmtpReply, type LmtpServer, type LmtpServerOptions, type LmtpTransaction } from './lmtp.js';
import { meteredLmtpHandler, recordDeliveryTime } from '../service-metrics.js';

/**
 * Destination domains served at once for one message. Bundles mostly have one or two domains;
 * four keeps a wide bundle fast without one message opening dozens of TLS sessions.
 */
export const MAX_PARALLEL_DESTINATIONS = 4;

/**
 * DMTP client timeouts for the outbound leg. Every reply to Postfix must be ready before its
 * lmtp_data_done_timeout (600 s; the session's deadline is 480 s), so each step is shorter than
 * DEFAULT_CLIENT_TIMEOUTS (RFC 5321's 5 and 10 minutes): a stuck peer costs one deferral, not the
 * whole bundle.
 */
export const OUTBOUND_CLIENT_TIMEOUTS: Partial<ClientTimeouts> = { connectMs: 30_000, commandMs: 60_000, dataMs: 180_000 };

export interface OutboundOptions {
  /** Connects to destination DXs under the DIME trust model (DmtpClient). */
  client: Pick<DmtpClient, 'connect'>;
  /**
   * Our dark domain: parts whose origin is another domain are refused (LMTP is unauthenticated;
   * this keeps the relay from carrying anyone else's sealed messages). Unset: not checked.
   */
  originDomain?: string;
  maxParallel?: number;
}

// ------------------------------------------------------------------------------------ replies

const NOT_A_BUNDLE = 'not a DIME bundle (the relay carries only messages the dime milter sealed)';

/** Enhanced status (subject.detail) for what we decided locally, by error code. */
const LOCAL_STATUS: Partial<Record<ErrorCode, string>> = {
  DMTP_CONNECT_FAILED: '4.1', // no answer from host
  DMTP_TIMEOUT: '4.2', // bad connection
  DMTP_CONNECTION_LOST: '4.2',
  DMTP_CERTIFICATE_REJECTED: '7.5', // cryptographic failure
  DMTP_RECORD_BOGUS: '7.5',
  DMTP_SIGNET_REJECTED: '7.5',
  DMTP_BAD_BANNER: '5.0', // protocol
  DMTP_BAD_REPLY: '5.0',
  DEADLINE_EXCEEDED: '4.7', // delivery time expired
  DMTP_NO_RECORD: '4.4', // unable to route: the domain publishes no DIME record
  DMTP_SIZE_EXCEEDED: '3.4', // too big for the destination
  DMTP_BAD_ARGUMENT: '6.0', // the part's envelope cannot be written as a command
};

/** Enhanced status for a peer's reply, by its text (our relay's texts, src/dmtp/replies.ts). */
const PEER_STATUS: [RegExp, string][] = [
  [/^RECIPIENT UNKNOWN/, '1.1'],
  [/^DESTINATION DOMAIN NOT SERVED HERE/, '1.2'],
  [/^MESSAGE SIZE LIMIT EXCEEDED/, '3.4'],
  [/^INSUFFICIENT SYSTEM STORAGE/, '3.1'],
  [/^INVALID DMIME DATA/, '6.0'],
  [/^MESSAGE IS NOT ENCRYPTED FOR THIS DESTINATION/, '7.5'],
  [/^INVALID ORIGIN SIGNATURE/, '7.7'],
  [/^(SIGNET FINGERPRINT MISMATCH|ENVELOPE NAMES ANOTHER SIGNET|MESSAGE ORIGIN DOES NOT MATCH|ORIGIN HAS NO DIME|INVALID ORIGIN SIGNET)/, '7.0'],
  [/^ORIGIN DIME RECORD FAILED DNSSEC/, '7.5'],
  [/^ORIGIN SIGNET TEMPORARILY UNAVAILABLE/, '7.0'],
  [/^LOCAL MTA/, '3.0'],
  [/^(LOCAL ERROR|LOCAL PROCESSING TIMED OUT|ORGANISATION KEY UNAVAILABLE)/, '3.0'],
];

function localStatus(code: ErrorCode | undefined): string | undefined {
  if (code === undefined) return undefined;
  const s = LOCAL_STATUS[code];
  if (s) return s;
  // DNS and resolver trouble (RECORD_* is a malformed record, worth retrying): directory server failure.
  if (/^(DNS_|RESOLVE_|RECORD_)/.test(code)) return '4.3';
  return undefined;
}

/**
 * The LMTP reply for one recipient's DMTP delivery. The outcome decides the class (delivered 2,
 * retry 4, fail 5); the enhanced status and the text say why, with the DIME error code.
 */
export function lmtpReplyForDelivery(rcpt: string, domain: string, r: DeliveryResult): LmtpReply {
  if (r.outcome === 'delivered') return { code: 250, status: '2.0.0', text: `<${rcpt}> delivered to ${domain} over DMTP (id ${r.id ?? 'unknown'})` };
  const klass = r.outcome === 'retry' ? 4 : 5;
  const verdict = klass === 4 ? 'deferred' : 'failed';
  if (r.reply) {
    const peerText = replyText(r.reply).replace(/\n/g, ' ').trim();
    const sub = PEER_STATUS.find(([re]) => re.test(peerText))?.[1] ?? '0.0';
    const peer = r.reply.code;
    // Keep the peer's code when it means the same in SMTP; else the generic one of the class.
    const code = klass === 5 ? ([550, 552, 553, 554].includes(peer) ? peer : 554) : peer === 452 ? 452 : 451;
    return { code, status: `${klass}.${sub}`, text: `<${rcpt}>: DIME delivery to ${domain} ${verdict}: DMTP_REFUSED: ${domain} answered ${r.detail}` };
  }
  const sub = localStatus(r.code);
  const status = `${klass}.${sub ?? (klass === 4 ? '4.0' : '0.0')}`;
  const code = klass === 4 ? 451 : r.code === 'DMTP_SIZE_EXCEEDED' ? 552 : 554;
  return { code, status, text: `<${rcpt}>: DIME delivery to ${domain} ${verdict}: ${r.code ?? 'LOCAL_ERROR'}: ${r.detail}` };
}

function resultOfError(err: unknown): DeliveryResult {
  const r: DeliveryResult = { outcome: outcomeOfError(err), detail: err instanceof Error ? err.message : String(err) };
  if (isDimeError(err)) r.code = err.code;
  return r;
}

function refusal(rcpt: string, text: string): LmtpReply {
  return { code: 554, status: '5.6.0', text: `<${rcpt}>: ${text}` };
}

// ------------------------------------------------------------------------------------ the handler

interface Item {
  index: number;
  rcpt: string;
  part: BundlePart;
}

const DEADLINE = Symbol('deadline');

/** `work`, unless the deadline or the connection's end comes first. */
function beforeDeadline<T>(work: Promise<T>, ctx: LmtpContext): Promise<T | typeof DEADLINE> {
  const ms = ctx.deadline - Date.now();
  if (ms <= 0 || ctx.signal.aborted) return Promise.resolve(DEADLINE);
  return new Promise((resolve, reject) => {
    const stop = () => {
      clearTimeout(timer);
      ctx.signal.removeEventListener('abort', stop);
      resolve(DEADLINE);
    };
    const timer = setTimeout(stop, ms);
    timer.unref();
    ctx.signal.addEventListener('abort', stop);
    work.then(
      (v) => {
        clearTimeout(timer);
        ctx.signal.removeEventListener('abort', stop);
        resolve(v);
      },
      (err: unknown) => {
        clearTimeout(timer);
        ctx.signal.removeEventListener('abort', stop);
        reject(err);
      },
    );
  });
}

/** Run `fn` over `items`, at most `limit` at a time. */
async function bounded<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
}

export function createOutboundHandler(options: OutboundOptions): LmtpHandler {
  const maxParallel = options.maxParallel ?? MAX_PARALLEL_DESTINATIONS;
  const origin = options.originDomain?.toLowerCase();

  const timedOut = (domain: string): DeliveryResult => ({ outcome: 'retry', code: 'DEADLINE_EXCEEDED', detail: `${domain}: no answer before the reply to Postfix was due` });

  /** One domain's recipients over one connection (a new one only after the previous broke). */
  async function deliverDomain(domain: string, items: Item[], replies: LmtpReply[], tx: LmtpTransaction, ctx: LmtpContext): Promise<void> {
    let conn: DmtpConnection | undefined;
    let attemptStart = performance.now(); // per recipient: its connection (when one is needed) and transaction
    const answer = (item: Item, r: DeliveryResult) => {
      recordDeliveryTime(r.outcome, (performance.now() - attemptStart) / 1000);
      const reply = lmtpReplyForDelivery(item.rcpt, domain, r);
      replies[item.index] = reply;
      ctx.log.info(
        { event: `lmtp.${r.outcome}`, id: tx.id, rcpt: item.rcpt, domain, reply: `${reply.code} ${reply.status}`, code: r.code, dmtpId: r.id, host: r.host, detail: r.outcome === 'delivered' ? undefined : r.detail },
        `${item.rcpt}: ${r.outcome}`,
      );
    };
    try {
      for (let i = 0; i < items.length; i++) {
        const item = items[i]!;
        attemptStart = performance.now();
        if (!conn || !conn.usable) {
          conn?.close();
          conn = undefined;
          const pending = options.client.connect(domain);
          let c: DmtpConnection | typeof DEADLINE;
          try {
            c = await beforeDeadline(pending, ctx);
          } catch (err) {
            // Connecting failed: the same answer for every recipient left in this domain.
            const r = resultOfError(err);
            for (const rest of items.slice(i)) answer(rest, r);
            return;
          }
          if (c === DEADLINE) {
            pending.then((late) => late.close(), () => undefined);
            for (const rest of items.slice(i)) answer(rest, timedOut(domain));
            return;
          }
          conn = c;
        }
        const env: Envelope = {
          from: { domain: item.part.origin.domain, fingerprint: item.part.origin.fingerprint },
          to: { domain: item.part.destination.domain, fingerprint: item.part.destination.fingerprint },
        };
        const r = await beforeDeadline(conn.send(item.part.message, env), ctx);
        if (r === DEADLINE) {
          // Cut the session: the peer never sent 250 to us, so at worst it delivers and Postfix retries (a duplicate, never a loss).
          conn.close();
          conn = undefined;
          for (const rest of items.slice(i)) answer(rest, timedOut(domain));
          return;
        }
        answer(item, r);
      }
    } finally {
      // QUIT in the background: the replies to Postfix do not wait for it.
      if (conn) void conn.quit();
    }
  }

  return meteredLmtpHandler({
    async data(tx, message, ctx) {
      const replies: LmtpReply[] = new Array(tx.recipients.length);
      const refuseAll = (text: string, code: ErrorCode, detail?: string) => {
        ctx.log.info({ event: 'lmtp.not_bundle', id: tx.id, code, detail, recipients: tx.recipients.length }, 'refused: not a DIME bundle');
        return tx.recipients.map((r) => refusal(r, text));
      };
      if (!isBundle(message)) return refuseAll(NOT_A_BUNDLE, 'LMTP_NOT_BUNDLE');
      let parts: BundlePart[];
      try {
        parts = decodeBundle(message);
      } catch (err) {
        const code = isDimeError(err) ? err.code : 'GATEWAY_BAD_BUNDLE';
        return refuseAll(`damaged DIME bundle, nothing sent: ${code}: ${(err as Error).message}`, code, (err as Error).message);
      }
      const byDomain = new Map<string, Item[]>();
      tx.recipients.forEach((rcpt, index) => {
        const part = partFor(parts, rcpt);
        if (!part) {
          ctx.log.info({ event: 'lmtp.no_part', id: tx.id, rcpt }, 'refused: the bundle has no part for the recipient');
          replies[index] = refusal(rcpt, `the bundle holds no DIME message for this recipient; ${NOT_A_BUNDLE}`);
          return;
        }
        if (origin !== undefined && part.origin.domain !== origin) {
          ctx.log.warn({ event: 'lmtp.origin_mismatch', id: tx.id, rcpt, origin: part.origin.domain }, 'refused: the part names another origin');
          replies[index] = { code: 554, status: '5.7.1', text: `<${rcpt}>: LMTP_ORIGIN_MISMATCH: the bundle part's origin is ${part.origin.domain}, not ${origin}; nothing sent` };
          return;
        }
        try {
          decodeMessage(part.message);
        } catch (err) {
          const code = isDimeError(err) ? err.code : 'GATEWAY_BAD_BUNDLE';
          ctx.log.warn({ event: 'lmtp.not_dmime', id: tx.id, rcpt, code }, 'refused: the part is not a DMIME message');
          replies[index] = refusal(rcpt, `the bundle part is not a DMIME message, nothing sent over DMTP: ${code}: ${(err as Error).message}`);
          return;
        }
        const domain = part.destination.domain;
        const list = byDomain.get(domain) ?? [];
        list.push({ index, rcpt, part });
        byDomain.set(domain, list);
      });
      await bounded([...byDomain], maxParallel, ([domain, items]) => deliverDomain(domain, items, replies, tx, ctx));
      return replies;
    },
  });
}

// ------------------------------------------------------------------------------------ the listener

export interface LmtpRelayOptions extends Omit<LmtpServerOptions, 'handler'>, OutboundOptions {}

/** The LMTP listener with the outbound handler: what Postfix's `dmtp` transport connects to. */
export function startLmtpRelay(options: LmtpRelayOptions): Promise<LmtpServer> {
  const handler = createOutboundHandler({
    client: options.client,
    ...(options.originDomain !== undefined ? { originDomain: options.originDomain } : {}),
    ...(options.maxParallel !== undefined ? { maxParallel: options.maxParallel } : {}),
  });
  return startLmtpServer({ ...options, handler });
}
