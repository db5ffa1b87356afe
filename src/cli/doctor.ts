/**
 * `dime doctor [--config FILE] [--domain DOMAIN] [--postfix-config DIR] [--json]`: check a
 * deployment end to end and say, for each problem, the exact fix.
 *
 * Checks (each ok / warn / fail, one finding, a fix when not ok): the configuration; the keystore
 * (file or HSM) and a test signature by the POK; the published org signet; the `_dx` record as the
 * configured resolver sees it, against what our keys say; its DNSSEC status; the record's `tls=`
 * pin of the relay certificate; the relay (DMTP over TLS, banner), its dual and LMTP listeners; the
 * milter, policy and socketmap listeners; Postfix (milters in main.cf or master.cf, the `dmtp` LMTP
 * transport, the bundle service with `content_filter = dmtp:…`); Redis.
 *
 * Exit status: 0 when every check is ok or warn, 1 when one fails, 2 for usage errors. Every network
 * step has its own short timeout, so a dead peer costs seconds, not minutes. Nothing is changed: the
 * fixes are printed for the operator to apply.
 */
import { execFile } from 'node:child_process';
import * as nodeCrypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { Writable } from 'node:stream';
import type { Command } from 'commander';
import { loadConfig, type DimeConfig, type ResolverConfig } from '../config/config.js';
import type { CryptoBackend } from '../crypto/backend.js';
import { defaultCrypto } from '../crypto/index.js';
import { base64EncodeNoPad } from '../dime/base64.js';
import { bytesEqual } from '../dime/bytes.js';
import { certificateDer, formatRecord, isHostName, verifyTlsPin, zoneFileLine, type DimeRecord } from '../dime/record.js';
import { fingerprints, pokText, signingKeyOf } from '../dime/signet/index.js';
import { DMTP_TLS_CIPHERS, DMTP_TLS_MIN_VERSION } from '../dmtp/client.js';
import { checkBanner, replyText, type Reply } from '../dmtp/codec.js';
import { ReplyStream } from '../dmtp/reply-stream.js';
import { DimeError, ERROR_CODES, isDimeError, type ErrorCode } from '../errors.js';
import { createLogger } from '../log.js';
import { managementRecord, openOrg, signetIsCurrent, type OrgContext } from '../keystore/org.js';
import { parseSocketSpec, type SocketSpec } from '../net/socket.js';
import { createRedisClient } from '../resolver/cache.js';
import { isLoopback, resolveServers, serverLabel, trustAdFor } from '../resolver/dns.js';
import { createResolver, type Resolution } from '../resolver/resolver.js';
import { EXIT, ExitStatus, exitStatusFor } from './exit.js';
import { recordOptions } from './init.js';

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface CheckResult {
  name: string;
  status: CheckStatus;
  /** One line: what was found. */
  finding: string;
  /** One line: what to do, when the status is not ok. */
  fix?: string;
}

/** A TCP/unix connect, a TLS handshake or one banner: a live local service answers in milliseconds. */
const CONNECT_MS = 3_000;
/** One postconf or postfix run (it only reads files). */
const TOOL_MS = 5_000;
/** Opening the keystore and one test signature (an HSM login can be slow, never this slow). */
const KEYSTORE_MS = 15_000;
/** The `_dx` lookup: the configured deadline, capped so the doctor answers in seconds. */
const DNS_MAX_MS = 8_000;
/** A certificate this close to its end is a warning: renewing needs a new tls= pin in DNS too. */
const CERT_WARN_DAYS = 30;
/** Where the mail flow's examples put the relay's LMTP listener (docs/mail-flow.md). */
const DEFAULT_LMTP = 'inet:127.0.0.1:10026';
const DEFAULT_BUNDLE_SERVICE = 'inet:127.0.0.1:10027';

interface DoctorOptions {
  config?: string;
  domain?: string;
  postfixConfig?: string;
  json?: boolean;
}

const ok = (name: string, finding: string): CheckResult => ({ name, status: 'ok', finding });
const warn = (name: string, finding: string, fix: string): CheckResult => ({ name, status: 'warn', finding, fix });
const fail = (name: string, finding: string, fix: string): CheckResult => ({ name, status: 'fail', finding, fix });

/** Error text on one line (findings are one line each). */
function oneLine(text: string, max = 400): string {
  const t = text.replace(/\s+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

/** A resolution's error as `detail [CODE]` (the code's generic text left out: the finding says it better). */
function errorText(e: { code: ErrorCode; message: string } | undefined, fallback: string): string {
  if (!e) return fallback;
  const prefix = `${ERROR_CODES[e.code]}: `;
  return `${oneLine(e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message)} [${e.code}]`;
}

function message(err: unknown): string {
  if (isDimeError(err)) return oneLine(`${err.message} [${err.code}]`);
  return oneLine(err instanceof Error ? err.message : String(err));
}

/** Single-quote for a shell command line the operator pastes. */
function sh(text: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Config values read defensively: sections other work adds (gateway, relay LMTP) may not exist yet. */
function optionalString(section: unknown, key: string): string | undefined {
  const v = section && typeof section === 'object' ? (section as Record<string, unknown>)[key] : undefined;
  return typeof v === 'string' && v.length > 0 ? v : undefined;
}

function lmtpListenOf(config: DimeConfig): string | undefined {
  return optionalString(config.relay, 'lmtpListen');
}

function bundleServiceOf(config: DimeConfig): string | undefined {
  return optionalString((config as unknown as Record<string, unknown>).gateway, 'bundleService');
}

function configArg(config: DimeConfig): string {
  return config.source ? ` --config ${sh(config.source)}` : '';
}

function startFix(config: DimeConfig): string {
  return `start the sidecar: dime start${configArg(config)} (or systemctl start dime)`;
}

// ------------------------------------------------------------------------------------ sockets

/** Where to connect for a listen address: a wildcard listener is reached over loopback. */
function connectHost(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '::1';
  return host;
}

function connectOptions(spec: SocketSpec): net.NetConnectOpts {
  return spec.kind === 'unix' ? { path: spec.path } : { host: connectHost(spec.host), port: spec.port };
}

/** A plain connect, bounded; resolves with the open socket. */
function connectSocket(spec: SocketSpec, ms = CONNECT_MS): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(connectOptions(spec));
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no connection within ${ms} ms`));
    }, ms);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      socket.on('error', () => undefined);
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    });
  });
}

function notListening(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ECONNREFUSED' || code === 'ENOENT';
}

/** The first reply of a server (its greeting), bounded. */
async function readGreeting(socket: net.Socket, ms = CONNECT_MS): Promise<Reply> {
  const stream = new ReplyStream(socket);
  try {
    return await stream.read(ms);
  } finally {
    stream.detach();
  }
}

/** Say goodbye politely (the server logs a clean QUIT, not a dropped session), then close. */
function quit(socket: net.Socket): void {
  socket.on('error', () => undefined);
  socket.end('QUIT\r\n');
  setTimeout(() => socket.destroy(), 200).unref();
}

// ------------------------------------------------------------------------------------ config, keystore

function checkConfig(opts: DoctorOptions): { result: CheckResult; config?: DimeConfig } {
  let config: DimeConfig;
  try {
    config = loadConfig(opts.config);
  } catch (err) {
    const text = isDimeError(err) ? err.message : String(err);
    if (isDimeError(err, 'CONFIG_INVALID')) {
      // The message ends with the fix after the last "; " (src/config/config.ts).
      const cut = text.lastIndexOf('; ');
      const fix = cut > 0 ? text.slice(cut + 2) : 'dime config check FILE shows the error';
      return { result: fail('config', oneLine(cut > 0 ? text.slice(0, cut) : text), oneLine(`edit the file: ${fix}`)) };
    }
    return { result: fail('config', message(err), 'give the configuration with --config FILE (or DIME_CONFIG), or create one: dime init --domain DOMAIN') };
  }
  if (opts.domain !== undefined) {
    const d = opts.domain.toLowerCase().replace(/\.$/, '');
    if (!isHostName(d) || !d.includes('.')) throw new DimeError('USAGE', `--domain ${JSON.stringify(opts.domain)} is not a domain name`);
    config = { ...config, domain: d };
  }
  const where = config.source ?? 'embedded defaults (no configuration file)';
  if (!config.domain) {
    return {
      config,
      result: fail('config', `${where}: no domain is set`, config.source ? `add domain = "example.com" at the top of ${config.source}, or give --domain` : 'create the configuration: dime init --domain DOMAIN --dir /var/lib/dime'),
    };
  }
  if (!config.source) return { config, result: warn('config', `${where}; domain ${config.domain}`, 'write a configuration file (dime init does) and give it with --config FILE or DIME_CONFIG') };
  return { config, result: ok('config', `${where} is valid; domain ${config.domain}`) };
}

const KEYSTORE_FIXES: Partial<Record<string, (c: DimeConfig) => string>> = {
  HSM_MODULE_NOT_FOUND: (c) => `install the PKCS#11 module, or correct [keystore] module (now ${c.keystore.module ?? 'unset'})`,
  HSM_TOKEN_NOT_FOUND: (c) => `check the token label with softhsm2-util --show-slots (or the HSM vendor's tool) and [keystore] token (now ${JSON.stringify(c.keystore.token ?? '')})`,
  HSM_BAD_PIN: (c) => `put the token's user PIN in ${c.keystore.pinFile ?? 'the [keystore] pin_file'} (mode 0600) or DIME_HSM_PIN; check the token is not locked`,
  HSM_KEY_NOT_FOUND: (c) => `the token holds no DIME keys under the label prefix ${JSON.stringify(c.keystore.label ?? 'dime')}: correct [keystore] label, or bootstrap a new domain with dime init --hsm-module …`,
  HSM_UNAVAILABLE: () => 'check that the HSM is connected and answering (its vendor tool), then run dime doctor again',
  HSM_UNSUPPORTED: () => 'the HSM must offer EdDSA (Ed25519), secp256k1 ECDH and AES-GCM; use one that does (SoftHSM2 ≥ 2.6 does)',
  KEYSTORE_INSECURE: () => 'make the named file private: chmod 600 FILE (and chown it to the user dime runs as)',
  KEYSTORE_CORRUPT: (c) => `restore ${c.keystore.file} and its companions from the backup`,
  FILE_UNREADABLE: (c) => `restore ${c.keystore.file} from the backup, correct [keystore] file, or bootstrap a new domain with dime init`,
};

interface KeystoreOutcome {
  results: CheckResult[];
  org?: OrgContext;
}

async function checkKeystore(config: DimeConfig, crypto: CryptoBackend): Promise<KeystoreOutcome> {
  // Keystore warnings (a group-readable PIN file, an extractable key) become the check's finding.
  const warnings: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n').filter(Boolean)) {
        try {
          const msg = String((JSON.parse(l) as { msg?: unknown }).msg ?? '');
          // Every open of a file keystore says it is not an HSM; the finding says so already.
          if (msg && !msg.startsWith('file keystore: the organisation private keys')) warnings.push(msg);
        } catch {
          // not a log line
        }
      }
      cb();
    },
  });
  const logger = createLogger({ level: 'warn', destination: sink });
  let org: OrgContext;
  try {
    org = await withTimeout(openOrg(config, { crypto, logger }), KEYSTORE_MS, 'opening the keystore');
  } catch (err) {
    const fix = (isDimeError(err) && KEYSTORE_FIXES[err.code]?.(config)) || `dime keys record${configArg(config)} opens the keystore the same way and shows the whole error`;
    return { results: [fail('keystore', message(err), fix)] };
  }
  const k = org.keystore;
  const what = k.kind === 'file' ? `file ${config.keystore.file} (development keystore, not an HSM)` : `PKCS#11 token ${JSON.stringify(config.keystore.token)} (${config.keystore.module})`;
  const results: CheckResult[] = [];
  try {
    // A test signature proves the POK is usable now (an HSM session, the PIN, the key object).
    const probe = nodeCrypto.randomBytes(32);
    const sig = await withTimeout(k.pok.sign(new Uint8Array(probe)), KEYSTORE_MS, 'a test signature by the POK');
    if (!crypto.ed25519Verify(k.pok.publicKey, new Uint8Array(probe), sig)) {
      results.push(fail('keystore', `${what}: the POK ${k.pok.label} made a signature that does not verify under its public key`, 'the keystore is damaged or the HSM misbehaves: restore the keys from the backup'));
    } else if (warnings.length > 0) {
      results.push(warn('keystore', `${what}: POK ${k.pok.label} ${pokText(k.pok.publicKey)} signs; but: ${oneLine(warnings.join('; '))}`, 'fix what the warning names (a PIN or key file readable by others: chmod 600 FILE)'));
    } else {
      results.push(ok('keystore', `${what}: POK ${k.pok.label} ${pokText(k.pok.publicKey)} signs`));
    }
  } catch (err) {
    results.push(fail('keystore', `${what}: the POK ${k.pok.label} cannot sign: ${message(err)}`, (isDimeError(err) && KEYSTORE_FIXES[err.code]?.(config)) || 'check that the HSM answers, then run dime doctor again'));
  }

  // The org signet peers fetch must be the one the current POK signed.
  try {
    const signet = await org.signets.org(org.domain);
    if (!signet) {
      results.push(fail('org-signet', `no organisational signet of ${org.domain} is published in ${org.signets.dir}`, `the data directory is not the one dime init wrote (data_dir = ${JSON.stringify(config.dataDir)}): correct data_dir, or bootstrap with dime init`));
    } else if (!signetIsCurrent(k, signet)) {
      const signer = signingKeyOf(signet);
      results.push(fail('org-signet', `the published org signet is signed by ${signer ? base64EncodeNoPad(signer) : 'no key'}, not by the current POK ${k.pok.label}: a rotation was not finished`, `finish it: dime keys rotate${configArg(config)} (it re-issues the signet without making another key)`));
    } else {
      const fp = fingerprints(crypto, signet);
      results.push(ok('org-signet', `version ${(await org.signets.orgHistory(org.domain)).length}, signed by ${k.pok.label}, fingerprint ${fp.id ?? fp.full ?? fp.crypto}`));
    }
  } catch (err) {
    results.push(fail('org-signet', message(err), `check ${org.signets.dir} (dime init wrote it)`));
  }
  return { results, org };
}

// ------------------------------------------------------------------------------------ DNS

interface ExpectedRecord {
  record: DimeRecord;
  /** Our current POK, which the published pok= must contain. */
  pok: Uint8Array;
  pokLabel: string;
}

/** The record our keys and configuration call for (`dime keys record`); undefined when the keys did not open. */
async function expectedRecord(org: OrgContext | undefined, config: DimeConfig): Promise<{ expected?: ExpectedRecord; error?: string }> {
  if (!org) return {};
  try {
    const rec = await withTimeout(managementRecord(org.keystore, org.domain, org.crypto, recordOptions(config)), KEYSTORE_MS, 'signing the tls= pin');
    return { expected: { record: rec.record, pok: org.keystore.pok.publicKey, pokLabel: org.keystore.pok.label } };
  } catch (err) {
    // An unreadable certificate: the record is still checked, its pin in the tls-pin check.
    try {
      const rec = await managementRecord(org.keystore, org.domain, org.crypto, { ...(config.relay.hostname ? { dx: [config.relay.hostname] } : {}) });
      return { expected: { record: rec.record, pok: org.keystore.pok.publicKey, pokLabel: org.keystore.pok.label }, error: message(err) };
    } catch {
      return { error: message(err) };
    }
  }
}

/**
 * The TXT line to publish: what is published (policy, dx=, expiry and the rest are the operator's
 * choice), with our POKs and our pin; or our record as `dime keys record` prints it.
 */
function publishLine(domain: string, expected: ExpectedRecord, published: DimeRecord | undefined): string {
  const record: DimeRecord = published
    ? { ...published, poks: expected.record.poks, tls: expected.record.tls, dx: published.dx.length > 0 ? published.dx : expected.record.dx }
    : expected.record;
  return zoneFileLine(domain, formatRecord(record));
}

function dnsResolverConfig(config: ResolverConfig): ResolverConfig {
  // Straight to DNS: a cached copy in Redis would hide what the zone publishes now.
  const c: ResolverConfig = { ...config, deadlineMs: Math.min(config.deadlineMs, DNS_MAX_MS) };
  c.queryTimeoutMs = Math.min(c.queryTimeoutMs, c.deadlineMs);
  delete c.redis;
  delete c.redisSentinels;
  delete c.redisSentinelName;
  delete c.redisCluster;
  return c;
}

function serversText(config: ResolverConfig): string {
  try {
    return resolveServers(config.servers).map(serverLabel).join(', ');
  } catch {
    return config.servers.join(', ');
  }
}

function digHint(config: ResolverConfig, domain: string): string {
  let server = '';
  try {
    const s = resolveServers(config.servers)[0];
    if (s) server = `@${s.host} -p ${s.port} `;
  } catch {
    // no usable server: dig uses the system's
  }
  return `dig ${server}_dx.${domain} TXT +dnssec`;
}

async function lookupRecord(config: DimeConfig, domain: string, crypto: CryptoBackend): Promise<Resolution> {
  const rc = dnsResolverConfig(config.resolver);
  const resolver = createResolver(rc, { crypto, log: createLogger({ level: 'silent' }) });
  try {
    return await resolver.resolve(domain, { recordOnly: true });
  } finally {
    await resolver.close();
  }
}

function checkRecord(config: DimeConfig, domain: string, r: Resolution | Error, exp: { expected?: ExpectedRecord; error?: string }): CheckResult {
  const name = 'dns-record';
  const rc = config.resolver;
  if (r instanceof Error) return fail(name, `_dx.${domain}: the lookup failed: ${message(r)}`, `check [resolver] servers (${serversText(rc)}): ${digHint(rc, domain)}`);
  const e = exp.expected;
  const publish = (published?: DimeRecord) => (e ? `publish in the zone of ${domain}${published ? ', replacing the _dx record there' : ''}: ${publishLine(domain, e, published)}` : `publish the record dime keys record${configArg(config)} prints, in the zone of ${domain}`);
  if (r.status === 'no-record') return fail(name, `_dx.${domain} has no DIME record (${errorText(r.error, 'NXDOMAIN or NODATA')}): peers treat ${domain} as a legacy domain`, publish());
  if (r.status === 'unknown') return fail(name, `_dx.${domain}: no answer from ${serversText(rc)}: ${errorText(r.error, 'unknown')}`, `make the resolver answer ([resolver] servers in ${config.source ?? 'the configuration'}); try ${digHint(rc, domain)}`);
  if (r.status === 'refused' && r.dnssec === 'bogus') return fail(name, `_dx.${domain}: the answer failed DNSSEC validation, so peers refuse the domain (see dnssec)`, 'fix the zone\'s signatures (see the dnssec check)');
  if (r.status !== 'ok' || !r.record) return fail(name, `_dx.${domain}: ${errorText(r.error, r.status)}`, publish());
  const published = r.record;
  if (!e) return warn(name, `_dx.${domain}: pok=${published.poks.map(base64EncodeNoPad).join(', ')}; cannot compare: the keystore did not open`, 'fix the keystore check first');
  if (!published.poks.some((p) => bytesEqual(p, e.pok))) {
    return fail(name, `_dx.${domain} publishes pok=${published.poks.map(base64EncodeNoPad).join(', ')}, not our current POK ${e.pokLabel} ${base64EncodeNoPad(e.pok)}: peers reject our signets`, publish(published));
  }
  const hostname = config.relay.hostname;
  const strip = (h: string) => h.replace(/\.$/, '').toLowerCase();
  if (hostname && published.dx.length > 0 && !published.dx.some((h) => strip(h) === hostname)) {
    return warn(name, `_dx.${domain} has our POK but dx=${published.dx.join(',')} does not name [relay] hostname ${hostname}`, `publish dx=${hostname} (or correct [relay] hostname): ${zoneFileLine(domain, formatRecord({ ...published, dx: [hostname] }))}`);
  }
  return ok(name, `_dx.${domain}: pok= has our ${e.pokLabel}; pol=${published.policy}${published.dx.length ? ` dx=${published.dx.join(',')}` : ' (no dx=: peers use the MX hosts)'}`);
}

function checkDnssec(config: DimeConfig, domain: string, r: Resolution | Error): CheckResult {
  const name = 'dnssec';
  const rc = config.resolver;
  if (r instanceof Error || r.dnssec === undefined) return warn(name, `_dx.${domain}: unknown (DNS gave no answer; see dns-record)`, 'make DNS answer first (see dns-record)');
  if (r.dnssec === 'validated') return ok(name, `_dx.${domain}: validated (AD bit from ${serversText(rc)})`);
  if (r.dnssec === 'bogus') {
    return fail(
      name,
      `_dx.${domain}: bogus: the resolver found the zone's signatures invalid (expired, or not matching the DS at the parent); peers refuse the domain`,
      `re-sign the zone of ${domain} and check its DS at the parent: ${digHint(rc, domain).replace('+dnssec', '+dnssec +cd')} shows the data; delv @SERVER _dx.${domain} TXT shows why it fails`,
    );
  }
  let servers: ReturnType<typeof resolveServers> = [];
  try {
    servers = resolveServers(rc.servers);
  } catch {
    // reported by dns-record
  }
  if (rc.trustAd === 'never') {
    return warn(name, `_dx.${domain}: counted as unsigned: [resolver] trust_ad = "never"`, `set trust_ad = "loopback" and run a local validating resolver (unbound) as [resolver] servers = ["127.0.0.1:53"] (docs/resolver.md)`);
  }
  if (!trustAdFor(rc.trustAd, servers)) {
    const remote = servers.filter((s) => !isLoopback(s.host)).map(serverLabel).join(', ');
    return warn(
      name,
      `_dx.${domain}: counted as unsigned: ${remote} is not on this host, and trust_ad = "loopback" believes only a local validator`,
      'run a local validating resolver (apt-get install unbound) and set [resolver] servers = ["127.0.0.1:53"] (docs/resolver.md); or trust_ad = "always" if that resolver validates on a trusted network',
    );
  }
  return warn(
    name,
    `_dx.${domain}: unsigned: ${serversText(rc)} did not validate the answer (the zone is not signed, or the resolver does not validate); peers accept a self-signed relay certificate only under DNSSEC`,
    `sign the zone of ${domain} (DNSSEC) and publish its DS at the parent; the resolver must validate (unbound does by default) and run on this host (trust_ad = "loopback")`,
  );
}

// ------------------------------------------------------------------------------------ TLS pin and relay

function readCert(file: string): { der: Uint8Array; x509: nodeCrypto.X509Certificate } {
  const der = certificateDer(new Uint8Array(fs.readFileSync(file)));
  return { der, x509: new nodeCrypto.X509Certificate(Buffer.from(der)) };
}

function selfSigned(x: nodeCrypto.X509Certificate): boolean {
  try {
    return x.checkIssued(x) && x.verify(x.publicKey);
  } catch {
    return false;
  }
}

function checkTlsPin(config: DimeConfig, domain: string, r: Resolution | Error, exp: { expected?: ExpectedRecord }, crypto: CryptoBackend): CheckResult {
  const name = 'tls-pin';
  const file = config.relay.tlsCert;
  if (!file) return warn(name, 'no [relay] tls_cert: the relay does not start without a certificate', 'set [relay] tls_cert and tls_key (dime init makes a self-signed RSA certificate), then dime keys record and publish the record');
  let cert: { der: Uint8Array; x509: nodeCrypto.X509Certificate };
  try {
    cert = readCert(file);
  } catch (err) {
    return fail(name, `${file}: ${message(err)}`, `point [relay] tls_cert at the relay's PEM certificate`);
  }
  const published = r instanceof Error ? undefined : r.record;
  const recordFix = exp.expected ? `publish in the zone of ${domain}: ${publishLine(domain, exp.expected, published)}` : `dime keys record${configArg(config)} prints the record with the pin; publish it`;
  const days = (Date.parse(cert.x509.validTo) - Date.now()) / 86_400_000;
  if (days < 0) return fail(name, `${file} expired ${cert.x509.validTo}: peers refuse the relay`, `make a new certificate, point [relay] tls_cert/tls_key at it, restart the relay, then run dime keys record${configArg(config)} and publish the new tls= pin`);
  if (!published) return warn(name, `${file}: no published record to check its pin against (see dns-record)`, recordFix);
  const pin = verifyTlsPin(published, cert.der, crypto);
  if (!pin) {
    if (published.tls.length > 0) return fail(name, `no tls= value of _dx.${domain} pins ${file} (was the certificate changed?): peers refuse the relay`, recordFix);
    if (selfSigned(cert.x509)) return fail(name, `_dx.${domain} has no tls= pin and ${file} is self-signed: peers refuse the relay`, recordFix);
    return warn(name, `_dx.${domain} has no tls= pin; peers must trust ${file} through its CA chain`, recordFix);
  }
  // A pin counts alone only under DNSSEC; otherwise peers also want a CA chain (src/dmtp/client.ts checkDxCertificate).
  if (!(r instanceof Error) && r.dnssec !== 'validated' && selfSigned(cert.x509)) {
    return fail(
      name,
      `tls #${pin.tlsIndex + 1} pins ${file}, but the record is not DNSSEC-validated and the certificate is self-signed: peers accept a pin alone only under DNSSEC, so they refuse the relay`,
      `sign the zone of ${domain} (see the dnssec check), or give the relay a CA-signed certificate for ${config.relay.hostname ?? 'its DX host name'}`,
    );
  }
  if (days < CERT_WARN_DAYS) {
    return warn(name, `tls #${pin.tlsIndex + 1} pins ${file} under pok #${pin.pokIndex + 1}, but it expires ${cert.x509.validTo}`, `renew it before then, and publish the new pin (dime keys record${configArg(config)}) before switching`);
  }
  return ok(name, `tls #${pin.tlsIndex + 1} of _dx.${domain} pins ${file} (pok #${pin.pokIndex + 1}); valid until ${cert.x509.validTo}`);
}

function inetSpec(text: string): SocketSpec | undefined {
  try {
    const s = parseSocketSpec(text);
    return s.kind === 'inet' ? s : undefined;
  } catch {
    return undefined;
  }
}

async function checkRelay(config: DimeConfig): Promise<CheckResult> {
  const name = 'relay';
  const spec = inetSpec(config.relay.listen);
  if (!spec || spec.kind !== 'inet') return fail(name, `[relay] listen ${JSON.stringify(config.relay.listen)} is not inet:HOST:PORT`, 'set [relay] listen = "inet:0.0.0.0:26"');
  const where = config.relay.listen;
  const startsRelay = !!(config.domain && config.relay.tlsCert && config.relay.tlsKey);
  let socket: tls.TLSSocket;
  try {
    socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const host = connectHost(spec.host);
      const s = tls.connect({ host, port: spec.port, minVersion: DMTP_TLS_MIN_VERSION, ciphers: DMTP_TLS_CIPHERS, rejectUnauthorized: false, ...(config.relay.hostname ? { servername: config.relay.hostname } : {}) });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error(`no TLS session within ${CONNECT_MS} ms`));
      }, CONNECT_MS);
      s.once('secureConnect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        s.on('error', () => undefined);
        resolve(s);
      });
      s.once('error', (err) => {
        clearTimeout(timer);
        s.destroy();
        reject(err);
      });
    });
  } catch (err) {
    if (notListening(err)) {
      return fail(name, `nothing listens on ${where}: peers cannot deliver to us or fetch our signets`, startsRelay ? startFix(config) : 'dime start runs the relay only with a domain and [relay] tls_cert/tls_key: set them (dime init does), then start it');
    }
    return fail(name, `${where}: ${message(err)}`, `check that the process on ${where} is the dime relay (DMTP with TLS from the first byte), then restart it`);
  }
  try {
    let banner: Reply;
    try {
      banner = await readGreeting(socket);
      checkBanner(banner);
    } catch (err) {
      return fail(name, `${where} speaks TLS but its greeting is not DMTP: ${message(err)}`, `another service holds ${where}: give the relay its own port in [relay] listen`);
    }
    const served = socket.getPeerX509Certificate();
    const proto = socket.getProtocol() ?? 'TLS';
    if (config.relay.tlsCert && served) {
      try {
        const want = readCert(config.relay.tlsCert).der;
        if (!bytesEqual(new Uint8Array(served.raw), want)) {
          return fail(name, `${where} answers but serves another certificate than [relay] tls_cert ${config.relay.tlsCert}: the published pin does not match what peers see`, 'restart the relay so it loads the configured certificate (systemctl restart dime, or stop and run dime start again)');
        }
      } catch {
        // an unreadable certificate is the tls-pin check's finding
      }
    }
    return ok(name, `${where}: ${banner.code} ${oneLine(replyText(banner), 120)} (${proto})`);
  } finally {
    quit(socket);
  }
}

/** A plaintext greeting check: the dual-mode DMTP port, the relay's LMTP listener. */
async function checkGreeting(name: string, what: string, listen: string, expect: (r: Reply) => void, config: DimeConfig): Promise<CheckResult> {
  let spec: SocketSpec;
  try {
    spec = parseSocketSpec(listen);
  } catch (err) {
    return fail(name, `${what} ${JSON.stringify(listen)}: ${message(err)}`, 'use inet:HOST:PORT or unix:/absolute/path');
  }
  let socket: net.Socket;
  try {
    socket = await connectSocket(spec);
  } catch (err) {
    if (notListening(err)) return fail(name, `nothing listens on ${listen} (${what})`, startFix(config));
    return fail(name, `${listen}: ${message(err)}`, `check what holds ${listen}`);
  }
  try {
    const greeting = await readGreeting(socket);
    expect(greeting);
    return ok(name, `${listen}: ${greeting.code} ${oneLine(replyText(greeting), 120)}`);
  } catch (err) {
    return fail(name, `${listen} answers, but not as the ${what}: ${message(err)}`, `another service holds ${listen}: give the ${what} its own port`);
  } finally {
    quit(socket);
  }
}

async function checkListener(name: string, key: string, listen: string, config: DimeConfig): Promise<CheckResult> {
  let spec: SocketSpec;
  try {
    spec = parseSocketSpec(listen);
  } catch (err) {
    return fail(name, `${key} ${JSON.stringify(listen)}: ${message(err)}`, `correct ${key}: inet:HOST:PORT or unix:/absolute/path`);
  }
  try {
    const s = await connectSocket(spec);
    s.destroy();
    return ok(name, `${listen} accepts connections`);
  } catch (err) {
    if (notListening(err)) return warn(name, `${listen} is not running (${(err as NodeJS.ErrnoException).code})`, startFix(config));
    const code = (err as NodeJS.ErrnoException).code;
    return warn(name, `${listen}: ${message(err)}`, code === 'EACCES' ? `let this user reach the socket (group postfix, mode 0660 on ${spec.kind === 'unix' ? spec.path : listen})` : `check the service on ${listen}`);
  }
}

// ------------------------------------------------------------------------------------ Postfix

interface ToolResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runTool(file: string, args: string[]): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: TOOL_MS, maxBuffer: 4 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (err as { code?: unknown }).code : 0;
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr: stderr || (err && typeof code !== 'number' ? err.message : '') });
    });
  });
}

/** postconf on PATH or where Debian and the BSDs put it. */
function findTool(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  for (const d of dirs) {
    const f = path.join(d, name);
    try {
      fs.accessSync(f, fs.constants.X_OK);
      return f;
    } catch {
      // next
    }
  }
  return undefined;
}

/** Socket names in a milter list: `a, b` or `{ inet:…, connect_timeout=10s }` entries. */
export function milterSockets(value: string): string[] {
  return value
    .replace(/\{\s*([^,}\s]+)[^}]*\}/g, ' $1 ')
    .split(/[\s,]+/)
    .filter((t) => t.length > 0);
}

function isLoopbackName(host: string): boolean {
  return host === 'localhost' || isLoopback(host);
}

/** Does Postfix's socket `theirs` reach our listener `ours`? (unix paths may be relative to the chroot, the queue directory.) */
export function sameSocket(ours: SocketSpec, theirs: string, queueDir: string): boolean {
  const m = /^(inet|unix|local):(.*)$/.exec(theirs.trim());
  if (!m) return false;
  if (m[1] === 'inet') {
    if (ours.kind !== 'inet') return false;
    const hp = /^(?:\[([^\]]+)\]|(.*)):(\d+)$/.exec(m[2]!);
    if (!hp || Number(hp[3]) !== ours.port) return false;
    const host = (hp[1] ?? hp[2] ?? '').toLowerCase();
    const wildcard = ours.host === '0.0.0.0' || ours.host === '::';
    return host === ours.host.toLowerCase() || wildcard || (isLoopbackName(host) && isLoopbackName(ours.host));
  }
  if (ours.kind !== 'unix') return false;
  const p = path.normalize(m[2]!);
  return p === ours.path || path.join(queueDir, p) === ours.path;
}

/** Our listener written the way main.cf names it. */
function postfixForm(ours: SocketSpec, queueDir: string): string {
  if (ours.kind === 'inet') return `inet:${net.isIPv6(connectHost(ours.host)) ? `[${connectHost(ours.host)}]` : connectHost(ours.host)}:${ours.port}`;
  // chrooted smtpd/cleanup resolve unix paths inside the queue directory (docs/milter.md).
  return ours.path.startsWith(`${queueDir}/`) ? `unix:${ours.path.slice(queueDir.length)}` : `unix:${ours.path}`;
}

interface MasterService {
  name: string;
  type: string;
  command: string;
  args: string[];
}

function parseMaster(text: string): MasterService[] {
  return text
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 8)
    .map((f) => ({ name: f[0]!, type: f[1]!, command: f[7]!, args: f.slice(8) }));
}

/** `postconf -P`: `service/type/parameter = value`. */
function parseOverrides(text: string): { service: string; type: string; param: string; value: string }[] {
  const out = [];
  for (const l of text.split('\n')) {
    const eq = l.indexOf(' =');
    if (eq < 0) continue;
    const key = l.slice(0, eq).split('/');
    if (key.length < 3) continue;
    const param = key.pop()!;
    const type = key.pop()!;
    out.push({ service: key.join('/'), type, param, value: l.slice(eq + 2).trim() });
  }
  return out;
}

/** The port (and host) a master.cf inet service listens on: `10027`, `127.0.0.1:10027`, `[::1]:10027`. */
function inetServiceMatches(serviceName: string, spec: SocketSpec): boolean {
  if (spec.kind !== 'inet') return false;
  const m = /^(?:(?:\[([^\]]+)\]|([^:]+)):)?(\d+)$/.exec(serviceName);
  if (!m || Number(m[3]) !== spec.port) return false;
  const host = m[1] ?? m[2];
  return host === undefined || host === spec.host || (isLoopbackName(host) && isLoopbackName(spec.host));
}

async function checkPostfix(config: DimeConfig, dir: string | undefined): Promise<CheckResult[]> {
  const postconf = findTool('postconf');
  if (!postconf) return [warn('postfix', 'postconf is not installed here: the Postfix checks were skipped', 'run dime doctor on the Postfix host, or install Postfix (apt-get install postfix)')];
  const c = dir ? ['-c', dir] : [];
  const pc = `postconf${dir ? ` -c ${sh(dir)}` : ''}`;
  const reload = `postfix${dir ? ` -c ${sh(dir)}` : ''} reload`;
  const params = ['mail_version', 'smtpd_milters', 'non_smtpd_milters', 'milter_default_action', 'queue_directory', 'content_filter'];
  const [main, master, overrides] = await Promise.all([runTool(postconf, [...c, '-h', ...params]), runTool(postconf, [...c, '-M']), runTool(postconf, [...c, '-P'])]);
  const where = dir ?? 'the default configuration directory';
  if (main.code !== 0 || master.code !== 0) {
    return [fail('postfix', `${pc} fails: ${oneLine((main.stderr || master.stderr || `exit ${main.code ?? master.code}`).replace(/^postconf: (fatal: )?/, ''))}`, `give --postfix-config with the directory that holds Postfix's main.cf and master.cf`)];
  }
  const [version = '', smtpdMilters = '', nonSmtpdMilters = '', defaultAction = '', queueDir = '/var/spool/postfix', contentFilter = ''] = main.stdout.split('\n').map((l) => l.trim());
  const services = parseMaster(master.stdout);
  const ov = parseOverrides(overrides.stdout);
  const results: CheckResult[] = [];

  // Running? `postfix status` needs root; without it the answer says nothing.
  const postfixBin = findTool('postfix');
  if (postfixBin && process.getuid?.() === 0) {
    const st = await runTool(postfixBin, [...c, 'status']);
    if (st.code === 0) results.push(ok('postfix', `Postfix ${version} (${where}) is running`));
    else results.push(warn('postfix', `Postfix ${version} (${where}) is not running`, `start it: postfix${dir ? ` -c ${sh(dir)}` : ''} start (or systemctl start postfix)`));
  } else {
    results.push(ok('postfix', `Postfix ${version} (${where})`));
  }

  // 1. Our milter in smtpd_milters / non_smtpd_milters, in main.cf or as a service's -o override.
  let ours: SocketSpec | undefined;
  try {
    ours = parseSocketSpec(config.milter.listen);
  } catch {
    ours = undefined;
  }
  if (ours) {
    const places: string[] = [];
    if (milterSockets(smtpdMilters).some((s) => sameSocket(ours!, s, queueDir))) places.push('main.cf smtpd_milters');
    if (milterSockets(nonSmtpdMilters).some((s) => sameSocket(ours!, s, queueDir))) places.push('main.cf non_smtpd_milters');
    for (const o of ov) if ((o.param === 'smtpd_milters' || o.param === 'non_smtpd_milters') && milterSockets(o.value).some((s) => sameSocket(ours!, s, queueDir))) places.push(`master.cf ${o.service}/${o.type} ${o.param}`);
    const form = postfixForm(ours, queueDir);
    if (places.length === 0) {
      const list = smtpdMilters ? `${smtpdMilters}, ${form}` : form;
      results.push(fail('postfix-milter', `no smtpd_milters of Postfix names our milter ${config.milter.listen}: mail passes without DIME`, `${pc} -e ${sh(`smtpd_milters = ${list}`)} && ${reload}`));
    } else if (defaultAction === 'accept') {
      results.push(warn('postfix-milter', `our milter is in ${places.join(', ')}, but milter_default_action = accept: while the milter is down, mail passes unsealed`, `${pc} -e milter_default_action=tempfail && ${reload}`));
    } else {
      results.push(ok('postfix-milter', `${form} is in ${places.join(', ')}; milter_default_action = ${defaultAction || 'tempfail'}`));
    }
  }

  // 2. The dmtp transport: an LMTP client to the relay.
  const dmtp = services.find((s) => s.name === 'dmtp');
  const transportFix = `${pc} -M ${sh('dmtp/unix=dmtp unix - - n - - lmtp')} && ${reload}`;
  if (!dmtp) results.push(fail('postfix-transport', 'master.cf has no dmtp service: bundles cannot reach the relay', transportFix));
  else if (dmtp.type !== 'unix' || dmtp.command !== 'lmtp') results.push(fail('postfix-transport', `master.cf dmtp is "${dmtp.type} … ${dmtp.command}", not a unix lmtp service: the relay takes bundles over LMTP (one reply per recipient)`, transportFix));
  else results.push(ok('postfix-transport', 'master.cf dmtp is an lmtp transport'));

  // 3. The bundle service: a milter-free smtpd whose content_filter sends everything to dmtp.
  const lmtp = lmtpListenOf(config) ?? DEFAULT_LMTP;
  const bundleText = bundleServiceOf(config);
  const bundle = (bundleText ? inetSpec(bundleText) : undefined) ?? (inetSpec(DEFAULT_BUNDLE_SERVICE) as SocketSpec & { kind: 'inet' });
  const filters = ov.filter((o) => o.param === 'content_filter' && /^dmtp:/.test(o.value));
  const bundleName = bundle.kind === 'inet' ? `${connectHost(bundle.host)}:${bundle.port}` : '127.0.0.1:10027';
  const bundleFix =
    `${pc} -M ${sh(`${bundleName}/inet=${bundleName} inet n - n - - smtpd`)} && ` +
    `${pc} -P ${sh(`${bundleName}/inet/content_filter=dmtp:${lmtp}`)} ${sh(`${bundleName}/inet/smtpd_milters=`)} && ${reload}`;
  if (/^dmtp:/.test(contentFilter)) {
    results.push(fail('postfix-bundle', `main.cf content_filter = ${contentFilter}: every message would go to the relay, plaintext included`, `${pc} -X content_filter && ${reload} (the content_filter belongs on the bundle service only)`));
  } else if (filters.length === 0) {
    results.push(fail('postfix-bundle', 'no master.cf service has content_filter = dmtp:…: sealed bundles cannot be queued for the relay', bundleFix));
  } else {
    const f = (bundleText ? filters.find((o) => inetServiceMatches(o.service, bundle)) : undefined) ?? filters[0]!;
    const milters = ov.find((o) => o.service === f.service && o.type === f.type && o.param === 'smtpd_milters');
    // The nexthop is `inet:HOST:PORT`, `[HOST]:PORT` or `unix:PATH`; a bare one is an inet address.
    const hop = f.value.slice('dmtp:'.length);
    let lmtpSpec: SocketSpec | undefined;
    try {
      lmtpSpec = parseSocketSpec(lmtp);
    } catch {
      lmtpSpec = undefined;
    }
    if (bundleText && !inetServiceMatches(f.service, bundle)) {
      results.push(fail('postfix-bundle', `the milter re-injects bundles to ${bundleText}, but the content_filter = dmtp: service is ${f.service}/${f.type}`, `make them agree: [gateway] bundle_service = "inet:${f.service.includes(':') ? f.service : `127.0.0.1:${f.service}`}", or ${bundleFix}`));
    } else if (lmtpListenOf(config) && lmtpSpec && !sameSocket(lmtpSpec, /^(inet|unix|local):/.test(hop) ? hop : `inet:${hop}`, queueDir)) {
      results.push(fail('postfix-bundle', `${f.service}/${f.type} sends bundles to ${hop}, but the relay's LMTP listener is ${lmtp}`, `${pc} -P ${sh(`${f.service}/${f.type}/content_filter=dmtp:${lmtp}`)} && ${reload}`));
    } else if (milterSockets(milters ? milters.value : smtpdMilters).length > 0) {
      results.push(warn('postfix-bundle', `${f.service}/${f.type} (content_filter = ${f.value}) runs milters (${milters ? milters.value : `main.cf: ${smtpdMilters}`}): bundles would be processed twice`, `${pc} -P ${sh(`${f.service}/${f.type}/smtpd_milters=`)} && ${reload}`));
    } else {
      results.push(ok('postfix-bundle', `${f.service}/${f.type}: content_filter = ${f.value}, no milters`));
    }
  }
  return results;
}

// ------------------------------------------------------------------------------------ Redis

function redisTarget(rc: ResolverConfig): string | undefined {
  // Credentials in a URL are not printed (the password belongs in DIME_REDIS_PASSWORD anyway).
  if (rc.redis) return rc.redis.replace(/\/\/[^@/]*@/, '//');
  if (rc.redisSentinels) return `Sentinels ${rc.redisSentinels.join(', ')} (master ${rc.redisSentinelName})`;
  if (rc.redisCluster) return `Cluster ${rc.redisCluster.join(', ')}`;
  return undefined;
}

async function checkRedis(config: DimeConfig): Promise<CheckResult | undefined> {
  const rc = config.resolver;
  const target = redisTarget(rc);
  if (!target) return undefined;
  const name = 'redis';
  const client = createRedisClient({ ...rc, redisTimeoutMs: Math.max(rc.redisTimeoutMs, 1_000) }) as (ReturnType<typeof createRedisClient> & { ping(): Promise<string> }) | undefined;
  if (!client) return undefined;
  let lastError = '';
  // ioredis reports each failed attempt as an 'error' event; without a listener it prints them.
  client.on('error', (err: Error) => {
    lastError = err.message;
  });
  const fix = `start Redis at ${target} (or correct [resolver] redis in ${config.source ?? 'the configuration'}); its password goes in DIME_REDIS_PASSWORD. Meanwhile each host caches alone`;
  try {
    const t0 = performance.now();
    const until = Date.now() + CONNECT_MS;
    while (client.status !== 'ready' && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    if (client.status !== 'ready') return warn(name, `${target} does not answer${lastError ? `: ${oneLine(lastError)}` : ` within ${CONNECT_MS} ms`}`, fix);
    const pong = await withTimeout(client.ping(), CONNECT_MS, 'PING');
    return ok(name, `${target} answers PING with ${pong} (${(performance.now() - t0).toFixed(0)} ms)`);
  } catch (err) {
    return warn(name, `${target}: ${message(err)}`, fix);
  } finally {
    client.disconnect();
  }
}

// ------------------------------------------------------------------------------------ the command

export interface DoctorReport {
  ok: boolean;
  domain: string | null;
  config: string | null;
  checks: CheckResult[];
  summary: Record<CheckStatus, number>;
}

export async function runDoctor(opts: DoctorOptions): Promise<DoctorReport> {
  const crypto = defaultCrypto();
  const checks: CheckResult[] = [];
  const { result, config } = checkConfig(opts);
  checks.push(result);
  if (config) {
    const domain = config.domain;
    let org: OrgContext | undefined;
    try {
      if (domain) {
        const ks = await checkKeystore(config, crypto);
        org = ks.org;
        checks.push(...ks.results);
      }
      // The network checks are independent: run them together, report them in a fixed order.
      const dnsPart = (async (): Promise<CheckResult[]> => {
        if (!domain) return [];
        const [r, exp] = await Promise.all([lookupRecord(config, domain, crypto).catch((err: unknown) => (err instanceof Error ? err : new Error(String(err)))), expectedRecord(org, config)]);
        return [checkRecord(config, domain, r, exp), checkDnssec(config, domain, r), checkTlsPin(config, domain, r, exp, crypto)];
      })();
      const relayPart = (async (): Promise<CheckResult[]> => {
        const out = [await checkRelay(config)];
        if (config.relay.dualListen) {
          out.push(await checkGreeting('relay-dual', 'dual-mode DMTP listener', config.relay.dualListen, checkBanner, config));
        }
        const lmtp = lmtpListenOf(config);
        if (lmtp) {
          out.push(
            await checkGreeting('relay-lmtp', "relay's LMTP listener", lmtp, (r) => {
              if (r.code !== 220) throw new Error(`greeting ${r.code} ${replyText(r)}`);
            }, config),
          );
        }
        return out;
      })();
      const listenerPart = Promise.all([
        checkListener('milter', '[milter] listen', config.milter.listen, config),
        checkListener('policy', '[policy] listen', config.policy.listen, config),
        checkListener('socketmap', '[policy] socketmap', config.policy.socketmap, config),
      ]);
      const postfixPart = checkPostfix(config, opts.postfixConfig);
      const redisPart = checkRedis(config);
      const parts = await Promise.all([dnsPart, relayPart, listenerPart, postfixPart, redisPart]);
      for (const p of parts) {
        if (Array.isArray(p)) checks.push(...p);
        else if (p) checks.push(p);
      }
    } finally {
      await org?.close().catch(() => undefined);
    }
  }
  const summary = { ok: 0, warn: 0, fail: 0 };
  for (const c of checks) summary[c.status]++;
  return { ok: summary.fail === 0, domain: config?.domain ?? null, config: config?.source ?? null, checks, summary };
}

const MARK: Record<CheckStatus, string> = { ok: '✓', warn: '!', fail: '✗' };

export function formatReport(report: DoctorReport): string {
  let out = '';
  for (const c of report.checks) {
    out += `${MARK[c.status]} ${c.name}: ${c.finding}\n`;
    if (c.fix && c.status !== 'ok') out += `    fix: ${c.fix}\n`;
  }
  const n = report.summary;
  out += `${n.ok} ok, ${n.warn} warning${n.warn === 1 ? '' : 's'}, ${n.fail} failure${n.fail === 1 ? '' : 's'}\n`;
  return out;
}

async function doctor(opts: DoctorOptions): Promise<void> {
  let report: DoctorReport;
  try {
    report = await runDoctor(opts);
  } catch (err) {
    if (!(err instanceof DimeError) || !opts.json) throw err;
    // --json callers read stdout only: give them exactly one object there too.
    process.stdout.write(JSON.stringify({ error: { code: err.code, message: err.message } }) + '\n');
    process.stderr.write(`dime: ${err.message} [${err.code}]\n`);
    throw new ExitStatus(exitStatusFor(err));
  }
  process.stdout.write(opts.json ? JSON.stringify(report) + '\n' : formatReport(report));
  if (!report.ok) throw new ExitStatus(EXIT.negative);
}

export function registerDoctorCommands(program: Command): void {
  program
    .command('doctor')
    .description('check the deployment (configuration, keystore, DNS record and DNSSEC, TLS pin, relay, listeners, Postfix, Redis) and print the fix for each problem')
    .option('--config <file>', 'configuration file (default: $DIME_CONFIG, else /etc/dime/dime.toml, else embedded defaults)')
    .option('--domain <domain>', 'the dark domain to check (default: domain in the configuration)')
    .option('--postfix-config <dir>', "Postfix's configuration directory (postconf -c; default: Postfix's own)")
    .option('--json', 'print exactly one JSON object: {ok, domain, config, checks: [{name, status, finding, fix}], summary}')
    .action((opts: DoctorOptions) => doctor(opts));
}
