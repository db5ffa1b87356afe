/**
 * The decision side of the policy and socketmap services: small async interfaces returning
 * verdict values. The defaults here are placeholders; the DIME resolver (signet lookup, `_dx`
 * records) plugs into the same interfaces later without touching the codecs or sessions.
 */
import { DimeError } from '../errors.js';
import { isHostName } from '../dime/record.js';
import type { PolicyAction } from './action.js';
import type { PolicyRequest } from './codec.js';
import type { SocketmapResult } from './socketmap.js';

export interface HandlerContext {
  /** Aborted when the request deadline passes or the connection goes away: stop work, the answer is no longer wanted. */
  signal: AbortSignal;
}

/** Answers one policy delegation request. A throw or a missed deadline answers the failure action. */
export type PolicyHandler = (request: PolicyRequest, context: HandlerContext) => Promise<PolicyAction>;

/** Answers one socketmap lookup. A throw or a missed deadline answers TEMP. */
export type SocketmapHandler = (map: string, key: string, context: HandlerContext) => Promise<SocketmapResult>;

/** No opinion on anything: Postfix goes on with its other restrictions. */
export const dunnoPolicy: PolicyHandler = async () => ({ action: 'DUNNO' });

/** The socketmap name Postfix sends for `transport_maps = socketmap:…:transport`. */
export const TRANSPORT_MAP = 'transport';

/**
 * The sidecar's relay, as a transport(5) result. It names a nexthop on purpose: with a bare
 * `dmtp:` Postfix would use the recipient's domain as nexthop, and an smtp-based dmtp transport
 * would then look up the peer's MX and deliver there in plaintext, the one thing this must not do.
 */
export const DEFAULT_DARK_ROUTE = 'dmtp:[127.0.0.1]:10026';

export interface StaticDarkTableOptions {
  /** Domains whose recipients are DIME ("dark"): `user@domain` and `domain` keys match. */
  domains: readonly string[];
  /** The transport(5) result for them, `transport:nexthop`. */
  route?: string;
  /** The socketmap name answered; other names get PERM, so a main.cf typo is loud, not silent. */
  map?: string;
}

/** transport:nexthop with a master.cf service name and a nexthop without spaces or controls. */
export function validateRoute(route: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*:[\x21-\x7e]*$/.test(route) || route.length > 255) {
    throw new DimeError('USAGE', `${JSON.stringify(route)} is not transport:nexthop (e.g. ${DEFAULT_DARK_ROUTE})`);
  }
  return route;
}

/** Lowercase, without a trailing dot; DimeError USAGE if it is not a host name. */
export function normalizeDomain(domain: string): string {
  if (!isHostName(domain)) throw new DimeError('USAGE', `${JSON.stringify(domain)} is not a domain name`);
  return domain.toLowerCase().replace(/\.$/, '');
}

/** The domain a lookup key names: the part after the last `@` of an address, or the key itself. */
export function domainOfKey(key: string): string {
  const at = key.lastIndexOf('@');
  return (at < 0 ? key : key.slice(at + 1)).toLowerCase().replace(/\.$/, '');
}

/**
 * A fixed table from configuration (`dime policy --dark-domain`). Postfix sends only whole
 * addresses to a socketmap (no partial keys), so the domain match happens here.
 */
export function staticDarkTable(options: StaticDarkTableOptions): SocketmapHandler {
  const domains = new Set(options.domains.map(normalizeDomain));
  const route = validateRoute(options.route ?? DEFAULT_DARK_ROUTE);
  const mapName = options.map ?? TRANSPORT_MAP;
  return async (map, key) => {
    if (map !== mapName) return { status: 'PERM', reason: `no socketmap named ${JSON.stringify(map)} here (only ${mapName})` };
    return domains.has(domainOfKey(key)) ? { status: 'OK', value: route } : { status: 'NOTFOUND' };
  };
}
