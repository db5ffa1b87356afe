/**
 * The outbound half of the gateway (docs/mail-flow.md): at end of message on the submission path,
 * resolve every recipient, seal one DMIME message per dark recipient for a trustful sender, re-inject
 * them as one bundle through the milter-free bundle service, and tell Postfix what is left of the
 * original: nothing (discard) or the legacy recipients only (delete the dark ones).
 *
 * Order matters for the failure semantics: everything that can fail slowly comes first (resolution,
 * unsealing, sealing, origin signing); re-injection is the last step before the verdict, so a failure
 * anywhere before it queues nothing, and a failure of re-injection itself queues nothing either.
 */
import type { CryptoBackend } from '../crypto/backend.js';
import { signAsOrigin, sealMessage } from '../dime/message/index.js';
import { fingerprint } from '../dime/signet/index.js';
import type { SmtpOutcome } from '../dmtp/smtp-client.js';
import { DimeError, isDimeError, type ErrorCode } from '../errors.js';
import type { OrgKeystore } from '../keystore/keystore.js';
import type { SignetStore } from '../keystore/signets.js';
import type { CustodyMode, UnsealedUserKey, UserInfo } from '../keystore/users.js';
import type { Logger } from '../log.js';
import { verdict, type ActionName, type EomResult, type MilterContext, type MilterMessage, type Modification, type Recipient, type Verdict } from '../milter/handler.js';
import type { Resolution } from '../resolver/resolver.js';
import { encodeBundle, type BundlePart } from './bundle.js';
import { findDimeObject, forgedResults } from './inbound.js';
import { mimeToParts } from './mime.js';
import { recordDecision, recordRejected, recordSealed, type RefusalKind } from '../service-metrics.js';

/** What the outbound processor may ask Postfix to do. */
export const OUTBOUND_ACTIONS: readonly ActionName[] = ['deleteRecipient', 'changeHeader'];

export interface ReinjectRequest {
  sender: string;
  recipients: string[];
  body: Iterable<Buffer>;
  signal: AbortSignal;
}

export interface OutboundOptions {
  /** Our dark domain. */
  domain: string;
  /** Our host name (bundle Message-ID). */
  hostname: string;
  crypto: CryptoBackend;
  /** The organisation's keys: ECDH to open the origin chunk, the POK to sign as origin. */
  keystore: Pick<OrgKeystore, 'actorKeys' | 'pok'>;
  /** Our published signets: our org signet and the senders' user signets. */
  store: Pick<SignetStore, 'org' | 'user'>;
  users: { show(address: string): Promise<Pick<UserInfo, 'mode' | 'removed'>>; unseal(address: string): Promise<UnsealedUserKey> };
  /** Resolve a recipient (record, org and user signets) within the message's deadline. */
  resolve(address: string, signal: AbortSignal): Promise<Resolution>;
  /** Queue the bundle through the milter-free bundle service. */
  reinject(request: ReinjectRequest): Promise<SmtpOutcome>;
  /** Further domains delivered here (never resolved, never sealed). */
  localDomains?: readonly string[];
  /** Our policy: senders (addresses or @domain) whose mail must go dark, and destination domains that must be reached dark. */
  requireDime?: { senders?: readonly string[]; destinations?: readonly string[] };
  log?: Logger;
}

type SenderKind = { kind: 'trustful'; address: string } | { kind: 'sealed-account'; address: string; mode: CustodyMode } | { kind: 'ordinary'; address: string };

type Decision =
  | { kind: 'local' | 'legacy'; recipient: Recipient }
  | { kind: 'dark'; recipient: Recipient; resolution: Resolution & { org: NonNullable<Resolution['org']>; user: NonNullable<Resolution['user']> } }
  | { kind: 'refuse'; recipient: Recipient; xcode: string; why: string; reason: RefusalKind };

function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

function matches(list: readonly string[] | undefined, address: string): boolean {
  if (!list) return false;
  const a = address.toLowerCase();
  const d = domainOf(a);
  return list.some((e) => {
    const x = e.toLowerCase();
    return x === a || x === `@${d}` || x === d;
  });
}

/** The message as Postfix received it, rebuilt byte for byte from what the milter saw. */
export function rawMessage(ctx: Pick<MilterContext, 'headerLeadingSpace'>, message: Pick<MilterMessage, 'headers'>, body: Uint8Array): Uint8Array {
  const lines: Buffer[] = [];
  for (const h of message.headers) {
    // Postfix hands folded values with bare LF; on the wire they were CRLF. Without HDR_LEADSPC it
    // also stripped the one space after the colon, which we put back.
    const value = Buffer.from(h.valueBytes).toString('latin1').replace(/\r?\n/g, '\r\n');
    lines.push(Buffer.from(`${h.name}:${ctx.headerLeadingSpace ? '' : ' '}${value}\r\n`, 'latin1'));
  }
  lines.push(Buffer.from('\r\n'), Buffer.from(body.buffer, body.byteOffset, body.length));
  return new Uint8Array(Buffer.concat(lines));
}

/** A permanent refusal of the message, counted on /metrics by its reason (never the text, which names addresses). */
function refuseMessage(reason: ErrorCode | RefusalKind, code: string, text: string, xcode: string): Verdict {
  recordRejected('outbound', reason);
  return verdict.reply(code, text, xcode);
}

/** SASL login names come as `alice` or `alice@domain` depending on the realm setup. */
function sameUser(login: string, sender: string, domain: string): boolean {
  const l = login.toLowerCase();
  const full = l.includes('@') ? l : `${l}@${domain}`;
  return full === sender.toLowerCase();
}

export function createOutboundProcessor(o: OutboundOptions): (ctx: MilterContext, message: MilterMessage) => Promise<EomResult> {
  const ourDomain = o.domain.toLowerCase();
  const local = new Set([ourDomain, ...(o.localDomains ?? []).map((d) => d.toLowerCase())]);

  async function senderKind(address: string): Promise<SenderKind> {
    if (domainOf(address) !== ourDomain) return { kind: 'ordinary', address };
    let info: Pick<UserInfo, 'mode' | 'removed'>;
    try {
      info = await o.users.show(address);
    } catch (err) {
      // Not a DIME account here: an ordinary mailbox of our domain.
      if (isDimeError(err) && (err.code === 'USER_NOT_FOUND' || err.code === 'SIGNET_NOT_FOUND')) return { kind: 'ordinary', address };
      throw err;
    }
    if (info.removed) return { kind: 'ordinary', address };
    return info.mode === 'trustful' ? { kind: 'trustful', address } : { kind: 'sealed-account', address, mode: info.mode };
  }

  async function decide(sender: SenderKind, recipient: Recipient, signal: AbortSignal): Promise<Decision> {
    const address = recipient.address;
    if (local.has(domainOf(address))) return { kind: 'local', recipient };
    const required = matches(o.requireDime?.senders, sender.address) || matches(o.requireDime?.destinations, address);
    const res = await o.resolve(address, signal);
    switch (res.status) {
      case 'ok':
        if (!res.org || !res.user) throw new DimeError('RESOLVE_FETCH_FAILED', `${address}: resolution ok without both signets`);
        if (sender.kind === 'trustful') return { kind: 'dark', recipient, resolution: res as Extract<Decision, { kind: 'dark' }>['resolution'] };
        if (sender.kind === 'sealed-account') {
          return { kind: 'refuse', recipient, xcode: '5.7.1', why: `reads DIME, and the server holds no key to seal for your ${sender.mode} account: send from a DIME client`, reason: 'sealed-account' };
        }
        // An ordinary account cannot seal; plaintext only where the destination allows it.
        if (res.policy === 'strict' || required) return { kind: 'refuse', recipient, xcode: '5.7.1', why: `must be reached by DIME, and your account has no DIME keys`, reason: 'dime-required' };
        return { kind: 'legacy', recipient };
      case 'no-record':
        if (!res.plaintextAllowed) throw new DimeError(res.error?.code ?? 'RESOLVE_DEADLINE', `${address}: no record, but not a validated one`);
        if (required) return { kind: 'refuse', recipient, xcode: '5.7.1', why: `cannot be reached by DIME (${res.domain} publishes no DIME record), and policy requires DIME`, reason: 'dime-required' };
        return { kind: 'legacy', recipient };
      case 'no-signet':
        // The domain is dark and its DX says the user has no signet: never plaintext to a dark domain on that say-so.
        return { kind: 'refuse', recipient, xcode: '5.1.1', why: `no DIME signet at ${res.domain}, a DIME domain`, reason: 'no-signet' };
      default: {
        const code = res.error?.code ?? 'RESOLVE_DEADLINE';
        throw new DimeError(code, `${address}: ${res.error?.message ?? res.status}`);
      }
    }
  }

  /** Re-inject the sealed parts as one bundle: the last step before the verdict. Returns the bundle's queue id. */
  async function queueBundle(sender: string, bundle: BundlePart[], signal: AbortSignal): Promise<string | undefined> {
    const outcome = await o.reinject({ sender, recipients: bundle.map((p) => p.recipient), body: encodeBundle({ sender, hostname: o.hostname }, bundle), signal });
    if (!outcome.accepted) throw new DimeError('GATEWAY_REINJECT_FAILED', `${outcome.stage}: ${outcome.reason}`);
    recordSealed(bundle.length);
    return /queued as ([A-Za-z0-9]+)/.exec(outcome.reply.lines.join(' '))?.[1];
  }

  /**
   * A message the sender's own DIME client sealed (cautious and paranoid accounts; trustful ones
   * too): it holds one DMIME object for one recipient. We add the origin's signatures (which checks
   * the author's) and queue it; we cannot read it, so it can never go anywhere as plaintext.
   */
  async function clientSealed(ctx: MilterContext, message: MilterMessage, sender: string, recipients: readonly Recipient[], object: Uint8Array, log: Logger): Promise<EomResult> {
    if (recipients.length !== 1 || local.has(domainOf(recipients[0]!.address))) {
      return refuseMessage('client-sealed-recipients', '550', 'a message your DIME client sealed is for one recipient in another domain: send one copy per recipient', '5.5.3');
    }
    const d = await decide({ kind: 'trustful', address: sender }, recipients[0]!, ctx.signal);
    recordDecision(d.kind);
    if (d.kind === 'refuse') return refuseMessage(d.reason, '550', `<${d.recipient.address}>: ${d.why}`, d.xcode);
    if (d.kind !== 'dark') return refuseMessage('dime-required', '550', `<${d.recipient.address}>: cannot be reached by DIME, and a sealed message cannot go as plaintext`, '5.7.1');
    const [authorSignet, originSignet] = await Promise.all([o.store.user(sender), o.store.org(ourDomain)]);
    if (!authorSignet) throw new DimeError('SIGNET_NOT_FOUND', `${sender}: no published user signet`);
    if (!originSignet) throw new DimeError('SIGNET_NOT_FOUND', `${ourDomain}: no published organisational signet`);
    const destination = d.resolution.org.signet;
    let signed: Awaited<ReturnType<typeof signAsOrigin>>;
    try {
      signed = await signAsOrigin(o.crypto, object, { keys: o.keystore.actorKeys, signer: o.keystore.pok, signets: { author: authorSignet, origin: originSignet, destination }, bounce: { meta: true } });
    } catch (err) {
      // The object is the client's: a fault in it is permanent; the keystore's faults are not.
      if (isDimeError(err) && (err.code.startsWith('MESSAGE_') || err.code.startsWith('SIGNET_'))) {
        log.info({ event: 'gateway.outbound.refused', code: err.code, queueId: message.queueId }, 'client-sealed message does not verify');
        return refuseMessage(err.code, '550', `the message your DIME client sealed does not verify (${err.code})`, '5.7.0');
      }
      throw err;
    }
    if (signed.envelope.destination.toLowerCase() !== d.resolution.domain || signed.envelope.author.toLowerCase() !== sender.toLowerCase()) {
      return refuseMessage('client-sealed-envelope', '550', `the message your DIME client sealed is not from <${sender}> to ${d.resolution.domain}`, '5.7.0');
    }
    const queued = await queueBundle(
      sender,
      [
        {
          recipient: d.recipient.address,
          origin: { domain: ourDomain, fingerprint: fingerprint(o.crypto, originSignet, 'full')! },
          destination: { domain: d.resolution.domain, fingerprint: d.resolution.org.fingerprints.full ?? fingerprint(o.crypto, destination, 'full')! },
          message: signed.message,
        },
      ],
      ctx.signal,
    );
    log.info({ event: 'gateway.outbound.client_sealed', queueId: message.queueId, bundleQueueId: queued, bytes: signed.message.length }, 'client-sealed message signed as origin and queued; original discarded');
    return verdict.discard();
  }

  return async function outbound(ctx: MilterContext, message: MilterMessage): Promise<EomResult> {
    const log = o.log ?? ctx.log;
    const senderAddress = message.sender?.address ?? '';
    const sender = await senderKind(senderAddress);
    const seen = new Set<string>();
    const recipients = message.recipients.filter((r) => {
      const k = r.address.toLowerCase();
      return seen.has(k) ? false : (seen.add(k), true);
    });
    // The author signature is the sender's: only the account that authenticated may sign as it.
    if (sender.kind !== 'ordinary' && !sameUser(ctx.macro('auth_authen') ?? '', senderAddress, ourDomain)) {
      log.warn({ event: 'gateway.outbound.sender_mismatch', code: 'GATEWAY_SENDER_CANNOT_SEAL', queueId: message.queueId, sender: senderAddress }, 'sender is not the authenticated user');
      return refuseMessage('GATEWAY_SENDER_CANNOT_SEAL', '550', `<${senderAddress}>: sender address is not the authenticated user's; the server signs only as the account that logged in`, '5.7.1');
    }
    if (sender.kind !== 'ordinary') {
      let object: Uint8Array | undefined;
      try {
        object = findDimeObject(message.headers, await message.body.bytes());
      } catch (err) {
        if (isDimeError(err, 'GATEWAY_BAD_WRAPPER')) return refuseMessage(err.code, '550', `the DIME part of your message cannot be read: ${err.message}`, '5.6.0');
        throw err;
      }
      if (object) return clientSealed(ctx, message, senderAddress, recipients, object, log);
    }
    const decisions = await Promise.all(recipients.map((r) => decide(sender, r, ctx.signal)));
    for (const d of decisions) recordDecision(d.kind);
    const refused = decisions.filter((d): d is Extract<Decision, { kind: 'refuse' }> => d.kind === 'refuse');
    if (refused.length > 0) {
      log.info({ event: 'gateway.outbound.refused', code: 'GATEWAY_NOT_DARK', queueId: message.queueId, recipients: refused.map((d) => d.recipient.address) }, 'message refused: a recipient cannot be reached as policy requires');
      const first = refused[0]!;
      const more = refused.length > 1 ? ` (and ${refused.length - 1} more)` : '';
      return refuseMessage(first.reason, '550', `<${first.recipient.address}>: ${first.why}${more}`, first.xcode);
    }
    const dark = decisions.filter((d): d is Extract<Decision, { kind: 'dark' }> => d.kind === 'dark');
    // What goes on as plaintext (to local or legacy recipients) must not carry a pass in our name:
    // a local colleague's mailbox would show it as ours (RFC 8601 §5).
    const forged = forgedResults(message.headers, o.hostname);
    if (dark.length === 0) return forged.length > 0 ? { verdict: verdict.continue(), modifications: forged } : verdict.continue();
    if (sender.kind !== 'trustful') throw new DimeError('GATEWAY_SENDER_CANNOT_SEAL', senderAddress);

    // Seal: the author's key from the user store, the origin's from the keystore.
    const [authorSignet, originSignet, key] = await Promise.all([o.store.user(senderAddress), o.store.org(ourDomain), o.users.unseal(senderAddress)]);
    if (!authorSignet) throw new DimeError('SIGNET_NOT_FOUND', `${senderAddress}: no published user signet`);
    if (!originSignet) throw new DimeError('SIGNET_NOT_FOUND', `${ourDomain}: no published organisational signet`);
    const body = await message.body.bytes();
    let parts: ReturnType<typeof mimeToParts>;
    try {
      parts = mimeToParts(rawMessage(ctx, message, body));
    } catch (err) {
      // Beyond the gateway's limits: retrying cannot help, so a permanent refusal rather than a tempfail.
      if (isDimeError(err) && (err.code === 'MIME_TOO_LARGE' || err.code === 'MIME_HEADERS_TOO_LARGE')) {
        log.info({ event: 'gateway.outbound.refused', code: err.code, queueId: message.queueId }, 'message too large to seal');
        return refuseMessage(err.code, '552', `message too large to send by DIME: ${err.message}`, '5.3.4');
      }
      throw err;
    }
    const content = { commonHeaders: parts.common, otherHeaders: parts.otherHeaders, display: parts.display, attachments: parts.attachments };
    const originFp = fingerprint(o.crypto, originSignet, 'full')!;
    const bundle: BundlePart[] = [];
    for (const d of dark) {
      if (ctx.signal.aborted) throw new DimeError('DEADLINE_EXCEEDED', 'sealing');
      const destination = d.resolution.org.signet;
      const sealed = await sealMessage(
        o.crypto,
        {
          author: { address: senderAddress, signet: authorSignet, signer: key.signer },
          origin: { domain: ourDomain, signet: originSignet },
          destination: { domain: d.resolution.domain, signet: destination },
          recipient: { address: d.recipient.address, signet: d.resolution.user.signet },
        },
        content,
      );
      const signed = await signAsOrigin(o.crypto, sealed, {
        keys: o.keystore.actorKeys,
        signer: o.keystore.pok,
        signets: { author: authorSignet, origin: originSignet, destination },
        bounce: { meta: true },
      });
      bundle.push({
        recipient: d.recipient.address,
        origin: { domain: ourDomain, fingerprint: originFp },
        destination: { domain: d.resolution.domain, fingerprint: d.resolution.org.fingerprints.full ?? fingerprint(o.crypto, destination, 'full')! },
        message: signed.message,
      });
    }

    const queued = await queueBundle(senderAddress, bundle, ctx.signal);
    const keep = decisions.filter((d) => d.kind === 'legacy' || d.kind === 'local');
    log.info(
      { event: 'gateway.outbound.sealed', queueId: message.queueId, bundleQueueId: queued, dark: dark.length, legacy: keep.length, bytes: bundle.reduce((n, p) => n + p.message.length, 0) },
      keep.length === 0 ? 'sealed for every recipient; original discarded' : 'sealed for the dark recipients; the original goes on to the others',
    );
    if (keep.length === 0) return verdict.discard();
    const modifications: Modification[] = dark.map((d) => ({ kind: 'deleteRecipient', recipient: d.recipient.raw }));
    // Recipients listed twice in the envelope go once: delete their duplicates too.
    for (const r of message.recipients) {
      if (!recipients.includes(r) && dark.some((d) => d.recipient.address.toLowerCase() === r.address.toLowerCase())) modifications.push({ kind: 'deleteRecipient', recipient: r.raw });
    }
    return { verdict: verdict.continue(), modifications: [...modifications, ...forged] };
  };
}
