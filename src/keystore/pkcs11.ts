/**
 * PKCS#11 keystore through graphene-pk11 (tested against SoftHSM2 2.6.1; crypto-hsm-baseline.md §2).
 *
 * Keys are generated inside the token, CKA_SENSITIVE true and CKA_EXTRACTABLE false, and never leave
 * it: Ed25519 signatures with CKM_EDDSA, secp256k1 ECDH with CKM_ECDH1_DERIVE (CKD_NULL: the raw
 * 32-byte x-coordinate, as DIME's KEK derivation wants it), AES-256-GCM under a token-held key for
 * users' sealed keys. graphene 2.3.6 has no names for the PKCS#11 3.0 EdDSA constants, so their
 * numbers are used (CKM_EC_EDWARDS_KEY_PAIR_GEN 0x1055, CKM_EDDSA 0x1057, CKK_EC_EDWARDS 0x40).
 *
 * Objects are found by label, never by handle or slot id (SoftHSM reassigns slot ids):
 *   <prefix>/pok/<n>          Ed25519 key pair, POK generation n (the highest is current)
 *   <prefix>/sok/<n>/<bits>   Ed25519 key pair, SOK n with SOK_PERMISSIONS bits (decimal)
 *   <prefix>/enc              secp256k1 key pair (signet field 3)
 *   <prefix>/wrap             AES-256 secret key (sealed user keys)
 * The token is found by its label (keystore.token), the prefix is keystore.label (default "dime").
 *
 * Concurrency: a pool of sessions, one operation per session at a time (a second C_SignInit on a
 * busy session is CKR_OPERATION_ACTIVE); operations run on libuv's thread pool through graphene's
 * callback API. The module is initialised with CKF_OS_LOCKING_OK: without it SoftHSM disables its
 * locks and crashes with two operations in flight.
 *
 * Failures: a PKCS#11 error that means the token is not usable now (session or login lost, token
 * removed, device error, library finalised) marks the connection broken; the keystore then
 * finalises and re-initialises the library, finds the token again, logs in, finds the keys, and
 * retries the operation once. If that fails the operation fails with HSM_UNAVAILABLE (the milter
 * answers a tempfail), and for reconnectBackoffMs further operations fail fast before the next try.
 * At open() the causes are told apart: HSM_MODULE_NOT_FOUND, HSM_TOKEN_NOT_FOUND, HSM_BAD_PIN,
 * HSM_KEY_NOT_FOUND, HSM_UNSUPPORTED. Once running, every one of them is HSM_UNAVAILABLE, because
 * for the mail in flight they all mean "try again later" (the detail names the cause).
 *
 * One PKCS#11 library has one state per process: keystores on the same module share it (counted);
 * a reconnect re-initialises it for all of them, and the others then reopen their sessions.
 */
import * as fs from 'node:fs';
import {
  AesGcmParams,
  EcKdf,
  EcdhParams,
  KeyGenMechanism,
  KeyType,
  Module,
  NamedCurve,
  ObjectClass,
  SessionFlag,
  type Key,
  type SecretKey,
  type Session,
  type SessionObject,
  type Slot,
} from 'graphene-pk11';
import type { KeystoreConfig } from '../config/config.js';
import type { CryptoBackend } from '../crypto/backend.js';
import type { ActorKeys } from '../dime/message/open.js';
import { concatBytes } from '../dime/bytes.js';
import { DimeError, isDimeError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { readPrivateFile } from './files.js';
import {
  ENC_LABEL,
  WRAP_IV_LENGTH,
  WRAP_LABEL,
  WRAP_TAG_LENGTH,
  checkPermissions,
  chooseSigner,
  compressSecp256k1Point,
  findSigner,
  parseWrapped,
  pokLabel,
  sokLabel,
  ecPointContent,
  wrapAad,
  wrapHeader,
  type KeystoreOptions,
  type KeystoreSigner,
  type OrgKeystore,
  type SokSigner,
} from './keystore.js';

export const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
export const CKM_EDDSA = 0x1057;
export const CKK_EC_EDWARDS = 0x40;
const CKM_EC_KEY_PAIR_GEN = 0x1040;
const CKM_ECDH1_DERIVE = 0x1050;
const CKM_AES_KEY_GEN = 0x1080;
const CKM_AES_GCM = 0x1087;
/** DER OID 1.3.101.112 (id-Ed25519), CKA_EC_PARAMS of an Ed25519 key. */
export const ED25519_OID = Buffer.from('06032b6570', 'hex');
const CKF_OS_LOCKING_OK = 0x2;

/** Sessions in the pool by default: SoftHSM scales to about 4 in flight on 2 cores (baseline §2). */
export const DEFAULT_SESSIONS = 4;
/** Upper bound: each session is a token resource; HSMs limit them (often to a few dozen). */
export const MAX_SESSIONS = 64;
/** After a failed reconnect, fail fast for this long rather than hammer a dead device. */
export const DEFAULT_RECONNECT_BACKOFF_MS = 1000;
export const DEFAULT_LABEL_PREFIX = 'dime';
/** PINs are short; a PIN file larger than this is the wrong file. */
const MAX_PIN_LENGTH = 256;

/** The token is not usable now: reconnect and retry, then HSM_UNAVAILABLE. */
const UNAVAILABLE = new Set([
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_SESSION_COUNT',
  'CKR_USER_NOT_LOGGED_IN',
  'CKR_TOKEN_NOT_PRESENT',
  'CKR_TOKEN_NOT_RECOGNIZED',
  'CKR_DEVICE_REMOVED',
  'CKR_DEVICE_ERROR',
  'CKR_DEVICE_MEMORY',
  'CKR_GENERAL_ERROR',
  'CKR_FUNCTION_FAILED',
  'CKR_HOST_MEMORY',
  'CKR_CRYPTOKI_NOT_INITIALIZED',
  'CKR_SLOT_ID_INVALID',
  // The object vanished under us: SoftHSM says this when the token directory is removed.
  'CKR_OBJECT_HANDLE_INVALID',
  'CKR_KEY_HANDLE_INVALID',
  'CKR_OPERATION_ACTIVE',
]);
const BAD_PIN = new Set(['CKR_PIN_INCORRECT', 'CKR_PIN_INVALID', 'CKR_PIN_LEN_RANGE', 'CKR_PIN_LOCKED', 'CKR_PIN_EXPIRED']);
/** The input was refused: the caller's fault, not the token's. */
const BAD_INPUT = new Set(['CKR_ARGUMENTS_BAD', 'CKR_DATA_INVALID', 'CKR_DATA_LEN_RANGE']);
const UNSUPPORTED = new Set(['CKR_MECHANISM_INVALID', 'CKR_MECHANISM_PARAM_INVALID', 'CKR_CURVE_NOT_SUPPORTED', 'CKR_DOMAIN_PARAMS_INVALID', 'CKR_TEMPLATE_INCONSISTENT', 'CKR_ATTRIBUTE_VALUE_INVALID']);

/** The CKR_… name of a pkcs11js error, or undefined for anything else. */
export function ckrName(err: unknown): string | undefined {
  const m = err instanceof Error ? /^(CKR_[A-Z0-9_]+)/.exec(err.message) : null;
  return m ? m[1] : undefined;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---- one initialised library per module path and process ---------------------------------------

interface SharedModule {
  path: string;
  module: Module;
  refs: number;
  /** Bumped by every re-initialisation: sessions of an older generation are dead. */
  generation: number;
}

const modules = new Map<string, SharedModule>();

function loadModule(path: string): SharedModule {
  const existing = modules.get(path);
  if (existing) {
    existing.refs++;
    return existing;
  }
  if (!fs.existsSync(path)) throw new DimeError('HSM_MODULE_NOT_FOUND', `${path} does not exist (keystore.module; SoftHSM2 installs /usr/lib/softhsm/libsofthsm2.so)`);
  let module: Module;
  try {
    module = Module.load(path, 'dime');
  } catch (err) {
    throw new DimeError('HSM_MODULE_NOT_FOUND', `${path} is not a PKCS#11 module: ${describe(err)}`, { cause: err });
  }
  try {
    module.initialize({ flags: CKF_OS_LOCKING_OK });
  } catch (err) {
    try {
      module.close();
    } catch {
      /* nothing more to release */
    }
    throw new DimeError('HSM_UNAVAILABLE', `C_Initialize of ${path} failed: ${describe(err)}`, { cause: err });
  }
  const shared = { path, module, refs: 1, generation: 1 };
  modules.set(path, shared);
  return shared;
}

function reinitialize(shared: SharedModule): void {
  try {
    shared.module.finalize();
  } catch {
    /* already finalised, or the device is gone: initialise again regardless */
  }
  shared.generation++;
  shared.module.initialize({ flags: CKF_OS_LOCKING_OK });
}

function releaseModule(shared: SharedModule): void {
  if (--shared.refs > 0) return;
  modules.delete(shared.path);
  try {
    shared.module.finalize();
  } catch {
    /* finalised already */
  }
  try {
    shared.module.close();
  } catch {
    /* closed already */
  }
}

// ---- a connection: the token's slot, logged-in sessions and the key handles ---------------------

interface EdKey {
  label: string;
  /** The full CKA_LABEL. */
  objectLabel: string;
  permissions?: number;
  priv: Key;
  publicKey: Uint8Array;
}

class StaleConnection extends Error {}

class Connection {
  broken = false;
  private readonly idle: Session[];
  private readonly waiters: { resolve: (s: Session) => void; reject: (e: Error) => void }[] = [];
  private leased = 0;
  private drainWaiters: (() => void)[] = [];

  constructor(
    readonly generation: number,
    readonly slot: Slot,
    readonly sessions: Session[],
    readonly poks: EdKey[],
    readonly soks: EdKey[],
    readonly enc: { priv: Key; publicKey: Uint8Array },
    readonly wrap: SecretKey,
  ) {
    this.idle = [...sessions];
  }

  acquire(): Promise<Session> {
    if (this.broken) return Promise.reject(new StaleConnection());
    const s = this.idle.pop();
    if (s) {
      this.leased++;
      return Promise.resolve(s);
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  release(s: Session): void {
    const w = this.broken ? undefined : this.waiters.shift();
    if (w) {
      w.resolve(s); // handed over: still leased
      return;
    }
    this.leased--;
    this.idle.push(s);
    if (this.leased === 0) for (const d of this.drainWaiters.splice(0)) d();
  }

  /** Stop handing out sessions: waiters retry on the next connection. */
  retire(): void {
    this.broken = true;
    for (const w of this.waiters.splice(0)) w.reject(new StaleConnection());
  }

  drained(): Promise<void> {
    return this.leased === 0 ? Promise.resolve() : new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  close(): void {
    for (const s of this.sessions) {
      try {
        s.close();
      } catch {
        /* the session died with the device */
      }
    }
  }

  edKey(label: string): EdKey {
    const k = [...this.poks, ...this.soks].find((x) => x.label === label);
    if (!k) throw new DimeError('HSM_KEY_NOT_FOUND', `no key labelled ${label} on the token`);
    return k;
  }
}

function promisify<T>(start: (cb: (err: Error | null, value: T | null) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    try {
      start((err, value) => (err ? reject(err) : value === null ? reject(new Error('CKR_FUNCTION_FAILED: no result')) : resolve(value)));
    } catch (err) {
      reject(err);
    }
  });
}

function attr<T>(obj: SessionObject, name: string): T {
  return (obj.getAttribute({ [name]: null }) as Record<string, T>)[name] as T;
}

function findObjects(session: Session, cls: ObjectClass, prefix: string): { label: string; obj: SessionObject }[] {
  const out: { label: string; obj: SessionObject }[] = [];
  const coll = session.find({ class: cls });
  for (let i = 0; i < coll.length; i++) {
    const obj = coll.items(i);
    const label = String(attr<string>(obj, 'label'));
    if (label.startsWith(`${prefix}/`)) out.push({ label, obj });
  }
  return out;
}

interface ConnectParams {
  shared: SharedModule;
  token: string;
  pin: string;
  prefix: string;
  sessions: number;
  crypto: CryptoBackend;
  logger: Logger;
}

function findSlot(shared: SharedModule, token: string): Slot | undefined {
  const slots = shared.module.getSlots(true);
  for (let i = 0; i < slots.length; i++) {
    try {
      const slot = slots.items(i);
      if (slot.getToken().label.trim() === token) return slot;
    } catch {
      /* a slot whose token cannot be read is not ours */
    }
  }
  return undefined;
}

function openSessions(slot: Slot, n: number, pin: string): Session[] {
  const sessions: Session[] = [];
  try {
    for (let i = 0; i < n; i++) sessions.push(slot.open(SessionFlag.SERIAL_SESSION | SessionFlag.RW_SESSION));
    try {
      // Login is per application and token: one login covers every session.
      sessions[0]!.login(pin);
    } catch (err) {
      if (ckrName(err) !== 'CKR_USER_ALREADY_LOGGED_IN') throw err;
    }
    return sessions;
  } catch (err) {
    for (const s of sessions) {
      try {
        s.close();
      } catch {
        /* closing what we opened; the error that matters is rethrown */
      }
    }
    throw err;
  }
}

/** Open sessions and find every key; typed errors for what the operator has to fix. */
function connect(p: ConnectParams): Connection {
  const slot = findSlot(p.shared, p.token);
  if (!slot) throw new DimeError('HSM_TOKEN_NOT_FOUND', `no token labelled ${JSON.stringify(p.token)} (keystore.token; softhsm2-util --show-slots or pkcs11-tool -L list them)`);
  let sessions: Session[];
  try {
    sessions = openSessions(slot, p.sessions, p.pin);
  } catch (err) {
    if (BAD_PIN.has(ckrName(err) ?? '')) throw new DimeError('HSM_BAD_PIN', `token ${JSON.stringify(p.token)}: ${ckrName(err)}`, { cause: err });
    throw err;
  }
  try {
    const s = sessions[0]!;
    const poks: EdKey[] = [];
    const soks: EdKey[] = [];
    const pubs = new Map(findObjects(s, ObjectClass.PUBLIC_KEY, p.prefix).map((x) => [x.label, x.obj]));
    const publicPoint = (label: string): Uint8Array => {
      const pub = pubs.get(label);
      if (!pub) throw new DimeError('HSM_KEY_NOT_FOUND', `the public half of ${label} is missing`);
      return new Uint8Array(attr<Buffer>(pub, 'pointEC'));
    };
    let enc: { priv: Key; publicKey: Uint8Array } | undefined;
    for (const { label, obj } of findObjects(s, ObjectClass.PRIVATE_KEY, p.prefix)) {
      const rest = label.slice(p.prefix.length + 1);
      const priv = obj.toType<Key>();
      const flags = obj.getAttribute({ sensitive: null, extractable: null }) as { sensitive: boolean; extractable: boolean };
      if (!flags.sensitive || flags.extractable) p.logger.warn({ label }, 'PKCS#11 keystore: a private key is extractable or not sensitive; it was not generated by dime');
      const pokMatch = /^pok\/([1-9][0-9]{0,5})$/.exec(rest);
      const sokMatch = /^sok\/([1-9][0-9]{0,5})\/([0-9]{1,3})$/.exec(rest);
      if (pokMatch || sokMatch) {
        let publicKey: Uint8Array;
        try {
          publicKey = ecPointContent(publicPoint(label), [32]);
        } catch (err) {
          throw new DimeError('HSM_KEY_NOT_FOUND', `${label} is not an Ed25519 key (${(err as Error).message})`, { cause: err });
        }
        if (pokMatch) poks.push({ label: pokLabel(Number(pokMatch[1])), objectLabel: label, priv, publicKey });
        else {
          const permissions = Number(sokMatch![2]);
          checkPermissions(permissions);
          soks.push({ label: sokLabel(Number(sokMatch![1])), objectLabel: label, permissions, priv, publicKey });
        }
      } else if (rest === ENC_LABEL) {
        const publicKey = compressSecp256k1Point(publicPoint(label));
        if (!p.crypto.secp256k1IsValidPublicKey(publicKey)) throw new DimeError('HSM_KEY_NOT_FOUND', `${label} is not a secp256k1 key`);
        enc = { priv, publicKey };
      }
    }
    const byNumber = (a: EdKey, b: EdKey) => Number(a.label.split('/')[1]) - Number(b.label.split('/')[1]);
    poks.sort(byNumber);
    soks.sort(byNumber);
    const wraps = findObjects(s, ObjectClass.SECRET_KEY, p.prefix).filter((x) => x.label === `${p.prefix}/${WRAP_LABEL}`);
    const missing = [...(poks.length === 0 ? [`${p.prefix}/pok/1`] : []), ...(enc ? [] : [`${p.prefix}/${ENC_LABEL}`]), ...(wraps.length ? [] : [`${p.prefix}/${WRAP_LABEL}`])];
    if (missing.length) throw new DimeError('HSM_KEY_NOT_FOUND', `token ${JSON.stringify(p.token)} has no ${missing.join(', ')} (run dime init with --hsm-token, or check keystore.label)`);
    return new Connection(p.shared.generation, slot, sessions, poks, soks, enc!, wraps[0]!.obj.toType<SecretKey>());
  } catch (err) {
    for (const s of sessions) {
      try {
        s.close();
      } catch {
        /* rethrowing the real error below */
      }
    }
    throw err;
  }
}

function readPin(config: KeystoreConfig, logger: Logger): string {
  if (config.pin) return config.pin;
  if (!config.pinFile) throw new DimeError('CONFIG_INVALID', 'keystore.pin_file is not set and DIME_HSM_PIN is empty');
  const { content, groupReadable } = readPrivateFile(config.pinFile, { refuseGroup: false, what: 'HSM PIN file' });
  if (groupReadable) logger.warn({ file: config.pinFile }, 'the HSM PIN file is readable by its group');
  const pin = content.toString('utf8').replace(/\r?\n$/, '');
  if (pin.length === 0 || pin.length > MAX_PIN_LENGTH || /[\r\n]/.test(pin)) throw new DimeError('CONFIG_INVALID', `${config.pinFile} must hold the PIN on one line (1 to ${MAX_PIN_LENGTH} characters)`);
  return pin;
}

function checkConfig(config: KeystoreConfig): { module: string; token: string; prefix: string } {
  if (!config.module) throw new DimeError('CONFIG_INVALID', 'keystore.module is required with type = "pkcs11"');
  if (!config.token) throw new DimeError('CONFIG_INVALID', 'keystore.token is required with type = "pkcs11"');
  const prefix = config.label ?? DEFAULT_LABEL_PREFIX;
  if (!/^[A-Za-z0-9._-]{1,32}$/.test(prefix)) throw new DimeError('CONFIG_INVALID', `keystore.label ${JSON.stringify(prefix)} must be 1 to 32 letters, digits, . _ -`);
  return { module: config.module, token: config.token, prefix };
}

function sessionsOption(options: KeystoreOptions): number {
  const n = options.sessions ?? DEFAULT_SESSIONS;
  if (!Number.isInteger(n) || n < 1 || n > MAX_SESSIONS) throw new DimeError('USAGE', `sessions must be 1 to ${MAX_SESSIONS}, got ${n}`);
  return n;
}

// ---- key generation ----------------------------------------------------------------------------

function generateEd25519(session: Session, objectLabel: string): void {
  const id = Buffer.from(objectLabel);
  session.generateKeyPair(
    { name: CKM_EC_EDWARDS_KEY_PAIR_GEN, params: null },
    { keyType: CKK_EC_EDWARDS as KeyType, token: true, private: false, verify: true, label: objectLabel, id, paramsEC: ED25519_OID },
    { keyType: CKK_EC_EDWARDS as KeyType, token: true, private: true, sign: true, sensitive: true, extractable: false, label: objectLabel, id },
  );
}

function generateSecp256k1(session: Session, objectLabel: string): void {
  const id = Buffer.from(objectLabel);
  session.generateKeyPair(
    KeyGenMechanism.EC,
    { keyType: KeyType.EC, token: true, private: false, label: objectLabel, id, paramsEC: NamedCurve.getByName('secp256k1').value },
    { keyType: KeyType.EC, token: true, private: true, derive: true, sensitive: true, extractable: false, label: objectLabel, id },
  );
}

function generateAes(session: Session, objectLabel: string): void {
  session.generateKey(KeyGenMechanism.AES, {
    class: ObjectClass.SECRET_KEY,
    keyType: KeyType.AES,
    token: true,
    private: true,
    sensitive: true,
    extractable: false,
    encrypt: true,
    decrypt: true,
    wrap: false,
    unwrap: false,
    valueLen: 32,
    label: objectLabel,
    id: Buffer.from(objectLabel),
  });
}

function checkMechanisms(slot: Slot): void {
  const have = new Set<number>();
  const list = slot.getMechanisms();
  for (let i = 0; i < list.length; i++) {
    try {
      have.add(list.items(i).type as number);
    } catch {
      /* unreadable entry */
    }
  }
  const need: [number, string][] = [
    [CKM_EC_EDWARDS_KEY_PAIR_GEN, 'CKM_EC_EDWARDS_KEY_PAIR_GEN'],
    [CKM_EDDSA, 'CKM_EDDSA'],
    [CKM_EC_KEY_PAIR_GEN, 'CKM_EC_KEY_PAIR_GEN'],
    [CKM_ECDH1_DERIVE, 'CKM_ECDH1_DERIVE'],
    [CKM_AES_KEY_GEN, 'CKM_AES_KEY_GEN'],
    [CKM_AES_GCM, 'CKM_AES_GCM'],
  ];
  const missing = need.filter(([m]) => !have.has(m)).map(([, n]) => n);
  if (missing.length) throw new DimeError('HSM_UNSUPPORTED', `the token does not offer ${missing.join(', ')}`);
}

/** Prepare module + PIN for create/discard, which run before any Pkcs11Keystore exists. */
function withAdminSession<T>(config: KeystoreConfig, options: KeystoreOptions, fn: (session: Session, slot: Slot, prefix: string, logger: Logger) => T): T {
  const { module, token, prefix } = checkConfig(config);
  const logger = options.logger ?? createLogger({ name: 'keystore' });
  const pin = readPin(config, logger);
  const shared = loadModule(module);
  try {
    const slot = findSlot(shared, token);
    if (!slot) throw new DimeError('HSM_TOKEN_NOT_FOUND', `no token labelled ${JSON.stringify(token)} (softhsm2-util --init-token --free --label ${token} …)`);
    let sessions: Session[];
    try {
      sessions = openSessions(slot, 1, pin);
    } catch (err) {
      if (BAD_PIN.has(ckrName(err) ?? '')) throw new DimeError('HSM_BAD_PIN', `token ${JSON.stringify(token)}: ${ckrName(err)}`, { cause: err });
      throw new DimeError('HSM_UNAVAILABLE', describe(err), { cause: err });
    }
    try {
      return fn(sessions[0]!, slot, prefix, logger);
    } finally {
      sessions[0]!.close();
    }
  } finally {
    releaseModule(shared);
  }
}

// ---- the keystore ------------------------------------------------------------------------------

export class Pkcs11Keystore implements OrgKeystore {
  readonly kind = 'pkcs11' as const;
  readonly actorKeys: ActorKeys;
  private conn: Connection | undefined;
  private connecting: Promise<Connection> | undefined;
  private lastFailure = 0;
  private pinRejected = false;
  private closed = false;
  private poksList: KeystoreSigner[] = [];
  private soksList: SokSigner[] = [];
  readonly encryptionPublicKey: Uint8Array;
  private readonly backoffMs: number;

  private constructor(
    private readonly params: ConnectParams,
    first: Connection,
    options: KeystoreOptions,
  ) {
    this.conn = first;
    this.encryptionPublicKey = first.enc.publicKey;
    this.backoffMs = options.reconnectBackoffMs ?? DEFAULT_RECONNECT_BACKOFF_MS;
    this.actorKeys = { ecdh: (publicKey) => this.ecdh(publicKey) };
    this.rebuildSigners(first);
  }

  /** Create the organisation keys inside the token; KEYSTORE_EXISTS if the prefix is taken. */
  static async create(config: KeystoreConfig, options: KeystoreOptions): Promise<Pkcs11Keystore> {
    withAdminSession(config, options, (session, slot, prefix) => {
      checkMechanisms(slot);
      const taken = [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY].flatMap((c) => findObjects(session, c, prefix));
      if (taken.length) throw new DimeError('KEYSTORE_EXISTS', `token ${JSON.stringify(config.token)} already holds ${taken.map((t) => t.label).join(', ')}; choose another keystore.label or remove them`);
      try {
        generateEd25519(session, `${prefix}/${pokLabel(1)}`);
        generateSecp256k1(session, `${prefix}/${ENC_LABEL}`);
        generateAes(session, `${prefix}/${WRAP_LABEL}`);
      } catch (err) {
        // Leave nothing half-made behind.
        for (const c of [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY]) for (const { obj } of findObjects(session, c, prefix)) obj.destroy();
        const name = ckrName(err) ?? '';
        throw new DimeError(UNSUPPORTED.has(name) ? 'HSM_UNSUPPORTED' : 'HSM_UNAVAILABLE', `generating keys in token ${JSON.stringify(config.token)}: ${describe(err)}`, { cause: err });
      }
    });
    return Pkcs11Keystore.open(config, options);
  }

  /** Destroy every object under the label prefix (dime init's rollback of a keystore it just made). */
  static async discard(config: KeystoreConfig, options: KeystoreOptions): Promise<void> {
    withAdminSession(config, options, (session, _slot, prefix) => {
      for (const c of [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY]) for (const { obj } of findObjects(session, c, prefix)) obj.destroy();
    });
  }

  static async open(config: KeystoreConfig, options: KeystoreOptions): Promise<Pkcs11Keystore> {
    const { module, token, prefix } = checkConfig(config);
    if (!options.crypto) throw new DimeError('USAGE', 'Pkcs11Keystore needs a crypto backend');
    const logger = options.logger ?? createLogger({ name: 'keystore' });
    const pin = readPin(config, logger);
    const sessions = sessionsOption(options);
    const shared = loadModule(module);
    const params: ConnectParams = { shared, token, pin, prefix, sessions, crypto: options.crypto, logger };
    let first: Connection;
    try {
      first = connect(params);
    } catch (err) {
      releaseModule(shared);
      if (isDimeError(err)) throw err;
      throw new DimeError('HSM_UNAVAILABLE', `token ${JSON.stringify(token)}: ${describe(err)}`, { cause: err });
    }
    return new Pkcs11Keystore(params, first, options);
  }

  get pok(): KeystoreSigner {
    return this.poksList.at(-1) as KeystoreSigner;
  }
  get poks(): readonly KeystoreSigner[] {
    return this.poksList;
  }
  get soks(): readonly SokSigner[] {
    return this.soksList;
  }

  private rebuildSigners(c: Connection): void {
    const make = (k: EdKey): KeystoreSigner => ({
      label: k.label,
      publicKey: k.publicKey,
      sign: async (message: Uint8Array) => {
        // PKCS#11 refuses an empty buffer (CKR_ARGUMENTS_BAD); DIME never signs nothing (magma refuses it too).
        if (!(message instanceof Uint8Array) || message.length === 0) throw new DimeError('CRYPTO_BAD_INPUT', 'the message to sign must be non-empty bytes');
        return this.run(`signing with ${k.label}`, async (session, conn) => {
          const key = conn.edKey(k.label);
          const sig = await promisify<Buffer>((cb) => session.createSign({ name: CKM_EDDSA, params: null }, key.priv).once(Buffer.from(message), cb));
          return new Uint8Array(sig);
        });
      },
    });
    this.poksList = c.poks.map(make);
    this.soksList = c.soks.map((k) => ({ ...make(k), permissions: k.permissions as number }));
  }

  signer(label: string): KeystoreSigner {
    return findSigner(this.poksList, this.soksList, label);
  }

  signerFor(permission: number): KeystoreSigner {
    return chooseSigner(this.pok, this.soksList, permission);
  }

  /** The current connection, reconnecting when it is broken (one reconnect at a time). */
  private async connection(): Promise<Connection> {
    const c = this.conn;
    if (c && !c.broken && c.generation === this.params.shared.generation) return c;
    if (this.connecting) return this.connecting;
    if (this.pinRejected) throw new DimeError('HSM_UNAVAILABLE', `token ${JSON.stringify(this.params.token)} refused the PIN; fix it and restart (no further login attempts: they could lock the PIN)`);
    const since = Date.now() - this.lastFailure;
    if (since < this.backoffMs) throw new DimeError('HSM_UNAVAILABLE', `token ${JSON.stringify(this.params.token)} did not come back; next try in ${this.backoffMs - since} ms`);
    this.connecting = this.reconnect(c).finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async reconnect(old: Connection | undefined): Promise<Connection> {
    this.conn = undefined;
    if (old) {
      old.retire();
      // Finalising while another operation runs on the thread pool could crash the library.
      await old.drained();
      old.close();
    }
    try {
      // Re-initialise unless another keystore on this module already did since `old` was made.
      if (!old || old.generation === this.params.shared.generation) reinitialize(this.params.shared);
      const c = connect(this.params);
      this.conn = c;
      this.rebuildSigners(c);
      this.params.logger.warn({ token: this.params.token }, 'PKCS#11 keystore: reconnected to the token');
      return c;
    } catch (err) {
      this.lastFailure = Date.now();
      // HSMs lock the PIN after a few wrong logins: never retry a refused PIN on our own.
      if (isDimeError(err, 'HSM_BAD_PIN')) this.pinRejected = true;
      this.params.logger.error({ token: this.params.token, err: describe(err) }, 'PKCS#11 keystore: the token is unavailable');
      throw new DimeError('HSM_UNAVAILABLE', `token ${JSON.stringify(this.params.token)}: ${describe(err)}`, { cause: err });
    }
  }

  /**
   * Run one operation on a pooled session. A PKCS#11 error that means "not usable now" breaks the
   * connection; the operation is retried once on a fresh one, then fails with HSM_UNAVAILABLE.
   */
  private async run<T>(what: string, op: (session: Session, conn: Connection) => Promise<T>, options: { retry?: boolean } = {}): Promise<T> {
    if (this.closed) throw new DimeError('HSM_UNAVAILABLE', 'the keystore is closed');
    let last: unknown;
    // Three tries: a stale connection while waiting for a session, a failure, and the retry after reconnecting.
    const attempts = options.retry === false ? 1 : 3;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const conn = await this.connection();
      let session: Session;
      try {
        session = await conn.acquire();
      } catch (err) {
        if (err instanceof StaleConnection) {
          last = new Error('the connection to the token was being replaced');
          continue;
        }
        throw err;
      }
      try {
        return await op(session, conn);
      } catch (err) {
        if (isDimeError(err)) throw err;
        const name = ckrName(err) ?? '';
        if (UNAVAILABLE.has(name) || BAD_PIN.has(name)) {
          conn.retire();
          last = err;
          continue;
        }
        const code = UNSUPPORTED.has(name) ? 'HSM_UNSUPPORTED' : BAD_INPUT.has(name) ? 'CRYPTO_BAD_INPUT' : 'HSM_UNAVAILABLE';
        throw new DimeError(code, `${what}: ${describe(err)}`, { cause: err });
      } finally {
        conn.release(session);
      }
    }
    throw new DimeError('HSM_UNAVAILABLE', `${what}: ${describe(last)}`, { cause: last });
  }

  async ecdh(publicKey: Uint8Array): Promise<Uint8Array> {
    // Validate before the HSM sees it: open.ts turns CRYPTO_BAD_KEY into a message error.
    if (!(publicKey instanceof Uint8Array) || publicKey.length !== 33 || !this.params.crypto.secp256k1IsValidPublicKey(publicKey)) {
      throw new DimeError('CRYPTO_BAD_KEY', 'publicKey must be a compressed secp256k1 point');
    }
    return this.run('ECDH with the organisation key', async (session, conn) => {
      const params = new EcdhParams(EcKdf.NULL, null, Buffer.from(publicKey));
      const derived = await promisify<Key>((cb) =>
        session.deriveKey({ name: CKM_ECDH1_DERIVE, params }, conn.enc.priv, { class: ObjectClass.SECRET_KEY, keyType: KeyType.GENERIC_SECRET, token: false, sensitive: false, extractable: true, valueLen: 32 }, cb),
      );
      try {
        return new Uint8Array(attr<Buffer>(derived, 'value'));
      } finally {
        // Session objects accumulate otherwise.
        derived.destroy();
      }
    });
  }

  async wrap(plaintext: Uint8Array, context: string): Promise<Uint8Array> {
    const header = wrapHeader(WRAP_LABEL);
    const aad = Buffer.from(wrapAad(header, context));
    const iv = this.params.crypto.randomBytes(WRAP_IV_LENGTH);
    const sealed = await this.run('sealing with the wrapping key', (session, conn) =>
      promisify<Buffer>((cb) => session.createCipher({ name: 'AES_GCM', params: new AesGcmParams(Buffer.from(iv), aad, WRAP_TAG_LENGTH * 8) }, conn.wrap).once(Buffer.from(plaintext), Buffer.alloc(plaintext.length + WRAP_TAG_LENGTH + 16), cb)),
    );
    return concatBytes(header, iv, new Uint8Array(sealed));
  }

  async unwrap(blob: Uint8Array, context: string): Promise<Uint8Array> {
    const parsed = parseWrapped(blob);
    if (parsed.label !== WRAP_LABEL) throw new DimeError('HSM_KEY_NOT_FOUND', `the blob was sealed with wrapping key ${JSON.stringify(parsed.label)}, this keystore has ${WRAP_LABEL}`);
    const aad = Buffer.from(wrapAad(parsed.header, context));
    return this.run('opening with the wrapping key', async (session, conn) => {
      try {
        const out = await promisify<Buffer>((cb) => session.createDecipher({ name: 'AES_GCM', params: new AesGcmParams(Buffer.from(parsed.iv), aad, WRAP_TAG_LENGTH * 8) }, conn.wrap).once(Buffer.from(parsed.sealed), Buffer.alloc(parsed.sealed.length), cb));
        return new Uint8Array(out);
      } catch (err) {
        // A tag mismatch is CKR_ENCRYPTED_DATA_INVALID in the standard but CKR_GENERAL_ERROR in
        // SoftHSM 2.6, which also means a broken device. Ask the token something harmless: if it
        // answers, the blob was at fault.
        const name = ckrName(err) ?? '';
        if (!['CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_GENERAL_ERROR', 'CKR_FUNCTION_FAILED'].includes(name)) throw err;
        try {
          session.generateRandom(1);
          attr<string>(conn.wrap, 'label');
        } catch {
          throw err; // the device is at fault: run() reconnects
        }
        throw new DimeError('SEALED_KEY_CORRUPT', `it does not authenticate for ${context}`, { cause: err });
      }
    });
  }

  async rotatePok(): Promise<KeystoreSigner> {
    const n = Math.max(0, ...this.poksList.map((k) => Number(k.label.split('/')[1]))) + 1;
    await this.generate(`${this.params.prefix}/${pokLabel(n)}`);
    return this.pok;
  }

  async addSok(permissions: number): Promise<SokSigner> {
    checkPermissions(permissions);
    const n = Math.max(0, ...this.soksList.map((k) => Number(k.label.split('/')[1]))) + 1;
    await this.generate(`${this.params.prefix}/${sokLabel(n)}/${permissions}`);
    return this.soksList.at(-1) as SokSigner;
  }

  /** Generate an Ed25519 pair in the token and add it to the connection's keys. */
  private async generate(objectLabel: string): Promise<void> {
    await this.run(`generating ${objectLabel}`, async (session, conn) => {
      generateEd25519(session, objectLabel);
      const priv = session.find({ class: ObjectClass.PRIVATE_KEY, label: objectLabel });
      const pub = session.find({ class: ObjectClass.PUBLIC_KEY, label: objectLabel });
      if (priv.length !== 1 || pub.length !== 1) throw new DimeError('HSM_KEY_NOT_FOUND', `${objectLabel} is not on the token after generating it`);
      const publicKey = ecPointContent(new Uint8Array(attr<Buffer>(pub.items(0), 'pointEC')), [32]);
      const rest = objectLabel.slice(this.params.prefix.length + 1).split('/');
      const key: EdKey = { label: `${rest[0]}/${rest[1]}`, objectLabel, priv: priv.items(0).toType<Key>(), publicKey };
      if (rest[0] === 'sok') conn.soks.push({ ...key, permissions: Number(rest[2]) });
      else conn.poks.push(key);
      this.rebuildSigners(conn);
      // No automatic retry: a key generated before a failure would be generated twice.
    }, { retry: false });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // A reconnect in progress finishes first, so that its connection is closed too.
    if (this.connecting) await this.connecting.catch(() => undefined);
    const c = this.conn;
    this.conn = undefined;
    if (c) {
      c.retire();
      // Operations already running finish before their sessions close.
      await c.drained();
      c.close();
    }
    releaseModule(this.params.shared);
  }
}
