/**
 * `_dx.<domain>` TXT and MX lookups with typed outcomes (architecture.md §1.5 and §2,
 * dime-formats.md §4). docs/resolver.md says what each outcome allows.
 *
 * Queries are built and parsed with dns2's Packet codec and sent over our own UDP and TCP sockets:
 * dns2's clients cannot set the DO and CD bits, do not honour an AbortSignal, and (UDP) do not
 * check the question echoed in the answer.
 *
 * DNSSEC status comes from the AD bit of a validating resolver, and only counts when the resolver is
 * trusted (by default: on this host, so no network path can forge the bit). A validating resolver
 * answers SERVFAIL both for data that failed validation (bogus) and for a zone it cannot reach
 * (broken). We tell them apart in two ways:
 *  1. an RFC 8914 Extended DNS Error in the SERVFAIL (unbound with `ede: yes`, BIND 9.18+) names
 *     the DNSSEC failure directly;
 *  2. otherwise we ask once more with the CD (checking disabled) bit: if the resolver then has the
 *     data, or a definite NXDOMAIN/NODATA, the data exists and only validation failed, so the answer
 *     is bogus; if the CD query fails too, the zone is broken (SERVFAIL).
 * Whatever the CD query returns is never used, only its existence.
 */
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { Packet, type EdeOption, type Resource } from 'dns2';
import { DimeError, isDimeError, type ErrorCode } from '../errors.js';
import { asciiLower, isHostName, parseRecordValue, RECORD_DNS_PREFIX, type DimeRecord } from '../dime/record.js';

// ------------------------------------------------------------------------------------ limits

/** EDNS0 UDP payload we advertise: the DNS Flag Day 2020 value, which avoids IP fragmentation. */
export const EDNS_UDP_PAYLOAD = 1232;
/** A DNS message over TCP has a 16-bit length prefix, so nothing larger can arrive. */
export const MAX_TCP_MESSAGE = 0xffff;
/** The resolv.conf we read for `system`; glibc's default server when it names none. */
export const RESOLV_CONF = '/etc/resolv.conf';
const RESOLV_CONF_FALLBACK = '127.0.0.1';
/** resolv.conf is a few lines; anything this large is not one. */
const MAX_RESOLV_CONF = 64 * 1024;
/** glibc reads at most three nameserver lines (MAXNS); we keep the same bound. */
const MAX_SYSTEM_SERVERS = 3;

/** RFC 8914 INFO-CODEs that mean "validation failed" (only looked at in a SERVFAIL). */
const EDE_DNSSEC_FAILURE: ReadonlySet<number> = new Set([
  Packet.EDE.DNSSEC_BOGUS,
  Packet.EDE.SIGNATURE_EXPIRED,
  Packet.EDE.SIGNATURE_NOT_YET_VALID,
  Packet.EDE.DNSKEY_MISSING,
  Packet.EDE.RRSIGS_MISSING,
  Packet.EDE.NO_ZONE_KEY_BIT_SET,
  Packet.EDE.NSEC_MISSING,
  Packet.EDE.SIGNATURE_EXPIRED_BEFORE_VALID,
]);
/** INFO-CODEs that say the resolver could not reach the zone: broken, no CD probe needed. */
const EDE_UNREACHABLE: ReadonlySet<number> = new Set([Packet.EDE.NO_REACHABLE_AUTHORITY, Packet.EDE.NETWORK_ERROR]);

// ------------------------------------------------------------------------------------ servers

export interface DnsServerAddress {
  /** An IP literal (no brackets). */
  host: string;
  port: number;
}

export function serverLabel(s: DnsServerAddress): string {
  return net.isIPv6(s.host) ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`;
}

/** `1.2.3.4`, `1.2.3.4:5353`, `::1`, `[::1]:5353`. DNS servers must be IP literals: looking them up would need DNS. */
export function parseServer(spec: string): DnsServerAddress {
  const bad = () => new DimeError('CONFIG_INVALID', `DNS server ${JSON.stringify(spec)} is not IP, IP:PORT or [IPv6]:PORT`);
  let host = spec;
  let port = 53;
  const v6 = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(spec);
  if (v6) {
    host = v6[1]!;
    if (v6[2] !== undefined) port = Number(v6[2]);
  } else if (!net.isIPv6(spec)) {
    const m = /^([^:]+):(\d{1,5})$/.exec(spec);
    if (m) {
      host = m[1]!;
      port = Number(m[2]);
    }
  }
  host = host.replace(/%.*$/, ''); // a zone index (fe80::1%eth0) is not part of the address we compare
  if (net.isIP(host) === 0 || port < 1 || port > 65535) throw bad();
  return { host, port };
}

/** The nameservers of resolv.conf (at most three, as glibc), or 127.0.0.1 when it names none. */
export function systemServers(file = RESOLV_CONF): DnsServerAddress[] {
  let text = '';
  try {
    const st = fs.statSync(file);
    if (st.size <= MAX_RESOLV_CONF) text = fs.readFileSync(file, 'utf8');
  } catch {
    // No resolv.conf: glibc then asks the local host, and so do we.
  }
  const out: DnsServerAddress[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (!m || out.length >= MAX_SYSTEM_SERVERS) continue;
    try {
      out.push(parseServer(m[1]!));
    } catch {
      // glibc skips what it cannot parse; so do we.
    }
  }
  return out.length > 0 ? out : [{ host: RESOLV_CONF_FALLBACK, port: 53 }];
}

/** `["system"]` or a list of server specs. */
export function resolveServers(specs: readonly string[], resolvConf = RESOLV_CONF): DnsServerAddress[] {
  if (specs.length === 1 && specs[0] === 'system') return systemServers(resolvConf);
  if (specs.length === 0) throw new DimeError('CONFIG_INVALID', 'no DNS server given');
  return specs.map(parseServer);
}

export function isLoopback(host: string): boolean {
  if (net.isIPv4(host)) return host.startsWith('127.');
  const h = host.toLowerCase();
  return h === '::1' || h === '0:0:0:0:0:0:0:1' || /^::ffff:127\./.test(h);
}

/** trust_ad = loopback: the AD bit counts only when no server is reached over a network. */
export function trustAdFor(mode: 'loopback' | 'always' | 'never', servers: readonly DnsServerAddress[]): boolean {
  if (mode === 'always') return true;
  if (mode === 'never') return false;
  return servers.every((s) => isLoopback(s.host));
}

// ------------------------------------------------------------------------------------ outcomes

/** `validated`: AD from a trusted validating resolver. `unsigned`: anything else that is not bogus. */
export type DnssecStatus = 'validated' | 'unsigned';

export interface RecordFound {
  kind: 'record';
  record: DimeRecord;
  /** The character-strings of the chosen TXT RR concatenated, exactly what was parsed. */
  text: string;
  dnssec: DnssecStatus;
  /** Lowest TTL on the way (TXT RR and any CNAME), seconds. */
  ttl: number;
  server: string;
}

export interface NoRecord {
  kind: 'no-record';
  reason: 'nxdomain' | 'nodata';
  dnssec: DnssecStatus;
  /** RFC 2308: min(SOA TTL, SOA minimum) from the authority section; 0 without a SOA. */
  negativeTtl: number;
  server: string;
}

/** The resolver could not give a usable answer: SERVFAIL (broken zone), another error rcode, or an undecodable answer. */
export interface DnsServfail {
  kind: 'servfail';
  code: 'DNS_SERVFAIL' | 'DNS_BAD_RESPONSE';
  detail: string;
}

/** No answer from any server within the attempts (a timeout, or a server refusing connections). */
export interface DnsTimeout {
  kind: 'timeout';
  code: 'DNS_TIMEOUT';
  detail: string;
}

/** The data exists but failed DNSSEC validation: never used. */
export interface DnsBogus {
  kind: 'bogus';
  code: 'DNS_BOGUS';
  /** How we know: an Extended DNS Error, or the CD-bit probe. */
  how: 'ede' | 'cd-probe';
  detail: string;
}

/** The TXT data is there but is not one valid DIME record: parse error, several candidates, or none. */
export interface RecordMalformed {
  kind: 'malformed';
  code: ErrorCode;
  detail: string;
  dnssec: DnssecStatus;
  ttl: number;
}

export type DnsFailure = DnsServfail | DnsTimeout | DnsBogus;
export type RecordLookup = RecordFound | NoRecord | RecordMalformed | DnsFailure;

export interface MxHost {
  exchange: string;
  priority: number;
}

export interface MxFound {
  kind: 'mx';
  /** Sorted by preference; empty for a null MX (RFC 7505: the domain takes no mail). */
  hosts: MxHost[];
  nullMx: boolean;
  dnssec: DnssecStatus;
  ttl: number;
}

export type MxLookup = MxFound | NoRecord | DnsFailure;

export function failureError(f: DnsFailure | RecordMalformed): DimeError {
  return new DimeError(f.code, f.detail);
}

// ------------------------------------------------------------------------------------ client

export interface DnsClientOptions {
  servers: readonly DnsServerAddress[];
  /** One attempt (one UDP exchange, or a TCP retry after truncation). */
  queryTimeoutMs: number;
  /** Attempts per query, rotating through the servers; a SERVFAIL also moves on to the next server. */
  attempts: number;
  /** Whether AD means "validated" (see trustAdFor). */
  trustAd: boolean;
  /** Disable the CD probe (then a SERVFAIL without a DNSSEC EDE is always SERVFAIL). */
  cdProbe?: boolean;
}

export interface QueryOptions {
  /** Stops the lookup at once; the promise rejects with RESOLVE_DEADLINE (or the signal's DimeError reason). */
  signal?: AbortSignal;
}

type QType = 'TXT' | 'MX';

interface Answer {
  packet: Packet;
  server: DnsServerAddress;
}

/** A lookup that ran out of attempts without any answer. */
class NoAnswer extends Error {}

export function abortError(signal: AbortSignal): DimeError {
  const reason: unknown = signal.reason;
  if (reason instanceof DimeError) return reason;
  return new DimeError('RESOLVE_DEADLINE', reason instanceof Error && reason.name !== 'AbortError' ? reason.message : undefined);
}

/**
 * `p`, unless the signal aborts first: then a rejection with abortError. The work behind `p` goes
 * on (a shared lookup may still serve other askers); only this asker stops waiting.
 */
export function raceSignal<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) {
    p.catch(() => undefined); // the work's own failure is someone else's business now
    return Promise.reject(abortError(signal));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** A domain as we look it up: LDH labels, lower case, no trailing dot. */
export function normalizeDomain(domain: string): string {
  if (typeof domain !== 'string') throw new DimeError('RESOLVE_BAD_NAME', 'the domain must be a string');
  const d = domain.endsWith('.') ? domain.slice(0, -1) : domain;
  // `_dx.` + the domain must still fit a DNS name (253 characters).
  if (!isHostName(d) || d.length + RECORD_DNS_PREFIX.length + 1 > 253) throw new DimeError('RESOLVE_BAD_NAME', JSON.stringify(domain));
  return asciiLower(d);
}

function header(p: Packet): Packet['header'] & { ad: number; cd: number } {
  // dns2 parses AD and CD but its type declarations leave them out.
  return p.header as Packet['header'] & { ad: number; cd: number };
}

function rcodeName(rcode: number): string {
  const names = Packet.RCODE as Record<string, number>;
  return Object.keys(names).find((k) => names[k] === rcode) ?? `RCODE${rcode}`;
}

function edeCodes(p: Packet): number[] {
  const opt = p.additionals.find((r) => r.type === Packet.TYPE.EDNS);
  return (opt?.rdata ?? []).filter((o) => o.ednsCode === Packet.EDNS_OPTION_CODE.EDE).map((o) => (o as EdeOption).infoCode);
}

function buildQuery(name: string, type: QType, cd: boolean): { id: number; bytes: Buffer } {
  const p = new Packet();
  const id = Packet.uuid();
  // AD=1 in a query asks for the AD bit in the answer (RFC 6840 §5.7); DO asks for DNSSEC records.
  p.header = new Packet.Header({ id, rd: 1, ...({ ad: 1, cd: cd ? 1 : 0 } as object) });
  p.questions.push(new Packet.Question(name, Packet.TYPE[type], Packet.CLASS.IN));
  p.additionals.push(Packet.Resource.EDNS([], { doFlag: true, udpPayloadSize: EDNS_UDP_PAYLOAD }));
  return { id, bytes: p.toBuffer() };
}

/** Does the packet answer our query (id, QR, the question echoed)? */
function answers(p: Packet, id: number, name: string, type: QType): string | undefined {
  if (p.header.id !== id) return `id ${p.header.id} is not ${id}`;
  if (p.header.qr !== 1) return 'not a response (QR=0)';
  const q = p.questions[0];
  if (p.questions.length !== 1 || !q) return `${p.questions.length} questions echoed`;
  if (asciiLower(q.name.replace(/\.$/, '')) !== asciiLower(name) || q.type !== Packet.TYPE[type] || q.class !== Packet.CLASS.IN) {
    return `the answer is for ${q.name} type ${q.type}`;
  }
  return undefined;
}

function udpExchange(server: DnsServerAddress, query: { id: number; bytes: Buffer }, name: string, type: QType, timeoutMs: number, signal?: AbortSignal): Promise<Packet> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket(net.isIPv6(server.host) ? 'udp6' : 'udp4');
    let done = false;
    let lastDropped: string | undefined;
    const finish = (err: Error | undefined, packet?: Packet) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.close();
      if (err) reject(err);
      else resolve(packet!);
    };
    const onAbort = () => finish(abortError(signal!));
    const timer = setTimeout(() => finish(new NoAnswer(`no answer from ${serverLabel(server)} within ${timeoutMs} ms${lastDropped ? ` (dropped: ${lastDropped})` : ''}`)), timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('error', (err) => finish(new NoAnswer(`${serverLabel(server)}: ${err.message}`)));
    socket.on('message', (msg, rinfo) => {
      // Anything that is not the answer (another sender, an undecodable or unrelated datagram) is
      // dropped and we keep listening, so a forged datagram cannot pre-empt the real answer.
      if (rinfo.port !== server.port || rinfo.address !== server.host) {
        lastDropped = `a datagram from ${rinfo.address}:${rinfo.port}`;
        return;
      }
      let p: Packet;
      try {
        p = Packet.parse(msg);
      } catch (err) {
        lastDropped = `an undecodable datagram (${(err as Error).message})`;
        return;
      }
      const mismatch = answers(p, query.id, name, type);
      if (mismatch) {
        lastDropped = mismatch;
        return;
      }
      finish(undefined, p);
    });
    socket.send(query.bytes, server.port, server.host, (err) => {
      if (err) finish(new NoAnswer(`${serverLabel(server)}: ${err.message}`));
    });
  });
}

function tcpExchange(server: DnsServerAddress, query: { id: number; bytes: Buffer }, name: string, type: QType, timeoutMs: number, signal?: AbortSignal): Promise<Packet> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: server.host, port: server.port });
    let done = false;
    let buf = Buffer.alloc(0);
    const finish = (err: Error | undefined, packet?: Packet) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (err) reject(err);
      else resolve(packet!);
    };
    const onAbort = () => finish(abortError(signal!));
    const timer = setTimeout(() => finish(new NoAnswer(`no TCP answer from ${serverLabel(server)} within ${timeoutMs} ms`)), timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('error', (err) => finish(new NoAnswer(`${serverLabel(server)} (TCP): ${err.message}`)));
    socket.on('close', () => finish(new NoAnswer(`${serverLabel(server)} (TCP) closed the connection before answering`)));
    socket.on('data', (chunk: Buffer) => {
      // At most 2 + 65,535 bytes are ever kept: the 16-bit prefix bounds the message.
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 2) return;
      const len = buf.readUInt16BE(0);
      if (buf.length < 2 + len) return;
      let p: Packet;
      try {
        p = Packet.parse(buf.subarray(2, 2 + len));
      } catch (err) {
        finish(new DimeError('DNS_BAD_RESPONSE', `${serverLabel(server)} (TCP): ${(err as Error).message}`));
        return;
      }
      const mismatch = answers(p, query.id, name, type);
      if (mismatch) finish(new DimeError('DNS_BAD_RESPONSE', `${serverLabel(server)} (TCP): ${mismatch}`));
      else finish(undefined, p);
    });
    const prefix = Buffer.alloc(2);
    prefix.writeUInt16BE(query.bytes.length);
    socket.write(Buffer.concat([prefix, query.bytes]));
  });
}

/** What an answer says before the record type matters. */
type Classified =
  | { kind: 'data'; rrs: Resource[]; ttl: number; dnssec: DnssecStatus; server: string }
  | NoRecord
  | DnsFailure;

export class DnsClient {
  readonly servers: readonly DnsServerAddress[];
  readonly trustAd: boolean;
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private readonly cdProbe: boolean;
  /** Counters for metrics and tests. */
  readonly stats = { queries: 0, udp: 0, tcp: 0, noAnswer: 0, cdProbes: 0 };

  constructor(options: DnsClientOptions) {
    if (!Array.isArray(options.servers) || options.servers.length === 0) throw new DimeError('CONFIG_INVALID', 'no DNS server given');
    if (!(Number.isInteger(options.queryTimeoutMs) && options.queryTimeoutMs > 0)) throw new DimeError('CONFIG_INVALID', 'queryTimeoutMs must be a positive integer');
    if (!(Number.isInteger(options.attempts) && options.attempts > 0)) throw new DimeError('CONFIG_INVALID', 'attempts must be a positive integer');
    this.servers = options.servers.map((s) => ({ ...s }));
    this.trustAd = options.trustAd;
    this.timeoutMs = options.queryTimeoutMs;
    this.attempts = options.attempts;
    this.cdProbe = options.cdProbe ?? true;
  }

  /**
   * One question, answered by the first server that answers anything but SERVFAIL/REFUSED, over
   * UDP with a TCP retry on truncation. Rejects with NoAnswer when no server answered at all.
   */
  private async exchange(name: string, type: QType, cd: boolean, signal?: AbortSignal): Promise<Answer> {
    let lastError: Answer | undefined;
    const reasons: string[] = [];
    for (let attempt = 0; attempt < this.attempts; attempt++) {
      if (signal?.aborted) throw abortError(signal);
      const server = this.servers[attempt % this.servers.length]!;
      const query = buildQuery(name, type, cd);
      this.stats.queries++;
      try {
        this.stats.udp++;
        let packet = await udpExchange(server, query, name, type, this.timeoutMs, signal);
        if (packet.header.tc) {
          this.stats.tcp++;
          packet = await tcpExchange(server, query, name, type, this.timeoutMs, signal);
        }
        const rcode = packet.header.rcode;
        // SERVFAIL and REFUSED are this server's problem: another server may answer.
        if ((rcode === Packet.RCODE.SERVFAIL || rcode === Packet.RCODE.REFUSED) && attempt + 1 < this.attempts && this.servers.length > 1) {
          lastError = { packet, server };
          reasons.push(`${serverLabel(server)}: ${rcodeName(rcode)}`);
          continue;
        }
        return { packet, server };
      } catch (err) {
        if (!(err instanceof NoAnswer)) throw err;
        this.stats.noAnswer++;
        reasons.push(err.message);
      }
    }
    if (lastError) return lastError;
    throw new NoAnswer(reasons.join('; '));
  }

  private async classify(name: string, type: QType, signal?: AbortSignal): Promise<Classified> {
    let ans: Answer;
    try {
      ans = await this.exchange(name, type, false, signal);
    } catch (err) {
      if (err instanceof NoAnswer) return { kind: 'timeout', code: 'DNS_TIMEOUT', detail: `${name} ${type}: ${err.message}` };
      if (isDimeError(err, 'DNS_BAD_RESPONSE')) return { kind: 'servfail', code: 'DNS_BAD_RESPONSE', detail: err.message };
      throw err;
    }
    const { packet, server } = ans;
    const where = serverLabel(server);
    // A record that did not decode could be the one we are looking for: reading the rest as
    // "no such record" would be a downgrade, so the whole answer is unusable.
    const broken = packet.errors.find((e) => e.section !== 'additionals');
    if (broken) return { kind: 'servfail', code: 'DNS_BAD_RESPONSE', detail: `${where}: ${broken.message}` };
    const rcode = packet.header.rcode;
    const dnssec: DnssecStatus = this.trustAd && header(packet).ad === 1 ? 'validated' : 'unsigned';
    if (rcode === Packet.RCODE.NOERROR || rcode === Packet.RCODE.NXDOMAIN) {
      const rrs = packet.answers.filter((r) => r.type === Packet.TYPE[type] && r.class === Packet.CLASS.IN);
      if (rcode === Packet.RCODE.NOERROR && rrs.length > 0) {
        const chain = packet.answers.filter((r) => r.type === Packet.TYPE.CNAME || r.type === Packet.TYPE[type]);
        return { kind: 'data', rrs, ttl: Math.min(...chain.map((r) => r.ttl)), dnssec, server: where };
      }
      const soa = packet.authorities.find((r) => r.type === Packet.TYPE.SOA);
      const negativeTtl = soa ? Math.min(soa.ttl, soa.minimum ?? 0) : 0;
      return { kind: 'no-record', reason: rcode === Packet.RCODE.NXDOMAIN ? 'nxdomain' : 'nodata', dnssec, negativeTtl, server: where };
    }
    if (rcode !== Packet.RCODE.SERVFAIL) return { kind: 'servfail', code: 'DNS_SERVFAIL', detail: `${where}: ${rcodeName(rcode)} for ${name} ${type}` };

    const ede = edeCodes(packet);
    const dnssecEde = ede.find((c) => EDE_DNSSEC_FAILURE.has(c));
    if (dnssecEde !== undefined) {
      return { kind: 'bogus', code: 'DNS_BOGUS', how: 'ede', detail: `${where}: SERVFAIL with extended error ${Packet.EDE_NAME[dnssecEde] ?? dnssecEde} for ${name} ${type}` };
    }
    const servfail: DnsServfail = { kind: 'servfail', code: 'DNS_SERVFAIL', detail: `${where}: SERVFAIL for ${name} ${type}${ede.length ? ` (extended error ${ede.map((c) => Packet.EDE_NAME[c] ?? c).join(', ')})` : ''}` };
    if (!this.cdProbe || ede.some((c) => EDE_UNREACHABLE.has(c))) return servfail;
    // Bogus or broken? Ask again with checking disabled (see the file comment).
    this.stats.cdProbes++;
    try {
      const probe = await this.exchange(name, type, true, signal);
      const pr = probe.packet.header.rcode;
      if (probe.packet.errors.length === 0 && (pr === Packet.RCODE.NOERROR || pr === Packet.RCODE.NXDOMAIN)) {
        return { kind: 'bogus', code: 'DNS_BOGUS', how: 'cd-probe', detail: `${where}: SERVFAIL for ${name} ${type}, but the data is there with checking disabled: DNSSEC validation failed` };
      }
    } catch (err) {
      if (!(err instanceof NoAnswer) && !isDimeError(err, 'DNS_BAD_RESPONSE')) throw err;
    }
    return servfail;
  }

  /** The DIME management record of `domain` (a TXT lookup of `_dx.<domain>`). */
  async lookupRecord(domain: string, options: QueryOptions = {}): Promise<RecordLookup> {
    const name = `${RECORD_DNS_PREFIX}.${normalizeDomain(domain)}`;
    const c = await this.classify(name, 'TXT', options.signal);
    if (c.kind !== 'data') return c;
    // RFC 1035: one TXT RR is one or more character-strings, concatenated without a separator.
    const texts = c.rrs.map((r) => (Array.isArray(r.data) ? r.data.join('') : String(r.data ?? '')));
    let text: string;
    if (texts.length === 1) {
      text = texts[0]!;
    } else {
      // Other TXT data may share the name; take the DIME one, and refuse to guess between several.
      const dime = texts.filter(looksLikeDimeRecord);
      if (dime.length !== 1) {
        return dime.length === 0
          ? { kind: 'malformed', code: 'RECORD_NOT_DIME', detail: `${texts.length} TXT records at ${name}, none starts with ver= or holds pok=`, dnssec: c.dnssec, ttl: c.ttl }
          : { kind: 'malformed', code: 'RECORD_AMBIGUOUS', detail: `${dime.length} DIME records at ${name}`, dnssec: c.dnssec, ttl: c.ttl };
      }
      text = dime[0]!;
    }
    try {
      return { kind: 'record', record: parseRecordValue(text), text, dnssec: c.dnssec, ttl: c.ttl, server: c.server };
    } catch (err) {
      if (!(err instanceof DimeError)) throw err;
      return { kind: 'malformed', code: err.code, detail: `${name}: ${err.message}`, dnssec: c.dnssec, ttl: c.ttl };
    }
  }

  /** MX hosts of `domain`, by preference (for the DMTP client when the record names no dx=). */
  async lookupMx(domain: string, options: QueryOptions = {}): Promise<MxLookup> {
    const name = normalizeDomain(domain);
    const c = await this.classify(name, 'MX', options.signal);
    if (c.kind !== 'data') return c;
    const hosts = c.rrs
      .map((r) => ({ exchange: asciiLower(String(r.exchange ?? '').replace(/\.$/, '')), priority: Number(r.priority) }))
      .sort((a, b) => a.priority - b.priority);
    const nullMx = hosts.length === 1 && hosts[0]!.exchange === '';
    // A host that is not a host name (junk in the zone) cannot be connected to; leave it out.
    const usable = nullMx ? [] : hosts.filter((h) => isHostName(h.exchange));
    return { kind: 'mx', hosts: usable, nullMx, dnssec: c.dnssec, ttl: c.ttl };
  }
}

/**
 * A TXT string that is meant as a DIME record: its first token is `ver=`/`version=`, or some token
 * is `pok=`/`primary=` (names case-insensitive, tokens split as libdime splits them).
 */
export function looksLikeDimeRecord(text: string): boolean {
  const names = text.split(/[ ;]/).filter((t) => t.length > 0).map((t) => asciiLower(t.split('=')[0] ?? ''));
  return names[0] === 'ver' || names[0] === 'version' || names.some((n) => n === 'pok' || n === 'primary');
}
