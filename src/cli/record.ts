/**
 * `dime record generate` and `dime record parse`: the `_dx.<domain>` TXT management record
 * (docs/management-record.md). The codec is src/dime/record.ts; this layer reads files and
 * turns bad option values into USAGE errors (exit 2).
 */
import { X509Certificate } from 'node:crypto';
import type { Command } from 'commander';
import { defaultCrypto } from '../crypto/index.js';
import { ARMOR_TAGS, dearmor } from '../dime/armor.js';
import { base64DecodeStrict, base64Encode, base64EncodeNoPad } from '../dime/base64.js';
import { decodeKeys } from '../dime/keys.js';
import {
  MAX_EXPIRY_DAYS,
  POLICIES,
  SUBDOMAIN_POLICIES,
  certificateDer,
  formatRecord,
  isHostName,
  parsePolicy,
  parseRecord,
  parseSubdomainPolicy,
  recordOutputLine,
  signTlsPin,
  verifyTlsPin,
  zoneFileLine,
  type DimeRecord,
  type TlsPinMatch,
} from '../dime/record.js';
import { DimeError } from '../errors.js';
import { readInputFile, readInputText } from './io.js';
import { EXIT, ExitStatus, exitStatusFor } from './exit.js';

const ED25519_SEED_BYTES = 32;

/**
 * The POK seed from `--keys`: our org keys file (ORGANIZATIONAL KEY armor) or libdime's
 * `ED25519 PRIVATE KEY` armor (what genrec -k reads). A user's keys file is refused: its signing
 * key is not a POK, and a record built from it would pin nothing that peers trust.
 */
export function loadPokSeed(file: string): Uint8Array {
  const text = readInputText(file);
  const { tag, data } = dearmor(text, [ARMOR_TAGS.orgKey, ARMOR_TAGS.userKey, ARMOR_TAGS.ed25519PrivateKey]);
  if (tag === ARMOR_TAGS.ed25519PrivateKey) {
    if (data.length !== ED25519_SEED_BYTES) {
      throw new DimeError('KEYS_BAD_FIELD', `${file}: an ED25519 PRIVATE KEY must hold a ${ED25519_SEED_BYTES}-byte seed, not ${data.length} bytes`);
    }
    return data;
  }
  const keys = decodeKeys(data);
  if (keys.type !== 'org') {
    throw new DimeError('USAGE', `${file} holds a user's keys; --keys needs the organisation's keys file (its signing key is the POK)`);
  }
  return keys.signingKey;
}

/** DER of the first certificate in a PEM or DER file, checked to parse as X.509. */
export function loadCertificate(file: string): Uint8Array {
  const der = certificateDer(new Uint8Array(readInputFile(file)));
  try {
    new X509Certificate(der);
  } catch (err) {
    throw new DimeError('TLS_BAD_CERTIFICATE', `${file}: ${(err as Error).message}`, { cause: err });
  }
  return der;
}

/** Repeatable options. No commander default, so help does not print `(default: [])`. */
function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

interface GenerateOptions {
  keys: string;
  pok?: string[];
  dx?: string[];
  policy?: string;
  subdomain?: string;
  expiry?: string;
  tlsCert?: string[];
  syndicates?: string;
  zone?: string;
}

/** Turn option strings into a record, every bad value a USAGE error naming its option. */
function recordFromOptions(opts: GenerateOptions): DimeRecord {
  const crypto = defaultCrypto();
  const seed = loadPokSeed(opts.keys);
  const poks = [crypto.ed25519PublicKey(seed)];
  for (const extra of opts.pok ?? []) {
    let key: Uint8Array | undefined;
    try {
      key = extra.length === 43 ? base64DecodeStrict(extra) : undefined;
    } catch {
      key = undefined;
    }
    if (!key) throw new DimeError('USAGE', `--pok ${JSON.stringify(extra)} is not 43 characters of unpadded base64 (a 32-byte Ed25519 key)`);
    poks.push(key);
  }

  const policy = opts.policy === undefined ? 'experimental' : parsePolicy(opts.policy);
  if (!policy) throw new DimeError('USAGE', `--policy must be ${POLICIES.join(', ')}, not ${JSON.stringify(opts.policy)}`);
  const subdomain = opts.subdomain === undefined ? 'strict' : parseSubdomainPolicy(opts.subdomain);
  if (!subdomain) throw new DimeError('USAGE', `--subdomain must be ${SUBDOMAIN_POLICIES.join(', ')}, not ${JSON.stringify(opts.subdomain)}`);
  const dx = opts.dx ?? [];
  for (const host of dx) {
    if (!isHostName(host)) throw new DimeError('USAGE', `--dx ${JSON.stringify(host)} is not a host name`);
  }
  let expiryDays: number | undefined;
  if (opts.expiry !== undefined) {
    expiryDays = /^[0-9]{1,6}$/.test(opts.expiry) ? Number(opts.expiry) : NaN;
    if (!(expiryDays >= 1 && expiryDays <= MAX_EXPIRY_DAYS)) {
      throw new DimeError('USAGE', `--expiry must be a whole number of days from 1 to ${MAX_EXPIRY_DAYS}, not ${JSON.stringify(opts.expiry)}`);
    }
  }
  if (opts.zone !== undefined && !isHostName(opts.zone)) throw new DimeError('USAGE', `--zone ${JSON.stringify(opts.zone)} is not a domain name`);

  // Every certificate is pinned by the --keys POK, like genrec's -c after its -k.
  const tls = (opts.tlsCert ?? []).map((file) => signTlsPin(seed, loadCertificate(file), crypto));
  const record: DimeRecord = { version: 1, poks, tls, policy, subdomain, dx };
  if (expiryDays !== undefined) record.expiryDays = expiryDays;
  if (opts.syndicates !== undefined) record.syndicates = opts.syndicates;
  return record;
}

function generate(opts: GenerateOptions): void {
  const record = recordFromOptions(opts);
  let text: string;
  try {
    text = formatRecord(record);
  } catch (err) {
    // What is left here is an option value the record cannot carry (e.g. a --syndicates with ';').
    if (err instanceof DimeError && err.code.startsWith('RECORD_')) throw new DimeError('USAGE', err.message, { cause: err });
    throw err;
  }
  let out = recordOutputLine(text) + '\n';
  if (opts.zone !== undefined) out += zoneFileLine(opts.zone, text) + '\n';
  process.stdout.write(out);
}

interface ParseOptions {
  json?: boolean;
  cert?: string;
}

function recordJson(record: DimeRecord, pin: TlsPinMatch | undefined, checkedPin: boolean): Record<string, unknown> {
  const json: Record<string, unknown> = {
    version: record.version,
    poks: record.poks.map(base64Encode),
    tls: record.tls.map(base64Encode),
    policy: record.policy,
    subdomain: record.subdomain,
    dx: record.dx,
    expiryDays: record.expiryDays ?? null,
    syndicates: record.syndicates ?? null,
  };
  if (checkedPin) {
    json.tlsPin = pin ? { verified: true, pokIndex: pin.pokIndex, tlsIndex: pin.tlsIndex, pok: base64Encode(pin.pok) } : { verified: false };
  }
  return json;
}

function recordHuman(record: DimeRecord, pin: TlsPinMatch | undefined, checkedPin: boolean): string {
  const line = (label: string, value: string): string => `${label.padEnd(11)} : ${value}\n`;
  let out = line('version', String(record.version));
  for (const pok of record.poks) out += line('pok', base64EncodeNoPad(pok));
  if (record.tls.length === 0) out += line('tls', '(none)');
  for (const sig of record.tls) out += line('tls', base64EncodeNoPad(sig));
  out += line('policy', record.policy);
  out += line('subdomain', record.subdomain);
  if (record.dx.length === 0) out += line('dx', '(none: deliver to the MX hosts)');
  for (const host of record.dx) out += line('dx', host);
  out += line('expiry', record.expiryDays === undefined ? '(none)' : `${record.expiryDays} days`);
  out += line('syndicates', record.syndicates ?? '(none)');
  if (checkedPin) {
    out += line(
      'tls pin',
      pin
        ? `certificate pinned: tls #${pin.tlsIndex + 1} verifies under pok #${pin.pokIndex + 1} (${base64EncodeNoPad(pin.pok)})`
        : record.tls.length === 0
          ? 'NOT pinned: the record has no tls= value'
          : 'NOT pinned: no tls= value is a pok signature over SHA-512 of this certificate',
    );
  }
  return out;
}

function parse(value: string, opts: ParseOptions): void {
  try {
    const record = parseRecord(value);
    const checkedPin = opts.cert !== undefined;
    const pin = checkedPin ? verifyTlsPin(record, loadCertificate(opts.cert as string), defaultCrypto()) : undefined;
    process.stdout.write(opts.json ? JSON.stringify(recordJson(record, pin, checkedPin)) + '\n' : recordHuman(record, pin, checkedPin));
    if (checkedPin && !pin) throw new ExitStatus(EXIT.negative);
  } catch (err) {
    if (!(err instanceof DimeError) || !opts.json) throw err;
    // --json callers read stdout only: give them exactly one object there too.
    process.stdout.write(JSON.stringify({ error: { code: err.code, message: err.message } }) + '\n');
    process.stderr.write(`dime: ${err.message} [${err.code}]\n`);
    throw new ExitStatus(exitStatusFor(err));
  }
}

export function registerRecordCommands(program: Command): void {
  const record = program.command('record').description('DIME management records (the _dx.<domain> TXT record)');

  record
    .command('generate')
    .description('print the _dx TXT record value for an organisation (split into quoted strings when over 255 characters)')
    .requiredOption('--keys <file>', 'organisation keys file, or an ED25519 PRIVATE KEY file as genrec -k takes')
    .option('--pok <base64>', 'another POK to publish alongside (key rotation); repeatable', collect)
    .option('--dx <host>', 'DX host, tried in the order given; repeatable (none: peers use the MX hosts)', collect)
    .option('--policy <policy>', `message policy: ${POLICIES.join(' | ')} (default experimental)`)
    .option('--subdomain <policy>', `subdomain policy: ${SUBDOMAIN_POLICIES.join(' | ')} (default strict)`)
    .option('--expiry <days>', 'exp=: days a peer may cache the record')
    .option('--tls-cert <file>', 'PEM or DER certificate of a DMTP server to pin with tls=; repeatable', collect)
    .option('--syndicates <value>', 'syn= value (published verbatim; no software reads it yet)')
    .option('--zone <domain>', 'also print a zone-file line for _dx.<domain>')
    .action((opts: GenerateOptions) => generate(opts));

  record
    .command('parse')
    .description('check and show a management record (bare value or quoted "…" "…" strings)')
    .argument('<value>', 'the TXT record value')
    .option('--json', 'print one JSON object (byte values as base64)')
    .option('--cert <file>', 'also check that a tls= value pins this PEM or DER certificate (exit 1 if none does)')
    .action((value: string, opts: ParseOptions) => parse(value, opts));
}
