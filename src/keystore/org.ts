/**
 * The organisation as the CLI and the services open it: its keystore, its published signets and
 * its users, from one configuration; and the two things derived from the keystore that get
 * published: the organisational signet and the management record.
 *
 * The org signet is signed by the current POK and lists, as secondary keys (field 2): every SOK
 * with its permission bits, and every earlier POK with the `signets` permission. The latter keeps
 * the user signets an earlier POK signed valid under the re-issued org signet after a rotation
 * (docs/keystore.md "Rotation").
 */
import type { DimeConfig } from '../config/config.js';
import type { CryptoBackend } from '../crypto/backend.js';
import { defaultCrypto } from '../crypto/index.js';
import { bytesEqual } from '../dime/bytes.js';
import { formatRecord, tlsPinDigest, zoneFileLine, type DimeRecord, type RecordPolicy } from '../dime/record.js';
import { SOK_PERMISSIONS, createOrgSignet, signingKeyOf, type Signet, type SignetInfo } from '../dime/signet/index.js';
import { DimeError } from '../errors.js';
import type { Logger } from '../log.js';
import { openKeystore, type KeystoreOptions, type OrgKeystore } from './keystore.js';
import { dataLayout } from './layout.js';
import { FileSignetStore } from './signets.js';
import { UserKeyStore } from './users.js';

export interface OrgContext {
  config: DimeConfig;
  domain: string;
  crypto: CryptoBackend;
  keystore: OrgKeystore;
  signets: FileSignetStore;
  users: UserKeyStore;
  close(): Promise<void>;
}

/** Open everything the configuration describes; the domain must be set. */
export async function openOrg(config: DimeConfig, options: KeystoreOptions & { logger?: Logger } = {}): Promise<OrgContext> {
  if (!config.domain) throw new DimeError('CONFIG_INVALID', `${config.source ?? 'the configuration'}: domain is not set; run dime init or add domain = "example.com"`);
  const crypto = options.crypto ?? defaultCrypto();
  const keystore = await openKeystore(config.keystore, { ...options, crypto });
  const signets = new FileSignetStore(dataLayout(config.dataDir).signets, crypto);
  const users = new UserKeyStore({ dataDir: config.dataDir, domain: config.domain, keystore, signets, crypto, ...(options.logger ? { logger: options.logger } : {}) });
  return {
    config,
    domain: config.domain,
    crypto,
    keystore,
    signets,
    users,
    async close() {
      users.close();
      await keystore.close();
    },
  };
}

/** The secondary keys of the org signet: SOKs, then earlier POKs allowed to have signed user signets. */
export function secondaryKeys(keystore: OrgKeystore): { permissions: number; publicKey: Uint8Array }[] {
  return [
    ...keystore.soks.map((s) => ({ permissions: s.permissions, publicKey: s.publicKey })),
    ...keystore.poks.slice(0, -1).map((p) => ({ permissions: SOK_PERMISSIONS.signets, publicKey: p.publicKey })),
  ];
}

export async function issueOrgSignet(keystore: OrgKeystore, domain: string, info?: SignetInfo): Promise<Signet> {
  return createOrgSignet({
    signer: keystore.pok,
    encryptionKey: keystore.encryptionPublicKey,
    secondaryKeys: secondaryKeys(keystore),
    domain,
    ...(info ? { info } : {}),
  });
}

/** True when `signet` is signed by the keystore's current POK (false: a rotation is not published yet). */
export function signetIsCurrent(keystore: OrgKeystore, signet: Signet | undefined): boolean {
  const key = signet ? signingKeyOf(signet) : undefined;
  return !!key && bytesEqual(key, keystore.pok.publicKey);
}

export interface RecordOptions {
  /** DER of the relay certificate, pinned with a tls= signature by the current POK. */
  certificateDer?: Uint8Array;
  /** How many POK generations to list, newest first (2 after a rotation: the new and the previous). */
  pokCount?: number;
  policy?: RecordPolicy;
  dx?: string[];
}

export interface PublishedRecord {
  record: DimeRecord;
  /** The TXT value. */
  text: string;
  /** `_dx.<domain>. 3600 IN TXT "…"` for the zone file. */
  zone: string;
}

/** The management record to publish for the keystore's POKs (and the relay certificate's pin). */
export async function managementRecord(keystore: OrgKeystore, domain: string, crypto: CryptoBackend, o: RecordOptions = {}): Promise<PublishedRecord> {
  const poks = keystore.poks
    .slice(-(o.pokCount ?? 2))
    .reverse()
    .map((p) => p.publicKey);
  const tls = o.certificateDer ? [await keystore.pok.sign(tlsPinDigest(o.certificateDer, crypto))] : [];
  const record: DimeRecord = { version: 1, poks, tls, policy: o.policy ?? 'experimental', subdomain: 'strict', dx: o.dx ?? [] };
  const text = formatRecord(record);
  return { record, text, zone: zoneFileLine(domain, text) };
}
