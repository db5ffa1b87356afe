/**
 * `dime policy`: run the Postfix policy delegation service (check_policy_service) and the
 * socketmap service (transport_maps) until SIGTERM or SIGINT. Logs are JSON lines on stderr.
 * See docs/policy.md for the main.cf / master.cf / Exim side.
 */
import type { Command } from 'commander';
import { DimeError } from '../errors.js';
import { createLogger } from '../log.js';
import {
  DEFAULT_DARK_ROUTE,
  DEFAULT_DEADLINE_MS,
  DEFAULT_FAILURE_ACTION,
  DEFAULT_POLICY_IDLE_MS,
  DEFAULT_SOCKETMAP_IDLE_MS,
  dunnoPolicy,
  formatPolicyAction,
  normalizeDomain,
  parsePolicyAction,
  startPolicyServer,
  startSocketmapServer,
  staticDarkTable,
  validateRoute,
  type PolicyAction,
  type ServiceServer,
} from '../policy/index.js';
import { isLoopback, parseSocketSpec } from '../net/socket.js';
import { loadConfig } from '../config/config.js';
import { defaultCrypto } from '../crypto/index.js';
import { createStrictInboundPolicy, publishedPolicy } from '../policy/dime-policy.js';
import { createNetworkResolver } from '../resolver/dmtp-fetcher.js';
import type { PolicyHandler } from '../policy/handler.js';
import { stopSignal } from './signals.js';

export const DEFAULT_POLICY_LISTEN = 'inet:127.0.0.1:9998';
export const DEFAULT_SOCKETMAP_LISTEN = 'inet:127.0.0.1:9997';
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

interface PolicyOptions {
  config?: string;
  listen?: string;
  socketmap?: string;
  darkDomain?: string[];
  darkRoute: string;
  failureAction: string;
  deadline: string;
  idleTimeout?: string;
  logLevel?: string;
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function seconds(name: string, value: string): number {
  if (!/^[0-9]+(\.[0-9]+)?$/.test(value) || Number(value) <= 0) throw new DimeError('USAGE', `${name} must be a positive number of seconds, not ${JSON.stringify(value)}`);
  return Math.round(Number(value) * 1000);
}

export function registerPolicyCommands(program: Command): void {
  program
    .command('policy')
    .description('run the Postfix policy delegation and socketmap services (docs/policy.md) until SIGTERM/SIGINT')
    .option('--config <file>', 'configuration file: with a dark domain, legacy mail for it is refused while its record says pol=strict ([gateway] strict_inbound)')
    .option('--listen <endpoint>', `policy delegation endpoint, inet:HOST:PORT or unix:PATH (default: [policy] listen with --config, else ${DEFAULT_POLICY_LISTEN})`)
    .option('--socketmap <endpoint>', `socketmap endpoint for transport_maps, inet:HOST:PORT or unix:PATH (default: [policy] socketmap with --config, else ${DEFAULT_SOCKETMAP_LISTEN})`)
    .option('--dark-domain <domain>', 'a DIME domain: its recipients get --dark-route from the socketmap (repeatable)', collect)
    .option('--dark-route <transport:nexthop>', 'transport(5) result for dark recipients', DEFAULT_DARK_ROUTE)
    .option('--failure-action <action>', 'policy answer when a decision fails or times out', formatPolicyAction(DEFAULT_FAILURE_ACTION))
    .option('--deadline <seconds>', 'time a decision may take before the failure answer', String(DEFAULT_DEADLINE_MS / 1000))
    .option('--idle-timeout <seconds>', `close idle connections (default ${DEFAULT_POLICY_IDLE_MS / 1000} policy, ${DEFAULT_SOCKETMAP_IDLE_MS / 1000} socketmap)`)
    .option('--log-level <level>', `${LOG_LEVELS.join(', ')} (default: $DIME_LOG_LEVEL or info)`)
    .action(async (opts: PolicyOptions) => runPolicy(opts));
}

async function runPolicy(opts: PolicyOptions): Promise<void> {
  // Validate everything before binding anything: a usage error exits 2 with nothing half-started.
  if (opts.logLevel !== undefined && !LOG_LEVELS.includes(opts.logLevel)) throw new DimeError('USAGE', `--log-level must be one of ${LOG_LEVELS.join(', ')}`);
  const config = opts.config !== undefined ? loadConfig(opts.config) : undefined;
  const policyAt = parseSocketSpec(opts.listen ?? config?.policy.listen ?? DEFAULT_POLICY_LISTEN);
  const socketmapAt = parseSocketSpec(opts.socketmap ?? config?.policy.socketmap ?? DEFAULT_SOCKETMAP_LISTEN);
  const domains = (opts.darkDomain ?? []).map(normalizeDomain);
  const route = validateRoute(opts.darkRoute);
  let failureAction: PolicyAction;
  try {
    failureAction = parsePolicyAction(opts.failureAction);
  } catch (err) {
    throw new DimeError('USAGE', `--failure-action: ${(err as Error).message}`, { cause: err });
  }
  const deadlineMs = seconds('--deadline', opts.deadline);
  const idle = opts.idleTimeout === undefined ? undefined : seconds('--idle-timeout', opts.idleTimeout);

  const log = createLogger({ name: 'dime-policy', ...(opts.logLevel ? { level: opts.logLevel } : {}) });
  for (const [what, spec] of [['--listen', policyAt], ['--socketmap', socketmapAt]] as const) {
    // Neither protocol authenticates its client (socketmap_table(5)): keep them off the network.
    if (!isLoopback(spec)) log.warn({ option: what }, 'listening on a non-loopback address: these services are unauthenticated');
  }

  // With a configured dark domain: the pol=strict rule (docs/mail-flow.md), our record read through the resolver.
  let handler: PolicyHandler = dunnoPolicy;
  let closeResolver = async (): Promise<void> => {};
  if (config?.domain) {
    const resolver = createNetworkResolver(config.resolver, { crypto: defaultCrypto(), log: log.child({ service: 'resolver' }) });
    closeResolver = () => resolver.close();
    const domain = config.domain;
    handler = createStrictInboundPolicy({
      domain,
      refuse: config.gateway.strictInbound === 'refuse',
      log,
      localPolicy: publishedPolicy(resolver, domain),
    });
  }
  const servers: ServiceServer[] = [];
  try {
    servers.push(await startPolicyServer({ listen: policyAt, handler, failureAction, deadlineMs, ...(idle ? { idleMs: idle } : {}), logger: log }));
    servers.push(
      await startSocketmapServer({ listen: socketmapAt, handler: staticDarkTable({ domains, route }), deadlineMs, ...(idle ? { idleMs: idle } : {}), logger: log }),
    );
  } catch (err) {
    await Promise.all(servers.map((s) => s.close()));
    await closeResolver();
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL') throw new DimeError('USAGE', `cannot listen: ${(err as Error).message}`, { cause: err });
    throw err;
  }
  log.info({ policy: servers[0]!.address, socketmap: servers[1]!.address, darkDomains: domains, route, failureAction: formatPolicyAction(failureAction) }, 'ready');

  log.info({ signal: await stopSignal() }, 'stopping');
  await Promise.all(servers.map((s) => s.close()));
  await closeResolver();
  log.info('stopped');
}
