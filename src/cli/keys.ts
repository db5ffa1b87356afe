import type { Command } from 'commander';
import { defaultCrypto } from '../crypto/index.js';
import { base64EncodeNoPad } from '../dime/base64.js';
import { toHex } from '../dime/bytes.js';
import { armorKeys, dearmorKeys, generateKeys, type DimeKeys } from '../dime/keys.js';
import { DimeError } from '../errors.js';
import { readInputText, writeOutputFile } from './io.js';

export function loadKeysFile(file: string): DimeKeys {
  return dearmorKeys(readInputText(file));
}

export function registerKeysCommands(program: Command): void {
  const keys = program.command('keys').description('organisation and user private keys files');

  keys
    .command('generate')
    .description('generate an Ed25519 signing key and a secp256k1 encryption key into a keys file (mode 0600)')
    .option('--org <domain>', 'keys for an organisation')
    .option('--user <address>', 'keys for a user')
    .requiredOption('--out <file>', 'keys file to create')
    .option('--force', 'replace an existing file')
    .action((opts: { org?: string; user?: string; out: string; force?: boolean }) => {
      if (!!opts.org === !!opts.user) throw new DimeError('USAGE', 'give exactly one of --org DOMAIN or --user ADDRESS');
      const generated = generateKeys(opts.org ? 'org' : 'user', defaultCrypto());
      writeOutputFile(opts.out, armorKeys(generated), { mode: 0o600, force: opts.force });
      process.stdout.write(`${opts.out}: ${generated.type} keys for ${opts.org ?? opts.user}\n`);
      process.stderr.write(`warning: ${opts.out} holds unencrypted private keys (mode 0600); it is not an HSM: keep it off shared or backed-up disks\n`);
    });

  keys
    .command('show')
    .description('print the public halves of a keys file (never the private keys)')
    .argument('<file>', 'keys file')
    .option('--json', 'print one JSON object')
    .action((file: string, opts: { json?: boolean }) => {
      const k = loadKeysFile(file);
      const crypto = defaultCrypto();
      const signing = crypto.ed25519PublicKey(k.signingKey);
      const encryption = crypto.secp256k1PublicKey(k.encryptionKey);
      const info = {
        type: k.type,
        dialect: k.dialect,
        signingKey: base64EncodeNoPad(signing),
        encryptionKey: toHex(encryption),
      };
      if (opts.json) process.stdout.write(JSON.stringify(info) + '\n');
      else {
        process.stdout.write(
          `type            : ${info.type} (${info.dialect} layout)\n` +
            `signing key     : ${info.signingKey}${k.type === 'org' ? '  (pok= value)' : ''}\n` +
            `encryption key  : ${info.encryptionKey}\n`,
        );
      }
    });
}
