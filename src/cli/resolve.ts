/**
 * `dime resolve ADDRESS|DOMAIN`: resolve as the milter would (src/resolver/, docs/resolver.md) and
 * show the path taken (cache, DNS, DMTP, stale), the DNSSEC status, the policy, the fingerprints
 * and the timings. Signets come over DMTP from the domain's DX (src/dmtp/client.ts).
 *
 * Exit status: 0 when the resolution is `ok`; 1 for every other outcome (no-record, no-signet,
 * unknown, refused); 2 for usage errors.
 */
import type { Command } from 'commander';
import { loadConfig, type ResolverConfig } from '../config/config.js';
import { defaultCrypto } from '../crypto/index.js';
import { base64Encode } from '../dime/base64.js';
import { DimeError, isDimeError } from '../errors.js';
import { createLogger } from '../log.js';
import { parseServer } from '../resolver/dns.js';
import { createNetworkResolver } from '../resolver/dmtp-fetcher.js';
import { Resolver, type Resolution, type ResolvedSignet } from '../resolver/resolver.js';
import { EXIT, ExitStatus, exitStatusFor } from './exit.js';

interface ResolveOptions {
  json?: boolean;
  config?: string;
  dns?: string;
  redis?: string;
  recordOnly?: boolean;
  deadline?: string;
}

/** The [resolver] section with the command-line overrides applied (each checked like the file's). */
function resolverConfig(opts: ResolveOptions): ResolverConfig {
  const c = { ...loadConfig(opts.config).resolver };
  if (opts.dns !== undefined) {
    const servers = opts.dns.split(',').map((s) => s.trim());
    try {
      servers.forEach(parseServer);
    } catch (err) {
      throw new DimeError('USAGE', `--dns ${JSON.stringify(opts.dns)}: ${(err as Error).message}`);
    }
    c.servers = servers;
  }
  if (opts.redis !== undefined) {
    if (!/^rediss?:\/\/\S+$/.test(opts.redis)) throw new DimeError('USAGE', `--redis ${JSON.stringify(opts.redis)} is not a redis:// or rediss:// URL`);
    c.redis = opts.redis;
    delete c.redisSentinels;
    delete c.redisSentinelName;
    delete c.redisCluster;
  }
  if (opts.deadline !== undefined) {
    const ms = Number(opts.deadline);
    if (!Number.isInteger(ms) || ms < 100 || ms > 120_000) throw new DimeError('USAGE', `--deadline ${JSON.stringify(opts.deadline)}: milliseconds, 100 to 120000`);
    c.deadlineMs = ms;
    c.queryTimeoutMs = Math.min(c.queryTimeoutMs, ms);
  }
  return c;
}

function signetJson(s: ResolvedSignet): Record<string, unknown> {
  return { state: s.state, fingerprints: s.fingerprints, ...(s.custody ? { custody: s.custody } : {}) };
}

export function resolutionJson(r: Resolution): Record<string, unknown> {
  return {
    name: r.name,
    domain: r.domain,
    ...(r.address ? { address: r.address } : {}),
    status: r.status,
    plaintextAllowed: r.plaintextAllowed,
    ...(r.error ? { error: r.error } : {}),
    dnssec: r.dnssec ?? null,
    policy: r.policy ?? null,
    ...(r.record
      ? {
          record: {
            text: r.recordText,
            poks: r.record.poks.map(base64Encode),
            dx: r.record.dx,
            subdomain: r.record.subdomain,
            expiryDays: r.record.expiryDays ?? null,
            tlsPins: r.record.tls.length,
          },
        }
      : {}),
    ...(r.downgradeRefused ? { downgradeRefused: true } : {}),
    ...(r.org ? { org: signetJson(r.org) } : {}),
    ...(r.user ? { user: signetJson(r.user) } : {}),
    path: r.path,
    steps: Object.fromEntries(Object.entries(r.steps).map(([k, s]) => [k, { path: s.path, ...(s.tier ? { tier: s.tier } : {}), ms: Number(s.ms.toFixed(3)) }])),
    stale: r.stale,
    warnings: r.warnings,
    timings: { totalMs: Number(r.timings.totalMs.toFixed(3)) },
  };
}

function human(r: Resolution): string {
  const ms = (n: number) => `${n.toFixed(1)} ms`;
  const line = (label: string, value: string) => `  ${label.padEnd(9)} ${value}\n`;
  let out = `${r.name}: ${r.status}${r.error ? ` [${r.error.code}] ${r.error.message}` : ''}\n`;
  out += line('path', r.path.join(' ') || '(none)');
  const step = (k: 'record' | 'org' | 'user') => {
    const s = r.steps[k];
    return s ? ` (${s.path}${s.tier ? `, ${s.tier}` : ''}, ${ms(s.ms)})` : '';
  };
  if (r.dnssec) out += line('record', `_dx.${r.domain}  dnssec=${r.dnssec}${r.policy ? `  policy=${r.policy}` : ''}${r.record?.dx.length ? `  dx=${r.record.dx.join(',')}` : ''}${step('record')}`);
  if (r.downgradeRefused) out += line('', 'DNS said "no record" without DNSSEC: the cached pol=strict record stands');
  for (const k of ['org', 'user'] as const) {
    const s = r[k];
    if (!s) continue;
    out += line(k, `state=${s.state}${s.custody ? `  custody=${s.custody}` : ''}${step(k)}`);
    for (const [kind, fp] of Object.entries(s.fingerprints)) out += line('', `${kind.padEnd(6)} ${fp}`);
  }
  out += line('plaintext', r.plaintextAllowed ? 'allowed (a real "no record")' : 'not allowed');
  out += line('total', ms(r.timings.totalMs));
  for (const w of r.warnings) out += line('warning', w);
  return out;
}

async function resolve(name: string, opts: ResolveOptions): Promise<void> {
  let resolver: Resolver | undefined;
  try {
    const config = resolverConfig(opts);
    const log = createLogger({ name: 'dime-resolve', level: process.env.DIME_LOG_LEVEL ?? 'warn' });
    const crypto = defaultCrypto();
    resolver = createNetworkResolver(config, { crypto, log });
    if (resolver.cache.store.hasRedis) await resolver.cache.store.ready(Math.min(2_000, config.deadlineMs));
    let r: Resolution;
    try {
      r = await resolver.resolve(name, { recordOnly: opts.recordOnly === true });
    } catch (err) {
      if (isDimeError(err, 'RESOLVE_BAD_NAME')) throw new DimeError('USAGE', `${JSON.stringify(name)} is not a domain or a user@domain address`);
      throw err;
    }
    process.stdout.write(opts.json ? JSON.stringify(resolutionJson(r)) + '\n' : human(r));
    if (r.status !== 'ok') throw new ExitStatus(EXIT.negative);
  } catch (err) {
    if (!(err instanceof DimeError) || !opts.json) throw err;
    // --json callers read stdout only: give them exactly one object there too.
    process.stdout.write(JSON.stringify({ error: { code: err.code, message: err.message } }) + '\n');
    process.stderr.write(`dime: ${err.message} [${err.code}]\n`);
    throw new ExitStatus(exitStatusFor(err));
  } finally {
    await resolver?.close();
  }
}

export function registerResolveCommands(program: Command): void {
  program
    .command('resolve')
    .description('resolve an address or a domain: _dx record (DNSSEC), organisational and user signets (DMTP); show the path, DNSSEC status, fingerprints and timings')
    .argument('<name>', 'user@domain or domain')
    .option('--json', 'print exactly one JSON object')
    .option('--config <file>', 'configuration file (default: $DIME_CONFIG, else /etc/dime/dime.toml, else embedded defaults)')
    .option('--dns <host:port>', 'DNS server(s) to ask instead of [resolver] servers, comma-separated (e.g. 127.0.0.1:53)')
    .option('--redis <url>', 'shared cache (redis:// URL) instead of [resolver] redis')
    .option('--record-only', 'stop after the management record (no DMTP)')
    .option('--deadline <ms>', 'the resolution deadline in milliseconds (default [resolver] deadline_ms)')
    .action((name: string, opts: ResolveOptions) => resolve(name, opts));
}
