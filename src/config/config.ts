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
}

export interface DimeConfig {
  /** The organisation's dark domain; required by the relay and by signing. */
  domain?: string;
  /** Where published signets and sealed user keys live. */
  dataDir: string;
  keystore: KeystoreConfig;
  milter: { listen: string };
  policy: { listen: string; socketmap: string };
  relay: { listen: string; dualListen?: string; tlsCert?: string; tlsKey?: string; mta: string };
  log: { level: string };
  /** The file this came from, or undefined for embedded defaults. */
  source?: string;
}

export const DEFAULT_CONFIG_PATH = '/etc/dime/dime.toml';

type Spec = { type: 'string' | 'string[]'; values?: readonly string[]; fix: string };

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
  },
  milter: { listen: { type: 'string', fix: 'inet:HOST:PORT or unix:PATH, e.g. listen = "inet:127.0.0.1:8899"' } },
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
  },
  log: { level: { type: 'string', values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace'], fix: 'level = "info"' } },
};

function fail(key: string, problem: string, fix: string, source: string): never {
  throw new DimeError('CONFIG_INVALID', `${source}: ${key} ${problem}; ${fix}`);
}

function defaults(dataDir = '/var/lib/dime'): DimeConfig {
  return {
    dataDir,
    keystore: { type: 'file', file: path.join(dataDir, 'org.keys') },
    milter: { listen: 'inet:127.0.0.1:8899' },
    policy: { listen: 'inet:127.0.0.1:9998', socketmap: 'inet:127.0.0.1:9997' },
    relay: { listen: 'inet:127.0.0.1:26', mta: 'inet:127.0.0.1:25' },
    log: { level: 'info' },
  };
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
  const flat = new Map<string, string | string[]>();
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
      if (spec.values && !spec.values.includes(value as string)) fail(name, `is ${JSON.stringify(value)}`, spec.fix, source);
      flat.set(name, value as string | string[]);
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
    ...(env.DIME_HSM_PIN ? { pin: env.DIME_HSM_PIN } : {}),
  };
  if (c.keystore.type === 'pkcs11') {
    if (!c.keystore.module) fail('keystore.module', 'is required with type = "pkcs11"', SCHEMA.keystore!.module!.fix, source);
    if (!c.keystore.token) fail('keystore.token', 'is required with type = "pkcs11"', SCHEMA.keystore!.token!.fix, source);
    if (!c.keystore.pin && !c.keystore.pinFile) fail('keystore.pin_file', 'is required with type = "pkcs11" unless DIME_HSM_PIN is set', SCHEMA.keystore!.pin_file!.fix, source);
  }
  c.milter.listen = str('milter.listen') ?? c.milter.listen;
  c.policy.listen = str('policy.listen') ?? c.policy.listen;
  c.policy.socketmap = str('policy.socketmap') ?? c.policy.socketmap;
  c.relay = {
    listen: str('relay.listen') ?? c.relay.listen,
    mta: str('relay.mta') ?? c.relay.mta,
    ...(str('relay.dual_listen') ? { dualListen: str('relay.dual_listen') } : {}),
    ...(str('relay.tls_cert') ? { tlsCert: str('relay.tls_cert') } : {}),
    ...(str('relay.tls_key') ? { tlsKey: str('relay.tls_key') } : {}),
  };
  if (!!c.relay.tlsCert !== !!c.relay.tlsKey) fail(c.relay.tlsCert ? 'relay.tls_key' : 'relay.tls_cert', 'is missing', 'give both relay.tls_cert and relay.tls_key', source);
  for (const key of ['milter.listen', 'policy.listen', 'policy.socketmap', 'relay.listen', 'relay.dual_listen', 'relay.mta']) {
    const v = str(key);
    if (v !== undefined && !/^(inet:[^\s]+:\d{1,5}|unix:\/[^\s]*)$/.test(v)) fail(key, `is ${JSON.stringify(v)}`, 'use inet:HOST:PORT or unix:/absolute/path', source);
  }
  c.log.level = env.DIME_LOG_LEVEL ?? str('log.level') ?? c.log.level;
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
    c.keystore.type === 'file' ? `file = ${q(c.keystore.file)}   # development keystore: keep it mode 0600; use an HSM in production` : `module = ${q(c.keystore.module ?? '')}\ntoken = ${q(c.keystore.token ?? '')}\npin_file = ${q(c.keystore.pinFile ?? '')}   # or set DIME_HSM_PIN`,
    '',
    '[milter]',
    `listen = ${q(c.milter.listen)}`,
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
    '',
    '[log]',
    `level = ${q(c.log.level)}`,
    '',
  ];
  return lines.join('\n');
}
