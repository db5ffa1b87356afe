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
import { createNetworkResolver } from '../resolver/dmtp-fetcher.js';
import type { Resolver } from '../resolver/resolver.js';
import { createDimeHandler, type DimeHandlerOptions } from './handler.js';
import { createOutboundProcessor, OUTBOUND_ACTIONS } from './outbound.js';

/** The bundle service is Postfix on this host: a local answer is quick, a stuck one must not hold the milter. */
const REINJECT_TIMEOUTS = { connectMs: 10_000, commandMs: 30_000, dataEndMs: 60_000 };

export interface OpenedGateway {
  handler: MilterHandler;
  resolver: Resolver;
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
  return {
    handler: createDimeHandler(options),
    resolver,
    async close() {
      await resolver.close();
      await org.close();
    },
  };
}
