/**
 * `dime relay`: the DMTP relay. Serves our organisational and user signets (SGNT, HIST, VRFY) and
 * accepts inbound DIME messages for our domain, handing each to the local MTA wrapped in MIME
 * (docs/dmtp.md). Settings come from the configuration file ([relay], [keystore], domain,
 * data_dir); flags override them. JSON logs on standard error; SIGTERM or SIGINT stops it
 * gracefully (idle sessions get 421, transfers in progress finish first, bounded).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { Command } from 'commander';
import { loadConfig, type DimeConfig } from '../config/config.js';
import { defaultCrypto } from '../crypto/index.js';
import { localActorKeys, type ActorKeys } from '../dime/message/index.js';
import { encryptionKeyOf } from '../dime/signet/index.js';
import { bytesEqual } from '../dime/bytes.js';
import { normalizeDomain } from '../dmtp/codec.js';
import { formatInetSpec, parseInetSpec, startRelay } from '../dmtp/server.js';
import { DEFAULT_SESSION_LIMITS } from '../dmtp/session.js';
import { formatMtaTarget, parseMtaTarget } from '../dmtp/smtp-client.js';
import { DimeError } from '../errors.js';
import { openKeystore } from '../keystore/keystore.js';
import { dataLayout } from '../keystore/layout.js';
import { FileSignetStore } from '../keystore/signets.js';
import { ResolverSignetSource, createNetworkResolver } from '../resolver/dmtp-fetcher.js';
import type { Resolver } from '../resolver/resolver.js';
import { createLogger, type Logger } from '../log.js';
import { readInputFile } from './io.js';
import { loadKeysFile } from './keys.js';
import { stopSignal } from './signals.js';
import { openLmtpRelay } from './lmtp.js';

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export interface RelayFlags {
  config?: string;
  orgKeys?: string;
  signets?: string;
  domain?: string;
  hostname?: string;
  listen?: string;
  dualListen?: string;
  tlsCert?: string;
  tlsKey?: string;
  mta?: string;
  maxSize?: string;
  logLevel?: string;
}

function usage(flag: string, err: unknown): DimeError {
  return new DimeError('USAGE', `${flag}: ${(err as Error).message}`, { cause: err });
}

export interface OpenedRelay {
  relay: Awaited<ReturnType<typeof startRelay>>;
  /** The resolver for origin signets: the shared one when given, else the relay's own. */
  resolver: Resolver;
  domain: string;
  hostname: string;
  mta: string;
  close(): Promise<void>;
}

/**
 * Start the relay the configuration (and flags) describe. The organisation key comes from the
 * keystore of the configuration (file or PKCS#11), or from --org-keys; it must be the one in our
 * published organisational signet. Shared by `dime relay` and `dime start`. `resolver`: share one
 * already open (one cache and one Redis connection per process); otherwise the relay opens its own
 * and closes it with the relay.
 */
export async function openRelay(config: DimeConfig, flags: RelayFlags, log: Logger, options: { resolver?: Resolver } = {}): Promise<OpenedRelay> {
  const domainText = flags.domain ?? config.domain;
  if (!domainText) throw new DimeError('USAGE', 'the relay needs our domain: set domain = "…" in the configuration or give --domain');
  let domain: string;
  try {
    domain = normalizeDomain(domainText);
  } catch (err) {
    throw usage('--domain', err);
  }
  const hostname = (flags.hostname ?? config.relay.hostname ?? os.hostname()).toLowerCase();
  const certFile = flags.tlsCert ?? config.relay.tlsCert;
  const keyFile = flags.tlsKey ?? config.relay.tlsKey;
  if (!certFile || !keyFile) throw new DimeError('USAGE', 'the relay needs an RSA certificate and key: [relay] tls_cert and tls_key, or --tls-cert and --tls-key');
  const listenText = flags.listen ?? config.relay.listen;
  const dualText = flags.dualListen ?? config.relay.dualListen;
  let listen, dualListen, mta;
  try {
    listen = parseInetSpec(listenText);
  } catch (err) {
    throw usage('--listen', err);
  }
  try {
    dualListen = dualText ? parseInetSpec(dualText) : undefined;
  } catch (err) {
    throw usage('--dual-listen', err);
  }
  try {
    mta = parseMtaTarget(flags.mta ?? config.relay.mta);
  } catch (err) {
    throw usage('--mta', err);
  }
  let maxMessageSize = DEFAULT_SESSION_LIMITS.maxMessageSize;
  if (flags.maxSize !== undefined) {
    if (!/^[0-9]{1,12}$/.test(flags.maxSize) || Number(flags.maxSize) < 1) throw new DimeError('USAGE', '--max-size is a number of octets');
    maxMessageSize = Number(flags.maxSize);
  }

  const crypto = defaultCrypto();
  const store = new FileSignetStore(flags.signets ?? dataLayout(config.dataDir).signets, crypto);
  let keys: ActorKeys;
  let encryptionPublicKey: Uint8Array;
  let closeKeys = async (): Promise<void> => {};
  let closeResolver = async (): Promise<void> => {};
  if (flags.orgKeys) {
    const file = loadKeysFile(flags.orgKeys);
    if (file.type !== 'org') throw new DimeError('USAGE', `${flags.orgKeys} holds user keys, not the organisation's`);
    keys = localActorKeys(crypto, file.encryptionKey);
    encryptionPublicKey = crypto.secp256k1PublicKey(file.encryptionKey);
  } else {
    const keystore = await openKeystore(config.keystore, { crypto, logger: log });
    keys = keystore.actorKeys;
    encryptionPublicKey = keystore.encryptionPublicKey;
    closeKeys = () => keystore.close();
  }
  try {
    const org = await store.org(domain);
    if (!org) throw new DimeError('USAGE', `no organisational signet of ${domain} is published in ${store.dir} (run dime init)`);
    const published = encryptionKeyOf(org);
    if (!published || !bytesEqual(published, encryptionPublicKey)) {
      throw new DimeError('USAGE', `the keystore does not hold the encryption key of ${domain}'s published organisational signet`);
    }
    const tlsCert = readInputFile(certFile);
    const tlsKey = readInputFile(keyFile);
    if (fs.statSync(keyFile).mode & 0o077) log.warn({ file: keyFile }, 'the relay TLS key is readable by other users; make it mode 0600');
    // Origin signets come through the resolver: DNSSEC status, tls= pins, cache, chain of custody.
    const resolver = options.resolver ?? createNetworkResolver(config.resolver, { crypto, log: log.child({ service: 'resolver' }) });
    if (!options.resolver) closeResolver = () => resolver.close();
    const relay = await startRelay({
      domain,
      hostname,
      crypto,
      store,
      keys,
      signets: new ResolverSignetSource(resolver),
      mta,
      tls: { cert: tlsCert, key: tlsKey },
      listen,
      ...(dualListen ? { dualListen } : {}),
      limits: { maxMessageSize },
      log,
    });
    return {
      relay,
      resolver,
      domain,
      hostname,
      mta: formatMtaTarget(mta),
      async close() {
        await relay.close();
        await closeResolver();
        await closeKeys();
      },
    };
  } catch (err) {
    await closeResolver();
    await closeKeys();
    throw err;
  }
}

async function runRelay(flags: RelayFlags): Promise<void> {
  const config = loadConfig(flags.config);
  const level = flags.logLevel ?? config.log.level;
  if (!LOG_LEVELS.includes(level)) throw new DimeError('USAGE', `--log-level must be one of ${LOG_LEVELS.join(', ')}, not ${JSON.stringify(level)}`);
  const log = createLogger({ level, name: 'dime-relay' });
  const opened = await openRelay(config, flags, log);
  const { relay, domain, hostname } = opened;
  // The outbound leg (docs/mail-flow.md): Postfix's dmtp transport delivers bundles here.
  let lmtp: Awaited<ReturnType<typeof openLmtpRelay>>;
  try {
    lmtp = await openLmtpRelay(config, log.child({ service: 'lmtp' }), { resolver: opened.resolver });
  } catch (err) {
    await opened.close();
    throw err;
  }
  log.info(
    {
      event: 'relay.start',
      domain,
      hostname,
      listen: relay.endpoints.implicit ? formatInetSpec(relay.endpoints.implicit) : undefined,
      dualListen: relay.endpoints.dual ? formatInetSpec(relay.endpoints.dual) : undefined,
      mta: opened.mta,
      lmtp: lmtp.address,
      pid: process.pid,
    },
    `dime relay for ${domain} started`,
  );

  const signal = await stopSignal();
  log.info({ event: 'relay.stopping', signal, connections: relay.connections }, 'dime relay stopping');
  await lmtp.close();
  await opened.close();
  log.info({ event: 'relay.stop' }, 'dime relay stopped');
}

export function registerRelayCommands(program: Command): void {
  program
    .command('relay')
    .description('run the DMTP relay: serve our signets, accept inbound DIME messages for the local MTA, and deliver queued bundles (LMTP, [relay] lmtp_listen)')
    .option('--config <file>', 'configuration file (default: $DIME_CONFIG, else /etc/dime/dime.toml, else embedded defaults)')
    .option('--org-keys <file>', "the organisation's keys file (default: the configured keystore, file or PKCS#11)")
    .option('--signets <dir>', 'published signets (default: <data_dir>/signets)')
    .option('--domain <domain>', 'our dark domain (default: domain in the configuration)')
    .option('--hostname <name>', 'our DX host name for banners and Received headers (default: [relay] hostname, else the system host name)')
    .option('--listen <inet:HOST:PORT>', 'the DMTP port with implicit TLS (default: [relay] listen)')
    .option('--dual-listen <inet:HOST:PORT>', 'a plaintext port offering STARTTLS MODE=DMTPv1 (default: [relay] dual_listen, else none)')
    .option('--tls-cert <file>', 'the relay certificate, PEM, RSA (default: [relay] tls_cert)')
    .option('--tls-key <file>', 'its private key, PEM (default: [relay] tls_key)')
    .option('--mta <spec>', 'where inbound mail goes: inet:HOST:PORT or unix:/PATH (default: [relay] mta)')
    .option('--max-size <octets>', `largest message accepted (default ${DEFAULT_SESSION_LIMITS.maxMessageSize})`)
    .option('--log-level <level>', `${LOG_LEVELS.join(' | ')} (default: $DIME_LOG_LEVEL, [log] level, or info)`)
    .action((flags: RelayFlags) => runRelay(flags));
}
