/**
 * STACIE (draft-ladar-stacie, "Safely Turning Authentication Credentials Into Entropy") exactly as
 * lavabit/magma implements it (prime-and-stacie.md §2), and magma's encrypted key objects 1976
 * (user) / 1947 (org) under a STACIE realm key (§1.4, §2.5), so keys magma stored carry over.
 *
 * Only the composition lives here; every primitive (SHA-512, HMAC-SHA-512, AES-256-GCM, random
 * bytes) comes from the CryptoBackend. Checked against magma's vectors (test/vectors/magma,
 * test/keystore.stacie.test.ts).
 *
 *   rounds        = clamp(8, 2^24, 2^(24 − clamp(1, 23, characters)) + bonus)
 *   seed          = HMAC-SHA512(key = salt, password repeated `rounds` times)
 *   KD(base)      : h0 = SHA512(base‖user‖salt‖password‖u24(0)); hi = SHA512(h(i−1)‖base‖user‖salt‖password‖u24(i))
 *   master key    = KD(seed); password key = KD(master key)
 *   TD(base[, n]) : 8 rounds of the same chain without the password, with the nonce after the salt
 *   verification token = TD(password key); ephemeral login token = TD(verification token, nonce)
 *   realm key     = SHA512(master key‖label‖S) ⊕ shard, S = salt when rotated = 1, else the shard
 */
import type { CryptoBackend } from '../crypto/backend.js';
import { concatBytes, readUint, uintBytes, utf8 } from '../dime/bytes.js';
import { MAGIC } from '../dime/magic.js';
import { DimeError, assertBytes } from '../errors.js';

type Crypto = Pick<CryptoBackend, 'sha512' | 'hmacSha512' | 'aes256GcmEncrypt' | 'aes256GcmDecrypt' | 'randomBytes'>;

/** magma requires exactly 128-byte salts and nonces (the Python reference's other lengths are not implemented there). */
export const STACIE_SALT_LENGTH = 128;
export const STACIE_NONCE_LENGTH = 128;
/** Keys, tokens and shards are SHA-512 outputs. */
export const STACIE_KEY_LENGTH = 64;
export const STACIE_MIN_ROUNDS = 8;
export const STACIE_MAX_ROUNDS = 2 ** 24;
/** The token derivation always runs 8 rounds. */
export const STACIE_TOKEN_ROUNDS = 8;
/** magma's bonus is an unsigned 32-bit column; the rounds clamp makes anything above 2^24 equivalent. */
export const STACIE_MAX_BONUS = 0xffffffff;
/**
 * Longest password hashed. Each KD round hashes the password again, so its length multiplies the
 * work; 1 KiB is far beyond any typed password and bounds a login to well under a second.
 */
export const MAX_PASSWORD_BYTES = 1024;
/**
 * The seed's HMAC input is the password repeated `rounds` times and is built in memory (the backend
 * HMAC is one-shot). With bonus 0 the worst case is 32 MiB (a 1–2 character password, 2^23 or 2^22
 * rounds of up to 8 bytes); twice that is allowed, more is refused rather than allocated.
 */
export const MAX_SEED_INPUT_BYTES = 64 * 1024 * 1024;
/** The only realm magma uses. */
export const MAIL_REALM = 'mail';

const DEFAULT_IGNORABLE = /\p{Default_Ignorable_Code_Point}/u;

function passwordBytes(password: Uint8Array | string): Uint8Array {
  const bytes = typeof password === 'string' ? utf8.encode(password) : password;
  if (!(bytes instanceof Uint8Array)) throw new DimeError('STACIE_BAD_INPUT', 'password must be a string or a Uint8Array');
  if (bytes.length > MAX_PASSWORD_BYTES) throw new DimeError('STACIE_BAD_INPUT', `password is ${bytes.length} bytes, limit ${MAX_PASSWORD_BYTES}`);
  return bytes;
}

/**
 * The characters that count towards the rounds: Unicode code points that are not
 * Default_Ignorable (so a byte-order mark or a zero-width joiner does not count), as magma's
 * utf8proc-based count. Invalid UTF-8 is an error (magma returns 0 rounds).
 */
export function stacieCharacters(password: Uint8Array | string): number {
  const bytes = passwordBytes(password);
  let text: string;
  try {
    // ignoreBOM: keep a leading U+FEFF so that it is seen (and then not counted), not silently dropped.
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch (err) {
    throw new DimeError('STACIE_BAD_INPUT', 'the password is not valid UTF-8', { cause: err });
  }
  let n = 0;
  for (const ch of text) if (!DEFAULT_IGNORABLE.test(ch)) n++;
  return n;
}

function checkBonus(bonus: number): void {
  if (!Number.isInteger(bonus) || bonus < 0 || bonus > STACIE_MAX_BONUS) throw new DimeError('STACIE_BAD_INPUT', `bonus must be an integer from 0 to ${STACIE_MAX_BONUS}, got ${bonus}`);
}

/** Rounds for a password: shorter passwords get exponentially more, `bonus` adds per-user work. */
export function stacieRounds(password: Uint8Array | string, bonus: number): number {
  checkBonus(bonus);
  const chars = Math.min(23, Math.max(1, stacieCharacters(password)));
  return Math.min(STACIE_MAX_ROUNDS, Math.max(STACIE_MIN_ROUNDS, 2 ** (24 - chars) + bonus));
}

function checkRounds(rounds: number): void {
  if (!Number.isInteger(rounds) || rounds < STACIE_MIN_ROUNDS || rounds > STACIE_MAX_ROUNDS) {
    throw new DimeError('STACIE_BAD_INPUT', `rounds must be an integer from ${STACIE_MIN_ROUNDS} to ${STACIE_MAX_ROUNDS}, got ${rounds}`);
  }
}

function checkSalt(salt: Uint8Array): void {
  if (!(salt instanceof Uint8Array) || salt.length !== STACIE_SALT_LENGTH) {
    throw new DimeError('STACIE_BAD_INPUT', `salt must be ${STACIE_SALT_LENGTH} bytes, got ${salt instanceof Uint8Array ? salt.length : typeof salt}`);
  }
}

function checkKey(name: string, key: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.length !== STACIE_KEY_LENGTH) {
    throw new DimeError('STACIE_BAD_INPUT', `${name} must be ${STACIE_KEY_LENGTH} bytes, got ${key instanceof Uint8Array ? key.length : typeof key}`);
  }
}

function usernameBytes(username: string | Uint8Array): Uint8Array {
  const u = typeof username === 'string' ? utf8.encode(username) : username;
  if (!(u instanceof Uint8Array) || u.length === 0 || u.length > 512) throw new DimeError('STACIE_BAD_INPUT', 'username must be 1 to 512 bytes');
  return u;
}

/** seed = HMAC-SHA512(salt, password ‖ password ‖ … (`rounds` times)). */
export function stacieSeed(crypto: Crypto, rounds: number, password: Uint8Array | string, salt: Uint8Array): Uint8Array {
  checkRounds(rounds);
  checkSalt(salt);
  const p = passwordBytes(password);
  const total = rounds * p.length;
  if (total > MAX_SEED_INPUT_BYTES) throw new DimeError('STACIE_BAD_INPUT', `the seed input would be ${total} bytes (${rounds} rounds × ${p.length}), limit ${MAX_SEED_INPUT_BYTES}`);
  const input = new Uint8Array(total);
  for (let i = 0; i < rounds; i++) input.set(p, i * p.length);
  return crypto.hmacSha512(salt, input);
}

/**
 * The hash chain both KD and TD run: `hash(prev ‖ fixed ‖ u24(i))`, prev absent in round 0. One
 * buffer is reused for every round, the previous hash and the counter written in place.
 */
function chain(crypto: Crypto, fixed: Uint8Array, rounds: number): Uint8Array {
  const buf = new Uint8Array(STACIE_KEY_LENGTH + fixed.length + 3);
  buf.set(fixed, STACIE_KEY_LENGTH);
  const counter = buf.length - 3;
  let h = crypto.sha512(buf.subarray(STACIE_KEY_LENGTH)); // round 0: no previous hash, counter 0
  for (let i = 1; i < rounds; i++) {
    buf.set(h, 0);
    buf[counter] = (i >>> 16) & 0xff;
    buf[counter + 1] = (i >>> 8) & 0xff;
    buf[counter + 2] = i & 0xff;
    h = crypto.sha512(buf);
  }
  buf.fill(0);
  return h;
}

/** KD: the key derivation chain over (base, username, salt, password), `rounds` rounds. */
export function stacieKey(crypto: Crypto, base: Uint8Array, rounds: number, username: string | Uint8Array, password: Uint8Array | string, salt: Uint8Array): Uint8Array {
  checkKey('base', base);
  checkRounds(rounds);
  checkSalt(salt);
  const fixed = concatBytes(base, usernameBytes(username), salt, passwordBytes(password));
  const out = chain(crypto, fixed, rounds);
  fixed.fill(0);
  return out;
}

/** TD: the token chain over (base, username, salt[, nonce]), always 8 rounds. */
export function stacieToken(crypto: Crypto, base: Uint8Array, username: string | Uint8Array, salt: Uint8Array, nonce?: Uint8Array): Uint8Array {
  checkKey('base', base);
  checkSalt(salt);
  if (nonce !== undefined && (!(nonce instanceof Uint8Array) || nonce.length !== STACIE_NONCE_LENGTH)) {
    throw new DimeError('STACIE_BAD_INPUT', `nonce must be ${STACIE_NONCE_LENGTH} bytes`);
  }
  const fixed = concatBytes(base, usernameBytes(username), salt, nonce ?? new Uint8Array(0));
  return chain(crypto, fixed, STACIE_TOKEN_ROUNDS);
}

export interface StacieInputs {
  /** The normalised user name (stacieUsername), hashed as given. */
  username: string;
  password: Uint8Array | string;
  /** 128 random bytes per user. */
  salt: Uint8Array;
  /** Extra rounds per user (0 for the users we create). */
  bonus: number;
}

export interface StacieKeys {
  rounds: number;
  seed: Uint8Array;
  masterKey: Uint8Array;
  passwordKey: Uint8Array;
  /** What the server stores to check a password without keeping anything that decrypts. */
  verificationToken: Uint8Array;
}

/** The whole password → keys derivation. The caller zeroes what it no longer needs. */
export function deriveStacie(crypto: Crypto, input: StacieInputs): StacieKeys {
  const rounds = stacieRounds(input.password, input.bonus);
  const seed = stacieSeed(crypto, rounds, input.password, input.salt);
  const masterKey = stacieKey(crypto, seed, rounds, input.username, input.password, input.salt);
  const passwordKey = stacieKey(crypto, masterKey, rounds, input.username, input.password, input.salt);
  const verificationToken = stacieToken(crypto, passwordKey, input.username, input.salt);
  return { rounds, seed, masterKey, passwordKey, verificationToken };
}

/** Challenge-response token: TD(verification token, nonce). */
export function ephemeralLoginToken(crypto: Crypto, verificationToken: Uint8Array, username: string | Uint8Array, salt: Uint8Array, nonce: Uint8Array): Uint8Array {
  return stacieToken(crypto, verificationToken, username, salt, nonce);
}

/**
 * realm key = SHA512(master key ‖ label ‖ S) ⊕ shard. `rotated` = 1 (every shard created since
 * magma's 2018 fix, and every one we create) uses the user's salt as S; 0 (legacy rows) the shard.
 */
export function realmKey(crypto: Crypto, masterKey: Uint8Array, label: string, salt: Uint8Array, shard: Uint8Array, rotated: boolean): Uint8Array {
  checkKey('master key', masterKey);
  checkSalt(salt);
  checkKey('shard', shard);
  if (label.length === 0) throw new DimeError('STACIE_BAD_INPUT', 'the realm label must not be empty');
  const h = crypto.sha512(concatBytes(masterKey, utf8.encode(label), rotated ? salt : shard));
  for (let i = 0; i < STACIE_KEY_LENGTH; i++) h[i] = (h[i] as number) ^ (shard[i] as number);
  return h;
}

/** The three parts of a 64-byte PRIME/STACIE key (§1.2.1). */
export function splitRealmKey(key: Uint8Array): { vectorKey: Uint8Array; tagKey: Uint8Array; cipherKey: Uint8Array } {
  checkKey('realm key', key);
  return { vectorKey: key.subarray(0, 16), tagKey: key.subarray(16, 32), cipherKey: key.subarray(32, 64) };
}

// ---- the shared GCM construction ----------------------------------------------------------------

/** R: the random vector shard stored in the clear; IV = vector key ⊕ R. */
export const VECTOR_SHARD_LENGTH = 16;
const TAG_LENGTH = 16;

function xor16(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = (a[i] as number) ^ (b[i] as number);
  return out;
}

/** `len(width) ‖ pad(1) ‖ data ‖ pad × byte(pad)`, pad = 16 − ((width + 1 + len) mod 16) ∈ 1..16. */
function padded(data: Uint8Array, width: number, len: number): Uint8Array {
  const pad = 16 - ((width + 1 + data.length) % 16);
  const out = new Uint8Array(width + 1 + data.length + pad);
  out.set(uintBytes(len, width), 0);
  out[width] = pad;
  out.set(data, width + 1);
  out.fill(pad, width + 1 + data.length);
  return out;
}

/** R ‖ (tag ⊕ tag key) ‖ AES-256-GCM(cipher key, IV = vector key ⊕ R, 16-byte IV)(plaintext), no AAD. */
function gcmSeal(crypto: Crypto, key: Uint8Array, plaintext: Uint8Array, vectorShard: Uint8Array | undefined): Uint8Array {
  const { vectorKey, tagKey, cipherKey } = splitRealmKey(key);
  const r = vectorShard ?? crypto.randomBytes(VECTOR_SHARD_LENGTH);
  assertBytes('vectorShard', r, VECTOR_SHARD_LENGTH);
  const { ciphertext, tag } = crypto.aes256GcmEncrypt(cipherKey, xor16(vectorKey, r), plaintext);
  return concatBytes(r, xor16(tag, tagKey), ciphertext);
}

/** Inverse of gcmSeal; a wrong key or any altered byte fails with CRYPTO_AUTH_FAILED. */
function gcmOpen(crypto: Crypto, key: Uint8Array, sealed: Uint8Array): Uint8Array {
  const { vectorKey, tagKey, cipherKey } = splitRealmKey(key);
  const r = sealed.subarray(0, VECTOR_SHARD_LENGTH);
  const tag = xor16(sealed.subarray(VECTOR_SHARD_LENGTH, VECTOR_SHARD_LENGTH + TAG_LENGTH), tagKey);
  return crypto.aes256GcmDecrypt(cipherKey, xor16(vectorKey, r), sealed.subarray(VECTOR_SHARD_LENGTH + TAG_LENGTH), tag);
}

/** Check `len(width) ‖ pad ‖ data ‖ padding` and return data. */
function unpad(plain: Uint8Array, width: number, what: string): { len: number; data: Uint8Array } {
  if (plain.length < width + 1 + 1 || plain.length % 16 !== 0) throw new DimeError('PRIME_KEY_MALFORMED', `${what}: decrypted length ${plain.length} is not a whole number of blocks`);
  const len = readUint(plain, 0, width);
  const pad = plain[width] as number;
  if (pad < 1 || pad > 16 || width + 1 + len + pad !== plain.length) throw new DimeError('PRIME_KEY_MALFORMED', `${what}: length ${len} and padding ${pad} do not add up to ${plain.length}`);
  for (let i = plain.length - pad; i < plain.length; i++) {
    if (plain[i] !== pad) throw new DimeError('PRIME_KEY_MALFORMED', `${what}: padding byte ${i} is not ${pad}`);
  }
  return { len, data: plain.subarray(width + 1, width + 1 + len) };
}

// ---- generic STACIE realm envelope (§2.5) -------------------------------------------------------

/** The realm envelope carries a 3-byte length. */
export const MAX_ENVELOPE_DATA = 0xffffff;

/** `serial(2) ‖ R(16) ‖ tag ⊕ tag key(16) ‖ GCM(len(3) ‖ pad(1) ‖ data ‖ padding)`. */
export function stacieEncrypt(crypto: Crypto, key: Uint8Array, serial: number, data: Uint8Array, options: { vectorShard?: Uint8Array } = {}): Uint8Array {
  if (!Number.isInteger(serial) || serial < 0 || serial > 0xffff) throw new DimeError('STACIE_BAD_INPUT', 'serial must be a 16-bit number');
  if (!(data instanceof Uint8Array) || data.length === 0 || data.length > MAX_ENVELOPE_DATA) throw new DimeError('STACIE_BAD_INPUT', `data must be 1 to ${MAX_ENVELOPE_DATA} bytes`);
  return concatBytes(uintBytes(serial, 2), gcmSeal(crypto, key, padded(data, 3, data.length), options.vectorShard));
}

export function stacieDecrypt(crypto: Crypto, key: Uint8Array, envelope: Uint8Array): { serial: number; data: Uint8Array } {
  if (!(envelope instanceof Uint8Array) || envelope.length < 2 + 32 + 16) throw new DimeError('PRIME_KEY_MALFORMED', 'the envelope is shorter than 50 bytes');
  const plain = gcmOpen(crypto, key, envelope.subarray(2));
  return { serial: readUint(envelope, 0, 2), data: unpad(plain, 3, 'envelope').data.slice() };
}

// ---- encrypted PRIME keys 1976 / 1947 (§1.4) ---------------------------------------------------

const ENCRYPTED_TYPE: ReadonlyMap<number, number> = new Map([
  [MAGIC.userKeys, MAGIC.encryptedUserKey],
  [MAGIC.orgKeys, MAGIC.encryptedOrgKey],
]);
const PLAIN_TYPE: ReadonlyMap<number, number> = new Map([...ENCRYPTED_TYPE].map(([p, e]) => [e, p]));
export const ENCRYPTED_KEY_HEADER_LENGTH = 6;
/** magma refuses plain key objects smaller than two 32-byte fields (68 bytes of fields). */
export const MIN_KEY_OBJECT_SIZE = 68;
/** The plain key object's size is a u24; an encrypted key of a real key object is ~118 bytes. */
export const MAX_ENCRYPTED_KEY_LENGTH = 4096;

/**
 * Seal a plain PRIME/libdime key object (2013 user key or 1952 org key, 5-byte header) into
 * magma's encrypted form (1976 / 1947, 6-byte header). The 5-byte header is not encrypted: the
 * plaintext is `objsize(3) ‖ pad ‖ fields ‖ padding` and the reader rebuilds the header.
 */
export function sealPrimeKey(crypto: Crypto, key: Uint8Array, keyObject: Uint8Array, options: { vectorShard?: Uint8Array } = {}): Uint8Array {
  if (!(keyObject instanceof Uint8Array) || keyObject.length < 5) throw new DimeError('PRIME_KEY_MALFORMED', 'the key object is shorter than its header');
  const type = readUint(keyObject, 0, 2);
  const sealedType = ENCRYPTED_TYPE.get(type);
  if (sealedType === undefined) throw new DimeError('PRIME_KEY_MALFORMED', `type ${type} is not a user (2013) or org (1952) key`);
  const size = readUint(keyObject, 2, 3);
  if (size + 5 !== keyObject.length) throw new DimeError('PRIME_KEY_MALFORMED', `the key object's header says ${size} bytes, it has ${keyObject.length - 5}`);
  if (size < MIN_KEY_OBJECT_SIZE) throw new DimeError('PRIME_KEY_MALFORMED', `a key object of ${size} bytes is smaller than ${MIN_KEY_OBJECT_SIZE}`);
  const plain = padded(keyObject.subarray(5), 3, size);
  const body = gcmSeal(crypto, key, plain, options.vectorShard);
  plain.fill(0);
  return concatBytes(uintBytes(sealedType, 2), uintBytes(body.length, 4), body);
}

/** Open an encrypted PRIME key: the plain key object with its 5-byte header rebuilt. */
export function openPrimeKey(crypto: Crypto, key: Uint8Array, sealed: Uint8Array): Uint8Array {
  if (!(sealed instanceof Uint8Array) || sealed.length < ENCRYPTED_KEY_HEADER_LENGTH) throw new DimeError('PRIME_KEY_MALFORMED', 'shorter than the 6-byte header');
  if (sealed.length > MAX_ENCRYPTED_KEY_LENGTH) throw new DimeError('PRIME_KEY_MALFORMED', `${sealed.length} bytes, limit ${MAX_ENCRYPTED_KEY_LENGTH}`);
  const type = readUint(sealed, 0, 2);
  const plainType = PLAIN_TYPE.get(type);
  if (plainType === undefined) throw new DimeError('PRIME_KEY_MALFORMED', `type ${type} is not an encrypted user (1976) or org (1947) key`);
  const size = readUint(sealed, 2, 4);
  if (size + ENCRYPTED_KEY_HEADER_LENGTH !== sealed.length) throw new DimeError('PRIME_KEY_MALFORMED', `header says ${size} bytes, ${sealed.length - ENCRYPTED_KEY_HEADER_LENGTH} follow`);
  const ciphertextLength = size - VECTOR_SHARD_LENGTH - TAG_LENGTH;
  if (ciphertextLength < 16 || ciphertextLength % 16 !== 0) throw new DimeError('PRIME_KEY_MALFORMED', `a ciphertext of ${ciphertextLength} bytes is not whole blocks`);
  const plain = gcmOpen(crypto, key, sealed.subarray(ENCRYPTED_KEY_HEADER_LENGTH));
  try {
    const { len, data } = unpad(plain, 3, 'encrypted key');
    if (len < MIN_KEY_OBJECT_SIZE) throw new DimeError('PRIME_KEY_MALFORMED', `a key object of ${len} bytes is smaller than ${MIN_KEY_OBJECT_SIZE}`);
    return concatBytes(uintBytes(plainType, 2), uintBytes(len, 3), data);
  } finally {
    plain.fill(0);
  }
}

// ---- legacy (pre-STACIE) magma authentication (§2.7) -------------------------------------------

/** key = SHA512(username ‖ global salt ‖ password). */
export function legacyKey(crypto: Crypto, username: string, globalSalt: string, password: Uint8Array | string): Uint8Array {
  return crypto.sha512(concatBytes(usernameBytes(username), utf8.encode(globalSalt), passwordBytes(password)));
}

/** token = SHA512(password ‖ SHA512(password ‖ key)): what magma stored in Users.legacy. */
export function legacyToken(crypto: Crypto, key: Uint8Array, password: Uint8Array | string): Uint8Array {
  const p = passwordBytes(password);
  return crypto.sha512(concatBytes(p, crypto.sha512(concatBytes(p, key))));
}

// ---- user names --------------------------------------------------------------------------------

/**
 * magma's auth_sanitize_username: lower case, no whitespace; in the local part `.` and `-` become
 * `_` and everything from the first `+` is dropped; `@domain` is dropped when it is the system
 * domain (ours: the organisation's domain, so an address of a migrated magma user hashes the same).
 */
export function stacieUsername(address: string, systemDomain?: string): string {
  const s = address.toLowerCase().replace(/\s+/g, '');
  const at = s.lastIndexOf('@');
  const rawLocal = at < 0 ? s : s.slice(0, at);
  const domain = at < 0 ? undefined : s.slice(at + 1);
  const plus = rawLocal.indexOf('+');
  const local = (plus < 0 ? rawLocal : rawLocal.slice(0, plus)).replace(/[.-]/g, '_');
  if (domain === undefined || (systemDomain !== undefined && domain === systemDomain.toLowerCase())) return local;
  return `${local}@${domain}`;
}
