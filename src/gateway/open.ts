/**
 * The gateway as `dime start` and `dime milter` run it: the organisation (keystore, signets,
 * users), the network resolver, the bundle service, and the dime milter handler built from them.
 */
import * as os from 'node:os';
import type { DimeConfig } from '../config/config.js';
import { parseMtaTarget, sendMail } from '../dmtp/smtp-client.js';
import { DimeError } from '../errors.js';
import { openOrg } from '../keystore/org.js';
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

export interface OpenedGateway {
  handler: MilterHandler;
  resolver: Resolver;
  /** Our own published pol= (undefined: we publish no record); for the strict-inbound policy. */
  localPolicy(): Promise<RecordPolicy | undefined>;
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
    async close() {
      await resolver.close();
      await org.close();
    },
  };
}
