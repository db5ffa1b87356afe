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
 */
import type { Command } from 'commander';
import { base64EncodeNoPad } from '../dime/base64.js';
import { toHex } from '../dime/bytes.js';
import { armorSignet, encryptionKeyOf, fingerprints, signingKeyOf } from '../dime/signet/index.js';
import { DimeError } from '../errors.js';
import { readPrivateFile } from '../keystore/files.js';
import { openOrg, type OrgContext } from '../keystore/org.js';
import { CUSTODY_MODES, type CustodyMode, type UserInfo } from '../keystore/users.js';
import { configFrom } from './init.js';
import { readInputFile } from './io.js';
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
