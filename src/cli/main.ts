/**
 * `dime`: the sysadmin's command line. Exit status: 0 success, 1 a negative result or bad input
 * (invalid signet, malformed record), 2 usage errors and unreadable files.
 */
import { Command, CommanderError } from 'commander';
import { DimeError } from '../errors.js';
import { registerKeysCommands } from './keys.js';
import { registerRecordCommands } from './record.js';
import { registerSignetCommands } from './signet.js';

export const EXIT = { ok: 0, negative: 1, usage: 2 } as const;

/** Thrown by commands that have already printed their result and only need an exit status. */
export class ExitStatus extends Error {
  constructor(readonly status: number) {
    super(`exit ${status}`);
  }
}

export function exitStatusFor(err: DimeError): number {
  return err.code === 'USAGE' || err.code === 'FILE_UNREADABLE' || err.code === 'FILE_EXISTS' || err.code === 'FILE_WRITE_FAILED' ? EXIT.usage : EXIT.negative;
}

export function buildProgram(): Command {
  const program = new Command('dime')
    .description('DIME sidecar for Postfix and Exim: keys, signets, management records')
    .showHelpAfterError()
    .exitOverride();
  registerKeysCommands(program);
  registerSignetCommands(program);
  registerRecordCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  let status: number = EXIT.ok;
  try {
    await program.parseAsync(argv);
  } catch (err) {
    status = reportError(err);
  }
  process.exitCode = status;
}

function reportError(err: unknown): number {
  if (err instanceof ExitStatus) return err.status;
  if (err instanceof CommanderError) {
    // Help and version requests are successes; commander has printed the message already.
    return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  }
  if (err instanceof DimeError) {
    process.stderr.write(`dime: ${err.message} [${err.code}]\n`);
    return exitStatusFor(err);
  }
  process.stderr.write(`dime: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return EXIT.negative;
}
