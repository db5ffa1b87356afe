/**
 * Users' keys and their custody (docs/keystore.md "Custody modes"):
 *
 *  - trustful: the sidecar generates the user's keys and does the user's cryptography. At rest the
 *    private key is sealed with AES-256-GCM under the keystore's wrapping key (escrow custody: the
 *    organisation can always open it, which businesses with retention duties need; in the HSM when
 *    there is one), and optionally also with the user's password through STACIE, in magma's
 *    encrypted user key format 1976. `escrow: false` keeps only the password seal (magma's model:
 *    the key opens only when the user logs in).
 *  - cautious: the user's client makes its keys. The sidecar signs the user's signing request and
 *    stores the published signet and the user's own encrypted key blob, which it never opens.
 *  - paranoid: the public signet only.
 *
 * Unsealed keys live in memory only, for a bounded time (ttlMs, absolute from the unseal) and in a
 * bounded number (maxEntries, least recently used first out); evicted keys are zeroed.
 *
 * Files (directory 0700, files 0600, every write atomic), under <data_dir>/users/<domain>/<local>/:
 *   user.json       the record: mode, generation, public keys per generation, STACIE parameters
 *                   (salt, bonus, verification token, realm shard) when password-sealed
 *   <g>.sealed      generation g sealed under the keystore wrapping key (trustful with escrow)
 *   <g>.1976        generation g as a PRIME encrypted user key under the STACIE realm key
 *   <g>.blob        generation g: the cautious user's own encrypted key blob, stored as given
 * Older generations stay (old mail must remain readable) unless a removal purges them.
 */
import { timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CryptoBackend, Signer } from '../crypto/backend.js';
import type { ActorKeys } from '../dime/message/open.js';
import { base64Encode, base64DecodeStrict } from '../dime/base64.js';
import { bytesEqual, fromHex, toHex } from '../dime/bytes.js';
import { decodeKeys, encodeKeys, generateKeys, type DimeKeys } from '../dime/keys.js';
import { createSigningRequest, encryptionKeyOf, signUserSignet, signingKeyOf, type Signet, type SignetInfo } from '../dime/signet/index.js';
import { SOK_PERMISSIONS } from '../dime/signet/fields.js';
import { DimeError, isDimeError } from '../errors.js';
import type { Logger } from '../log.js';
import { MAX_KEYSTORE_FILE, PRIVATE_FILE_MODE, atomicCreateFile, atomicWriteFile, ensurePrivateDir, readPrivateFile } from './files.js';
import type { OrgKeystore } from './keystore.js';
import { dataLayout } from './layout.js';
import type { SignetStore } from './signets.js';
import { MAIL_REALM, STACIE_KEY_LENGTH, STACIE_SALT_LENGTH, deriveStacie, openPrimeKey, realmKey, sealPrimeKey, stacieCharacters, stacieUsername } from './stacie.js';

export type CustodyMode = 'trustful' | 'cautious' | 'paranoid';
export const CUSTODY_MODES: readonly CustodyMode[] = ['trustful', 'cautious', 'paranoid'];

/** magma's default minimum (magma.secure.minimum_password_length): it also caps STACIE's rounds at 65,536 + bonus. */
export const MIN_PASSWORD_CHARS = 8;
/** Default unlock lifetime: long enough for a session of mail handling, short enough that a stolen memory image is mostly empty. */
export const DEFAULT_UNLOCK_TTL_MS = 15 * 60 * 1000;
/** Default bound on keys held unsealed at once; each is 64 bytes, the bound limits exposure, not memory. */
export const DEFAULT_MAX_UNSEALED = 1000;
/** A cautious user's own encrypted key blob: a PRIME 1976 key is 118 bytes; 64 KiB leaves room for other client formats. */
export const MAX_USER_BLOB = 64 * 1024;

const RECORD_FORMAT = 'dime-sidecar user';

interface KeyGeneration {
  generation: number;
  /** Raw Ed25519 public key, base64. */
  signingKey: string;
  /** Compressed secp256k1 public key, hex. */
  encryptionKey: string;
  created: string;
}

interface PasswordSeal {
  /** The STACIE user name (stacieUsername of the address with the organisation's domain). */
  username: string;
  /** 128 bytes, base64url without padding (magma's column encoding). */
  salt: string;
  bonus: number;
  /** The STACIE verification token, base64url. */
  auth: string;
  realm: { label: string; serial: number; shard: string; rotated: 1 | 0 };
}

interface UserRecord {
  format: typeof RECORD_FORMAT;
  version: 1;
  address: string;
  mode: CustodyMode;
  /** The current generation (the newest entry of `keys`). */
  generation: number;
  /** trustful: sealed under the keystore wrapping key. */
  escrow: boolean;
  password?: PasswordSeal;
  keys: KeyGeneration[];
  created: string;
  updated: string;
  removed?: string;
}

export interface UserInfo {
  address: string;
  mode: CustodyMode;
  generation: number;
  escrow: boolean;
  passwordSealed: boolean;
  removed?: string;
  /** The current published signet (none after removal). */
  signet?: Signet;
  /** False when the published signet is not the one of the current generation (see docs: crash window). */
  published: boolean;
}

export interface AddUserOptions {
  mode?: CustodyMode;
  /** trustful: also seal with this password (STACIE, 1976). */
  password?: Uint8Array | string;
  /** trustful: seal under the keystore wrapping key (default true; false needs a password). */
  escrow?: boolean;
  /** cautious and paranoid: the user's signing request (their own keys). */
  request?: Signet;
  /** cautious: the user's own encrypted key blob, stored as given. */
  encryptedKey?: Uint8Array;
  /** Informational fields of the user signet. */
  info?: SignetInfo;
}

export interface RotateUserOptions {
  /** trustful with a password seal: needed to seal the new key (and to open the old one without escrow). */
  password?: Uint8Array | string;
  /** cautious and paranoid: the signing request for the new keys, with its chain-of-custody signature. */
  request?: Signet;
  encryptedKey?: Uint8Array;
  info?: SignetInfo;
}

/** An unsealed trustful key, usable while it is in the cache; it never hands out the private bytes. */
export interface UnsealedUserKey {
  address: string;
  generation: number;
  signer: Signer;
  actorKeys: ActorKeys;
  encryptionPublicKey: Uint8Array;
}

export interface UserStoreOptions {
  dataDir: string;
  domain: string;
  keystore: OrgKeystore;
  signets: SignetStore;
  crypto: CryptoBackend;
  logger?: Logger;
  unlockTtlMs?: number;
  maxUnsealed?: number;
  /** Clock for the cache (tests). */
  now?: () => number;
}

// ---- the bounded cache of unsealed keys --------------------------------------------------------

interface CacheEntry {
  keys: DimeKeys;
  expires: number;
}

export class UnsealedKeyCache {
  private readonly entries = new Map<string, CacheEntry>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly ttlMs: number,
    readonly maxEntries: number,
    private readonly now: () => number = Date.now,
  ) {
    if (!Number.isInteger(ttlMs) || ttlMs < 1) throw new DimeError('USAGE', `unlock lifetime must be a positive number of milliseconds, got ${ttlMs}`);
    if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new DimeError('USAGE', `maxUnsealed must be a positive integer, got ${maxEntries}`);
  }

  get size(): number {
    return this.entries.size;
  }

  get(key: string): DimeKeys | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    if (e.expires <= this.now()) {
      this.evict(key);
      return undefined;
    }
    // Least recently used goes first: move to the end.
    this.entries.delete(key);
    this.entries.set(key, e);
    return e.keys;
  }

  set(key: string, keys: DimeKeys): void {
    if (this.entries.has(key)) this.evict(key);
    while (this.entries.size >= this.maxEntries) this.evict(this.entries.keys().next().value as string);
    this.entries.set(key, { keys, expires: this.now() + this.ttlMs });
    this.startSweeper();
  }

  evict(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    e.keys.signingKey.fill(0);
    e.keys.encryptionKey.fill(0);
  }

  /** Evict every expired entry (also run by a timer while entries exist). */
  sweep(): void {
    const now = this.now();
    for (const [key, e] of [...this.entries]) if (e.expires <= now) this.evict(key);
    if (this.entries.size === 0) this.stopSweeper();
  }

  clear(): void {
    for (const key of [...this.entries.keys()]) this.evict(key);
    this.stopSweeper();
  }

  private startSweeper(): void {
    if (this.timer) return;
    // Expired keys must not wait for the next access to be zeroed; unref: the timer never keeps the process alive.
    this.timer = setInterval(() => this.sweep(), Math.min(this.ttlMs, 60_000));
    this.timer.unref();
  }

  private stopSweeper(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

// ---- helpers -----------------------------------------------------------------------------------

const b64url = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('base64url');
function fromB64url(text: string, what: string, file: string): Uint8Array {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text)) throw new DimeError('KEYSTORE_CORRUPT', `${file}: ${what} is not base64url`);
  return new Uint8Array(Buffer.from(text, 'base64url'));
}

function wipe(...arrays: (Uint8Array | undefined)[]): void {
  for (const a of arrays) a?.fill(0);
}

function passwordOk(password: Uint8Array | string | undefined): password is Uint8Array | string {
  return password !== undefined && (typeof password === 'string' || password instanceof Uint8Array);
}

function sealContext(address: string, generation: number): string {
  return `user-key:${address}:${generation}`;
}

// ---- the store ---------------------------------------------------------------------------------

export class UserKeyStore {
  readonly cache: UnsealedKeyCache;
  private readonly dir: string;
  private readonly domain: string;

  constructor(private readonly o: UserStoreOptions) {
    if (!o.domain) throw new DimeError('CONFIG_INVALID', 'the organisation domain is not set (domain = "…" in the configuration)');
    this.domain = o.domain.toLowerCase();
    this.dir = path.join(dataLayout(o.dataDir).users, this.component(this.domain, 'domain'));
    this.cache = new UnsealedKeyCache(o.unlockTtlMs ?? DEFAULT_UNLOCK_TTL_MS, o.maxUnsealed ?? DEFAULT_MAX_UNSEALED, o.now);
  }

  private component(value: string, what: string): string {
    if (value.length === 0 || value.length > 255 || value === '.' || value === '..' || value.startsWith('.') || /[/\\\0\s]/.test(value)) {
      throw new DimeError('USER_BAD_ADDRESS', `${what} ${JSON.stringify(value)} cannot name a directory`);
    }
    return value;
  }

  /** Lower-cased address of this organisation, and its directory. */
  private locate(address: string): { address: string; dir: string } {
    if (typeof address !== 'string') throw new DimeError('USER_BAD_ADDRESS', 'address must be a string');
    const a = address.trim().toLowerCase();
    const at = a.lastIndexOf('@');
    if (at <= 0 || at === a.length - 1) throw new DimeError('USER_BAD_ADDRESS', `${JSON.stringify(address)} is not local@domain`);
    if (a.slice(at + 1) !== this.domain) throw new DimeError('USER_BAD_ADDRESS', `${a} is not in ${this.domain}`);
    return { address: a, dir: path.join(this.dir, this.component(a.slice(0, at), 'local part')) };
  }

  private recordFile(dir: string): string {
    return path.join(dir, 'user.json');
  }

  private readRecord(dir: string): UserRecord | undefined {
    const file = this.recordFile(dir);
    if (!fs.existsSync(file)) return undefined;
    const { content } = readPrivateFile(file, { refuseGroup: true, what: 'user record' });
    let r: UserRecord;
    try {
      r = JSON.parse(content.toString('utf8')) as UserRecord;
    } catch (err) {
      throw new DimeError('KEYSTORE_CORRUPT', `${file}: not valid JSON`, { cause: err });
    }
    const ok =
      r &&
      r.format === RECORD_FORMAT &&
      r.version === 1 &&
      typeof r.address === 'string' &&
      CUSTODY_MODES.includes(r.mode) &&
      Number.isInteger(r.generation) &&
      Array.isArray(r.keys) &&
      r.keys.some((k) => k.generation === r.generation);
    if (!ok) throw new DimeError('KEYSTORE_CORRUPT', `${file}: not a version 1 user record`);
    return r;
  }

  private writeRecord(dir: string, r: UserRecord, create: boolean): void {
    const text = JSON.stringify(r, null, 2) + '\n';
    if (create) atomicCreateFile(this.recordFile(dir), text, PRIVATE_FILE_MODE);
    else atomicWriteFile(this.recordFile(dir), text, PRIVATE_FILE_MODE);
  }

  private require(address: string): { address: string; dir: string; record: UserRecord } {
    const loc = this.locate(address);
    const record = this.readRecord(loc.dir);
    if (!record) throw new DimeError('USER_NOT_FOUND', loc.address);
    return { ...loc, record };
  }

  private orgSigner(): Signer {
    return this.o.keystore.signerFor(SOK_PERMISSIONS.signets);
  }

  private now(): string {
    return new Date().toISOString();
  }

  private checkNewPassword(password: Uint8Array | string): void {
    if (stacieCharacters(password) < MIN_PASSWORD_CHARS) throw new DimeError('USER_BAD_PASSWORD', `a password needs at least ${MIN_PASSWORD_CHARS} characters`);
  }

  /** New STACIE parameters for a user and the realm key they give (the caller wipes it). */
  private newPasswordSeal(address: string, password: Uint8Array | string): { seal: PasswordSeal; key: Uint8Array } {
    this.checkNewPassword(password);
    const c = this.o.crypto;
    const username = stacieUsername(address, this.domain);
    const salt = c.randomBytes(STACIE_SALT_LENGTH);
    const shard = c.randomBytes(STACIE_KEY_LENGTH);
    const k = deriveStacie(c, { username, password, salt, bonus: 0 });
    const key = realmKey(c, k.masterKey, MAIL_REALM, salt, shard, true);
    const seal: PasswordSeal = { username, salt: b64url(salt), bonus: 0, auth: b64url(k.verificationToken), realm: { label: MAIL_REALM, serial: 0, shard: b64url(shard), rotated: 1 } };
    wipe(k.seed, k.masterKey, k.passwordKey);
    return { seal, key };
  }

  /** The realm key for an existing seal, after checking the password against the verification token. */
  private realmKeyFor(file: string, seal: PasswordSeal, password: Uint8Array | string): Uint8Array {
    const c = this.o.crypto;
    const salt = fromB64url(seal.salt, 'salt', file);
    const k = deriveStacie(c, { username: seal.username, password, salt, bonus: seal.bonus });
    const expected = fromB64url(seal.auth, 'auth', file);
    const match = expected.length === k.verificationToken.length && timingSafeEqual(expected, k.verificationToken);
    if (!match) {
      wipe(k.seed, k.masterKey, k.passwordKey);
      throw new DimeError('USER_BAD_PASSWORD');
    }
    const key = realmKey(c, k.masterKey, seal.realm.label, salt, fromB64url(seal.realm.shard, 'shard', file), seal.realm.rotated === 1);
    wipe(k.seed, k.masterKey, k.passwordKey);
    return key;
  }

  private generationEntry(keys: { signingKey: Uint8Array; encryptionKey: Uint8Array }, generation: number): KeyGeneration {
    return { generation, signingKey: base64Encode(keys.signingKey), encryptionKey: toHex(keys.encryptionKey), created: this.now() };
  }

  private publicEntry(signet: Signet, generation: number): KeyGeneration {
    return this.generationEntry({ signingKey: signingKeyOf(signet)!, encryptionKey: encryptionKeyOf(signet)! }, generation);
  }

  /**
   * Seal a trustful user's key for generation `g` (escrow and/or password) and return the files to
   * write. The key object is PRIME's user key (2013) in both seals, the format magma stores.
   */
  private async sealFiles(address: string, g: number, keys: DimeKeys, escrow: boolean, realm: Uint8Array | undefined): Promise<[string, Uint8Array][]> {
    const object = encodeKeys({ type: 'user', dialect: 'magma', signingKey: keys.signingKey, encryptionKey: keys.encryptionKey });
    try {
      const files: [string, Uint8Array][] = [];
      if (escrow) files.push([`${g}.sealed`, await this.o.keystore.wrap(object, sealContext(address, g))]);
      if (realm) files.push([`${g}.1976`, sealPrimeKey(this.o.crypto, realm, object)]);
      return files;
    } finally {
      object.fill(0);
    }
  }

  /** Write new files exclusively (a concurrent add/rotate loses with USER_EXISTS); undo all on failure. */
  private writeNewFiles(dir: string, files: [string, Uint8Array][]): string[] {
    const written: string[] = [];
    try {
      for (const [name, content] of files) {
        const file = path.join(dir, name);
        atomicCreateFile(file, content, PRIVATE_FILE_MODE);
        written.push(file);
      }
      return written;
    } catch (err) {
      for (const f of written) fs.rmSync(f, { force: true });
      if (isDimeError(err, 'FILE_EXISTS')) throw new DimeError('USER_EXISTS', `${(err as DimeError).message} (another add or rotate ran concurrently?)`, { cause: err });
      throw err;
    }
  }

  /** Files, then the record (the commit point), then the signet; anything failing undoes the rest. */
  private async commit(dir: string, files: [string, Uint8Array][], record: UserRecord, previous: UserRecord | undefined, signet: Signet): Promise<void> {
    ensurePrivateDir(dir);
    const written = this.writeNewFiles(dir, files);
    try {
      this.writeRecord(dir, record, previous === undefined);
    } catch (err) {
      for (const f of written) fs.rmSync(f, { force: true });
      if (isDimeError(err, 'FILE_EXISTS')) throw new DimeError('USER_EXISTS', record.address, { cause: err });
      throw err;
    }
    try {
      await this.o.signets.put(signet);
    } catch (err) {
      if (previous) this.writeRecord(dir, previous, false);
      else fs.rmSync(this.recordFile(dir), { force: true });
      for (const f of written) fs.rmSync(f, { force: true });
      throw err;
    }
  }

  private readBlob(name: string, blob: Uint8Array | undefined): Uint8Array {
    if (!(blob instanceof Uint8Array) || blob.length === 0) throw new DimeError('USAGE', `${name}: a cautious user needs their own encrypted key blob`);
    if (blob.length > MAX_USER_BLOB) throw new DimeError('USAGE', `${name}: the encrypted key blob is ${blob.length} bytes, limit ${MAX_USER_BLOB}`);
    return blob;
  }

  private checkModeOptions(mode: CustodyMode, o: AddUserOptions | RotateUserOptions, adding: boolean): void {
    const has = (k: keyof AddUserOptions) => (o as AddUserOptions)[k] !== undefined;
    if (mode === 'trustful') {
      if (has('request') || has('encryptedKey')) throw new DimeError('USAGE', 'a trustful user\'s keys are made by the sidecar: no signing request or key blob');
      if (adding && (o as AddUserOptions).escrow === false && !passwordOk(o.password)) throw new DimeError('USAGE', 'without escrow the key must be sealed with the user\'s password');
    } else {
      if (!o.request) throw new DimeError('USAGE', `a ${mode} user brings their own keys: give their signing request`);
      if (o.request.type !== 'ssr') throw new DimeError('USAGE', `expected a signing request, got a ${o.request.type} signet`);
      if (has('password') || (adding && has('escrow'))) throw new DimeError('USAGE', `the sidecar holds no private key of a ${mode} user: no password or escrow`);
      if (mode === 'paranoid' && has('encryptedKey')) throw new DimeError('USAGE', 'a paranoid user keeps their key to themselves: no key blob');
      if (mode === 'cautious') this.readBlob('encryptedKey', o.encryptedKey);
    }
  }

  /** Add a user: keys (trustful) or their request (cautious, paranoid), a user signet, published. */
  async add(address: string, o: AddUserOptions = {}): Promise<UserInfo> {
    const mode = o.mode ?? 'trustful';
    if (!CUSTODY_MODES.includes(mode)) throw new DimeError('USAGE', `mode must be ${CUSTODY_MODES.join(', ')}, not ${JSON.stringify(mode)}`);
    const loc = this.locate(address);
    const previous = this.readRecord(loc.dir);
    if (previous && !previous.removed) throw new DimeError('USER_EXISTS', loc.address);
    this.checkModeOptions(mode, o, true);
    // A removed user who comes back continues the generation count: old files keep their names.
    const g = previous ? previous.generation + 1 : 1;
    const c = this.o.crypto;
    let signet: Signet;
    let files: [string, Uint8Array][] = [];
    let seal: PasswordSeal | undefined;
    const escrow = mode === 'trustful' && o.escrow !== false;
    if (mode === 'trustful') {
      const keys = generateKeys('user', c);
      let realm: Uint8Array | undefined;
      try {
        if (passwordOk(o.password)) ({ seal, key: realm } = this.newPasswordSeal(loc.address, o.password));
        const ssr = await createSigningRequest({ signer: c.ed25519Signer(keys.signingKey), encryptionKey: c.secp256k1PublicKey(keys.encryptionKey) });
        signet = await signUserSignet(c, ssr, { orgSigner: this.orgSigner(), address: loc.address, ...(o.info ? { info: o.info } : {}) });
        files = await this.sealFiles(loc.address, g, keys, escrow, realm);
      } finally {
        wipe(realm, keys.signingKey, keys.encryptionKey);
      }
    } else {
      signet = await signUserSignet(c, o.request!, { orgSigner: this.orgSigner(), address: loc.address, ...(o.info ? { info: o.info } : {}) });
      if (mode === 'cautious') files = [[`${g}.blob`, this.readBlob('encryptedKey', o.encryptedKey)]];
    }
    const now = this.now();
    const record: UserRecord = {
      format: RECORD_FORMAT,
      version: 1,
      address: loc.address,
      mode,
      generation: g,
      escrow,
      ...(seal ? { password: seal } : {}),
      keys: [...(previous?.keys ?? []), this.publicEntry(signet, g)],
      created: previous?.created ?? now,
      updated: now,
    };
    await this.commit(loc.dir, files, record, previous, signet);
    this.o.logger?.info({ user: loc.address, mode, generation: g }, 'user added');
    return this.info(record, signet);
  }

  /** New keys for a user, with a chain-of-custody signature by the previous signing key. */
  async rotate(address: string, o: RotateUserOptions = {}): Promise<UserInfo> {
    const { address: a, dir, record } = this.require(address);
    if (record.removed) throw new DimeError('USER_NOT_FOUND', `${a} was removed`);
    this.checkModeOptions(record.mode, o, false);
    const previousSignet = await this.o.signets.user(a);
    if (!previousSignet) throw new DimeError('USER_NOT_FOUND', `${a} has no published signet to rotate from`);
    const c = this.o.crypto;
    const g = record.generation + 1;
    let signet: Signet;
    let files: [string, Uint8Array][] = [];
    let seal = record.password;
    if (record.mode === 'trustful') {
      if (record.password && !passwordOk(o.password)) throw new DimeError('USAGE', `${a}'s key is also sealed with their password: give it to seal the new key`);
      const old = await this.openKeys(a, dir, record, record.generation, o.password);
      const keys = generateKeys('user', c);
      let realm: Uint8Array | undefined;
      try {
        if (record.password) realm = this.realmKeyFor(this.recordFile(dir), record.password, o.password!);
        else if (passwordOk(o.password)) ({ seal, key: realm } = this.newPasswordSeal(a, o.password));
        const ssr = await createSigningRequest({
          signer: c.ed25519Signer(keys.signingKey),
          encryptionKey: c.secp256k1PublicKey(keys.encryptionKey),
          previousSigner: c.ed25519Signer(old.signingKey),
        });
        signet = await signUserSignet(c, ssr, { orgSigner: this.orgSigner(), address: a, previous: previousSignet, ...(o.info ? { info: o.info } : {}) });
        files = await this.sealFiles(a, g, keys, record.escrow, realm);
      } finally {
        wipe(realm, keys.signingKey, keys.encryptionKey, old.signingKey, old.encryptionKey);
      }
    } else {
      // signUserSignet checks the custody signature against the current signet and refuses without one.
      signet = await signUserSignet(c, o.request!, { orgSigner: this.orgSigner(), address: a, previous: previousSignet, ...(o.info ? { info: o.info } : {}) });
      if (record.mode === 'cautious') files = [[`${g}.blob`, this.readBlob('encryptedKey', o.encryptedKey)]];
    }
    const next: UserRecord = { ...record, generation: g, ...(seal ? { password: seal } : {}), keys: [...record.keys, this.publicEntry(signet, g)], updated: this.now() };
    await this.commit(dir, files, next, record, signet);
    this.o.logger?.info({ user: a, mode: record.mode, generation: g }, 'user keys rotated');
    return this.info(next, signet);
  }

  /**
   * Withdraw a user: no current signet (the history stays, to verify old mail). The sealed keys
   * stay too (escrow: old mail stays readable) unless `purgeKeys`, which deletes every key file.
   */
  async remove(address: string, o: { purgeKeys?: boolean } = {}): Promise<void> {
    const { address: a, dir, record } = this.require(address);
    if (!record.removed) {
      if (await this.o.signets.user(a)) await this.o.signets.removeUser(a);
      this.writeRecord(dir, { ...record, removed: this.now(), updated: this.now() }, false);
    }
    for (const k of record.keys) this.cache.evict(`${a}#${k.generation}`);
    if (o.purgeKeys) {
      for (const name of fs.readdirSync(dir)) if (/^\d+\.(sealed|1976|blob)$/.test(name)) fs.rmSync(path.join(dir, name), { force: true });
    }
    this.o.logger?.info({ user: a, purged: !!o.purgeKeys }, 'user removed');
  }

  private async info(record: UserRecord, signet?: Signet): Promise<UserInfo> {
    const current = signet ?? (record.removed ? undefined : await this.o.signets.user(record.address));
    const gen = record.keys.find((k) => k.generation === record.generation)!;
    const published = !!current && base64Encode(signingKeyOf(current)!) === gen.signingKey && toHex(encryptionKeyOf(current)!) === gen.encryptionKey;
    return {
      address: record.address,
      mode: record.mode,
      generation: record.generation,
      escrow: record.escrow,
      passwordSealed: !!record.password,
      ...(record.removed ? { removed: record.removed } : {}),
      ...(current ? { signet: current } : {}),
      published,
    };
  }

  async show(address: string): Promise<UserInfo & { history: Signet[] }> {
    const { address: a, record } = this.require(address);
    return { ...(await this.info(record)), history: await this.o.signets.userHistory(a) };
  }

  /** Every user with a record, removed ones included (their `removed` is set), by address. */
  async list(): Promise<UserInfo[]> {
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: UserInfo[] = [];
    for (const name of names.sort()) {
      if (name.startsWith('.')) continue;
      const record = this.readRecord(path.join(this.dir, name));
      if (record) out.push(await this.info(record));
    }
    return out;
  }

  /** Open generation `g` of a trustful user's key: with the password when given, else through escrow. */
  private async openKeys(address: string, dir: string, record: UserRecord, g: number, password: Uint8Array | string | undefined): Promise<DimeKeys> {
    if (record.mode !== 'trustful') throw new DimeError('USER_WRONG_MODE', `${address} is ${record.mode}: the sidecar holds no key it may open`);
    const gen = record.keys.find((k) => k.generation === g);
    if (!gen) throw new DimeError('USER_NOT_FOUND', `${address} has no key generation ${g}`);
    let object: Uint8Array;
    if (passwordOk(password) && record.password) {
      const realm = this.realmKeyFor(this.recordFile(dir), record.password, password);
      const file = path.join(dir, `${g}.1976`);
      try {
        object = openPrimeKey(this.o.crypto, realm, this.readSealed(file));
      } catch (err) {
        // The password matched its verification token, so a failure here is the file's.
        if (isDimeError(err, 'CRYPTO_AUTH_FAILED') || isDimeError(err, 'PRIME_KEY_MALFORMED')) throw new DimeError('SEALED_KEY_CORRUPT', `${file}: ${(err as Error).message}`, { cause: err });
        throw err;
      } finally {
        realm.fill(0);
      }
    } else if (record.escrow) {
      const file = path.join(dir, `${g}.sealed`);
      try {
        object = await this.o.keystore.unwrap(this.readSealed(file), sealContext(address, g));
      } catch (err) {
        if (isDimeError(err, 'SEALED_KEY_CORRUPT')) throw new DimeError('SEALED_KEY_CORRUPT', `${file}: ${(err as Error).message}`, { cause: err });
        throw err;
      }
    } else if (record.password) {
      throw new DimeError('USER_LOCKED', `${address}'s key opens only with their password`);
    } else {
      throw new DimeError('KEYSTORE_CORRUPT', `${address} has neither an escrow nor a password seal`);
    }
    let keys: DimeKeys;
    try {
      keys = decodeKeys(object);
    } catch (err) {
      throw new DimeError('SEALED_KEY_CORRUPT', `${address} generation ${g}: the opened key is not a user key`, { cause: err });
    } finally {
      object.fill(0);
    }
    const c = this.o.crypto;
    const matches = keys.type === 'user' && bytesEqual(c.ed25519PublicKey(keys.signingKey), base64DecodeStrict(gen.signingKey)) && toHex(c.secp256k1PublicKey(keys.encryptionKey)) === gen.encryptionKey;
    if (!matches) {
      wipe(keys.signingKey, keys.encryptionKey);
      throw new DimeError('SEALED_KEY_CORRUPT', `${address} generation ${g}: the opened key is not the one of this generation`);
    }
    return keys;
  }

  private readSealed(file: string): Uint8Array {
    if (!fs.existsSync(file)) throw new DimeError('SEALED_KEY_CORRUPT', `${file} is missing`);
    const { content } = readPrivateFile(file, { refuseGroup: true, what: 'sealed key' });
    if (content.length > MAX_KEYSTORE_FILE) throw new DimeError('SEALED_KEY_CORRUPT', `${file} is too large`);
    return new Uint8Array(content);
  }

  /**
   * Unseal a trustful user's key (the current generation unless `generation`), with their password
   * or through escrow, into the bounded cache. The handle's operations use the cached key and
   * re-open it through escrow when it has been evicted; without escrow they fail with USER_LOCKED.
   */
  async unseal(address: string, o: { password?: Uint8Array | string; generation?: number } = {}): Promise<UnsealedUserKey> {
    const { address: a, dir, record } = this.require(address);
    const g = o.generation ?? record.generation;
    const cacheKey = `${a}#${g}`;
    if (!this.cache.get(cacheKey) || passwordOk(o.password)) {
      const keys = await this.openKeys(a, dir, record, g, o.password);
      this.cache.set(cacheKey, keys);
    }
    const gen = record.keys.find((k) => k.generation === g)!;
    const current = async (): Promise<DimeKeys> => {
      const hit = this.cache.get(cacheKey);
      if (hit) return hit;
      if (!record.escrow) throw new DimeError('USER_LOCKED', `${a}: unlock again with the password`);
      const keys = await this.openKeys(a, dir, record, g, undefined);
      this.cache.set(cacheKey, keys);
      return keys;
    };
    const c = this.o.crypto;
    // A handle serves one message (its author signatures: four per message). The imported key is
    // kept only by this handle and only while the cache holds the same keys: every sign asks the
    // cache first, so eviction or lockAll() stops it, and nothing outlives the handle.
    let imported: { keys: DimeKeys; signer: Signer } | undefined;
    return {
      address: a,
      generation: g,
      encryptionPublicKey: fromHex(gen.encryptionKey),
      signer: {
        publicKey: base64DecodeStrict(gen.signingKey),
        sign: async (message) => {
          const keys = await current();
          if (imported?.keys !== keys) imported = { keys, signer: c.ed25519Signer(keys.signingKey) };
          return imported.signer.sign(message);
        },
      },
      actorKeys: { ecdh: async (publicKey) => c.secp256k1Ecdh((await current()).encryptionKey, publicKey) },
    };
  }

  /** The stored blob of a cautious user (current generation unless `generation`), as they gave it. */
  ownEncryptedKey(address: string, generation?: number): Uint8Array {
    const { dir, record } = this.require(address);
    if (record.mode !== 'cautious') throw new DimeError('USER_WRONG_MODE', `${record.address} is ${record.mode}`);
    return this.readSealed(path.join(dir, `${generation ?? record.generation}.blob`));
  }

  /** Forget every unsealed key now (zeroed). */
  lockAll(): void {
    this.cache.clear();
  }

  close(): void {
    this.cache.clear();
  }
}

