import type { Command } from 'commander';

export function registerSignetCommands(program: Command): void {
  program.command('signet').description('organisational and user signets');
}
