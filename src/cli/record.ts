import type { Command } from 'commander';

// Filled in by the management-record work: `dime record generate` and `dime record parse`.
export function registerRecordCommands(program: Command): void {
  program.command('record').description('DIME management records (_dx TXT)');
}
