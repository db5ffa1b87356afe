/**
 * `dime milter`: run the milter server for Postfix (smtpd_milters / non_smtpd_milters). Until the
 * DIME handlers exist it runs the pass-through handler, which accepts every connection untouched.
 * Logs start and stop as JSON lines on standard error; SIGTERM or SIGINT stops it gracefully.
 */
import type { Command } from 'commander';
import { DimeError } from '../errors.js';
import { createLogger } from '../log.js';
import { passThroughHandler } from '../milter/handler.js';
import { MilterServer } from '../milter/server.js';
import { parseSocketSpec } from '../net/socket.js';
import { stopSignal } from './signals.js';

/** 8899 is the port the loopback rig and the Postfix documentation examples use. */
export const DEFAULT_LISTEN = 'inet:127.0.0.1:8899';
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

interface MilterOptions {
  listen: string;
  logLevel?: string;
}

async function runMilter(opts: MilterOptions): Promise<void> {
  const level = opts.logLevel ?? process.env.DIME_LOG_LEVEL ?? 'info';
  if (!LOG_LEVELS.includes(level)) throw new DimeError('USAGE', `--log-level must be one of ${LOG_LEVELS.join(', ')}, not ${JSON.stringify(level)}`);
  let listen;
  try {
    listen = parseSocketSpec(opts.listen);
  } catch (err) {
    throw new DimeError('USAGE', `--listen: ${(err as Error).message}`, { cause: err });
  }
  const log = createLogger({ level, name: 'dime-milter' });
  const server = new MilterServer({ listen, handler: passThroughHandler, logger: log });
  const address = await server.listen();
  log.info({ event: 'milter.start', listen: address.text, handler: passThroughHandler.name, pid: process.pid }, `dime milter listening on ${address.text}`);

  const signal = await stopSignal();
  log.info({ event: 'milter.stopping', signal, connections: server.connections }, 'dime milter stopping');
  await server.close();
  log.info({ event: 'milter.stop' }, 'dime milter stopped');
}

export function registerMilterCommands(program: Command): void {
  program
    .command('milter')
    .description('run the milter server for Postfix; with no DIME handler configured it passes all mail through untouched')
    .option('--listen <spec>', 'inet:HOST:PORT or unix:/PATH, Postfix syntax (a unix path is the real one, not chroot-relative)', DEFAULT_LISTEN)
    .option('--log-level <level>', `${LOG_LEVELS.join(' | ')} (default: $DIME_LOG_LEVEL or info)`)
    .action((opts: MilterOptions) => runMilter(opts));
}
