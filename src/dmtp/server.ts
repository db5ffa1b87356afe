/**
 * `dime relay`'s server: DMTP listeners (implicit TLS on the DMTP port, and optionally dual mode:
 * plaintext with STARTTLS MODE=DMTPv1), and the relay handler that serves our signets and accepts
 * inbound DIME messages for our domain.
 *
 * An inbound message is accepted only when all of this holds, in this order (docs/dmtp.md):
 *   MAIL FROM   the origin's organisational signet with the announced fingerprint is fetched from
 *               the origin's DX through the SignetSource and validates against its record's POKs;
 *   RCPT TO     the domain is ours and the fingerprint is one of our current organisational signet's;
 *   DATA        the object parses; the destination chunk opens with our organisation's key; its Origin
 *               is the MAIL FROM domain; its Recipient is in our domain, has a current signet, and the
 *               envelope names one of that user's signet versions; the origin signatures verify
 *               (openMessage as destination); and the local MTA answered 250 to the wrapped message.
 * Only then does the peer get `250 OK [id]`. Any failure maps to a 4xx or 5xx through replies.ts.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { CryptoBackend } from '../crypto/backend.js';
import { base64DecodeStrict, base64MimeLines } from '../dime/base64.js';
import { ActorReader, CHUNK, decodeDestinationEnvelope, openMessage, type ActorKeys, type DestinationEnvelope } from '../dime/message/index.js';
import { fingerprint, fingerprints, type Signet } from '../dime/signet/index.js';
import { DimeError, isDimeError, type ErrorCode } from '../errors.js';
import type { SignetStore } from '../keystore/signets.js';
import { createLogger, type Logger } from '../log.js';
import { DMTP_TLS_CIPHERS, DMTP_TLS_MIN_VERSION, type SignetSource } from './client.js';
import { domainOfName, isAddress, normalizeDomain } from './codec.js';
import { DEFAULT_MEMORY_BUDGET, DEFAULT_SESSION_LIMITS, DmtpSession, MemoryBudget, ok, refuse, type DmtpHandler, type HandlerContext, type Result, type SessionLimits, type Transaction } from './session.js';
import { sendMail, smtpReplyText, type MtaTarget, type SmtpTimeouts } from './smtp-client.js';
import { meteredRelayHandler } from '../service-metrics.js';

// ------------------------------------------------------------------------------------ listeners

export interface InetSpec {
  host: string;
  port: number;
}

/** `inet:HOST:PORT` (an IPv6 host in brackets). DMTP listens on TCP only. */
export function parseInetSpec(text: string): InetSpec {
  const m = /^inet:(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):([0-9]{1,5})$/.exec(text);
  if (!m || Number(m[3]) > 65535) throw new DimeError('USAGE', `${JSON.stringify(text)} is not inet:HOST:PORT`);
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

export function formatInetSpec(s: InetSpec): string {
  return net.isIPv6(s.host) ? `inet:[${s.host}]:${s.port}` : `inet:${s.host}:${s.port}`;
}

/** Concurrent connections per listener: far above what peers open, low enough to cap descriptors. */
export const MAX_CONNECTIONS = 1000;
/** On close(), sessions in the middle of an exchange get this long before they are cut. */
export const CLOSE_GRACE_MS = 10_000;

export interface DmtpServerOptions {
  /** Our host name, for the banner and EHLO. */
  hostname: string;
  handler: DmtpHandler;
  /** The relay's certificate and key (PEM). RSA: libdime's client offers only ECDHE-RSA. */
  tls: { cert: string | Buffer; key: string | Buffer };
  /** Implicit TLS (the DMTP port, 26). */
  listen?: string | InetSpec;
  /** Dual mode: plaintext banner, then STARTTLS <host> MODE=DMTPv1. */
  dualListen?: string | InetSpec;
  limits?: Partial<SessionLimits>;
  /** Octets of message data all sessions may hold at once (DEFAULT_MEMORY_BUDGET). */
  memoryBudget?: number;
  maxConnections?: number;
  log?: Logger;
}

function listen(server: net.Server, spec: InetSpec): Promise<InetSpec> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: spec.host, port: spec.port, exclusive: true }, () => {
      server.off('error', reject);
      resolve({ host: spec.host, port: (server.address() as net.AddressInfo).port });
    });
  });
}

export class DmtpServer {
  private readonly sessions = new Set<DmtpSession>();
  private readonly servers: net.Server[] = [];
  private closing: Promise<void> | undefined;
  private unrefd = false;
  readonly endpoints: { implicit?: InetSpec; dual?: InetSpec } = {};
  readonly budget: MemoryBudget;

  private constructor(
    private readonly options: DmtpServerOptions,
    private readonly limits: SessionLimits,
    private readonly log: Logger,
  ) {
    this.budget = new MemoryBudget(options.memoryBudget ?? DEFAULT_MEMORY_BUDGET);
  }

  static async start(options: DmtpServerOptions): Promise<DmtpServer> {
    if (!options.listen && !options.dualListen) throw new DimeError('USAGE', 'a DMTP server needs listen, dualListen or both');
    const limits = { ...DEFAULT_SESSION_LIMITS, ...options.limits };
    const log = (options.log ?? createLogger({ name: 'dime-relay' })).child({ service: 'dmtp' });
    const s = new DmtpServer(options, limits, log);
    try {
      await s.startListeners();
    } catch (err) {
      await s.close();
      throw err;
    }
    return s;
  }

  private tlsOptions(): tls.TlsOptions {
    return {
      cert: this.options.tls.cert,
      key: this.options.tls.key,
      minVersion: DMTP_TLS_MIN_VERSION,
      ciphers: DMTP_TLS_CIPHERS,
      honorCipherOrder: true,
      handshakeTimeout: this.limits.handshakeMs,
    };
  }

  private track(socket: net.Socket, mode: 'implicit' | 'dual', secureContext?: tls.SecureContext): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    if (this.unrefd) socket.unref();
    const session = new DmtpSession(socket, {
      hostname: this.options.hostname,
      handler: this.options.handler,
      mode,
      ...(secureContext ? { secureContext } : {}),
      limits: this.limits,
      budget: this.budget,
      log: this.log,
    });
    this.sessions.add(session);
    void session.done.then(() => this.sessions.delete(session));
  }

  private async startListeners(): Promise<void> {
    const maxConnections = this.options.maxConnections ?? MAX_CONNECTIONS;
    if (this.options.listen) {
      const spec = typeof this.options.listen === 'string' ? parseInetSpec(this.options.listen) : this.options.listen;
      const server = tls.createServer(this.tlsOptions(), (socket) => this.track(socket, 'implicit'));
      // A failed or abandoned handshake (junk, a port scan, a client that never finishes): log, carry on.
      server.on('tlsClientError', (err, socket) => {
        this.log.debug({ event: 'dmtp.tls_error', err: err.message, peer: socket.remoteAddress }, 'TLS handshake failed');
        socket.destroy();
      });
      server.maxConnections = maxConnections;
      this.servers.push(server);
      this.endpoints.implicit = await listen(server, spec);
      this.log.info({ event: 'dmtp.listen', mode: 'implicit', address: formatInetSpec(this.endpoints.implicit) }, 'DMTP listening (implicit TLS)');
    }
    if (this.options.dualListen) {
      const spec = typeof this.options.dualListen === 'string' ? parseInetSpec(this.options.dualListen) : this.options.dualListen;
      const context = tls.createSecureContext(this.tlsOptions());
      const server = net.createServer((socket) => this.track(socket, 'dual', context));
      server.maxConnections = maxConnections;
      this.servers.push(server);
      this.endpoints.dual = await listen(server, spec);
      this.log.info({ event: 'dmtp.listen', mode: 'dual', address: formatInetSpec(this.endpoints.dual) }, 'DMTP listening (dual mode, STARTTLS)');
    }
  }

  get connections(): number {
    return this.sessions.size;
  }

  /** Let the process exit while the server still runs (embedding, benchmarks): listeners and connections are unref'd. */
  unref(): void {
    this.unrefd = true;
    for (const s of this.servers) s.unref();
  }

  /** Stop accepting; idle sessions get 421 now, busy ones after their exchange (bounded by graceMs). */
  close(graceMs = CLOSE_GRACE_MS): Promise<void> {
    this.closing ??= (async () => {
      const stopped = Promise.all(this.servers.filter((s) => s.listening).map((s) => new Promise<void>((r) => s.close(() => r()))));
      for (const s of this.sessions) s.close();
      const timer = setTimeout(() => {
        for (const s of this.sessions) s.destroy();
      }, graceMs);
      await Promise.all([...this.sessions].map((s) => s.done));
      clearTimeout(timer);
      await stopped;
      this.log.info({ event: 'dmtp.stop' }, 'DMTP stopped');
    })();
    return this.closing;
  }
}

// ------------------------------------------------------------------------------------ MIME wrapper

export interface InboundWrapperInfo {
  /** The DMIME object as received. */
  message: Uint8Array;
  envelope: DestinationEnvelope;
  /** Our domain (From of the wrapper) and host name (Received, Message-ID). */
  domain: string;
  hostname: string;
  /** The DMTP transaction id. */
  id: string;
  /** The sending relay: its EHLO domain and IP address. */
  ehlo: string;
  peerAddress: string;
  date: Date;
}

function rfc5322Date(d: Date): string {
  return d.toUTCString().replace(/GMT$/, '+0000');
}

/** The only characters we let into a header: nothing that could fold, end or extend the field. */
function headerSafe(value: string, what: string): string {
  if (!/^[\x21-\x7e]+$/.test(value) || /["<>()]/.test(value)) throw new DimeError('DMTP_BAD_ARGUMENT', `${what} ${JSON.stringify(value)} cannot go into a header`);
  return value;
}

/**
 * The inbound hand-off format (docs/dmtp.md "MIME wrapper"): a multipart/mixed message with a short
 * text/plain explanation and the DMIME object, unchanged, as an application/x-dime-message part in
 * base64. Its headers carry only what the destination already knows: the recipient, the origin
 * domain, the two envelope fingerprints, our transaction id, the time and the sending relay. No
 * Subject, no author. Yielded in slices so a large message is never copied whole.
 */
export function* inboundWrapper(info: InboundWrapperInfo): Generator<Buffer> {
  const e = info.envelope;
  const recipient = headerSafe(e.recipient, 'recipient');
  const origin = headerSafe(e.origin.toLowerCase(), 'origin');
  const boundary = `=_dime_${headerSafe(info.id, 'transaction id')}`;
  const date = rfc5322Date(info.date);
  const head = [
    `Received: from ${headerSafe(info.ehlo, 'EHLO domain')} (${headerSafe(info.peerAddress, 'peer address')}) by ${headerSafe(info.hostname, 'host name')} (dime relay) with DMTP id ${info.id} for <${recipient}>; ${date}`,
    `Date: ${date}`,
    `From: "DIME message from ${origin}" <dime-relay@${headerSafe(info.domain, 'domain')}>`,
    `To: <${recipient}>`,
    `Message-ID: <${info.id}@${info.hostname}>`,
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    `X-DIME-Origin: ${origin}`,
    `X-DIME-Origin-Signet: ${headerSafe(e.originSignet, 'origin fingerprint')}`,
    `X-DIME-Recipient-Signet: ${headerSafe(e.recipientSignet, 'recipient fingerprint')}`,
    `X-DIME-Transaction: ${info.id}`,
    '',
    'This is a DIME message in MIME format.',
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset=us-ascii',
    'Content-Transfer-Encoding: 7bit',
    '',
    `This message was sent with DIME (the Dark Internet Mail Environment) from ${origin}.`,
    "It is encrypted end to end: only the recipient's DIME keys open it.",
    'The encrypted message is attached as application/x-dime-message.',
    '',
    `--${boundary}`,
    'Content-Type: application/x-dime-message; name="message.dmime"',
    'Content-Transfer-Encoding: base64',
    'Content-Disposition: attachment; filename="message.dmime"',
    '',
    '',
  ].join('\r\n');
  yield Buffer.from(head, 'latin1');
  yield* base64MimeLines(info.message);
  yield Buffer.from(`--${boundary}--\r\n`, 'latin1');
}

/**
 * The DMIME object inside a wrapper made by inboundWrapper (CRLF or LF line ends, as a mailbox
 * stores it): for the inbound milter, DIME-aware clients and tests.
 */
export function extractDimeMessage(mime: string | Uint8Array): Uint8Array {
  const text = typeof mime === 'string' ? mime : Buffer.from(mime.buffer, mime.byteOffset, mime.length).toString('latin1');
  const lines = text.split(/\r?\n/);
  const blank = lines.indexOf('');
  const header = lines
    .slice(0, blank < 0 ? lines.length : blank)
    .join('\n')
    .replace(/\n[ \t]+/g, ' ');
  const m = /^content-type:[ \t]*multipart\/mixed;.*boundary="?([^";\s]+)"?/im.exec(header);
  if (!m) throw new DimeError('DMTP_BAD_ARGUMENT', 'not a DIME wrapper: no multipart boundary');
  const delimiter = `--${m[1]}`;
  let i = blank + 1;
  while (i < lines.length) {
    if (lines[i] !== delimiter) {
      i++;
      continue;
    }
    const partHeaders: string[] = [];
    for (i++; i < lines.length && lines[i] !== ''; i++) partHeaders.push(lines[i]!);
    const isDime = partHeaders.some((h) => /^content-type:[ \t]*application\/x-dime-message\b/i.test(h));
    const body: string[] = [];
    for (i++; i < lines.length && lines[i] !== delimiter && lines[i] !== `${delimiter}--`; i++) body.push(lines[i]!);
    if (isDime) return base64DecodeStrict(body.join(''));
  }
  throw new DimeError('DMTP_BAD_ARGUMENT', 'not a DIME wrapper: no application/x-dime-message part');
}

// ------------------------------------------------------------------------------------ the relay handler

export interface RelayHandlerOptions {
  /** Our dark domain. */
  domain: string;
  /** Our host name (EHLO to the MTA, the wrapper's Received and Message-ID). */
  hostname: string;
  crypto: CryptoBackend;
  /** Our published signets: what SGNT, HIST and VRFY answer from, and who is a local user. */
  store: SignetStore;
  /** The organisation's encryption key (ECDH only): opens the destination chunk. */
  keys: ActorKeys;
  /** Origin organisations' signets, validated (DMTP to the origin's DX; the resolver adds DNSSEC and a cache). */
  signets: SignetSource;
  /** The local MTA (Postfix's SMTP port for inbound DIME mail). */
  mta: MtaTarget;
  mtaTimeouts?: Partial<SmtpTimeouts>;
  /** The wrapper's clock (tests). */
  now?: () => Date;
  /**
   * How long a lookup in the signet store is reused (default STORE_CACHE_MS; 0: every time). Each
   * lookup reads and parses files; a newly published signet is served at most this much later.
   */
  storeCacheMs?: number;
}

/**
 * A few seconds: a burst of deliveries reads the store once, and a rotation still shows within
 * seconds (peers cache signets for minutes anyway).
 */
export const STORE_CACHE_MS = 5_000;
/** Entries of the store view: names and histories of one domain's users, bounded. */
const STORE_CACHE_ENTRIES = 10_000;

/** Read-only, briefly cached view of the signet store, with each signet's fingerprints computed once. */
class StoreView {
  private readonly entries = new Map<string, { value: Promise<unknown>; expires: number }>();
  private readonly prints = new WeakMap<Signet, Set<string>>();

  constructor(
    private readonly store: SignetStore,
    private readonly crypto: CryptoBackend,
    private readonly ttlMs: number,
  ) {}

  private memo<T>(key: string, load: () => Promise<T>): Promise<T> {
    if (this.ttlMs <= 0) return load();
    const now = Date.now();
    const hit = this.entries.get(key);
    if (hit && hit.expires > now) return hit.value as Promise<T>;
    if (this.entries.size >= STORE_CACHE_ENTRIES) this.entries.delete(this.entries.keys().next().value as string);
    const value = load();
    this.entries.set(key, { value, expires: now + this.ttlMs });
    value.catch(() => this.entries.delete(key)); // failures are not remembered
    return value;
  }

  fingerprints(signet: Signet): Set<string> {
    let set = this.prints.get(signet);
    if (!set) this.prints.set(signet, (set = new Set(Object.values(fingerprints(this.crypto, signet)).filter((f): f is string => f !== undefined))));
    return set;
  }

  current(name: string): Promise<Signet | undefined> {
    return this.memo(`current ${name}`, () => (name.includes('@') ? this.store.user(name) : this.store.org(name)));
  }

  history(name: string): Promise<Signet[]> {
    return this.memo(`history ${name}`, () => (name.includes('@') ? this.store.userHistory(name) : this.store.orgHistory(name)));
  }

  async byFingerprint(name: string, fp: string): Promise<Signet | undefined> {
    return (await this.history(name)).find((s) => this.fingerprints(s).has(fp));
  }
}

/** Errors a signet lookup at the origin may end in that say "this will not get better". */
const PERMANENT_ORIGIN_ERRORS: ReadonlySet<ErrorCode> = new Set(['DMTP_NO_RECORD', 'DMTP_SIGNET_REJECTED']);

function codeOf(err: unknown): ErrorCode | undefined {
  return isDimeError(err) ? err.code : undefined;
}

/** The fingerprint VRFY's UPDATE names: the current version's full fingerprint. */
export function currentFingerprint(crypto: CryptoBackend, signet: Signet): string {
  return fingerprint(crypto, signet, 'full')!;
}

export function createRelayHandler(o: RelayHandlerOptions): DmtpHandler {
  const domain = normalizeDomain(o.domain);
  const origins = new WeakMap<Transaction, Signet>();
  const ours = (name: string) => domainOfName(name) === domain;
  const store = new StoreView(o.store, o.crypto, o.storeCacheMs ?? STORE_CACHE_MS);
  const includesFingerprint = (signet: Signet, fp: string) => store.fingerprints(signet).has(fp);

  /** Run a step; a DimeError becomes a refusal with its code, anything else propagates (451). */
  async function step<T>(fn: () => Promise<T> | T): Promise<Result<T>> {
    try {
      return ok(await fn());
    } catch (err) {
      if (isDimeError(err)) return refuse(err.code, err.message);
      throw err;
    }
  }

  return meteredRelayHandler({
    async signet(name, fp) {
      if (!ours(name)) return refuse('SIGNET_NOT_FOUND', `${name} is not in ${domain}`);
      const s = fp === undefined ? await store.current(name) : await store.byFingerprint(name, fp);
      return s ? ok(s) : refuse('SIGNET_NOT_FOUND', name);
    },

    async history(name, start, stop) {
      if (!ours(name)) return refuse('SIGNET_NOT_FOUND', `${name} is not in ${domain}`);
      const all = await store.history(name);
      if (all.length === 0) return refuse('SIGNET_NOT_FOUND', name);
      const index = (fp: string) => all.findIndex((s) => includesFingerprint(s, fp));
      const from = start === undefined ? 0 : index(start);
      const to = stop === undefined ? all.length - 1 : index(stop);
      if (from < 0 || to < 0) return refuse('SIGNET_NOT_FOUND', `${name}: no version with that fingerprint`);
      if (to < from) return refuse('DMTP_BAD_SYNTAX', 'the stop version is older than the start version');
      return ok(all.slice(from, to + 1));
    },

    async verify(name, fp) {
      if (!ours(name)) return refuse('SIGNET_NOT_FOUND', `${name} is not in ${domain}`);
      const now = await store.current(name);
      if (!now) return refuse('SIGNET_NOT_FOUND', name);
      if (includesFingerprint(now, fp)) return ok({ current: true as const });
      if (await store.byFingerprint(name, fp)) return ok({ current: false as const, fingerprint: currentFingerprint(o.crypto, now) });
      return refuse('SIGNET_NOT_FOUND', `${name}: no version with that fingerprint`);
    },

    async mailFrom(tx) {
      // The version of the origin's signet that the sender names, validated against the origin's
      // management record: the origin signatures will be checked with exactly this key.
      let origin: Signet;
      try {
        origin = await o.signets.org(tx.from.domain, tx.from.fingerprint);
      } catch (err) {
        const code = codeOf(err);
        if (code === 'SIGNET_NOT_FOUND') return refuse('DMTP_FINGERPRINT_MISMATCH', `${tx.from.domain} has no signet with the MAIL FROM fingerprint`);
        if (code && PERMANENT_ORIGIN_ERRORS.has(code)) return refuse(code, (err as Error).message);
        // Anything else (unreachable DX, DNS, timeouts, a refusing peer) may pass: try again later.
        return refuse('DMTP_CONNECT_FAILED', `origin signet of ${tx.from.domain}: ${(err as Error).message}`);
      }
      if (!includesFingerprint(origin, tx.from.fingerprint)) return refuse('DMTP_FINGERPRINT_MISMATCH', 'MAIL FROM');
      origins.set(tx, origin);
      return ok(undefined);
    },

    async rcptTo(tx) {
      const to = tx.to!;
      if (to.domain !== domain) return refuse('DMTP_NOT_OUR_DOMAIN', to.domain);
      const org = await store.current(domain);
      if (!org) return refuse('DMTP_NOT_OUR_DOMAIN', `${domain} has no published organisational signet`);
      if (!includesFingerprint(org, to.fingerprint)) return refuse('DMTP_FINGERPRINT_MISMATCH', 'RCPT TO: not our current organisational signet');
      return ok(undefined);
    },

    async data(tx, message, ctx: HandlerContext) {
      const origin = origins.get(tx);
      if (!origin) return refuse(undefined, 'no origin signet for this transaction');
      // 1. The destination chunk, with our key: who is it for, and from which origin?
      const env = await step(async () => {
        const reader = await ActorReader.create(o.crypto, message, 'destination', o.keys);
        return decodeDestinationEnvelope(reader.standard(reader.one(CHUNK.destination), undefined).data);
      });
      if (!env.ok) return refuse(env.code, env.detail);
      const envelope = env.value;
      if (envelope.origin.toLowerCase() !== tx.from.domain) return refuse('DMTP_ORIGIN_MISMATCH', `Origin <${envelope.origin}>, MAIL FROM <${tx.from.domain}>`);
      const recipient = envelope.recipient;
      if (!isAddress(recipient)) return refuse('DMTP_RECIPIENT_UNKNOWN', 'the recipient is not a plain address');
      if (domainOfName(recipient).toLowerCase() !== domain) return refuse('DMTP_RECIPIENT_UNKNOWN', 'the recipient is not in our domain');
      const user = await step(() => store.current(recipient));
      if (!user.ok) return refuse('DMTP_RECIPIENT_UNKNOWN', user.detail);
      if (!user.value) return refuse('DMTP_RECIPIENT_UNKNOWN', 'no current signet');
      const version = await step(() => store.byFingerprint(recipient, envelope.recipientSignet));
      if (!version.ok || !version.value) return refuse('DMTP_FINGERPRINT_MISMATCH', "the envelope names none of the recipient's signets");
      // 2. The origin signatures, with the signet MAIL FROM named (openMessage also checks that the
      //    envelope's Origin-Signet is that signet's).
      const opened = await step(() => openMessage(o.crypto, message, { actor: 'destination', keys: o.keys, signets: { origin } }));
      if (!opened.ok) return refuse(opened.code, opened.detail);
      // 3. Hand-off: 250 to the peer only after the MTA's 250.
      const outcome = await sendMail({
        target: o.mta,
        helo: o.hostname,
        from: '',
        to: [`${recipient.slice(0, recipient.lastIndexOf('@'))}@${domain}`],
        body: inboundWrapper({
          message,
          envelope,
          domain,
          hostname: o.hostname,
          id: tx.id,
          ehlo: tx.ehlo,
          peerAddress: tx.peer.replace(/:\d+$/, '').replace(/^::ffff:/, ''),
          date: (o.now ?? (() => new Date()))(),
        }),
        ...(o.mtaTimeouts ? { timeouts: o.mtaTimeouts } : {}),
        signal: ctx.signal,
      });
      if (outcome.accepted) {
        ctx.log.info({ event: 'dmtp.handoff', id: tx.id, mta: smtpReplyText(outcome.reply) }, 'local MTA accepted the message');
        return ok(undefined);
      }
      ctx.log.warn({ event: 'dmtp.handoff_failed', id: tx.id, stage: outcome.stage, reason: outcome.reason }, 'local MTA did not accept the message');
      if (!outcome.reply) return refuse('DMTP_MTA_UNAVAILABLE', outcome.reason);
      return refuse(outcome.temporary ? 'DMTP_MTA_TEMPFAIL' : 'DMTP_MTA_REJECTED', outcome.reason);
    },

    end(tx) {
      origins.delete(tx);
    },
  });
}

// ------------------------------------------------------------------------------------ the relay

export interface RelayOptions extends RelayHandlerOptions {
  tls: { cert: string | Buffer; key: string | Buffer };
  listen?: string | InetSpec;
  dualListen?: string | InetSpec;
  limits?: Partial<SessionLimits>;
  memoryBudget?: number;
  log?: Logger;
}

/** Start `dime relay`'s listeners with the relay handler. */
export function startRelay(o: RelayOptions): Promise<DmtpServer> {
  return DmtpServer.start({
    hostname: o.hostname,
    handler: createRelayHandler(o),
    tls: o.tls,
    ...(o.listen ? { listen: o.listen } : {}),
    ...(o.dualListen ? { dualListen: o.dualListen } : {}),
    ...(o.limits ? { limits: o.limits } : {}),
    ...(o.memoryBudget ? { memoryBudget: o.memoryBudget } : {}),
    ...(o.log ? { log: o.log } : {}),
  });
}
