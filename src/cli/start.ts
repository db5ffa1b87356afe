/**
 * `dime start`: every service in one process (milter, policy, socketmap, the DMTP relay when the
 * configuration has a domain and a TLS certificate, metrics), on the configuration's listeners (embedded defaults
 * without a file). Either everything starts or nothing stays up: a failure closes what already
 * listens and exits 2 with one line saying what and where. Services join here as they land.
 */
import { spawnSync } from 'node:child_process';
import * as http from 'node:http';
import type { Command } from 'commander';
import { loadConfig, type DimeConfig } from '../config/config.js';
import { DimeError, isDimeError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { metrics } from '../metrics.js';
import { startMilterServer } from '../milter/server.js';
import { formatSocketSpec, listenOn, parseSocketSpec } from '../net/socket.js';
import { dunnoPolicy, startPolicyServer, startSocketmapServer, staticDarkTable } from '../policy/index.js';
import { EXIT, ExitStatus } from './exit.js';
import { openGateway, type OpenedGateway, type ReadinessCheck } from '../gateway/open.js';
import { openRelay } from './relay.js';
import { openLmtpRelay } from './lmtp.js';
import { createStrictInboundPolicy } from '../policy/dime-policy.js';
import { stopSignal } from './signals.js';

export const DEFAULT_METRICS_LISTEN = 'inet:127.0.0.1:9464';

interface Running {
  name: string;
  address: string;
  close(): Promise<void>;
}

/**
 * /readyz answers from one probe at a time and reuses its result this long, so that several
 * monitors polling every few seconds cannot queue test signatures on the HSM.
 */
const READINESS_REUSE_MS = 5_000;

/** The latest readiness result, shared by concurrent and closely spaced requests. */
function readinessProbe(probe: () => Promise<ReadinessCheck[]>): () => Promise<ReadinessCheck[]> {
  let last: { at: number; result: Promise<ReadinessCheck[]> } | undefined;
  return () => {
    if (!last || Date.now() - last.at > READINESS_REUSE_MS) last = { at: Date.now(), result: probe() };
    return last.result;
  };
}

/**
 * /metrics (Prometheus text format); /healthz (liveness: 200 while every service listens); /readyz
 * (200 while every required dependency answers, with `degraded` when an optional one does not;
 * 503 naming what failed otherwise).
 */
async function startHttp(listen: string, services: () => Running[], readiness: () => Promise<ReadinessCheck[]>): Promise<Running> {
  const json = (res: http.ServerResponse, status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body) + '\n');
  const server = http.createServer((req, res) => {
    if (req.url === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(metrics.render());
    } else if (req.url === '/healthz') {
      json(res, 200, { ok: true, services: services().map((s) => ({ name: s.name, address: s.address })) });
    } else if (req.url === '/readyz') {
      void readiness().then(
        (checks) => {
          const ok = checks.every((c) => c.ok || !c.required);
          json(res, ok ? 200 : 503, { ok, degraded: checks.some((c) => !c.ok), checks });
        },
        // The checks never throw; if one ever does, the probe says so rather than take the process down.
        (err: unknown) => json(res, 503, { ok: false, degraded: true, checks: [], error: (err as Error).message }),
      );
    } else {
      res.writeHead(404).end();
    }
  });
  const bound = await listenOn(server, parseSocketSpec(listen));
  return {
    name: 'metrics',
    address: formatSocketSpec(bound.spec),
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await bound.release();
    },
  };
}

export interface StartedSidecar {
  services: Running[];
  close(): Promise<void>;
}

export async function startSidecar(config: DimeConfig, log: Logger, metricsListen = DEFAULT_METRICS_LISTEN): Promise<StartedSidecar> {
  const services: Running[] = [];
  const closeAll = async () => {
    for (const s of services.reverse()) await s.close().catch((err) => log.error({ err, service: s.name }, 'close failed'));
  };
  const start = async (name: string, where: string, run: () => Promise<Running>) => {
    try {
      services.push(await run());
    } catch (err) {
      await closeAll();
      // One line saying what and where; the original code when there is one (exit 2 for usage-class codes).
      throw new DimeError(isDimeError(err) ? err.code : 'USAGE', `${name} on ${where}: ${(err as Error).message}`, { cause: err });
    }
  };
  // The gateway needs a dark domain (dime init); without one the milter passes mail through.
  let gateway: OpenedGateway | undefined;
  if (config.domain && (config.gateway.outbound || config.gateway.inbound)) {
    await start('gateway', config.keystore.type === 'file' ? config.keystore.file : `${config.keystore.module} token ${config.keystore.token}`, async () => {
      const g = await openGateway(config, log);
      gateway = g;
      // Nothing of ours listens for the gateway: it runs inside the milter and re-injects to Postfix.
      return { name: 'gateway', address: `in the milter, re-injecting to ${config.gateway.bundleService}`, close: () => g.close() };
    });
  } else {
    log.info('gateway off: the configuration has no domain (dime init), so the milter passes every message through');
  }
  await start('milter', config.milter.listen, async () => {
    const m = await startMilterServer({
      listen: config.milter.listen,
      logger: log.child({ service: 'milter' }),
      failurePolicy: config.milter.failure,
      ...(gateway ? { handler: gateway.handler } : {}),
    });
    return { name: 'milter', address: m.address!.text, close: () => m.close() };
  });
  await start('policy', config.policy.listen, async () => {
    const handler = gateway
      ? createStrictInboundPolicy({ domain: config.domain!, localPolicy: () => gateway!.localPolicy(), refuse: config.gateway.strictInbound === 'refuse', log: log.child({ service: 'policy' }) })
      : dunnoPolicy;
    const p = await startPolicyServer({ listen: config.policy.listen, handler, logger: log });
    return { name: 'policy', address: p.address, close: () => p.close() };
  });
  await start('socketmap', config.policy.socketmap, async () => {
    const s = await startSocketmapServer({ listen: config.policy.socketmap, handler: staticDarkTable({ domains: [] }), logger: log });
    return { name: 'socketmap', address: s.address, close: () => s.close() };
  });
  if (config.domain && config.relay.tlsCert && config.relay.tlsKey) {
    // One resolver for the whole process: the gateway's when it runs, else the relay's. One
    // in-process cache and one Redis connection, and a signet fetched by one service serves all.
    let resolver = gateway?.resolver;
    await start('relay', config.relay.listen, async () => {
      const r = await openRelay(config, {}, log.child({ service: 'relay' }), resolver ? { resolver } : {});
      resolver = r.resolver;
      return { name: 'relay', address: config.relay.listen, close: () => r.close() };
    });
    await start('lmtp', config.relay.lmtpListen, async () => {
      const l = await openLmtpRelay(config, log.child({ service: 'lmtp' }), resolver ? { resolver } : {});
      return { name: 'lmtp', address: l.address, close: () => l.close() };
    });
  } else {
    log.info('relay not started: the configuration has no domain or no [relay] tls_cert/tls_key (dime init writes both)');
  }
  const readiness = readinessProbe(async () => (gateway ? gateway.readiness() : []));
  await start('metrics', metricsListen, () => startHttp(metricsListen, () => services, readiness));
  return { services, close: closeAll };
}

/** Settings a running process cannot change: listeners are bound, keys and domain are loaded. */
const RESTART_ONLY: ((c: DimeConfig) => unknown)[] = [
  (c) => c.domain,
  (c) => c.dataDir,
  (c) => JSON.stringify({ ...c.keystore, pin: undefined }),
  (c) => c.milter.listen,
  (c) => JSON.stringify(c.milter.failure),
  (c) => JSON.stringify(c.gateway),
  (c) => JSON.stringify(c.policy),
  (c) => JSON.stringify(c.relay),
];

/**
 * SIGHUP: re-read and validate the configuration. What can change live (the log level) is
 * applied; anything else is logged as needing a restart. A broken file is logged and ignored: the
 * running configuration stays, so a reload can never take the sidecar down.
 */
function reloadConfig(file: string | undefined, current: DimeConfig, log: Logger): void {
  let next: DimeConfig;
  try {
    next = loadConfig(file);
  } catch (err) {
    log.error({ code: isDimeError(err) ? err.code : undefined, err: (err as Error).message }, 'reload refused: the configuration has an error; still running on the previous one');
    return;
  }
  const needRestart = RESTART_ONLY.some((f) => f(next) !== f(current));
  if (next.log.level !== current.log.level) {
    log.level = next.log.level;
    current.log.level = next.log.level;
  }
  log.info({ logLevel: log.level, restartNeeded: needRestart }, needRestart ? 'configuration reloaded; listeners, keys or domain changed: restart to apply them' : 'configuration reloaded');
}

/** systemd Type=notify readiness: Node cannot write to the notify datagram socket, systemd-notify can (NotifyAccess=all). */
function notifyReady(log: Logger): void {
  if (!process.env.NOTIFY_SOCKET) return;
  const r = spawnSync('systemd-notify', ['--ready', `--pid=${process.pid}`], { stdio: 'ignore' });
  if (r.status !== 0) log.warn({ status: r.status }, 'systemd-notify --ready failed; systemd may time out waiting for readiness');
}

export function registerStartCommands(program: Command): void {
  program
    .command('start')
    .description('run every service in one process (milter, policy and socketmap, DMTP relay, metrics) from the configuration')
    .option('--config <file>', 'configuration file (default: $DIME_CONFIG, /etc/dime/dime.toml, else embedded defaults)')
    .option('--metrics <socket>', 'where /metrics and /healthz listen', DEFAULT_METRICS_LISTEN)
    .action(async (opts: { config?: string; metrics: string }) => {
      const config = loadConfig(opts.config);
      const log = createLogger({ level: config.log.level });
      const sidecar = await startSidecar(config, log, opts.metrics);
      log.info({ config: config.source ?? 'embedded defaults', services: sidecar.services.map((s) => `${s.name}=${s.address}`) }, 'dime started');
      notifyReady(log);
      const reload = () => reloadConfig(opts.config, config, log);
      process.on('SIGHUP', reload);
      log.info({ signal: await stopSignal() }, 'stopping');
      process.off('SIGHUP', reload);
      await sidecar.close();
      log.info('dime stopped');
      throw new ExitStatus(EXIT.ok);
    });
}
