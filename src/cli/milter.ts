/**
 * `dime milter`: run the milter server for Postfix (smtpd_milters / non_smtpd_milters) on its own,
 * for split deployments. With a configuration that names a dark domain it runs the gateway
 * (docs/mail-flow.md: sealing submissions, opening inbound DIME mail); without one, the pass-through
 * handler, which accepts every connection untouched. Logs are JSON lines on standard error;
 * SIGTERM or SIGINT stops it gracefully.
 */
import type { Command } from 'commander';
import { DimeError } from '../errors.js';
import { createLogger } from '../log.js';
import { loadConfig } from '../config/config.js';
import { openGateway, type OpenedGateway } from '../gateway/open.js';
import { passThroughHandler } from '../milter/handler.js';
import { MilterServer } from '../milter/server.js';
import { parseSocketSpec } from '../net/socket.js';
import { stopSignal } from './signals.js';

/** 8899 is the port the loopback rig and the Postfix documentation examples use. */
export const DEFAULT_LISTEN = 'inet:127.0.0.1:8899';
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

interface MilterOptions {
  listen?: string;
  config?: string;
  logLevel?: string;
}

async function runMilter(opts: MilterOptions): Promise<void> {
  const config = loadConfig(opts.config);
  const level = opts.logLevel ?? config.log.level;
  if (!LOG_LEVELS.includes(level)) throw new DimeError('USAGE', `--log-level must be one of ${LOG_LEVELS.join(', ')}, not ${JSON.stringify(level)}`);
  let listen;
  try {
    listen = parseSocketSpec(opts.listen ?? config.milter.listen);
  } catch (err) {
    throw new DimeError('USAGE', `--listen: ${(err as Error).message}`, { cause: err });
  }
  const log = createLogger({ level, name: 'dime-milter' });
  const gateway: OpenedGateway | undefined = config.domain && (config.gateway.outbound || config.gateway.inbound) ? await openGateway(config, log) : undefined;
  const handler = gateway?.handler ?? passThroughHandler;
  const server = new MilterServer({ listen, handler, logger: log, failurePolicy: config.milter.failure });
  let address;
  try {
    address = await server.listen();
  } catch (err) {
    await gateway?.close();
    throw err;
  }
  log.info({ event: 'milter.start', listen: address.text, handler: handler.name, pid: process.pid }, `dime milter listening on ${address.text}`);

  const signal = await stopSignal();
  log.info({ event: 'milter.stopping', signal, connections: server.connections }, 'dime milter stopping');
  await server.close();
  await gateway?.close();
  log.info({ event: 'milter.stop' }, 'dime milter stopped');
}

export function registerMilterCommands(program: Command): void {
  program
    .command('milter')
    .description('run the milter server for Postfix: the gateway when the configuration names a dark domain, else pass-through')
    .option('--config <file>', 'configuration file (default: $DIME_CONFIG, else /etc/dime/dime.toml, else embedded defaults)')
    .option('--listen <spec>', `inet:HOST:PORT or unix:/PATH, Postfix syntax (a unix path is the real one, not chroot-relative); default [milter] listen, ${DEFAULT_LISTEN}`)
    .option('--log-level <level>', `${LOG_LEVELS.join(' | ')} (default: $DIME_LOG_LEVEL, [log] level, or info)`)
    .action((opts: MilterOptions) => runMilter(opts));
}
