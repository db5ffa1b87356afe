/**
 * The relay's outbound leg as a service: the LMTP listener Postfix's `dmtp` transport delivers
 * bundles to (`[relay] lmtp_listen`, docs/mail-flow.md), delivering each recipient's sealed message
 * over DMTP. Destinations are located and trusted through the DNSSEC-aware resolver, exactly as
 * the relay locates origins (createNetworkResolver + ResolverPeerLocator). For `dime start`.
 */
import * as os from 'node:os';
import type { DimeConfig } from '../config/config.js';
import { defaultCrypto } from '../crypto/index.js';
import { DmtpClient } from '../dmtp/client.js';
import { normalizeDomain } from '../dmtp/codec.js';
import { OUTBOUND_CLIENT_TIMEOUTS, startLmtpRelay } from '../dmtp/outbound.js';
import { DimeError } from '../errors.js';
import type { Logger } from '../log.js';
import { ResolverPeerLocator, createNetworkResolver } from '../resolver/dmtp-fetcher.js';
import type { Resolver } from '../resolver/resolver.js';

export interface OpenedLmtpRelay {
  /** The bound listener, `inet:127.0.0.1:10026` form (`content_filter = dmtp:<address>`). */
  address: string;
  close(): Promise<void>;
}

/**
 * Start the LMTP listener of `[relay] lmtp_listen`. Refuses a non-loopback inet address (LMTP has
 * no authentication). With a configured domain, only parts whose origin is that domain are sent.
 * `resolver`: share one already open (its cache); otherwise one is created and closed with the listener.
 */
export async function openLmtpRelay(config: DimeConfig, log: Logger, options: { resolver?: Resolver } = {}): Promise<OpenedLmtpRelay> {
  const crypto = defaultCrypto();
  let originDomain: string | undefined;
  if (config.domain) {
    try {
      originDomain = normalizeDomain(config.domain);
    } catch (err) {
      throw new DimeError('USAGE', `domain: ${(err as Error).message}`, { cause: err });
    }
  }
  const own = options.resolver === undefined;
  const resolver = options.resolver ?? createNetworkResolver(config.resolver, { crypto, log: log.child({ service: 'resolver' }) });
  try {
    const client = new DmtpClient({ crypto, locator: new ResolverPeerLocator(resolver), timeouts: OUTBOUND_CLIENT_TIMEOUTS, log: log.child({ service: 'dmtp-client' }) });
    const server = await startLmtpRelay({
      listen: config.relay.lmtpListen,
      hostname: (config.relay.hostname ?? os.hostname()).toLowerCase(),
      client,
      ...(originDomain !== undefined ? { originDomain } : {}),
      log,
    });
    return {
      address: server.address,
      async close() {
        await server.close();
        if (own) await resolver.close();
      },
    };
  } catch (err) {
    if (own) await resolver.close();
    throw err;
  }
}
