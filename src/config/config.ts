/**
 * The one configuration file (TOML, parsed by smol-toml), validated with errors that name the key
 * and the fix. Every setting has an embedded default, so no file at all runs a development sidecar
 * (file keystore, in-process cache, loopback listeners). Secrets can come from the environment
 * instead of the file (DIME_HSM_PIN), so the file can be world-readable.
 *
 * Sections are added here as the services that read them land; unknown keys are errors (a typo
 * must not silently fall back to a default).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { DimeError } from '../errors.js';

export interface KeystoreConfig {
  /** `file`: keys in a mode-0600 file (development default); `pkcs11`: keys inside an HSM. */
  type: 'file' | 'pkcs11';
  /** file: the organisation keys file. */
  file: string;
  /** pkcs11: the module (e.g. /usr/lib/softhsm/libsofthsm2.so), the token label, the PIN file. */
  module?: string;
  token?: string;
  pinFile?: string;
  /** pkcs11: the PIN itself, from DIME_HSM_PIN only (never from the file). */
  pin?: string;
  /**
   * pkcs11: the prefix of the key objects' labels inside the token (`<label>/pok/1`, `<label>/enc`,
   * …), so one token can hold several domains' keys. Absent: "dime" (docs/keystore.md).
   */
  label?: string;
}

export interface DimeConfig {
  /** The organisation's dark domain; required by the relay and by signing. */
  domain?: string;
  /** Where published signets and sealed user keys live. */
  dataDir: string;
  keystore: KeystoreConfig;
  milter: { listen: string; failure: Partial<Record<string, string>> };
  gateway: GatewayConfig;
  policy: { listen: string; socketmap: string };
  relay: { listen: string; dualListen?: string; tlsCert?: string; tlsKey?: string; mta: string; hostname?: string; lmtpListen: string };
  log: { level: string };
  resolver: ResolverConfig;
  /** The file this came from, or undefined for embedded defaults. */
  source?: string;
}

/**
 * Signet resolution (src/resolver/, docs/resolver.md): where `_dx` records are looked up, how long
 * answers are kept, and the shared cache. Durations are seconds unless the name ends in `Ms`.
 */
export interface ResolverConfig {
  /** `system` (the nameservers of /etc/resolv.conf) or `HOST:PORT` / `[V6]:PORT` / `HOST` entries, tried in order. */
  servers: string[];
  /**
   * Whose AD bit counts as "DNSSEC validated": `loopback` (only when every server is on this host,
   * so no network path can forge it), `always`, or `never` (every answer is "unsigned").
   */
  trustAd: 'loopback' | 'always' | 'never';
  /** One DNS attempt; a query makes `attempts` of them across the servers. */
  queryTimeoutMs: number;
  attempts: number;
  /** One deadline per resolution (record, org signet, user signet together); keep it below the milter's. */
  deadlineMs: number;
  /** Bounds on the DNS TTL of a record we cache. */
  minTtl: number;
  maxTtl: number;
  /** At most this long a validated "no record" is cached (the SOA minimum may make it shorter). */
  negativeTtl: number;
  /** How long a fetched signet is used before VRFY/SGNT refreshes it. */
  signetTtl: number;
  /** How long past its freshness an entry may still answer when DNS or the DX fails. */
  maxStale: number;
  /** At most this long a cached pol=strict record (by its exp=) resists an unauthenticated "no record". */
  maxHold: number;
  /** How long the last accepted user signet is remembered for the chain-of-custody check. */
  custodyPinTtl: number;
  /** A user key change without a valid custody signature: refused (default) or only flagged. */
  custody: 'refuse' | 'flag';
  /** In-process LRU capacity (entries). */
  lruEntries: number;
  /** Shared cache, at most one of: a redis:// or rediss:// URL, Sentinel addresses, Cluster seed nodes. None: in-process only. */
  redis?: string;
  redisSentinels?: string[];
  redisSentinelName?: string;
  redisCluster?: string[];
  redisPrefix: string;
  /** A Redis command slower than this counts as Redis down for that lookup (the in-process cache answers). */
  redisTimeoutMs: number;
}

/** The mail flow (docs/mail-flow.md): what the milter does with outbound and inbound DIME mail. */
export interface GatewayConfig {
  /** Seal for trustful senders on authenticated submissions. */
  outbound: boolean;
  /** Verify DIME mail for local recipients; decrypt it for trustful ones. */
  inbound: boolean;
  /** The milter-free Postfix smtpd the bundles are re-injected through. */
  bundleService: string;
  /** Further domains delivered on this host: never resolved, never sealed for. */
  localDomains: string[];
  /** Senders (addresses, @domain) whose mail must go dark; destinations (domains) that must be reached dark. */
  requireDimeSenders: string[];
  requireDimeDestinations: string[];
  /** A forged or invalid DIME message: rejected (550) or quarantined (Postfix hold queue). */
  invalid: 'reject' | 'quarantine';
  /** Legacy mail for our domain while our record says pol=strict: refused at RCPT by the policy service, or accepted. */
  strictInbound: 'refuse' | 'accept';
}

export const DEFAULT_CONFIG_PATH = '/etc/dime/dime.toml';

type Spec = { type: 'string' | 'string[]' | 'number'; values?: readonly string[]; min?: number; max?: number; fix: string };

/** Every accepted key: section → key (as written in the file) → its type and the fix to suggest. */
const SCHEMA: Record<string, Record<string, Spec>> = {
  '': {
    domain: { type: 'string', fix: 'the dark domain, e.g. domain = "example.com"' },
    data_dir: { type: 'string', fix: 'a directory, e.g. data_dir = "/var/lib/dime"' },
  },
  keystore: {
    type: { type: 'string', values: ['file', 'pkcs11'], fix: 'type = "file" or type = "pkcs11"' },
    file: { type: 'string', fix: 'the organisation keys file, e.g. file = "/var/lib/dime/example.com.keys"' },
    module: { type: 'string', fix: 'the PKCS#11 module, e.g. module = "/usr/lib/softhsm/libsofthsm2.so"' },
    token: { type: 'string', fix: 'the token label, e.g. token = "dime"' },
    pin_file: { type: 'string', fix: 'a file holding the user PIN (mode 0600), or set DIME_HSM_PIN' },
    label: { type: 'string', fix: 'the prefix of the key labels inside the token, e.g. label = "dime" (letters, digits, . _ -)' },
  },
  milter: {
    listen: { type: 'string', fix: 'inet:HOST:PORT or unix:PATH, e.g. listen = "inet:127.0.0.1:8899"' },
    on_internal: { type: 'string', values: ['tempfail', 'accept', 'reject', 'quarantine'], fix: 'on_internal = "tempfail" (the default: Postfix keeps the mail and retries), "accept", "reject" or "quarantine"' },
    on_dns: { type: 'string', values: ['tempfail', 'accept', 'reject', 'quarantine'], fix: 'on_dns = "tempfail" (SERVFAIL, timeout, bogus), "accept", "reject" or "quarantine"' },
    on_signet_not_found: { type: 'string', values: ['tempfail', 'accept', 'reject', 'quarantine'], fix: 'on_signet_not_found = "tempfail", "accept", "reject" or "quarantine"' },
    on_hsm: { type: 'string', values: ['tempfail', 'accept', 'reject', 'quarantine'], fix: 'on_hsm = "tempfail", "accept", "reject" or "quarantine"' },
    on_deadline: { type: 'string', values: ['tempfail', 'accept', 'reject', 'quarantine'], fix: 'on_deadline = "tempfail", "accept", "reject" or "quarantine"' },
  },
  gateway: {
    outbound: { type: 'string', values: ['on', 'off'], fix: 'outbound = "on" (seal for trustful senders on authenticated submissions) or "off"' },
    inbound: { type: 'string', values: ['on', 'off'], fix: 'inbound = "on" (verify DIME mail, decrypt it for trustful users) or "off"' },
    bundle_service: { type: 'string', fix: 'the milter-free Postfix smtpd that queues sealed mail (postfix-examples/master.cf), e.g. bundle_service = "inet:127.0.0.1:10027"' },
    local_domains: { type: 'string[]', fix: 'further domains delivered here, e.g. local_domains = ["lists.example.com"]' },
    require_dime_senders: { type: 'string[]', fix: 'senders whose mail must go dark, e.g. require_dime_senders = ["ceo@example.com", "@legal.example.com"]' },
    require_dime_destinations: { type: 'string[]', fix: 'destination domains that must be reached dark, e.g. require_dime_destinations = ["partner.example"]' },
    invalid: { type: 'string', values: ['reject', 'quarantine'], fix: 'invalid = "reject" (550 to the sender) or "quarantine" (Postfix hold queue)' },
    strict_inbound: { type: 'string', values: ['refuse', 'accept'], fix: 'strict_inbound = "refuse" (legacy mail refused while our record says pol=strict) or "accept"' },
  },
  policy: {
    listen: { type: 'string', fix: 'inet:HOST:PORT or unix:PATH for check_policy_service' },
    socketmap: { type: 'string', fix: 'inet:HOST:PORT or unix:PATH for transport_maps = socketmap:…' },
  },
  relay: {
    listen: { type: 'string', fix: 'the DMTP port with implicit TLS, e.g. listen = "inet:0.0.0.0:26"' },
    dual_listen: { type: 'string', fix: 'an SMTP-style port offering STARTTLS with MODE=DMTPv1, or leave it out' },
    tls_cert: { type: 'string', fix: 'the relay certificate (PEM, RSA: libdime clients need ECDHE-RSA)' },
    tls_key: { type: 'string', fix: 'the relay private key (PEM)' },
    mta: { type: 'string', fix: 'where inbound DIME mail is handed over (Postfix SMTP), e.g. mta = "inet:127.0.0.1:10025"' },
    hostname: { type: 'string', fix: 'the relay host name in banners and Received headers (the DX host name), e.g. hostname = "dx.example.com"' },
    lmtp_listen: { type: 'string', fix: 'where Postfix\'s dmtp (LMTP) transport delivers bundles, loopback or unix only, e.g. lmtp_listen = "inet:127.0.0.1:10026" (content_filter = dmtp:inet:127.0.0.1:10026)' },
  },
  log: { level: { type: 'string', values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace'], fix: 'level = "info"' } },
  resolver: {
    servers: { type: 'string[]', fix: 'servers = ["system"] (/etc/resolv.conf) or a local validating resolver, e.g. servers = ["127.0.0.1:53"]' },
    trust_ad: { type: 'string', values: ['loopback', 'always', 'never'], fix: 'trust_ad = "loopback" (the AD bit counts only from a resolver on this host), "always" or "never"' },
    query_timeout_ms: { type: 'number', min: 50, max: 30_000, fix: 'milliseconds for one DNS attempt, 50 to 30000, e.g. query_timeout_ms = 2000' },
    attempts: { type: 'number', min: 1, max: 10, fix: 'DNS attempts per query across the servers, 1 to 10, e.g. attempts = 2' },
    deadline_ms: { type: 'number', min: 100, max: 120_000, fix: "milliseconds for one whole resolution, below the milter's timeouts, e.g. deadline_ms = 10000" },
    min_ttl: { type: 'number', min: 0, max: 86_400, fix: 'seconds, the shortest time a record is cached, e.g. min_ttl = 30' },
    max_ttl: { type: 'number', min: 1, max: 604_800, fix: 'seconds, the longest time a record is cached before DNS is asked again, e.g. max_ttl = 86400' },
    negative_ttl: { type: 'number', min: 0, max: 3_600, fix: 'seconds, at most this long a validated "no record" is cached, e.g. negative_ttl = 300' },
    signet_ttl: { type: 'number', min: 1, max: 604_800, fix: 'seconds a fetched signet is used before it is checked again (VRFY), e.g. signet_ttl = 3600' },
    max_stale: { type: 'number', min: 0, max: 604_800, fix: 'seconds an expired entry may still answer while DNS or the DX fails, e.g. max_stale = 3600' },
    max_hold: { type: 'number', min: 0, max: 31_536_000, fix: 'seconds, at most this long a cached pol=strict record resists an unauthenticated "no record", e.g. max_hold = 604800' },
    custody_pin_ttl: { type: 'number', min: 0, max: 315_360_000, fix: 'seconds the last accepted user signet is remembered for the chain of custody, e.g. custody_pin_ttl = 31536000' },
    custody: { type: 'string', values: ['refuse', 'flag'], fix: 'custody = "refuse" (a key change without custody is refused) or "flag"' },
    lru_entries: { type: 'number', min: 1, max: 10_000_000, fix: 'entries in the in-process cache, e.g. lru_entries = 10000' },
    redis: { type: 'string', fix: 'a redis:// or rediss:// URL, e.g. redis = "redis://127.0.0.1:6379/0" (password: DIME_REDIS_PASSWORD)' },
    redis_sentinels: { type: 'string[]', fix: 'Sentinel addresses, e.g. redis_sentinels = ["10.0.0.1:26379", "10.0.0.2:26379"] with redis_sentinel_name' },
    redis_sentinel_name: { type: 'string', fix: 'the master name the Sentinels monitor, e.g. redis_sentinel_name = "dime"' },
    redis_cluster: { type: 'string[]', fix: 'Cluster seed nodes, e.g. redis_cluster = ["10.0.0.1:7000", "10.0.0.2:7000"]' },
    redis_prefix: { type: 'string', fix: 'a key prefix shared by every MX host, e.g. redis_prefix = "dime:"' },
    redis_timeout_ms: { type: 'number', min: 1, max: 10_000, fix: 'milliseconds after which a Redis command counts as failed, e.g. redis_timeout_ms = 250' },
  },
};

/** A DNS server or Redis node: `host`, `host:port` or `[v6]:port`. */
const HOST_PORT = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+|[0-9A-Fa-f:]+)(?::\d{1,5})?$/;

export const DEFAULT_RESOLVER: Readonly<ResolverConfig> = Object.freeze({
  servers: ['system'],
  trustAd: 'loopback',
  queryTimeoutMs: 2_000,
  attempts: 2,
  deadlineMs: 10_000,
  minTtl: 30,
  maxTtl: 86_400,
  negativeTtl: 300,
  signetTtl: 3_600,
  maxStale: 3_600,
  maxHold: 604_800,
  custodyPinTtl: 31_536_000,
  custody: 'refuse',
  lruEntries: 10_000,
  redisPrefix: 'dime:',
  redisTimeoutMs: 250,
});

function fail(key: string, problem: string, fix: string, source: string): never {
  throw new DimeError('CONFIG_INVALID', `${source}: ${key} ${problem}; ${fix}`);
}

function defaults(dataDir = '/var/lib/dime'): DimeConfig {
  return {
    dataDir,
    keystore: { type: 'file', file: path.join(dataDir, 'org.keys') },
    milter: { listen: 'inet:127.0.0.1:8899', failure: {} },
    gateway: {
      outbound: true,
      inbound: true,
      bundleService: 'inet:127.0.0.1:10027',
      localDomains: [],
      requireDimeSenders: [],
      requireDimeDestinations: [],
      invalid: 'reject',
      strictInbound: 'refuse',
    },
    policy: { listen: 'inet:127.0.0.1:9998', socketmap: 'inet:127.0.0.1:9997' },
    relay: { listen: 'inet:127.0.0.1:26', mta: 'inet:127.0.0.1:10025', lmtpListen: 'inet:127.0.0.1:10026' },
    log: { level: 'info' },
    resolver: { ...DEFAULT_RESOLVER, servers: [...DEFAULT_RESOLVER.servers] },
  };
}

/** The [resolver] section from the checked key/value pairs, with the checks that span several keys. */
function parseResolverSection(flat: ReadonlyMap<string, string | string[] | number>, source: string, env: NodeJS.ProcessEnv): ResolverConfig {
  const get = <T>(key: string): T | undefined => flat.get(`resolver.${key}`) as T | undefined;
  const fix = (key: string) => SCHEMA.resolver![key]!.fix;
  const d = DEFAULT_RESOLVER;
  const r: ResolverConfig = {
    servers: get<string[]>('servers') ?? [...d.servers],
    trustAd: get<ResolverConfig['trustAd']>('trust_ad') ?? d.trustAd,
    queryTimeoutMs: get<number>('query_timeout_ms') ?? d.queryTimeoutMs,
    attempts: get<number>('attempts') ?? d.attempts,
    deadlineMs: get<number>('deadline_ms') ?? d.deadlineMs,
    minTtl: get<number>('min_ttl') ?? d.minTtl,
    maxTtl: get<number>('max_ttl') ?? d.maxTtl,
    negativeTtl: get<number>('negative_ttl') ?? d.negativeTtl,
    signetTtl: get<number>('signet_ttl') ?? d.signetTtl,
    maxStale: get<number>('max_stale') ?? d.maxStale,
    maxHold: get<number>('max_hold') ?? d.maxHold,
    custodyPinTtl: get<number>('custody_pin_ttl') ?? d.custodyPinTtl,
    custody: get<ResolverConfig['custody']>('custody') ?? d.custody,
    lruEntries: get<number>('lru_entries') ?? d.lruEntries,
    redisPrefix: get<string>('redis_prefix') ?? d.redisPrefix,
    redisTimeoutMs: get<number>('redis_timeout_ms') ?? d.redisTimeoutMs,
    ...(get<string>('redis') ? { redis: get<string>('redis') } : {}),
    ...(get<string[]>('redis_sentinels') ? { redisSentinels: get<string[]>('redis_sentinels') } : {}),
    ...(get<string>('redis_sentinel_name') ? { redisSentinelName: get<string>('redis_sentinel_name') } : {}),
    ...(get<string[]>('redis_cluster') ? { redisCluster: get<string[]>('redis_cluster') } : {}),
  };
  if (r.servers.length === 0) fail('resolver.servers', 'is empty', fix('servers'), source);
  for (const s of r.servers) {
    if (s !== 'system' && !HOST_PORT.test(s)) fail('resolver.servers', `holds ${JSON.stringify(s)}`, fix('servers'), source);
  }
  if (r.servers.includes('system') && r.servers.length > 1) fail('resolver.servers', 'mixes "system" with addresses', fix('servers'), source);
  if (r.minTtl > r.maxTtl) fail('resolver.min_ttl', `(${r.minTtl}) is above max_ttl (${r.maxTtl})`, fix('min_ttl'), source);
  // A single attempt that outlives the whole resolution would turn every slow server into a missed deadline.
  if (r.queryTimeoutMs > r.deadlineMs) fail('resolver.query_timeout_ms', `(${r.queryTimeoutMs}) is above deadline_ms (${r.deadlineMs})`, fix('query_timeout_ms'), source);
  const topologies = [r.redis && 'redis', r.redisSentinels && 'redis_sentinels', r.redisCluster && 'redis_cluster'].filter(Boolean);
  if (topologies.length > 1) fail(`resolver.${topologies[1]}`, `cannot be combined with resolver.${topologies[0]}`, 'give one of redis, redis_sentinels or redis_cluster', source);
  if (r.redis !== undefined && !/^rediss?:\/\/[^\s]+$/.test(r.redis)) fail('resolver.redis', `is ${JSON.stringify(r.redis)}`, fix('redis'), source);
  for (const key of ['redis_sentinels', 'redis_cluster'] as const) {
    const list = get<string[]>(key);
    if (list && (list.length === 0 || list.some((n) => !HOST_PORT.test(n)))) fail(`resolver.${key}`, `is ${JSON.stringify(list)}`, fix(key), source);
  }
  if (r.redisSentinels && !r.redisSentinelName) fail('resolver.redis_sentinel_name', 'is required with redis_sentinels', fix('redis_sentinel_name'), source);
  if (r.redisSentinelName && !r.redisSentinels) fail('resolver.redis_sentinels', 'is required with redis_sentinel_name', fix('redis_sentinels'), source);
  return r;
}

/** Parse and validate configuration text; `source` names it in errors. */
export function parseConfig(text: string, source: string, env: NodeJS.ProcessEnv = process.env): DimeConfig {
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    const where = err instanceof TomlError ? ` (line ${err.line}, column ${err.column})` : '';
    throw new DimeError('CONFIG_INVALID', `${source}${where}: not valid TOML: ${(err as Error).message.split('\n')[0]}`, { cause: err });
  }
  const flat = new Map<string, string | string[] | number>();
  for (const [k, v] of Object.entries(doc)) {
    const isSection = typeof v === 'object' && v !== null && !Array.isArray(v);
    const entries: [string, string, unknown][] = isSection ? Object.entries(v as object).map(([kk, vv]) => [k, kk, vv]) : [['', k, v]];
    if (isSection && !(k in SCHEMA)) fail(`[${k}]`, 'is not a section', `sections are ${Object.keys(SCHEMA).filter(Boolean).map((s) => `[${s}]`).join(', ')}`, source);
    for (const [section, key, value] of entries) {
      const name = section ? `${section}.${key}` : key;
      const spec = SCHEMA[section]?.[key];
      if (!spec) fail(name, 'is not a setting', `known settings${section ? ` of [${section}]` : ''}: ${Object.keys(SCHEMA[section] ?? {}).join(', ')}`, source);
      if (spec.type === 'string' && typeof value !== 'string') fail(name, 'must be a string', spec.fix, source);
      if (spec.type === 'string[]' && !(Array.isArray(value) && value.every((x) => typeof x === 'string'))) fail(name, 'must be a list of strings', spec.fix, source);
      if (spec.type === 'number' && !(typeof value === 'number' && Number.isInteger(value) && value >= (spec.min ?? 0) && value <= (spec.max ?? Number.MAX_SAFE_INTEGER))) fail(name, `is ${JSON.stringify(value)}`, spec.fix, source);
      if (spec.values && !spec.values.includes(value as string)) fail(name, `is ${JSON.stringify(value)}`, spec.fix, source);
      flat.set(name, value as string | string[] | number);
    }
  }
  const str = (k: string): string | undefined => flat.get(k) as string | undefined;
  const c = defaults(str('data_dir'));
  c.source = source;
  if (str('domain')) c.domain = str('domain')!.toLowerCase();
  c.keystore = {
    type: (str('keystore.type') as KeystoreConfig['type']) ?? 'file',
    file: str('keystore.file') ?? c.keystore.file,
    ...(str('keystore.module') ? { module: str('keystore.module') } : {}),
    ...(str('keystore.token') ? { token: str('keystore.token') } : {}),
    ...(str('keystore.pin_file') ? { pinFile: str('keystore.pin_file') } : {}),
    ...(str('keystore.label') ? { label: str('keystore.label') } : {}),
    ...(env.DIME_HSM_PIN ? { pin: env.DIME_HSM_PIN } : {}),
  };
  if (c.keystore.type === 'pkcs11') {
    if (!c.keystore.module) fail('keystore.module', 'is required with type = "pkcs11"', SCHEMA.keystore!.module!.fix, source);
    if (!c.keystore.token) fail('keystore.token', 'is required with type = "pkcs11"', SCHEMA.keystore!.token!.fix, source);
    if (!c.keystore.pin && !c.keystore.pinFile) fail('keystore.pin_file', 'is required with type = "pkcs11" unless DIME_HSM_PIN is set', SCHEMA.keystore!.pin_file!.fix, source);
  }
  if (c.keystore.label !== undefined && !/^[A-Za-z0-9._-]{1,32}$/.test(c.keystore.label)) fail('keystore.label', `is ${JSON.stringify(c.keystore.label)}`, SCHEMA.keystore!.label!.fix, source);
  c.milter.listen = str('milter.listen') ?? c.milter.listen;
  for (const cls of ['internal', 'dns', 'signet_not_found', 'hsm', 'deadline']) {
    const v = str(`milter.on_${cls}`);
    if (v !== undefined) c.milter.failure[cls.replace(/_/g, '-')] = v;
  }
  const list = (k: string): string[] | undefined => flat.get(k) as string[] | undefined;
  c.gateway = {
    outbound: (str('gateway.outbound') ?? 'on') === 'on',
    inbound: (str('gateway.inbound') ?? 'on') === 'on',
    bundleService: str('gateway.bundle_service') ?? c.gateway.bundleService,
    localDomains: (list('gateway.local_domains') ?? []).map((d) => d.toLowerCase()),
    requireDimeSenders: list('gateway.require_dime_senders') ?? [],
    requireDimeDestinations: (list('gateway.require_dime_destinations') ?? []).map((d) => d.toLowerCase()),
    invalid: (str('gateway.invalid') as GatewayConfig['invalid']) ?? 'reject',
    strictInbound: (str('gateway.strict_inbound') as GatewayConfig['strictInbound']) ?? 'refuse',
  };
  c.policy.listen = str('policy.listen') ?? c.policy.listen;
  c.policy.socketmap = str('policy.socketmap') ?? c.policy.socketmap;
  c.relay = {
    listen: str('relay.listen') ?? c.relay.listen,
    mta: str('relay.mta') ?? c.relay.mta,
    lmtpListen: str('relay.lmtp_listen') ?? c.relay.lmtpListen,
    ...(str('relay.dual_listen') ? { dualListen: str('relay.dual_listen') } : {}),
    ...(str('relay.tls_cert') ? { tlsCert: str('relay.tls_cert') } : {}),
    ...(str('relay.tls_key') ? { tlsKey: str('relay.tls_key') } : {}),
    ...(str('relay.hostname') ? { hostname: str('relay.hostname')!.toLowerCase() } : {}),
  };
  if (c.relay.hostname !== undefined && !/^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?$/.test(c.relay.hostname)) fail('relay.hostname', `is ${JSON.stringify(c.relay.hostname)}`, SCHEMA.relay!.hostname!.fix, source);
  if (!!c.relay.tlsCert !== !!c.relay.tlsKey) fail(c.relay.tlsCert ? 'relay.tls_key' : 'relay.tls_cert', 'is missing', 'give both relay.tls_cert and relay.tls_key', source);
  for (const key of ['milter.listen', 'gateway.bundle_service', 'policy.listen', 'policy.socketmap', 'relay.listen', 'relay.dual_listen', 'relay.mta', 'relay.lmtp_listen']) {
    const v = str(key);
    if (v !== undefined && !/^(inet:[^\s]+:\d{1,5}|unix:\/[^\s]*)$/.test(v)) fail(key, `is ${JSON.stringify(v)}`, 'use inet:HOST:PORT or unix:/absolute/path', source);
  }
  c.log.level = env.DIME_LOG_LEVEL ?? str('log.level') ?? c.log.level;
  c.resolver = parseResolverSection(flat, source, env);
  return c;
}

/**
 * Load the configuration: an explicit path must exist; without one, DIME_CONFIG or the default path
 * is used when present, else the embedded defaults.
 */
export function loadConfig(file?: string, env: NodeJS.ProcessEnv = process.env): DimeConfig {
  const chosen = file ?? env.DIME_CONFIG ?? (fs.existsSync(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : undefined);
  if (!chosen) {
    const c = defaults();
    if (env.DIME_HSM_PIN) c.keystore.pin = env.DIME_HSM_PIN;
    if (env.DIME_LOG_LEVEL) c.log.level = env.DIME_LOG_LEVEL;
    return c;
  }
  let text: string;
  try {
    text = fs.readFileSync(chosen, 'utf8');
  } catch (err) {
    throw new DimeError('FILE_UNREADABLE', `${chosen}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  return parseConfig(text, chosen, env);
}

/** A commented configuration file for `dime init` to write. */
export function renderConfig(c: DimeConfig): string {
  const q = (s: string) => JSON.stringify(s);
  const lines = [
    '# dime-sidecar configuration. `dime config check` validates it; docs/ explain every setting.',
    `domain = ${q(c.domain ?? '')}`,
    `data_dir = ${q(c.dataDir)}`,
    '',
    '[keystore]',
    `type = ${q(c.keystore.type)}`,
    c.keystore.type === 'file' ? `file = ${q(c.keystore.file)}   # development keystore: keep it mode 0600; use an HSM in production` : `module = ${q(c.keystore.module ?? '')}\ntoken = ${q(c.keystore.token ?? '')}\npin_file = ${q(c.keystore.pinFile ?? '')}   # or set DIME_HSM_PIN${c.keystore.label ? `\nlabel = ${q(c.keystore.label)}` : ''}`,
    '',
    '[milter]',
    `listen = ${q(c.milter.listen)}`,
    '',
    '[gateway]   # docs/mail-flow.md',
    `outbound = ${q(c.gateway.outbound ? 'on' : 'off')}`,
    `inbound = ${q(c.gateway.inbound ? 'on' : 'off')}`,
    `bundle_service = ${q(c.gateway.bundleService)}   # postfix-examples/master.cf: the milter-free smtpd with content_filter = dmtp:…`,
    `invalid = ${q(c.gateway.invalid)}`,
    `strict_inbound = ${q(c.gateway.strictInbound)}`,
    '',
    '[policy]',
    `listen = ${q(c.policy.listen)}`,
    `socketmap = ${q(c.policy.socketmap)}`,
    '',
    '[relay]',
    `listen = ${q(c.relay.listen)}`,
    ...(c.relay.dualListen ? [`dual_listen = ${q(c.relay.dualListen)}`] : []),
    ...(c.relay.tlsCert ? [`tls_cert = ${q(c.relay.tlsCert)}`, `tls_key = ${q(c.relay.tlsKey!)}`] : []),
    `mta = ${q(c.relay.mta)}`,
    ...(c.relay.hostname ? [`hostname = ${q(c.relay.hostname)}`] : []),
    `lmtp_listen = ${q(c.relay.lmtpListen)}   # Postfix's dmtp transport: content_filter = dmtp:${c.relay.lmtpListen}`,
    '',
    '[log]',
    `level = ${q(c.log.level)}`,
    '',
    '[resolver]   # docs/resolver.md',
    `servers = [${c.resolver.servers.map(q).join(', ')}]   # a local validating resolver (unbound) is recommended: ["127.0.0.1:53"]`,
    `deadline_ms = ${c.resolver.deadlineMs}`,
    c.resolver.redis ? `redis = ${q(c.resolver.redis)}` : '# redis = "redis://127.0.0.1:6379/0"   # shared cache for several MX hosts; absent: in-process only',
    '',
  ];
  return lines.join('\n');
}
