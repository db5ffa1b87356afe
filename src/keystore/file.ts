/**
 * The file keystore: the development default. Private keys sit on disk in plaintext (mode 0600),
 * so every open warns that this is not an HSM; a file that the group or others can read is refused.
 *
 * Files (all mode 0600, in the directory of `keystore.file`, written atomically):
 *   <file>        libdime org keys file (1952): the current POK seed and the encryption key, so
 *                 libdime's tools and `dime keys show` read it as before.
 *   <file>.ring   JSON: every POK generation (pok/1, pok/2, …, the last is current) and every SOK
 *                 with its permission bits. Absent for a keys file made elsewhere: it is then pok/1.
 *   <file>.wrap   JSON: the AES-256 wrapping key for users' sealed keys (created on first use).
 *
 * Rotation writes the ring first and the keys file second. If a crash falls between the two, the
 * keys file holds an older POK of the ring; open() notices and finishes the rotation.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { KeystoreConfig } from '../config/config.js';
import type { CryptoBackend } from '../crypto/backend.js';
import type { ActorKeys } from '../dime/message/open.js';
import { base64Encode, base64DecodeStrict } from '../dime/base64.js';
import { bytesEqual, concatBytes } from '../dime/bytes.js';
import { armorKeys, dearmorKeys, generateKeys } from '../dime/keys.js';
import { DimeError, isDimeError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { PRIVATE_FILE_MODE, atomicCreateFile, atomicWriteFile, ensurePrivateDir, exists, readPrivateFile } from './files.js';
import {
  WRAP_IV_LENGTH,
  WRAP_LABEL,
  WRAP_TAG_LENGTH,
  checkPermissions,
  chooseSigner,
  findSigner,
  labelNumber,
  parseWrapped,
  pokLabel,
  sokLabel,
  wrapAad,
  wrapHeader,
  type KeystoreOptions,
  type KeystoreSigner,
  type OrgKeystore,
  type SokSigner,
} from './keystore.js';

const RING_FORMAT = 'dime-sidecar keyring';
const WRAP_FORMAT = 'dime-sidecar wrapping key';
const SEED_LENGTH = 32;
const WRAP_KEY_LENGTH = 32;

interface RingEntry {
  label: string;
  seed: Uint8Array;
  permissions?: number;
}

interface Ring {
  poks: RingEntry[];
  soks: RingEntry[];
}

export function ringFile(keysFile: string): string {
  return `${keysFile}.ring`;
}
export function wrapFile(keysFile: string): string {
  return `${keysFile}.wrap`;
}

function encodeRing(ring: Ring): string {
  return (
    JSON.stringify(
      {
        format: RING_FORMAT,
        version: 1,
        poks: ring.poks.map((e) => ({ label: e.label, seed: base64Encode(e.seed) })),
        soks: ring.soks.map((e) => ({ label: e.label, permissions: e.permissions, seed: base64Encode(e.seed) })),
      },
      null,
      2,
    ) + '\n'
  );
}

function corrupt(file: string, detail: string, cause?: unknown): DimeError {
  return new DimeError('KEYSTORE_CORRUPT', `${file}: ${detail}`, cause === undefined ? undefined : { cause });
}

function decodeSeed(file: string, value: unknown, what: string): Uint8Array {
  if (typeof value !== 'string') throw corrupt(file, `${what} is not a base64 string`);
  let seed: Uint8Array;
  try {
    seed = base64DecodeStrict(value);
  } catch (err) {
    throw corrupt(file, `${what} is not valid base64`, err);
  }
  if (seed.length !== SEED_LENGTH) throw corrupt(file, `${what} is ${seed.length} bytes, not ${SEED_LENGTH}`);
  return seed;
}

function parseJson(file: string, content: Buffer, format: string): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(content.toString('utf8'));
  } catch (err) {
    throw corrupt(file, 'not valid JSON', err);
  }
  if (typeof doc !== 'object' || doc === null || (doc as { format?: unknown }).format !== format || (doc as { version?: unknown }).version !== 1) {
    throw corrupt(file, `not a version 1 "${format}" file`);
  }
  return doc as Record<string, unknown>;
}

function decodeRing(file: string, content: Buffer): Ring {
  const doc = parseJson(file, content, RING_FORMAT);
  const list = (key: 'poks' | 'soks'): RingEntry[] => {
    const v = doc[key];
    if (!Array.isArray(v)) throw corrupt(file, `${key} is not a list`);
    return v.map((e: unknown, i) => {
      const o = e as { label?: unknown; seed?: unknown; permissions?: unknown };
      if (typeof o !== 'object' || o === null || typeof o.label !== 'string') throw corrupt(file, `${key}[${i}] has no label`);
      const expected = key === 'poks' ? 'pok/' : 'sok/';
      if (!o.label.startsWith(expected)) throw corrupt(file, `${key}[${i}] label ${JSON.stringify(o.label)} does not start with ${expected}`);
      labelNumber(o.label);
      const entry: RingEntry = { label: o.label, seed: decodeSeed(file, o.seed, `${key}[${i}].seed`) };
      if (key === 'soks') {
        if (typeof o.permissions !== 'number') throw corrupt(file, `${key}[${i}] has no permissions`);
        checkPermissions(o.permissions);
        entry.permissions = o.permissions;
      }
      return entry;
    });
  };
  const ring = { poks: list('poks'), soks: list('soks') };
  if (ring.poks.length === 0) throw corrupt(file, 'no POK');
  const labels = [...ring.poks, ...ring.soks].map((e) => e.label);
  if (new Set(labels).size !== labels.length) throw corrupt(file, 'a label appears twice');
  return ring;
}

function encodeWrapKey(key: Uint8Array): string {
  return JSON.stringify({ format: WRAP_FORMAT, version: 1, label: WRAP_LABEL, key: base64Encode(key) }, null, 2) + '\n';
}

function decodeWrapKey(file: string, content: Buffer): Uint8Array {
  const doc = parseJson(file, content, WRAP_FORMAT);
  if (doc.label !== WRAP_LABEL) throw corrupt(file, `label is not ${JSON.stringify(WRAP_LABEL)}`);
  let key: Uint8Array;
  try {
    key = base64DecodeStrict(String(doc.key));
  } catch (err) {
    throw corrupt(file, 'key is not valid base64', err);
  }
  if (key.length !== WRAP_KEY_LENGTH) throw corrupt(file, `key is ${key.length} bytes, not ${WRAP_KEY_LENGTH}`);
  return key;
}

/** Warn once per file and process: every CLI command opens the keystore. */
const warned = new Set<string>();

export class FileKeystore implements OrgKeystore {
  readonly kind = 'file' as const;
  readonly actorKeys: ActorKeys;
  private poksList: KeystoreSigner[] = [];
  private soksList: SokSigner[] = [];
  private closed = false;

  private constructor(
    private readonly file: string,
    private readonly crypto: CryptoBackend,
    private readonly logger: Logger,
    private ring: Ring,
    private readonly encryptionKey: Uint8Array,
    private wrapKey: Uint8Array | undefined,
    readonly encryptionPublicKey: Uint8Array,
  ) {
    this.rebuildSigners();
    this.actorKeys = { ecdh: (publicKey) => this.ecdh(publicKey) };
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

  private rebuildSigners(): void {
    const make = (e: RingEntry): KeystoreSigner => {
      const s = this.crypto.ed25519Signer(e.seed);
      return {
        label: e.label,
        publicKey: s.publicKey,
        sign: async (m) => {
          this.assertOpen();
          return s.sign(m);
        },
      };
    };
    this.poksList = this.ring.poks.map(make);
    this.soksList = this.ring.soks.map((e) => ({ ...make(e), permissions: e.permissions as number }));
  }

  private assertOpen(): void {
    if (this.closed) throw new DimeError('HSM_UNAVAILABLE', 'the keystore is closed');
  }

  private static defaults(options: KeystoreOptions): { crypto: CryptoBackend; logger: Logger } {
    if (!options.crypto) throw new DimeError('USAGE', 'FileKeystore needs a crypto backend');
    return { crypto: options.crypto, logger: options.logger ?? createLogger({ name: 'keystore' }) };
  }

  private static warn(logger: Logger, file: string): void {
    if (warned.has(file)) return;
    warned.add(file);
    logger.warn({ file }, 'file keystore: the organisation private keys are on disk in plaintext (mode 0600); it is not an HSM, use keystore.type = "pkcs11" in production');
  }

  static create(config: KeystoreConfig, options: KeystoreOptions): FileKeystore {
    const { crypto, logger } = FileKeystore.defaults(options);
    const file = config.file;
    for (const f of [file, ringFile(file), wrapFile(file)]) {
      if (exists(f)) throw new DimeError('KEYSTORE_EXISTS', `${f} exists; remove the old keystore first or choose another keystore.file`);
    }
    ensurePrivateDir(path.dirname(file));
    const keys = generateKeys('org', crypto);
    const ring: Ring = { poks: [{ label: pokLabel(1), seed: keys.signingKey }], soks: [] };
    const wrapKey = crypto.randomBytes(WRAP_KEY_LENGTH);
    // The keys file last: its presence is what marks a keystore as existing.
    atomicCreateFile(wrapFile(file), encodeWrapKey(wrapKey), PRIVATE_FILE_MODE);
    atomicCreateFile(ringFile(file), encodeRing(ring), PRIVATE_FILE_MODE);
    atomicCreateFile(file, armorKeys(keys), PRIVATE_FILE_MODE);
    FileKeystore.warn(logger, file);
    return new FileKeystore(file, crypto, logger, ring, keys.encryptionKey, wrapKey, crypto.secp256k1PublicKey(keys.encryptionKey));
  }

  static open(config: KeystoreConfig, options: KeystoreOptions): FileKeystore {
    const { crypto, logger } = FileKeystore.defaults(options);
    const file = config.file;
    if (!exists(file)) throw new DimeError('HSM_KEY_NOT_FOUND', `the organisation keys file ${file} does not exist (run dime init, or set keystore.file)`);
    const { content } = readPrivateFile(file, { refuseGroup: true, what: 'organisation keys file' });
    let keys;
    try {
      keys = dearmorKeys(content.toString('latin1'));
    } catch (err) {
      throw corrupt(file, `not a keys file (${(err as Error).message})`, err);
    }
    if (keys.type !== 'org') throw new DimeError('HSM_KEY_NOT_FOUND', `${file} holds user keys, not organisation keys`);

    let ring: Ring;
    const rf = ringFile(file);
    if (exists(rf)) {
      ring = decodeRing(rf, readPrivateFile(rf, { refuseGroup: true, what: 'keyring' }).content);
      const current = ring.poks.at(-1) as RingEntry;
      if (!bytesEqual(current.seed, keys.signingKey)) {
        if (!ring.poks.some((e) => bytesEqual(e.seed, keys.signingKey))) {
          throw corrupt(file, `its POK is not in ${rf}: the two files do not belong together`);
        }
        // A rotation was interrupted after the ring was written: finish it.
        logger.warn({ file }, 'file keystore: finishing an interrupted POK rotation');
        atomicWriteFile(file, armorKeys({ ...keys, signingKey: current.seed }), PRIVATE_FILE_MODE);
      }
    } else {
      ring = { poks: [{ label: pokLabel(1), seed: keys.signingKey }], soks: [] };
    }

    let wrapKey: Uint8Array | undefined;
    const wf = wrapFile(file);
    if (exists(wf)) wrapKey = decodeWrapKey(wf, readPrivateFile(wf, { refuseGroup: true, what: 'wrapping key file' }).content);

    if (!crypto.secp256k1IsValidPrivateKey(keys.encryptionKey)) throw corrupt(file, 'the encryption key is not a valid secp256k1 scalar');
    FileKeystore.warn(logger, file);
    return new FileKeystore(file, crypto, logger, ring, keys.encryptionKey, wrapKey, crypto.secp256k1PublicKey(keys.encryptionKey));
  }

  /** Remove a keystore created by this process (dime init's rollback). */
  static discard(config: KeystoreConfig): void {
    for (const f of [config.file, ringFile(config.file), wrapFile(config.file)]) fs.rmSync(f, { force: true });
  }

  signer(label: string): KeystoreSigner {
    return findSigner(this.poksList, this.soksList, label);
  }

  signerFor(permission: number): KeystoreSigner {
    return chooseSigner(this.pok, this.soksList, permission);
  }

  async ecdh(publicKey: Uint8Array): Promise<Uint8Array> {
    this.assertOpen();
    return this.crypto.secp256k1Ecdh(this.encryptionKey, publicKey);
  }

  private ensureWrapKey(): Uint8Array {
    if (this.wrapKey) return this.wrapKey;
    // Keys files made before the keystore existed have no wrapping key: make one on first use.
    const key = this.crypto.randomBytes(WRAP_KEY_LENGTH);
    try {
      atomicCreateFile(wrapFile(this.file), encodeWrapKey(key), PRIVATE_FILE_MODE);
    } catch (err) {
      // Another process made it first: use theirs.
      if (!isDimeError(err, 'FILE_EXISTS')) throw err;
      this.wrapKey = decodeWrapKey(wrapFile(this.file), readPrivateFile(wrapFile(this.file), { refuseGroup: true, what: 'wrapping key file' }).content);
      return this.wrapKey;
    }
    this.logger.info({ file: wrapFile(this.file) }, 'file keystore: created the wrapping key for sealed user keys');
    this.wrapKey = key;
    return key;
  }

  async wrap(plaintext: Uint8Array, context: string): Promise<Uint8Array> {
    this.assertOpen();
    const key = this.ensureWrapKey();
    const header = wrapHeader(WRAP_LABEL);
    const iv = this.crypto.randomBytes(WRAP_IV_LENGTH);
    const { ciphertext, tag } = this.crypto.aes256GcmEncrypt(key, iv, plaintext, wrapAad(header, context));
    return concatBytes(header, iv, ciphertext, tag);
  }

  async unwrap(blob: Uint8Array, context: string): Promise<Uint8Array> {
    this.assertOpen();
    const parsed = parseWrapped(blob);
    if (parsed.label !== WRAP_LABEL) throw new DimeError('HSM_KEY_NOT_FOUND', `the blob was sealed with wrapping key ${JSON.stringify(parsed.label)}, this keystore has ${WRAP_LABEL}`);
    if (!this.wrapKey) throw new DimeError('HSM_KEY_NOT_FOUND', `${wrapFile(this.file)} is missing: sealed keys cannot be opened`);
    const ct = parsed.sealed.subarray(0, parsed.sealed.length - WRAP_TAG_LENGTH);
    const tag = parsed.sealed.subarray(parsed.sealed.length - WRAP_TAG_LENGTH);
    try {
      return this.crypto.aes256GcmDecrypt(this.wrapKey, parsed.iv, ct, tag, wrapAad(parsed.header, context));
    } catch (err) {
      if (isDimeError(err, 'CRYPTO_AUTH_FAILED')) throw new DimeError('SEALED_KEY_CORRUPT', `it does not authenticate for ${context}`, { cause: err });
      throw err;
    }
  }

  async rotatePok(): Promise<KeystoreSigner> {
    this.assertOpen();
    const n = Math.max(...this.ring.poks.map((e) => labelNumber(e.label))) + 1;
    const seed = this.crypto.randomBytes(SEED_LENGTH);
    const ring: Ring = { poks: [...this.ring.poks, { label: pokLabel(n), seed }], soks: this.ring.soks };
    atomicWriteFile(ringFile(this.file), encodeRing(ring), PRIVATE_FILE_MODE);
    atomicWriteFile(this.file, armorKeys({ type: 'org', dialect: 'libdime', signingKey: seed, encryptionKey: this.encryptionKey }), PRIVATE_FILE_MODE);
    this.ring = ring;
    this.rebuildSigners();
    return this.pok;
  }

  async addSok(permissions: number): Promise<SokSigner> {
    this.assertOpen();
    checkPermissions(permissions);
    const n = this.ring.soks.length === 0 ? 1 : Math.max(...this.ring.soks.map((e) => labelNumber(e.label))) + 1;
    const ring: Ring = { poks: this.ring.poks, soks: [...this.ring.soks, { label: sokLabel(n), seed: this.crypto.randomBytes(SEED_LENGTH), permissions }] };
    atomicWriteFile(ringFile(this.file), encodeRing(ring), PRIVATE_FILE_MODE);
    this.ring = ring;
    this.rebuildSigners();
    return this.soksList.at(-1) as SokSigner;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Drop our copies of the private bytes (the signers' imported KeyObjects are OpenSSL's to free).
    for (const e of [...this.ring.poks, ...this.ring.soks]) e.seed.fill(0);
    this.encryptionKey.fill(0);
    this.wrapKey?.fill(0);
  }
}
