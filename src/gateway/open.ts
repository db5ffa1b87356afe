/**
 * The gateway as `dime start` and `dime milter` run it: the organisation (keystore, signets,
 * users), the network resolver, the bundle service, and the dime milter handler built from them.
 */
import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import type { DimeConfig } from '../config/config.js';
import { parseMtaTarget, sendMail } from '../dmtp/smtp-client.js';
import { DimeError, isDimeError } from '../errors.js';
import { openOrg, type OrgContext } from '../keystore/org.js';
import type { Logger } from '../log.js';
import type { MilterHandler } from '../milter/handler.js';
import { ResolverSignetSource, createNetworkResolver } from '../resolver/dmtp-fetcher.js';
import type { Resolver } from '../resolver/resolver.js';
import { createDimeHandler, type DimeHandlerOptions } from './handler.js';
import { createInboundProcessor, INBOUND_ACTIONS } from './inbound.js';
import { createOutboundProcessor, OUTBOUND_ACTIONS } from './outbound.js';
import type { RecordPolicy } from '../dime/record.js';
import { publishedPolicy } from '../policy/dime-policy.js';

/** The bundle service is Postfix on this host: a local answer is quick, a stuck one must not hold the milter. */
const REINJECT_TIMEOUTS = { connectMs: 10_000, commandMs: 30_000, dataEndMs: 60_000 };

/**
 * A readiness probe must answer well inside a monitoring system's own timeout (Kubernetes: 1 s by
 * default, most others a few seconds); an HSM that takes longer than this to sign is not ready.
 */
export const READINESS_TIMEOUT_MS = 2_000;

/** One dependency of the gateway, as /readyz reports it. */
export interface ReadinessCheck {
  name: 'keystore' | 'redis';
  ok: boolean;
  /**
   * Whether mail fails without it. The keystore is; Redis is not: the in-process cache, DNS and
   * DMTP answer without it, so its outage degrades the service but must not take a host (or every
   * host at once, since they share Redis) out of service.
   */
  required: boolean;
  detail: string;
  /** The error's stable code when there is one. */
  code?: string;
}

export interface OpenedGateway {
  handler: MilterHandler;
  resolver: Resolver;
  /** Our own published pol= (undefined: we publish no record); for the strict-inbound policy. */
  localPolicy(): Promise<RecordPolicy | undefined>;
  /**
   * Whether the dependencies answer now: the keystore makes a test signature with the POK (an HSM
   * session, the PIN, the key object), and the shared cache's Redis connection is up when one is
   * configured (not required). Never throws.
   */
  readiness(): Promise<ReadinessCheck[]>;
  close(): Promise<void>;
}

export async function openGateway(config: DimeConfig, log: Logger): Promise<OpenedGateway> {
  if (!config.domain) throw new DimeError('CONFIG_INVALID', `${config.source ?? 'the configuration'}: the gateway needs domain = "…"`);
  const hostname = (config.relay.hostname ?? os.hostname()).toLowerCase();
  const bundleTarget = parseMtaTarget(config.gateway.bundleService);
  const org = await openOrg(config, { logger: log });
  const resolver = createNetworkResolver(config.resolver, { crypto: org.crypto, log: log.child({ service: 'resolver' }) });
  const options: DimeHandlerOptions = {};
  if (config.gateway.outbound) {
    options.outbound = {
      actions: OUTBOUND_ACTIONS,
      process: createOutboundProcessor({
        domain: org.domain,
        hostname,
        crypto: org.crypto,
        keystore: org.keystore,
        store: org.signets,
        users: org.users,
        resolve: (address, signal) => resolver.resolve(address, { signal }),
        reinject: (r) => sendMail({ target: bundleTarget, helo: hostname, from: r.sender, to: r.recipients, body: r.body, signal: r.signal, timeouts: REINJECT_TIMEOUTS }),
        localDomains: config.gateway.localDomains,
        requireDime: { senders: config.gateway.requireDimeSenders, destinations: config.gateway.requireDimeDestinations },
        log: log.child({ service: 'gateway', direction: 'outbound' }),
      }),
    };
  }
  if (config.gateway.inbound) {
    options.inbound = {
      actions: INBOUND_ACTIONS,
      process: createInboundProcessor({
        domain: org.domain,
        hostname,
        crypto: org.crypto,
        users: org.users,
        store: org.signets,
        signets: new ResolverSignetSource(resolver),
        orgKeys: org.keystore.actorKeys,
        invalid: config.gateway.invalid,
        log: log.child({ service: 'gateway', direction: 'inbound' }),
      }),
    };
  }
  return {
    handler: createDimeHandler(options),
    resolver,
    localPolicy: publishedPolicy(resolver, org.domain),
    async readiness() {
      const checks = [await keystoreReadiness(org)];
      const store = resolver.cache.store;
      // Without Redis the resolver works from its in-process cache alone: nothing to report.
      if (store.hasRedis) {
        const up = await store.ready(0);
        checks.push({ name: 'redis', ok: up, required: false, detail: up ? 'the shared signet cache is connected' : 'the shared signet cache is unreachable (lookups go to DNS and DMTP, each MX host on its own)' });
      }
      return checks;
    },
    async close() {
      await resolver.close();
      await org.close();
    },
  };
}

/** The POK signs a random probe within READINESS_TIMEOUT_MS, and the signature verifies. Never throws. */
export async function keystoreReadiness(org: Pick<OrgContext, 'keystore' | 'crypto'>): Promise<ReadinessCheck> {
  const pok = org.keystore.pok;
  const probe = new Uint8Array(randomBytes(32));
  let timer: NodeJS.Timeout | undefined;
  try {
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DimeError('DEADLINE_EXCEEDED', `no test signature within ${READINESS_TIMEOUT_MS} ms`)), READINESS_TIMEOUT_MS);
    });
    const sig = await Promise.race([pok.sign(probe), late]);
    if (!org.crypto.ed25519Verify(pok.publicKey, probe, sig)) return { name: 'keystore', ok: false, required: true, detail: `the POK ${pok.label} made a signature that does not verify`, code: 'KEYSTORE_CORRUPT' };
    return { name: 'keystore', ok: true, required: true, detail: `the POK ${pok.label} signs (${org.keystore.kind})` };
  } catch (err) {
    return { name: 'keystore', ok: false, required: true, detail: `the POK ${pok.label} cannot sign: ${(err as Error).message}`, ...(isDimeError(err) ? { code: err.code } : {}) };
  } finally {
    clearTimeout(timer);
  }
}
