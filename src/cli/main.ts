/** `dime`: the sysadmin's command line. Exit statuses are defined in exit.ts. */
import { Command, CommanderError } from 'commander';
import { DimeError } from '../errors.js';
import { EXIT, ExitStatus, exitStatusFor } from './exit.js';
import { registerConfigCommands } from './config.js';
import { registerDemoCommands } from './demo.js';
import { registerDoctorCommands } from './doctor.js';
import { registerInitCommands } from './init.js';
import { registerUserCommands } from './user.js';
import { registerStartCommands } from './start.js';
import { registerRelayCommands } from './relay.js';
import { registerResolveCommands } from './resolve.js';
import { registerKeysCommands } from './keys.js';
import { registerMessageCommands } from './message.js';
import { registerRecordCommands } from './record.js';
import { registerMilterCommands } from './milter.js';
import { registerPolicyCommands } from './policy.js';
import { registerSignetCommands } from './signet.js';

export function buildProgram(): Command {
  const program = new Command('dime')
    .description('DIME sidecar for Postfix and Exim: keys, signets, management records')
    .showHelpAfterError()
    .exitOverride();
  registerKeysCommands(program);
  registerSignetCommands(program);
  registerRecordCommands(program);
  registerMilterCommands(program);
  registerPolicyCommands(program);
  registerMessageCommands(program);
  registerConfigCommands(program);
  registerDemoCommands(program);
  registerStartCommands(program);
  registerInitCommands(program);
  registerUserCommands(program);
  registerRelayCommands(program);
  registerResolveCommands(program);
  registerDoctorCommands(program);
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
