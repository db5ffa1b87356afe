import type { Command } from 'commander';
import { loadConfig } from '../config/config.js';

export function registerConfigCommands(program: Command): void {
  const config = program.command('config').description('the configuration file');
  config
    .command('check')
    .description('validate the configuration (default: $DIME_CONFIG, else /etc/dime/dime.toml, else embedded defaults) and print the result')
    .argument('[file]', 'configuration file')
    .option('--json', 'print the effective configuration as one JSON object (secrets left out)')
    .action((file: string | undefined, opts: { json?: boolean }) => {
      const c = loadConfig(file);
      const shown = { ...c, keystore: { ...c.keystore, ...(c.keystore.pin ? { pin: '[from DIME_HSM_PIN]' } : {}) } };
      process.stdout.write(opts.json ? JSON.stringify(shown) + '\n' : `${c.source ?? 'embedded defaults'}: valid\n`);
    });
}
