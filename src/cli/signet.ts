/** `dime signet …`: create, request, sign, show and verify signets as files libdime's tools read. */
import type { Command } from 'commander';
import { defaultCrypto } from '../crypto/index.js';
import { ARMOR_TAGS, dearmorUnchecked } from '../dime/armor.js';
import { base64Encode, base64EncodeNoPad, base64DecodeStrict } from '../dime/base64.js';
import { readUint, utf8 } from '../dime/bytes.js';
import {
  SIGNET_HEADER_LENGTH,
  SOK_PERMISSIONS,
  armorSignet,
  createOrgSignet,
  createSigningRequest,
  decodeSignet,
  detectDialect,
  fieldSpec,
  fieldSpecs,
  fingerprints,
  identifierOf,
  isValidState,
  keysMatchSignet,
  signUserSignet,
  signetTypeOfMagic,
  signingKeyOf,
  structuralState,
  validateSignet,
  type FingerprintKind,
  type Signet,
  type SignetDialect,
  type SignetInfo,
  type SignetState,
  type SignetType,
  type ValidationContext,
} from '../dime/signet/index.js';
import { DimeError, isDimeError } from '../errors.js';
import { readInputFile, writeOutputFile } from './io.js';
import { loadKeysFile } from './keys.js';
import { EXIT, ExitStatus } from './exit.js';

/** Load a signet file: libdime armor (any of the three tags) or the raw binary object. */
export function loadSignetFile(file: string): Signet {
  const raw = readInputFile(file);
  if (raw.includes('-----BEGIN ')) {
    const { data, checksum, expected } = dearmorUnchecked(raw.toString('latin1'), SIGNET_TAGS);
    if (checksum !== expected) throw new DimeError('ARMOR_CRC_MISMATCH', `${file}: file says =${checksum}, content gives =${expected}`);
    return decodeSignet(data);
  }
  return decodeSignet(new Uint8Array(raw));
}

const SIGNET_TAGS = [ARMOR_TAGS.userSignet, ARMOR_TAGS.orgSignet, ARMOR_TAGS.signingRequest];

// ---------------------------------------------------------------------------------------------
// Informational options, generated from the field tables so every text field can be set.

interface InfoOption {
  flag: string;
  id: number;
  repeatable: boolean;
}

/** Option names per field; `--address` is the user's e-mail in `sign`, so field 17 is `--postal-address` there. */
function infoOptions(type: 'org' | 'user', command: 'create' | 'sign'): InfoOption[] {
  const rename: Record<string, string> = { 'phone-number': 'phone', endorsements: 'endorsement' };
  return fieldSpecs(type)
    .filter((s) => s.kind === 'text')
    .map((s) => {
      let flag = s.name.toLowerCase();
      flag = rename[flag] ?? flag;
      if (s.id === 17 && command === 'sign') flag = 'postal-address';
      return { flag, id: s.id, repeatable: !s.unique };
    });
}

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function addInfoOptions(cmd: Command, type: 'org' | 'user', command: 'create' | 'sign'): Command {
  for (const o of infoOptions(type, command)) {
    const spec = fieldSpec(type, o.id)!;
    const help = `field ${o.id} (${spec.name})${o.repeatable ? ', repeatable' : ''}`;
    if (o.repeatable) cmd.option(`--${o.flag} <text>`, help, collect);
    else cmd.option(`--${o.flag} <text>`, help);
  }
  if (command === 'create') cmd.option('--postal-address <text>', 'field 17 (Address), same as --address');
  cmd.option('--undefined <name=value>', 'field 251, an undefined field with its own name, repeatable', collect);
  cmd.option('--photo <file.png>', 'field 252 (Photo), PNG bytes');
  return cmd;
}

function infoFromOptions(type: 'org' | 'user', command: 'create' | 'sign', opts: Record<string, unknown>): SignetInfo {
  const text: { id: number; value: string }[] = [];
  for (const o of infoOptions(type, command)) {
    const v = opts[camel(o.flag)];
    if (v === undefined) continue;
    for (const value of Array.isArray(v) ? (v as string[]) : [v as string]) {
      if (value.length === 0) throw new DimeError('USAGE', `--${o.flag} must not be empty`);
      text.push({ id: o.id, value });
    }
  }
  if (command === 'create' && typeof opts.postalAddress === 'string') {
    if (text.some((t) => t.id === 17)) throw new DimeError('USAGE', 'give --address or --postal-address, not both');
    text.push({ id: 17, value: opts.postalAddress });
  }
  const undefinedFields = ((opts.undefined as string[] | undefined) ?? []).map((nv) => {
    const eq = nv.indexOf('=');
    if (eq <= 0) throw new DimeError('USAGE', `--undefined takes NAME=VALUE, got ${JSON.stringify(nv)}`);
    return { name: nv.slice(0, eq), value: utf8.encode(nv.slice(eq + 1)) };
  });
  const info: SignetInfo = { text, undefined: undefinedFields };
  if (typeof opts.photo === 'string') {
    const png = new Uint8Array(readInputFile(opts.photo));
    if (png.length < 8 || png[0] !== 0x89 || png[1] !== 0x50 || png[2] !== 0x4e || png[3] !== 0x47) throw new DimeError('USAGE', `${opts.photo} is not a PNG file`);
    info.photo = png;
  }
  return info;
}

function parseSok(text: string): { permissions: number; publicKey: Uint8Array } {
  const eq = text.lastIndexOf('=');
  if (eq <= 0 || text.length - eq < 2) throw new DimeError('USAGE', `--sok takes KEY=PERMISSIONS (e.g. ${'<43 base64 chars>'}=signets,messages), got ${JSON.stringify(text)}`);
  const key = base64DecodeStrict(text.slice(0, eq));
  if (key.length !== 32) throw new DimeError('USAGE', '--sok key must be a 32-byte Ed25519 public key in base64');
  let permissions = 0;
  for (const p of text.slice(eq + 1).split(',')) {
    if (p === 'none') continue;
    const bit = SOK_PERMISSIONS[p as keyof typeof SOK_PERMISSIONS];
    if (bit === undefined) throw new DimeError('USAGE', `unknown SOK permission ${JSON.stringify(p)} (signets, messages, tls, software, none)`);
    permissions |= bit;
  }
  return { permissions, publicKey: key };
}

// ---------------------------------------------------------------------------------------------
// Showing a signet to a person.

function displayValue(signet: Signet, id: number, value: Uint8Array, name?: Uint8Array): string {
  const spec = fieldSpec(signet.type, id)!;
  switch (spec.kind) {
    case 'text':
    case 'identifier':
      return utf8.decode(value);
    case 'undefined':
      return `${utf8.decode(name ?? new Uint8Array())} = ${utf8.decode(value)}`;
    case 'photo':
      return `PNG file (${value.length} bytes)`;
    case 'sok': {
      const perms = Object.entries(SOK_PERMISSIONS).filter(([, bit]) => (value[0]! & bit) !== 0).map(([n]) => n);
      return `${base64EncodeNoPad(value.subarray(2))} (may sign: ${perms.join(', ') || 'nothing'})`;
    }
    case 'signing-key':
      return base64EncodeNoPad(signet.dialect === 'prime' ? value : value.subarray(1));
    default:
      return base64EncodeNoPad(value);
  }
}

const TYPE_NAMES: Record<SignetType, string> = { org: 'organisational signet', user: 'user signet', ssr: 'signing request' };
const FP_LABELS: Record<FingerprintKind, string> = { ssr: 'SSR', crypto: 'cryptographic', full: 'full', id: 'ID' };

function showText(signet: Signet): string {
  const crypto = defaultCrypto();
  const id = identifierOf(signet);
  const lines = [`${TYPE_NAMES[signet.type]}${id ? ` for ${id}` : ''}: ${signet.bytes.length} bytes, ${signet.dialect} layout, fields claim level "${structuralState(signet)}"`];
  for (const f of signet.fields) {
    const spec = fieldSpec(signet.type, f.id)!;
    lines.push(`  ${String(f.id).padEnd(4)}${spec.name.padEnd(30)}${displayValue(signet, f.id, f.value, f.name)}`);
  }
  lines.push('fingerprints:');
  for (const [kind, fp] of Object.entries(fingerprints(crypto, signet))) lines.push(`  ${FP_LABELS[kind as FingerprintKind].padEnd(15)}${fp}`);
  return lines.join('\n') + '\n';
}

function showJson(signet: Signet): object {
  return {
    type: signet.type,
    dialect: signet.dialect,
    id: identifierOf(signet),
    size: signet.bytes.length,
    level: structuralState(signet),
    fields: signet.fields.map((f) => ({
      id: f.id,
      name: fieldSpec(signet.type, f.id)!.name,
      ...(f.name ? { fieldName: utf8.decode(f.name) } : {}),
      value: base64Encode(f.value),
      ...(['text', 'identifier', 'undefined'].includes(fieldSpec(signet.type, f.id)!.kind) ? { text: utf8.decode(f.value) } : {}),
    })),
    fingerprints: fingerprints(defaultCrypto(), signet),
  };
}

// ---------------------------------------------------------------------------------------------
// Verification.

export interface VerifyReport {
  type: SignetType;
  id: string | null;
  dialect: SignetDialect;
  state: SignetState;
  fingerprints: Partial<Record<FingerprintKind, string>>;
}

interface VerifyOutcome {
  report: VerifyReport;
  /** Human notes: why the state is what it is, where the POK came from. */
  notes: string[];
  exit: number;
}

/** A file we could identify as a signet but not decode: report malformed/overflow, never a crash. */
function undecodable(data: Uint8Array | undefined, err: DimeError): VerifyOutcome | undefined {
  const type = data && data.length >= 2 ? signetTypeOfMagic(readUint(data, 0, 2)) : undefined;
  if (!type || !data) return undefined;
  let dialect: SignetDialect = 'libdime';
  try {
    dialect = detectDialect(type, data.subarray(SIGNET_HEADER_LENGTH));
  } catch {
    // the layout itself is damaged: keep the default we write, the note says why
  }
  const state: SignetState = err.code === 'OBJECT_TOO_LARGE' || err.code === 'SIGNET_FIELD_OVERFLOW' ? 'overflow' : 'malformed';
  return { report: { type, id: null, dialect, state, fingerprints: {} }, notes: [`${err.message} [${err.code}]`], exit: EXIT.negative };
}

function readSignetForVerify(file: string): { signet?: Signet; outcome?: VerifyOutcome } {
  const raw = readInputFile(file);
  let data: Uint8Array | undefined;
  try {
    if (raw.includes('-----BEGIN ')) {
      const d = dearmorUnchecked(raw.toString('latin1'), SIGNET_TAGS);
      data = d.data;
      if (d.checksum !== d.expected) throw new DimeError('ARMOR_CRC_MISMATCH', `file says =${d.checksum}, content gives =${d.expected}`);
    } else {
      data = new Uint8Array(raw);
    }
    return { signet: decodeSignet(data) };
  } catch (err) {
    if (!isDimeError(err)) throw err;
    const outcome = undecodable(data, err);
    // Not recognisably a signet at all: that is an unreadable input, not a verdict.
    if (!outcome) throw new DimeError('FILE_UNREADABLE', `${file} is not a signet: ${err.message}`, { cause: err });
    return { outcome };
  }
}

function parsePok(text: string): Uint8Array {
  if (text.length !== 43) throw new DimeError('USAGE', `--pok must be 43 characters of unpadded base64 (the pok= value), got ${text.length}`);
  try {
    return base64DecodeStrict(text);
  } catch (err) {
    throw new DimeError('USAGE', `--pok ${JSON.stringify(text)} is not base64`, { cause: err });
  }
}

export function verifySignetFile(file: string, opts: { org?: string; pok?: string[]; previous?: string }): VerifyOutcome {
  const crypto = defaultCrypto();
  const { signet, outcome } = readSignetForVerify(file);
  if (outcome) return outcome;
  const s = signet!;
  const notes: string[] = [];
  const poks = (opts.pok ?? []).map(parsePok);
  const ctx: ValidationContext = {};

  if (s.type === 'org') {
    if (opts.org) throw new DimeError('USAGE', '--org is for user signets; check an organisational signet with --pok');
    if (opts.previous) throw new DimeError('USAGE', 'organisational signets have no chain of custody (--previous is for user signets and requests)');
    if (poks.length > 0) ctx.poks = poks;
    else {
      const own = signingKeyOf(s);
      ctx.poks = own ? [own] : [];
      notes.push("POK taken from the signet's own field 1: this checks self-consistency, not the DNS record (give --pok)");
    }
  } else {
    if (opts.previous) ctx.previous = loadSignetFile(opts.previous);
    if (s.type === 'ssr' && opts.org) throw new DimeError('USAGE', '--org applies to user signets, not signing requests');
    if (opts.org) {
      const org = loadSignetFile(opts.org);
      if (org.type !== 'org') throw new DimeError('USAGE', `--org ${opts.org} is a ${org.type} signet, not an organisational one`);
      const orgPoks = poks.length > 0 ? poks : [signingKeyOf(org) ?? new Uint8Array()];
      const orgCheck = validateSignet(crypto, org, { poks: orgPoks });
      if (!isValidState(orgCheck.state)) {
        throw new DimeError('SIGNET_BAD_ARGUMENT', `the organisational signet ${opts.org} is ${orgCheck.state}${orgCheck.reason ? ` (${orgCheck.reason})` : ''}`);
      }
      if (poks.length === 0) notes.push("organisational signet trusted on its own POK (give --pok to check it against the DNS record)");
      ctx.org = org;
    } else if (poks.length > 0 && s.type === 'user') {
      throw new DimeError('USAGE', 'a user signet is checked against its organisational signet: give --org ORG.signet (and --pok for that signet)');
    }
  }

  const result = validateSignet(crypto, s, ctx);
  if (result.reason) notes.unshift(result.reason);
  const highest = structuralState(s);
  const valid = isValidState(result.state) && result.state === highest;
  return {
    report: { type: s.type, id: identifierOf(s), dialect: s.dialect, state: result.state, fingerprints: fingerprints(crypto, s) },
    notes,
    exit: valid ? EXIT.ok : EXIT.negative,
  };
}

function printVerify(file: string, o: VerifyOutcome, json: boolean | undefined): void {
  if (json) {
    process.stdout.write(JSON.stringify(o.report) + '\n');
    return;
  }
  const r = o.report;
  const lines = [
    `file        : ${file}`,
    `type        : ${r.type} (${r.dialect} layout)`,
    `id          : ${r.id ?? '-'}`,
    `state       : ${r.state}${o.exit === EXIT.ok ? ' (valid)' : ' (NOT valid)'}`,
    ...o.notes.map((n) => `note        : ${n}`),
    ...Object.entries(r.fingerprints).map(([k, v]) => `fp ${k.padEnd(9)}: ${v}`),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

// ---------------------------------------------------------------------------------------------

function requireKeys(file: string, type: 'org' | 'user', option: string) {
  const keys = loadKeysFile(file);
  if (keys.type !== type) throw new DimeError('USAGE', `${option} ${file} holds ${keys.type} keys, ${type} keys are needed`);
  return keys;
}

export function registerSignetCommands(program: Command): void {
  const signet = program.command('signet').description('organisational and user signets');

  addInfoOptions(
    signet
      .command('create')
      .description('create an organisational signet from org keys (POK, encryption key, informational fields, domain)')
      .requiredOption('--keys <file>', 'organisation keys file')
      .requiredOption('--domain <domain>', 'the organisation domain (field 254)')
      .option('--sok <key=permissions>', 'secondary organisational key, base64 Ed25519 key = signets,messages,tls,software (repeatable)', collect),
    'org',
    'create',
  )
    .requiredOption('--out <file>', 'signet file to write')
    .option('--force', 'replace an existing file')
    .action(async (opts: Record<string, unknown> & { keys: string; domain: string; out: string; force?: boolean; sok?: string[] }) => {
      const crypto = defaultCrypto();
      const keys = requireKeys(opts.keys, 'org', '--keys');
      const s = await createOrgSignet({
        signer: crypto.ed25519Signer(keys.signingKey),
        encryptionKey: crypto.secp256k1PublicKey(keys.encryptionKey),
        secondaryKeys: (opts.sok ?? []).map(parseSok),
        info: infoFromOptions('org', 'create', opts),
        domain: opts.domain,
      });
      writeOutputFile(opts.out, armorSignet(s), { mode: 0o644, force: opts.force });
      process.stdout.write(`${opts.out}: organisational signet for ${opts.domain}, pok=${base64EncodeNoPad(signingKeyOf(s)!)}\n`);
    });

  signet
    .command('request')
    .description('create a signet signing request (SSR) from user keys; with --previous-keys, a rotation signed for chain of custody')
    .requiredOption('--keys <file>', 'user keys file (the new keys)')
    .option('--previous-keys <file>', 'the user keys being replaced')
    .requiredOption('--out <file>', 'request file to write')
    .option('--force', 'replace an existing file')
    .action(async (opts: { keys: string; previousKeys?: string; out: string; force?: boolean }) => {
      const crypto = defaultCrypto();
      const keys = requireKeys(opts.keys, 'user', '--keys');
      const previous = opts.previousKeys ? requireKeys(opts.previousKeys, 'user', '--previous-keys') : undefined;
      const s = await createSigningRequest({
        signer: crypto.ed25519Signer(keys.signingKey),
        encryptionKey: crypto.secp256k1PublicKey(keys.encryptionKey),
        ...(previous ? { previousSigner: crypto.ed25519Signer(previous.signingKey) } : {}),
      });
      writeOutputFile(opts.out, armorSignet(s), { mode: 0o644, force: opts.force });
      process.stdout.write(`${opts.out}: signing request${previous ? ' with chain-of-custody signature' : ''}\n`);
    });

  addInfoOptions(
    signet
      .command('sign')
      .description("sign a user's signing request with the organisation's key, making the user signet")
      .argument('<request>', 'signing request (SSR) file')
      .requiredOption('--org-keys <file>', 'organisation keys file')
      .requiredOption('--address <address>', "the user's e-mail address (field 254)")
      .option('--previous <file>', "the user's previous signet, to check the request's chain-of-custody signature"),
    'user',
    'sign',
  )
    .requiredOption('--out <file>', 'signet file to write')
    .option('--force', 'replace an existing file')
    .action(async (request: string, opts: Record<string, unknown> & { orgKeys: string; address: string; previous?: string; out: string; force?: boolean }) => {
      const crypto = defaultCrypto();
      if (!/^[^@\s]+@[^@\s]+$/.test(opts.address)) throw new DimeError('USAGE', `--address must be an e-mail address, got ${JSON.stringify(opts.address)}`);
      const keys = requireKeys(opts.orgKeys, 'org', '--org-keys');
      const ssr = loadSignetFile(request);
      const s = await signUserSignet(crypto, ssr, {
        orgSigner: crypto.ed25519Signer(keys.signingKey),
        address: opts.address,
        info: infoFromOptions('user', 'sign', opts),
        ...(opts.previous ? { previous: loadSignetFile(opts.previous) } : {}),
      });
      writeOutputFile(opts.out, armorSignet(s), { mode: 0o644, force: opts.force });
      process.stdout.write(`${opts.out}: user signet for ${opts.address}\n`);
    });

  signet
    .command('show')
    .description('list the fields and fingerprints of a signet (does not verify it: use verify)')
    .argument('<file>', 'signet or signing request (armored or binary)')
    .option('--json', 'print one JSON object')
    .action((file: string, opts: { json?: boolean }) => {
      const s = loadSignetFile(file);
      process.stdout.write(opts.json ? JSON.stringify(showJson(s)) + '\n' : showText(s));
    });

  signet
    .command('verify')
    .description('validate a signet: exit 0 when valid at its highest present level, 1 when not, 2 on usage or unreadable files')
    .argument('<file>', 'signet or signing request (armored or binary)')
    .option('--org <file>', "user signets: the organisation's signet")
    .option('--pok <base64>', 'a POK from the management record (repeatable): checks the org signet against it', collect)
    .option('--previous <file>', "the user's previous signet, for the chain of custody")
    .option('--json', 'print exactly one JSON object')
    .action((file: string, opts: { org?: string; pok?: string[]; previous?: string; json?: boolean }) => {
      let outcome: VerifyOutcome;
      try {
        outcome = verifySignetFile(file, opts);
      } catch (err) {
        if (opts.json && isDimeError(err)) process.stdout.write(JSON.stringify({ error: { code: err.code, message: err.message } }) + '\n');
        throw err;
      }
      printVerify(file, outcome, opts.json);
      if (outcome.exit !== EXIT.ok) throw new ExitStatus(outcome.exit);
    });

  signet
    .command('check-keys')
    .description('check that a keys file holds the private halves of a signet')
    .argument('<signet>', 'signet or signing request')
    .requiredOption('--keys <file>', 'keys file')
    .action((file: string, opts: { keys: string }) => {
      const s = loadSignetFile(file);
      const keys = loadKeysFile(opts.keys);
      const ok = keysMatchSignet(defaultCrypto(), s, keys);
      process.stdout.write(ok ? 'keys match the signet\n' : 'keys do NOT match the signet\n');
      if (!ok) throw new ExitStatus(EXIT.negative);
    });
}

