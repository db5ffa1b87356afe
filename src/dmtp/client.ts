/**
 * The DMTP client (architecture.md §1.4–1.5, §5.6; dime-formats.md §6.1–6.2, §6.7): find a peer's
 * DX, connect with TLS and accept its certificate only under the DIME trust model, fetch and
 * validate signets (SGNT, HIST, VRFY), and deliver messages (EHLO, MAIL FROM, RCPT TO, DATA),
 * mapping every outcome to deliver / retry / fail.
 *
 * Where to connect comes from a PeerLocator (an interface: the resolver issue replaces the
 * node:dns one here with a DNSSEC-aware lookup and a cache); what to trust comes from the
 * management record the locator returns with its DNSSEC status.
 *
 * Certificate acceptance (checkDxCertificate), in libdime's order with two deliberate changes:
 *   1. a record whose DNSSEC validation failed ("bogus") is refused outright;
 *   2. the certificate must be within its validity dates, on every path (libdime skips all checks
 *      once a pin matches under DNSSEC; an expired pinned certificate is refused here);
 *   3. if the record has tls= values: one must be a POK's signature over SHA-512(DER); no match →
 *      refuse; a match under a DNSSEC-validated record → accept (self-signed is fine);
 *   4. no tls= value and a self-signed certificate → refuse;
 *   5. otherwise the host name must match (SAN, else CN) and the chain must verify to a trusted CA.
 *      libdime then asks for OCSP when no pin matched; Node has no OCSP client, so none is made
 *      (docs/dmtp.md).
 * TLS is 1.2 (ECDHE-RSA-AES256-GCM-SHA384 only, libdime's single suite) or 1.3.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { X509Certificate } from 'node:crypto';
import type { CryptoBackend } from '../crypto/backend.js';
import { base64DecodeStrict } from '../dime/base64.js';
import { verifyTlsPin, type DimeRecord } from '../dime/record.js';
import { bytesEqual } from '../dime/bytes.js';
import { CUSTODY_FIELD, decodeSignet, fingerprints, hasField, identifierOf, validateSignet, type Signet } from '../dime/signet/index.js';
import { DimeError, isDimeError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import {
  advertisedSize,
  checkBanner,
  checkModeReply,
  domainOfName,
  formatCommand,
  isPositive,
  normalizeAddress,
  normalizeDomain,
  normalizeName,
  parseDataAccepted,
  parseDataContinue,
  parseHistoryReply,
  parseSignetReply,
  parseVrfyReply,
  replyText,
  type DmtpCommand,
  type Reply,
  type ReturnOption,
  type VrfyResult,
} from './codec.js';
import { ReplyStream } from './reply-stream.js';

/** The standard DMTP port: TLS from the first byte. */
export const DMTP_PORT = 26;
/** Dual mode (plaintext, then STARTTLS MODE=DMTPv1): SMTP's port, then submission's as failover. */
export const DMTP_DUAL_PORTS = [25, 587] as const;
/** libdime's DMTP_MAX_MX_RETRIES: only the first three MX hosts are tried. */
export const MAX_MX_HOSTS = 3;
/** TLS 1.2: libdime's DMTP_V1_CIPHER_LIST (one suite, RSA certificates); TLS 1.3: its standard AEAD suites. */
export const DMTP_TLS_CIPHERS = ['ECDHE-RSA-AES256-GCM-SHA384', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_128_GCM_SHA256'].join(':');
export const DMTP_TLS_MIN_VERSION: tls.SecureVersion = 'TLSv1.2';
/** Message data is written in slices of this size, each after the previous one drained. */
const DATA_SLICE = 256 * 1024;

// ------------------------------------------------------------------------------------ locating peers

/** libdime's `validated`: 1 → validated, 0 → unsigned (or unknown), -1 → bogus. */
export type DnssecStatus = 'validated' | 'unsigned' | 'bogus';

export interface PeerCandidate {
  /** The DX host name: SNI and the certificate name check. */
  host: string;
  port: number;
  mode: 'implicit' | 'dual';
  /** Where to connect, if not `host` itself (tests, static configuration). */
  address?: string;
}

export interface PeerLocation {
  domain: string;
  record: DimeRecord;
  dnssec: DnssecStatus;
  /** In the order to try them. */
  candidates: PeerCandidate[];
}

export interface PeerLocator {
  /** DMTP_NO_RECORD if the domain has no usable management record; DNS_* for lookup failures. */
  locate(domain: string): Promise<PeerLocation>;
}

export interface PeerPorts {
  dmtp: number;
  dual: readonly number[];
}

export const DEFAULT_PEER_PORTS: PeerPorts = { dmtp: DMTP_PORT, dual: DMTP_DUAL_PORTS };

/**
 * libdime's connection order (`_dmtp_connect`): the record's dx= hosts on the DMTP port; else the
 * first three MX hosts (sorted by preference), each on the DMTP port then dual mode on 25 and 587;
 * then the bare domain on the DMTP port.
 */
export function peerCandidates(domain: string, record: Pick<DimeRecord, 'dx'>, mxHosts: readonly string[], ports: PeerPorts = DEFAULT_PEER_PORTS): PeerCandidate[] {
  const strip = (h: string) => h.replace(/\.$/, '').toLowerCase();
  if (record.dx.length > 0) return record.dx.map((h) => ({ host: strip(h), port: ports.dmtp, mode: 'implicit' as const }));
  const out: PeerCandidate[] = [];
  for (const mx of mxHosts.slice(0, MAX_MX_HOSTS)) {
    out.push({ host: strip(mx), port: ports.dmtp, mode: 'implicit' });
    for (const port of ports.dual) out.push({ host: strip(mx), port, mode: 'dual' });
  }
  out.push({ host: strip(domain), port: ports.dmtp, mode: 'implicit' });
  return out;
}

/** Fixed locations (tests, or peers configured by hand). */
export class StaticPeerLocator implements PeerLocator {
  private readonly map = new Map<string, PeerLocation>();

  constructor(locations: Record<string, Omit<PeerLocation, 'domain'>> = {}) {
    for (const [domain, loc] of Object.entries(locations)) this.set(domain, loc);
  }

  set(domain: string, loc: Omit<PeerLocation, 'domain'>): void {
    const d = normalizeDomain(domain);
    this.map.set(d, { ...loc, domain: d });
  }

  async locate(domain: string): Promise<PeerLocation> {
    const loc = this.map.get(normalizeDomain(domain));
    if (!loc) throw new DimeError('DMTP_NO_RECORD', `${domain}: not configured`);
    return loc;
  }
}

// ------------------------------------------------------------------------------------ trust model

export type CertificateVerdict = { ok: true; via: 'pin' | 'ca' | 'pin+ca' } | { ok: false; reason: string };

export interface CertificateCheck {
  record: Pick<DimeRecord, 'poks' | 'tls'>;
  dnssec: DnssecStatus;
  /** The DX host name the certificate must name on the CA path. */
  host: string;
  cert: X509Certificate;
  /** Did the chain verify against the trusted CAs (tls.TLSSocket#authorized)? */
  chainVerified: boolean;
  chainError?: string;
  now?: Date;
}

function selfSigned(cert: X509Certificate): boolean {
  try {
    return cert.checkIssued(cert) && cert.verify(cert.publicKey);
  } catch {
    return false;
  }
}

/** The trust model of architecture.md §1.5 (see the file comment for the order and our changes). */
export function checkDxCertificate(crypto: CryptoBackend, c: CertificateCheck): CertificateVerdict {
  if (c.dnssec === 'bogus') return { ok: false, reason: 'the management record failed DNSSEC validation' };
  const now = (c.now ?? new Date()).getTime();
  if (now < Date.parse(c.cert.validFrom)) return { ok: false, reason: `the certificate is not valid before ${c.cert.validFrom}` };
  if (now > Date.parse(c.cert.validTo)) return { ok: false, reason: `the certificate expired ${c.cert.validTo}` };
  let pinned = false;
  if (c.record.tls.length > 0) {
    if (!verifyTlsPin(c.record, new Uint8Array(c.cert.raw), crypto)) return { ok: false, reason: 'no tls= value of the management record signs this certificate' };
    if (c.dnssec === 'validated') return { ok: true, via: 'pin' };
    pinned = true;
  } else if (selfSigned(c.cert)) {
    return { ok: false, reason: 'a self-signed certificate needs a tls= pin in the management record' };
  }
  const named = net.isIP(c.host) ? c.cert.checkIP(c.host) : c.cert.checkHost(c.host);
  if (!named) return { ok: false, reason: `the certificate does not name ${c.host}` };
  if (!c.chainVerified) return { ok: false, reason: `the certificate chain does not verify to a trusted CA${c.chainError ? ` (${c.chainError})` : ''}` };
  return { ok: true, via: pinned ? 'pin+ca' : 'ca' };
}

// ------------------------------------------------------------------------------------ connection

export interface ClientTimeouts {
  /** TCP connect plus TLS handshake, per candidate. */
  connectMs: number;
  /** Each reply. */
  commandMs: number;
  /** The final reply after the data, plus minDataRate for its size. */
  dataMs: number;
  /** Octets per second we assume the path sustains while sending data (scales dataMs). */
  minDataRate: number;
}

/** RFC 5321 §4.5.3.2's values (5 minutes per reply, 10 after the data), connect 30 s. */
export const DEFAULT_CLIENT_TIMEOUTS: ClientTimeouts = { connectMs: 30_000, commandMs: 300_000, dataMs: 600_000, minDataRate: 32 * 1024 };

export type DeliveryOutcome = 'delivered' | 'retry' | 'fail';

export interface DeliveryResult {
  outcome: DeliveryOutcome;
  /** The receiving relay's transaction id (`250 OK [id]`). */
  id?: string;
  /** The reply that decided, when the peer answered. */
  reply?: Reply;
  /** Why, when we decided (connection, trust, protocol). */
  code?: ErrorCode;
  detail: string;
  host?: string;
}

/** 2xx delivered; 4xx try again later; 5xx give up on this message (architecture.md §9 item 39). */
export function outcomeOfReply(reply: Reply): DeliveryOutcome {
  return isPositive(reply) ? 'delivered' : reply.code >= 500 ? 'fail' : 'retry';
}

/** Failures before or outside a reply: permanent only where retrying cannot help. */
const PERMANENT_ERRORS: ReadonlySet<ErrorCode> = new Set(['DMTP_NO_RECORD', 'DMTP_SIZE_EXCEEDED', 'DMTP_BAD_ARGUMENT']);

export function outcomeOfError(err: unknown): DeliveryOutcome {
  return isDimeError(err) && PERMANENT_ERRORS.has(err.code) ? 'fail' : 'retry';
}

function resultOfReply(reply: Reply, what: string, host: string): DeliveryResult {
  return { outcome: outcomeOfReply(reply), reply, detail: `${what}: ${reply.code} ${replyText(reply)}`.slice(0, 300), host };
}

function resultOfError(err: unknown, host?: string): DeliveryResult {
  const r: DeliveryResult = { outcome: outcomeOfError(err), detail: err instanceof Error ? err.message : String(err) };
  if (isDimeError(err)) r.code = err.code;
  if (host !== undefined) r.host = host;
  return r;
}

export interface Envelope {
  /** Our domain and the fingerprint of our organisational signet (the one that signed the message). */
  from: { domain: string; fingerprint: string };
  /** The destination domain and the fingerprint of its organisational signet (the one the message is sealed for). */
  to: { domain: string; fingerprint: string };
  ret?: ReturnOption;
}

/** One open DMTP session to a peer's DX. Several messages may go over it, one after another. */
export class DmtpConnection {
  private greeted = false;
  private maxSize: number | undefined;
  private busy = false;

  constructor(
    private readonly stream: ReplyStream,
    readonly location: PeerLocation,
    readonly candidate: PeerCandidate,
    /** How the certificate was accepted. */
    readonly via: 'pin' | 'ca' | 'pin+ca',
    private readonly timeouts: ClientTimeouts,
  ) {}

  get usable(): boolean {
    return !this.stream.broken && !this.stream.socket.destroyed;
  }

  /** TLS protocol and cipher in use. */
  get tls(): { protocol: string | null; cipher: string } {
    const s = this.stream.socket as tls.TLSSocket;
    return { protocol: s.getProtocol(), cipher: s.getCipher().name };
  }

  private async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.busy) throw new DimeError('DMTP_BAD_SEQUENCE', 'one command at a time on a DMTP connection');
    this.busy = true;
    try {
      return await fn();
    } finally {
      this.busy = false;
    }
  }

  private async command(cmd: DmtpCommand, timeoutMs = this.timeouts.commandMs): Promise<Reply> {
    await this.stream.write(formatCommand(cmd));
    return this.stream.read(timeoutMs);
  }

  /** Send a command and read its reply, as is (for tests and tools). */
  raw(cmd: DmtpCommand): Promise<Reply> {
    return this.exclusive(() => this.command(cmd));
  }

  /** SGNT: the signet as served, decoded but not validated (DmtpClient validates). */
  sgnt(name: string, fingerprint?: string): Promise<Signet> {
    return this.exclusive(async () => {
      const cmd: DmtpCommand = fingerprint === undefined ? { verb: 'SGNT', name } : { verb: 'SGNT', name, fingerprint };
      const reply = await this.command(cmd);
      if (!isPositive(reply)) throw refusal(reply, `SGNT ${name}`);
      return decodeWireSignet(parseSignetReply(reply));
    });
  }

  /** HIST: the versions as served, oldest first, decoded but not validated. */
  hist(name: string, start?: string, stop?: string): Promise<Signet[]> {
    return this.exclusive(async () => {
      const cmd: DmtpCommand = { verb: 'HIST', name, ...(start !== undefined ? { start } : {}), ...(stop !== undefined ? { stop } : {}) };
      const reply = await this.command(cmd);
      if (!isPositive(reply)) throw refusal(reply, `HIST ${name}`);
      return parseHistoryReply(reply).map(decodeWireSignet);
    });
  }

  vrfy(name: string, fingerprint: string): Promise<VrfyResult> {
    return this.exclusive(async () => {
      const reply = await this.command({ verb: 'VRFY', name, fingerprint });
      if (!isPositive(reply)) throw refusal(reply, `VRFY ${name}`);
      return parseVrfyReply(reply);
    });
  }

  /**
   * Deliver one message: EHLO (once per connection), MAIL FROM with our fingerprint and the exact
   * size, RCPT TO with the destination's fingerprint, DATA, the octets and CRLF, then `250 OK [id]`.
   */
  send(message: Uint8Array, env: Envelope): Promise<DeliveryResult> {
    return this.exclusive(async () => {
      const host = this.candidate.host;
      try {
        if (!this.greeted) {
          const r = await this.command({ verb: 'EHLO', domain: env.from.domain });
          if (!isPositive(r)) return resultOfReply(r, 'EHLO', host);
          this.maxSize = advertisedSize(r);
          this.greeted = true;
        }
        if (this.maxSize !== undefined && message.length > this.maxSize) {
          return { outcome: 'fail', code: 'DMTP_SIZE_EXCEEDED', detail: `${message.length} octets; ${host} accepts up to ${this.maxSize}`, host };
        }
        const mail: DmtpCommand = { verb: 'MAIL', domain: env.from.domain, fingerprint: env.from.fingerprint, size: message.length, ...(env.ret ? { ret: env.ret } : {}) };
        let r = await this.command(mail);
        if (!isPositive(r)) return resultOfReply(r, 'MAIL FROM', host);
        r = await this.command({ verb: 'RCPT', domain: env.to.domain, fingerprint: env.to.fingerprint });
        if (!isPositive(r)) {
          await this.reset();
          return resultOfReply(r, 'RCPT TO', host);
        }
        r = await this.command({ verb: 'DATA' });
        if (r.code < 300 || r.code >= 400) {
          await this.reset();
          return resultOfReply(r, 'DATA', host);
        }
        parseDataContinue(r);
        // In slices, waiting for each to drain: TLS keeps an encrypted copy of whatever is queued.
        for (let at = 0; at < message.length; at += DATA_SLICE) await this.stream.write(message.subarray(at, at + DATA_SLICE));
        await this.stream.write('\r\n');
        r = await this.stream.read(this.timeouts.dataMs + Math.ceil((message.length * 1000) / this.timeouts.minDataRate));
        if (!isPositive(r)) return resultOfReply(r, 'data', host);
        return { outcome: 'delivered', id: parseDataAccepted(r), reply: r, detail: `${r.code} ${replyText(r)}`, host };
      } catch (err) {
        this.stream.socket.destroy();
        return resultOfError(err, host);
      }
    });
  }

  private async reset(): Promise<void> {
    try {
      await this.command({ verb: 'RSET' });
    } catch {
      this.stream.socket.destroy();
    }
  }

  /** Let the process exit while this connection is open (benchmarks, long-lived pools). */
  unref(): void {
    this.stream.socket.unref();
  }

  /** QUIT and close; never throws. */
  async quit(): Promise<void> {
    if (this.usable && !this.busy) {
      try {
        await this.stream.write(formatCommand({ verb: 'QUIT' }));
        await this.stream.read(Math.min(this.timeouts.commandMs, 5_000));
      } catch {
        // closing anyway
      }
    }
    this.close();
  }

  close(): void {
    this.stream.detach();
    this.stream.socket.end();
    this.stream.socket.destroy();
  }
}

function refusal(reply: Reply, what: string): DimeError {
  const text = `${what}: ${reply.code} ${replyText(reply)}`.slice(0, 300);
  return reply.code === 450 ? new DimeError('SIGNET_NOT_FOUND', text) : new DimeError('DMTP_REFUSED', text);
}

function decodeWireSignet(b64: string): Signet {
  try {
    return decodeSignet(base64DecodeStrict(b64));
  } catch (err) {
    throw new DimeError('DMTP_SIGNET_REJECTED', `the served signet does not decode: ${(err as Error).message}`, { cause: err });
  }
}

// ------------------------------------------------------------------------------------ the client

/** Where validated signets come from (the relay asks it for origin organisations' signets). */
export interface SignetSource {
  /** The organisational signet of `domain` validated against its record's POKs; with a fingerprint, that version. */
  org(domain: string, fingerprint?: string): Promise<Signet>;
  /** A user's signet validated against the organisation's current signet; with a fingerprint, that version. */
  user(address: string, fingerprint?: string): Promise<Signet>;
}

export interface DmtpClientOptions {
  crypto: CryptoBackend;
  locator: PeerLocator;
  /** Trusted CAs for the CA path (PEM); default: Node's bundled Mozilla roots. */
  ca?: string | Buffer | (string | Buffer)[];
  timeouts?: Partial<ClientTimeouts>;
  log?: Logger;
  /** The clock for certificate validity (tests). */
  now?: () => Date;
}

function isUsableState(state: string): boolean {
  return state === 'full' || state === 'id';
}

export class DmtpClient implements SignetSource {
  private readonly timeouts: ClientTimeouts;

  constructor(private readonly options: DmtpClientOptions) {
    this.timeouts = { ...DEFAULT_CLIENT_TIMEOUTS, ...options.timeouts };
  }

  /** Connect to the first candidate that answers and passes the trust model. */
  async connect(domain: string): Promise<DmtpConnection> {
    const location = await this.options.locator.locate(domain);
    if (location.dnssec === 'bogus') throw new DimeError('DMTP_RECORD_BOGUS', location.domain);
    const failures: DimeError[] = [];
    for (const candidate of location.candidates) {
      try {
        return await this.open(location, candidate);
      } catch (err) {
        const e = isDimeError(err) ? err : new DimeError('DMTP_CONNECT_FAILED', (err as Error).message, { cause: err });
        this.options.log?.info({ event: 'dmtp.client.candidate_failed', host: candidate.host, port: candidate.port, mode: candidate.mode, code: e.code, err: e.message }, 'DMTP candidate failed');
        failures.push(e);
      }
    }
    const summary = failures.map((f, i) => `${location.candidates[i]!.host}:${location.candidates[i]!.port}: ${f.message}`).join('; ');
    // A host that answered but failed the trust model is the more telling failure.
    const code = failures.find((f) => f.code === 'DMTP_CERTIFICATE_REJECTED')?.code ?? failures.find((f) => f.code === 'DMTP_BAD_BANNER')?.code ?? 'DMTP_CONNECT_FAILED';
    throw new DimeError(code, `${location.domain}: ${summary || 'no DX candidates'}`);
  }

  private tlsOptions(candidate: PeerCandidate): tls.ConnectionOptions {
    return {
      minVersion: DMTP_TLS_MIN_VERSION,
      ciphers: DMTP_TLS_CIPHERS,
      // Verification is ours (checkDxCertificate): a pinned self-signed certificate is valid DIME.
      rejectUnauthorized: false,
      ...(net.isIP(candidate.host) ? {} : { servername: candidate.host }),
      ...(this.options.ca !== undefined ? { ca: this.options.ca } : {}),
    };
  }

  private verify(location: PeerLocation, candidate: PeerCandidate, socket: tls.TLSSocket): 'pin' | 'ca' | 'pin+ca' {
    const cert = socket.getPeerX509Certificate();
    if (!cert) throw new DimeError('DMTP_CERTIFICATE_REJECTED', `${candidate.host}: no certificate`);
    const verdict = checkDxCertificate(this.options.crypto, {
      record: location.record,
      dnssec: location.dnssec,
      host: candidate.host,
      cert,
      chainVerified: socket.authorized,
      ...(socket.authorizationError ? { chainError: String(socket.authorizationError) } : {}),
      ...(this.options.now ? { now: this.options.now() } : {}),
    });
    if (!verdict.ok) throw new DimeError('DMTP_CERTIFICATE_REJECTED', `${candidate.host}: ${verdict.reason}`);
    return verdict.via;
  }

  private handshake(options: tls.ConnectionOptions, what: string): Promise<tls.TLSSocket> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect(options);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new DimeError('DMTP_TIMEOUT', `${what}: no TLS session within ${this.timeouts.connectMs} ms`));
      }, this.timeouts.connectMs);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        // ReplyStream reports errors from here on; this keeps an abandoned socket from throwing.
        socket.on('error', () => undefined);
        resolve(socket);
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        socket.destroy();
        reject(new DimeError('DMTP_CONNECT_FAILED', `${what}: ${err.message}`, { cause: err }));
      });
    });
  }

  private plainConnect(host: string, port: number): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new DimeError('DMTP_TIMEOUT', `${host}:${port}: no connection within ${this.timeouts.connectMs} ms`));
      }, this.timeouts.connectMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        socket.on('error', () => undefined);
        resolve(socket);
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new DimeError('DMTP_CONNECT_FAILED', `${host}:${port}: ${err.message}`, { cause: err }));
      });
    });
  }

  private async open(location: PeerLocation, candidate: PeerCandidate): Promise<DmtpConnection> {
    const address = candidate.address ?? candidate.host;
    const what = `${candidate.host}:${candidate.port}`;
    if (candidate.mode === 'implicit') {
      const socket = await this.handshake({ ...this.tlsOptions(candidate), host: address, port: candidate.port }, what);
      try {
        const via = this.verify(location, candidate, socket);
        const stream = new ReplyStream(socket);
        checkBanner(await stream.read(this.timeouts.commandMs));
        return new DmtpConnection(stream, location, candidate, via, this.timeouts);
      } catch (err) {
        socket.destroy();
        throw err;
      }
    }
    const plain = await this.plainConnect(address, candidate.port);
    try {
      const stream = new ReplyStream(plain);
      checkBanner(await stream.read(this.timeouts.commandMs));
      await stream.write(formatCommand({ verb: 'STARTTLS', host: candidate.host }));
      const ready = await stream.read(this.timeouts.commandMs);
      if (!isPositive(ready)) throw new DimeError('DMTP_REFUSED', `${what}: STARTTLS: ${ready.code} ${replyText(ready)}`);
      // Anything after the STARTTLS reply was sent in plaintext and must not be read as if from TLS.
      if (stream.detach() > 0) throw new DimeError('DMTP_BAD_REPLY', `${what}: data after the STARTTLS reply`);
      const socket = await this.handshake({ ...this.tlsOptions(candidate), socket: plain }, what);
      const via = this.verify(location, candidate, socket);
      stream.attach(socket);
      checkModeReply(await stream.read(this.timeouts.commandMs));
      return new DmtpConnection(stream, location, candidate, via, this.timeouts);
    } catch (err) {
      plain.destroy();
      throw err;
    }
  }

  private async withConnection<T>(domain: string, fn: (c: DmtpConnection) => Promise<T>): Promise<T> {
    const conn = await this.connect(domain);
    try {
      return await fn(conn);
    } finally {
      await conn.quit();
    }
  }

  /** Check a served organisational signet: type, identity, POK in the record, signatures to FULL or ID. */
  acceptOrg(signet: Signet, location: PeerLocation, fingerprint?: string): Signet {
    const domain = location.domain;
    if (signet.type !== 'org') throw new DimeError('DMTP_SIGNET_REJECTED', `${domain}: served a ${signet.type} signet`);
    const v = validateSignet(this.options.crypto, signet, { poks: location.record.poks });
    if (!isUsableState(v.state)) throw new DimeError('DMTP_SIGNET_REJECTED', `${domain}: organisational signet is ${v.state}${v.reason ? `: ${v.reason}` : ''}`);
    const id = identifierOf(signet);
    if (id !== null && id.toLowerCase() !== domain) throw new DimeError('DMTP_SIGNET_REJECTED', `${domain}: the signet belongs to ${id}`);
    if (fingerprint !== undefined && !Object.values(fingerprints(this.options.crypto, signet)).includes(fingerprint)) {
      throw new DimeError('DMTP_SIGNET_REJECTED', `${domain}: the served signet does not have the fingerprint asked for`);
    }
    return signet;
  }

  acceptUser(signet: Signet, org: Signet, address: string, fingerprint?: string, previous?: Signet): Signet {
    if (signet.type !== 'user') throw new DimeError('DMTP_SIGNET_REJECTED', `${address}: served a ${signet.type} signet`);
    const v = validateSignet(this.options.crypto, signet, { org, ...(previous ? { previous } : {}) });
    if (!isUsableState(v.state)) throw new DimeError('DMTP_SIGNET_REJECTED', `${address}: user signet is ${v.state}${v.reason ? `: ${v.reason}` : ''}`);
    const id = identifierOf(signet);
    if (id !== null && id.toLowerCase() !== address.toLowerCase()) throw new DimeError('DMTP_SIGNET_REJECTED', `${address}: the signet belongs to ${id}`);
    if (fingerprint !== undefined && !Object.values(fingerprints(this.options.crypto, signet)).includes(fingerprint)) {
      throw new DimeError('DMTP_SIGNET_REJECTED', `${address}: the served signet does not have the fingerprint asked for`);
    }
    return signet;
  }

  async org(domain: string, fingerprint?: string): Promise<Signet> {
    const d = normalizeDomain(domain);
    return this.withConnection(d, async (c) => this.acceptOrg(await c.sgnt(d, fingerprint), c.location, fingerprint));
  }

  async user(address: string, fingerprint?: string): Promise<Signet> {
    const a = normalizeAddress(address);
    const d = domainOfName(a);
    return this.withConnection(d, async (c) => {
      const org = this.acceptOrg(await c.sgnt(d), c.location);
      const signet = await c.sgnt(a, fingerprint);
      if (!hasField(signet, CUSTODY_FIELD)) return this.acceptUser(signet, org, a, fingerprint);
      // A rotated key: its custody signature is checked along the whole history, back to the first
      // version (which has none), so a substituted key cannot pass as a rotation.
      const chain = await c.hist(a);
      const at = chain.findIndex((s) => bytesEqual(s.bytes, signet.bytes));
      if (at < 1) throw new DimeError('DMTP_SIGNET_REJECTED', `${a}: a signet with a custody signature that its own history does not lead to`);
      this.acceptUser(chain[0]!, org, a);
      for (let i = 1; i < at; i++) this.acceptUser(chain[i]!, org, a, undefined, chain[i - 1]);
      return this.acceptUser(signet, org, a, fingerprint, chain[at - 1]);
    });
  }

  /**
   * A user's chain of custody (HIST), each version checked against the organisation's current
   * signet and, from the second on, against the version before it.
   */
  async history(address: string, start?: string, stop?: string): Promise<Signet[]> {
    const a = normalizeAddress(address);
    const d = domainOfName(a);
    return this.withConnection(d, async (c) => {
      const org = this.acceptOrg(await c.sgnt(d), c.location);
      const chain = await c.hist(a, start, stop);
      if (chain.length === 0) throw new DimeError('DMTP_SIGNET_REJECTED', `${a}: empty history`);
      chain.forEach((s, i) => {
        if (i === 0) {
          // The first version shown may itself continue an older one we were not sent.
          const v = validateSignet(this.options.crypto, s, { org });
          if (!isUsableState(v.state) && v.state !== 'broken-custody') throw new DimeError('DMTP_SIGNET_REJECTED', `${a}: version 1 is ${v.state}`);
        } else this.acceptUser(s, org, a, undefined, chain[i - 1]);
      });
      return chain;
    });
  }

  /** VRFY: is the version with this fingerprint current? */
  async verifyCurrent(name: string, fingerprint: string): Promise<VrfyResult> {
    const n = normalizeName(name);
    return this.withConnection(domainOfName(n), (c) => c.vrfy(n, fingerprint));
  }

  /** Deliver one message to `env.to.domain`: connect, send, QUIT. Never throws. */
  async deliver(message: Uint8Array, env: Envelope): Promise<DeliveryResult> {
    let conn: DmtpConnection;
    try {
      conn = await this.connect(env.to.domain);
    } catch (err) {
      return resultOfError(err);
    }
    try {
      return await conn.send(message, env);
    } finally {
      await conn.quit();
    }
  }
}

/**
 * A small in-memory cache in front of a SignetSource, until the resolver issue's cache (Redis,
 * DNSSEC-aware) replaces it. A version named by fingerprint never changes and is kept until
 * evicted; the current version is kept for `ttlMs`.
 */
export class CachingSignetSource implements SignetSource {
  private readonly entries = new Map<string, { signet: Signet; expires: number }>();

  constructor(
    private readonly inner: SignetSource,
    private readonly options: { ttlMs?: number; maxEntries?: number; now?: () => number } = {},
  ) {}

  private async get(key: string, pinned: boolean, fetch: () => Promise<Signet>): Promise<Signet> {
    const now = (this.options.now ?? Date.now)();
    const hit = this.entries.get(key);
    if (hit && hit.expires > now) return hit.signet;
    const signet = await fetch();
    const max = this.options.maxEntries ?? 10_000;
    if (this.entries.size >= max) this.entries.delete(this.entries.keys().next().value as string);
    this.entries.set(key, { signet, expires: pinned ? Number.POSITIVE_INFINITY : now + (this.options.ttlMs ?? 300_000) });
    return signet;
  }

  org(domain: string, fingerprint?: string): Promise<Signet> {
    const d = normalizeDomain(domain);
    return this.get(`org ${d} ${fingerprint ?? ''}`, fingerprint !== undefined, () => this.inner.org(d, fingerprint));
  }

  user(address: string, fingerprint?: string): Promise<Signet> {
    const a = normalizeAddress(address);
    return this.get(`user ${a} ${fingerprint ?? ''}`, fingerprint !== undefined, () => this.inner.user(a, fingerprint));
  }
}
