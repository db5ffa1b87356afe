/**
 * `dime user add|list|show|rotate|remove`: users of the dark domain and the custody of their keys
 * (docs/keystore.md). Every command reads the configuration (--config FILE, else DIME_CONFIG, else
 * /etc/dime/dime.toml) and opens the keystore: org signatures on user signets come from it.
 *
 *   dime user add ADDRESS [--mode trustful|cautious|paranoid] [--password-file F] [--no-escrow]
 *                         [--request SSR] [--encrypted-key FILE]
 *   dime user rotate ADDRESS [--password-file F] [--request SSR] [--encrypted-key FILE]
 *   dime user remove ADDRESS [--purge-keys]
 *   dime user list | show ADDRESS [--json]
 *   dime user import FILE [--skip-existing] [--json]     one address[,mode[,request[,encrypted-key]]] a line
 */
import * as path from 'node:path';
import type { Command } from 'commander';
import { base64EncodeNoPad } from '../dime/base64.js';
import { toHex } from '../dime/bytes.js';
import { armorSignet, encryptionKeyOf, fingerprints, signingKeyOf } from '../dime/signet/index.js';
import { DimeError, isDimeError, type ErrorCode } from '../errors.js';
import { readPrivateFile } from '../keystore/files.js';
import { openOrg, type OrgContext } from '../keystore/org.js';
import { CUSTODY_MODES, type CustodyMode, type UserInfo } from '../keystore/users.js';
import { configFrom } from './init.js';
import { readInputFile } from './io.js';
import { progress } from './progress.js';
import { loadSignetFile } from './signet.js';

/** A password typed into a file: one line, the final newline is not part of it. */
function readPassword(file: string): string {
  // Refused when others can read it, like every other secret we read.
  const { content } = readPrivateFile(file, { refuseGroup: false, what: 'password file' });
  const text = content.toString('utf8').replace(/\r?\n$/, '');
  if (text.length === 0 || /[\r\n]/.test(text)) throw new DimeError('USAGE', `${file} must hold the password on one line`);
  return text;
}

function describeUser(u: UserInfo, crypto: OrgContext['crypto']): Record<string, unknown> {
  return {
    address: u.address,
    mode: u.mode,
    generation: u.generation,
    escrow: u.escrow,
    passwordSealed: u.passwordSealed,
    published: u.published,
    ...(u.removed ? { removed: u.removed } : {}),
    ...(u.signet
      ? {
          signingKey: base64EncodeNoPad(signingKeyOf(u.signet)!),
          encryptionKey: toHex(encryptionKeyOf(u.signet)!),
          fingerprint: fingerprints(crypto, u.signet).id,
        }
      : {}),
  };
}

function custody(u: UserInfo): string {
  if (u.mode !== 'trustful') return u.mode === 'cautious' ? 'cautious (own encrypted key stored, never opened)' : 'paranoid (public signet only)';
  const seals = [...(u.escrow ? ['escrow'] : []), ...(u.passwordSealed ? ['password'] : [])];
  return `trustful (sealed: ${seals.join(' + ')})`;
}

function line(u: UserInfo, crypto: OrgContext['crypto']): string {
  const state = u.removed ? `removed ${u.removed}` : u.published ? 'published' : 'NOT PUBLISHED';
  return `${u.address}  ${custody(u)}  generation ${u.generation}  ${state}${u.signet ? `  ${fingerprints(crypto, u.signet).id}` : ''}`;
}

async function withOrg<T>(opts: { config?: string }, fn: (org: OrgContext) => Promise<T>): Promise<T> {
  const org = await openOrg(configFrom(opts));
  try {
    return await fn(org);
  } finally {
    await org.close();
  }
}

interface ChangeOptions {
  config?: string;
  mode?: string;
  passwordFile?: string;
  escrow?: boolean;
  request?: string;
  encryptedKey?: string;
  json?: boolean;
}

function changeInputs(opts: ChangeOptions) {
  return {
    ...(opts.passwordFile ? { password: readPassword(opts.passwordFile) } : {}),
    ...(opts.request ? { request: loadSignetFile(opts.request) } : {}),
    ...(opts.encryptedKey ? { encryptedKey: new Uint8Array(readInputFile(opts.encryptedKey)) } : {}),
  };
}

function report(org: OrgContext, u: UserInfo, verb: string, json: boolean | undefined): void {
  if (json) process.stdout.write(JSON.stringify(describeUser(u, org.crypto)) + '\n');
  else process.stdout.write(`${verb}: ${line(u, org.crypto)}\n`);
}

/** One line of an import file, checked before anyone is added. */
interface ImportEntry {
  line: number;
  address: string;
  mode: CustodyMode;
  request?: string;
  encryptedKey?: string;
}

interface ImportFailure {
  line: number;
  address?: string;
  code: ErrorCode;
  message: string;
}

/** An import file has at most this many lines: one user each, and the file is read whole. */
const MAX_IMPORT_LINES = 100_000;

/**
 * Parse the whole file first: a typo on line 900 must not be found after 899 users were added.
 * Files named on a line are relative to the import file's directory.
 */
function parseImportFile(file: string, domain: string): { entries: ImportEntry[]; errors: ImportFailure[] } {
  const text = readInputFile(file).toString('utf8');
  const lines = text.split(/\r?\n/);
  if (lines.at(-1) === '') lines.pop();
  if (lines.length > MAX_IMPORT_LINES) throw new DimeError('USAGE', `${file} has ${lines.length} lines; import at most ${MAX_IMPORT_LINES} at a time`);
  const base = path.dirname(path.resolve(file));
  const entries: ImportEntry[] = [];
  const errors: ImportFailure[] = [];
  const seen = new Map<string, number>();
  lines.forEach((raw, i) => {
    const line = i + 1;
    const text = raw.trim();
    if (text === '' || text.startsWith('#')) return;
    const bad = (message: string, address?: string) => errors.push({ line, ...(address ? { address } : {}), code: 'IMPORT_BAD_LINE', message });
    const fields = text.split(',').map((f) => f.trim());
    if (fields.length > 4) return bad(`${fields.length} fields; expected address[,mode[,request[,encrypted-key]]]`);
    const [addressText = '', modeText = '', request = '', encryptedKey = ''] = fields;
    const address = addressText.toLowerCase();
    const at = address.lastIndexOf('@');
    if (at <= 0 || at === address.length - 1 || /[\s/\\\0]/.test(address) || address.startsWith('.')) return bad(`${JSON.stringify(addressText)} is not an address`);
    if (address.slice(at + 1) !== domain) return bad(`${address} is not in ${domain}`, address);
    const mode = (modeText || 'trustful') as CustodyMode;
    if (!CUSTODY_MODES.includes(mode)) return bad(`mode ${JSON.stringify(modeText)} is not ${CUSTODY_MODES.join(', ')}`, address);
    if (mode === 'trustful' && (request || encryptedKey)) return bad('a trustful user\'s keys are made here: no request or key file', address);
    if (mode !== 'trustful' && !request) return bad(`a ${mode} user brings their own keys: give their signing request (address,${mode},REQUEST${mode === 'cautious' ? ',ENCRYPTED-KEY' : ''})`, address);
    if (mode === 'cautious' && !encryptedKey) return bad('a cautious user also needs their encrypted key file (address,cautious,REQUEST,ENCRYPTED-KEY)', address);
    if (mode === 'paranoid' && encryptedKey) return bad('a paranoid user keeps their key: no encrypted key file', address);
    const earlier = seen.get(address);
    if (earlier !== undefined) return bad(`${address} is already on line ${earlier}`, address);
    seen.set(address, line);
    entries.push({
      line,
      address,
      mode,
      ...(request ? { request: path.resolve(base, request) } : {}),
      ...(encryptedKey ? { encryptedKey: path.resolve(base, encryptedKey) } : {}),
    });
  });
  return { entries, errors };
}

interface ImportOptions {
  config?: string;
  json?: boolean;
  skipExisting?: boolean;
}

/**
 * `dime user import FILE`: every line is reported (added, skipped or failed with its line number);
 * a failed line does not stop the others, and SIGINT/SIGTERM stop after the current user with a
 * report of what was and was not done. Exit 0 only when every line was imported (or skipped).
 */
async function importUsers(file: string, opts: ImportOptions): Promise<void> {
  await withOrg(opts, async (org) => {
    const { entries, errors } = parseImportFile(file, org.domain);
    if (errors.length > 0) {
      for (const e of errors) process.stderr.write(`${file}:${e.line}: ${e.message}\n`);
      if (opts.json) process.stdout.write(JSON.stringify({ file, added: [], skipped: [], failed: errors, notProcessed: entries.map((e) => e.line) }) + '\n');
      throw new DimeError('IMPORT_BAD_LINE', `${file}: ${errors.length} bad line${errors.length === 1 ? '' : 's'} (${errors.map((e) => e.line).join(', ')}); nobody was added`);
    }
    const added: Record<string, unknown>[] = [];
    const skipped: { line: number; address: string }[] = [];
    const failed: ImportFailure[] = [];
    let stopped: NodeJS.Signals | undefined;
    const stop = (signal: NodeJS.Signals) => {
      stopped = signal;
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    const bar = progress('importing users', { total: entries.length });
    let next = 0;
    try {
      for (; next < entries.length && !stopped; next++) {
        const e = entries[next]!;
        bar.update(next, e.address);
        try {
          if (opts.skipExisting) {
            const existing = await org.users.show(e.address).catch((err: unknown) => (isDimeError(err, 'USER_NOT_FOUND') ? undefined : Promise.reject(err)));
            if (existing && !existing.removed) {
              skipped.push({ line: e.line, address: e.address });
              if (!opts.json) bar.print(process.stdout, `${file}:${e.line}: skipped (exists): ${e.address}\n`);
              continue;
            }
          }
          const u = await org.users.add(e.address, {
            mode: e.mode,
            ...(e.request ? { request: loadSignetFile(e.request) } : {}),
            ...(e.encryptedKey ? { encryptedKey: new Uint8Array(readInputFile(e.encryptedKey)) } : {}),
          });
          added.push({ line: e.line, ...describeUser(u, org.crypto) });
          if (!opts.json) bar.print(process.stdout, `${file}:${e.line}: added: ${line(u, org.crypto)}\n`);
        } catch (err) {
          // Anything, even an internal error, is this line's failure; the next line is still tried.
          const f: ImportFailure = isDimeError(err)
            ? { line: e.line, address: e.address, code: err.code, message: err.message }
            : { line: e.line, address: e.address, code: 'IMPORT_INCOMPLETE', message: `internal error: ${(err as Error).message}` };
          failed.push(f);
          bar.print(process.stderr, `${file}:${e.line}: ${e.address}: ${f.message} [${f.code}]\n`);
        }
      }
      bar.update(next);
    } finally {
      bar.done();
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
    const notProcessed = entries.slice(next).map((e) => e.line);
    if (opts.json) {
      process.stdout.write(JSON.stringify({ file, added, skipped, failed, notProcessed, ...(stopped ? { interrupted: stopped } : {}) }) + '\n');
    } else {
      process.stdout.write(`${file}: ${added.length} added, ${skipped.length} skipped, ${failed.length} failed${notProcessed.length ? `, ${notProcessed.length} not processed` : ''} (of ${entries.length})\n`);
    }
    if (failed.length > 0 || notProcessed.length > 0) {
      const parts = [
        ...(failed.length ? [`failed on line${failed.length === 1 ? '' : 's'} ${failed.map((f) => f.line).join(', ')}`] : []),
        ...(stopped ? [`stopped by ${stopped} before line ${notProcessed[0]}; lines ${notProcessed[0]}-${notProcessed.at(-1)} were not imported (run again with --skip-existing)`] : []),
      ];
      throw new DimeError('IMPORT_INCOMPLETE', `${file}: ${parts.join('; ')}`);
    }
  });
}

export function registerUserCommands(program: Command): void {
  const user = program.command('user').description('users of the dark domain and the custody of their keys');

  user
    .command('add')
    .description('add a user: trustful (keys made here and sealed), cautious (their request and encrypted key) or paranoid (their request)')
    .argument('<address>', 'the user\'s address in the domain')
    .option('--mode <mode>', CUSTODY_MODES.join(' | '), 'trustful')
    .option('--password-file <file>', 'trustful: also seal the key with this password (STACIE, magma\'s 1976 format)')
    .option('--no-escrow', 'trustful: no escrow seal; only the password opens the key')
    .option('--request <file>', 'cautious, paranoid: the user\'s signing request')
    .option('--encrypted-key <file>', 'cautious: the user\'s own encrypted key blob, stored as given')
    .option('--config <file>', 'configuration file')
    .option('--json', 'print one JSON object')
    .action((address: string, opts: ChangeOptions) =>
      withOrg(opts, async (org) => {
        if (!CUSTODY_MODES.includes(opts.mode as CustodyMode)) throw new DimeError('USAGE', `--mode must be ${CUSTODY_MODES.join(', ')}`);
        const u = await org.users.add(address, { mode: opts.mode as CustodyMode, ...changeInputs(opts), ...(opts.escrow === false ? { escrow: false } : {}) });
        report(org, u, 'added', opts.json);
      }),
    );

  user
    .command('import')
    .description('add many users from a file: one address[,mode[,request[,encrypted-key]]] a line (# comments); each line reported with its number')
    .argument('<file>', 'the list (files named in it are relative to it); trustful users are sealed with escrow')
    .option('--skip-existing', 'users that already exist are skipped, not failures (re-running an interrupted import)')
    .option('--config <file>', 'configuration file')
    .option('--json', 'print one JSON object: added, skipped, failed (with line numbers), notProcessed')
    .action((file: string, opts: ImportOptions) => importUsers(file, opts));

  user
    .command('list')
    .description('every user with custody mode, key generation and published state')
    .option('--config <file>', 'configuration file')
    .option('--json', 'print one JSON object per line')
    .action((opts: { config?: string; json?: boolean }) =>
      withOrg(opts, async (org) => {
        for (const u of await org.users.list()) process.stdout.write(opts.json ? JSON.stringify(describeUser(u, org.crypto)) + '\n' : `${line(u, org.crypto)}\n`);
      }),
    );

  user
    .command('show')
    .description('a user\'s custody, keys, fingerprints and current signet (armored)')
    .argument('<address>')
    .option('--config <file>', 'configuration file')
    .option('--json', 'print one JSON object')
    .action((address: string, opts: { config?: string; json?: boolean }) =>
      withOrg(opts, async (org) => {
        const u = await org.users.show(address);
        if (opts.json) {
          process.stdout.write(JSON.stringify({ ...describeUser(u, org.crypto), history: u.history.map((s) => fingerprints(org.crypto, s).id), signet: u.signet ? armorSignet(u.signet) : null }) + '\n');
          return;
        }
        const d = describeUser(u, org.crypto);
        process.stdout.write(
          `address         : ${u.address}\n` +
            `custody         : ${custody(u)}\n` +
            `generation      : ${u.generation} (${u.history.length} published signet version${u.history.length === 1 ? '' : 's'})\n` +
            `state           : ${u.removed ? `removed ${u.removed}` : u.published ? 'published' : 'NOT PUBLISHED (the current signet is not this generation\'s)'}\n` +
            (u.signet ? `signing key     : ${d.signingKey}\nencryption key  : ${d.encryptionKey}\nfingerprint     : ${d.fingerprint}\n\n${armorSignet(u.signet)}` : ''),
        );
      }),
    );

  user
    .command('rotate')
    .description('new keys for a user, with a chain-of-custody signature by the previous key')
    .argument('<address>')
    .option('--password-file <file>', 'trustful with a password seal: the password (to seal the new key)')
    .option('--request <file>', 'cautious, paranoid: the new signing request, with its custody signature')
    .option('--encrypted-key <file>', 'cautious: the new encrypted key blob')
    .option('--config <file>', 'configuration file')
    .option('--json', 'print one JSON object')
    .action((address: string, opts: ChangeOptions) =>
      withOrg(opts, async (org) => {
        report(org, await org.users.rotate(address, changeInputs(opts)), 'rotated', opts.json);
      }),
    );

  user
    .command('remove')
    .description('withdraw a user\'s signet (history kept for old mail); --purge-keys also deletes their sealed keys')
    .argument('<address>')
    .option('--purge-keys', 'delete the sealed keys too (old mail to them becomes unreadable)')
    .option('--config <file>', 'configuration file')
    .action((address: string, opts: { config?: string; purgeKeys?: boolean }) =>
      withOrg(opts, async (org) => {
        await org.users.remove(address, { purgeKeys: !!opts.purgeKeys });
        process.stdout.write(`removed: ${address.toLowerCase()}${opts.purgeKeys ? ' (keys purged)' : ' (sealed keys kept)'}\n`);
      }),
    );
}
