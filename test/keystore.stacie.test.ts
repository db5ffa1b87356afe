/**
 * STACIE and magma's encrypted user keys against magma's own vectors (test/vectors/magma/README.md
 * §2–3): every step of the unlock path password → STACIE → realm key → 1976 → user key → user
 * signet → org signet, and the negative checks the README asks for.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { defaultCrypto } from '../src/crypto/index.js';
import { concatBytes, fromHex, toHex, utf8 } from '../src/dime/bytes.js';
import { decodeKeys, encodeKeys } from '../src/dime/keys.js';
import { decodeSignet, encryptionKeyOf, fieldsThrough, getField, signingKeyOf, validateSignet } from '../src/dime/signet/index.js';
import { isDimeError } from '../src/errors.js';
import {
  MAIL_REALM,
  deriveStacie,
  ephemeralLoginToken,
  legacyKey,
  legacyToken,
  openPrimeKey,
  realmKey,
  sealPrimeKey,
  splitRealmKey,
  stacieDecrypt,
  stacieEncrypt,
  stacieRounds,
  stacieSeed,
  stacieUsername,
} from '../src/keystore/stacie.js';
import { vectorJson } from './helpers/vectors.js';

const crypto = defaultCrypto();
const S = vectorJson('magma', 'stacie.json');
const U = vectorJson('magma', 'users.json');
const O = vectorJson('magma', 'org.json');

const b64u = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64url'));
const hex = (b: Uint8Array): string => toHex(b);
const xor = (a: Uint8Array, b: Uint8Array): Uint8Array => a.map((x, i) => x ^ (b[i] as number));
const isCode = (code: string) => (e: unknown) => isDimeError(e) && e.code === code;

const orgSignet = decodeSignet(fromHex(O.org_signet.binary_hex));
const orgKeys = decodeKeys(fromHex(O.org_key.binary_hex));

describe('STACIE rounds (stacie.json "rounds")', () => {
  for (const r of S.rounds) {
    const label = `${r.password === null ? `hex ${r.password_hex}` : JSON.stringify(r.password)} + ${r.bonus} → ${r.expected_rounds}`;
    it(label, () => {
      const pw = fromHex(r.password_hex);
      if (r.expected_rounds === 0) assert.throws(() => stacieRounds(pw, r.bonus), isCode('STACIE_BAD_INPUT'), 'invalid UTF-8 is an error (magma: 0)');
      else assert.equal(stacieRounds(pw, r.bonus), r.expected_rounds);
      if (r.password !== null) assert.equal(hex(utf8.encode(r.password)), r.password_hex, 'the text and the hex are the same bytes');
    });
  }
  it('refuses bonuses outside 0..2^32−1 and non-integers', () => {
    for (const b of [-1, 0.5, 2 ** 32, Number.NaN]) assert.throws(() => stacieRounds('password', b), isCode('STACIE_BAD_INPUT'), String(b));
  });
});

describe('STACIE primary vector (stacie_check.c)', () => {
  const i = S.primary.inputs;
  const e = S.primary.expected;
  const salt = b64u(i.salt_b64url);
  const nonce = b64u(i.nonce_b64url);
  const shard = b64u(i.shard_b64url);
  const k = deriveStacie(crypto, { username: i.username, password: i.password, salt, bonus: i.bonus });

  it('inputs decode to the stated hex', () => {
    assert.equal(hex(salt), i.salt_hex);
    assert.equal(hex(nonce), i.nonce_hex);
    assert.equal(hex(shard), i.shard_hex);
  });
  it('rounds, seed, master key, password key, verification token', () => {
    assert.equal(k.rounds, e.rounds);
    assert.equal(hex(k.seed), e.seed_hex);
    assert.equal(Buffer.from(k.seed).toString('base64url'), e.seed_b64url);
    assert.equal(hex(k.masterKey), e.master_key_hex);
    assert.equal(hex(k.passwordKey), e.password_key_hex);
    assert.equal(hex(k.verificationToken), e.verification_token_hex);
    assert.equal(Buffer.from(k.verificationToken).toString('base64url'), e.verification_token_b64url);
  });
  it('ephemeral login token (nonce after the salt)', () => {
    assert.equal(hex(ephemeralLoginToken(crypto, k.verificationToken, i.username, salt, nonce)), e.ephemeral_login_token_hex);
  });
  it('realm key with S = shard (the test\'s legacy form) and its three parts', () => {
    const key = realmKey(crypto, k.masterKey, i.realm_label, salt, shard, false);
    assert.equal(hex(key), e.realm_key_hex);
    const parts = splitRealmKey(key);
    assert.equal(Buffer.from(parts.vectorKey).toString('base64url'), e.realm_vector_key_b64url);
    assert.equal(Buffer.from(parts.tagKey).toString('base64url'), e.realm_tag_key_b64url);
    assert.equal(Buffer.from(parts.cipherKey).toString('base64url'), e.realm_cipher_key_b64url);
  });
  it('realm key with S = salt (rotated = 1): the implementation switches on rotated', () => {
    const key = realmKey(crypto, k.masterKey, i.realm_label, salt, shard, true);
    assert.equal(hex(key), S.primary.derived.realm_key_with_salt_hex);
    assert.equal(Buffer.from(splitRealmKey(key).vectorKey).toString('base64url'), S.primary.derived.realm_key_with_salt_vector_b64url);
  });
  it('generic realm envelope: exact bytes with a fixed vector shard, decrypts, a changed last byte fails', () => {
    const x = S.primary.derived.envelope_example;
    const key = fromHex(e.realm_key_hex);
    const env = stacieEncrypt(crypto, key, x.serial, utf8.encode(x.plaintext), { vectorShard: fromHex(x.vector_shard_hex) });
    assert.equal(hex(env), x.envelope_hex);
    assert.equal(env.length, x.envelope_length);
    assert.equal(hex(xor(splitRealmKey(key).vectorKey, fromHex(x.vector_shard_hex))), x.gcm_iv_hex);
    const opened = stacieDecrypt(crypto, key, env);
    assert.equal(opened.serial, x.serial);
    assert.equal(utf8.decode(opened.data), x.plaintext);
    const bad = env.slice();
    bad[bad.length - 1]! ^= 1;
    assert.throws(() => stacieDecrypt(crypto, key, bad), isCode('CRYPTO_AUTH_FAILED'));
    // And a random vector shard round-trips.
    assert.equal(utf8.decode(stacieDecrypt(crypto, key, stacieEncrypt(crypto, key, 7, utf8.encode('hello'))).data), 'hello');
  });
  it('refuses salts, nonces and shards of the wrong length', () => {
    assert.throws(() => stacieSeed(crypto, 8, 'password', salt.subarray(1)), isCode('STACIE_BAD_INPUT'));
    assert.throws(() => ephemeralLoginToken(crypto, k.verificationToken, i.username, salt, nonce.subarray(1)), isCode('STACIE_BAD_INPUT'));
    assert.throws(() => realmKey(crypto, k.masterKey, MAIL_REALM, salt, shard.subarray(1), true), isCode('STACIE_BAD_INPUT'));
  });
});

describe('STACIE database user and auth_check', () => {
  it('database user "stacie": the recomputed verification token equals Users.auth', () => {
    const d = S.database_user;
    const k = deriveStacie(crypto, { username: d.inputs.username, password: d.inputs.password, salt: b64u(d.inputs.salt_b64url), bonus: d.inputs.bonus });
    assert.equal(k.rounds, d.expected.rounds);
    assert.equal(Buffer.from(k.verificationToken).toString('base64url'), d.expected.verification_token_b64url);
    assert.equal(hex(k.seed), d.derived.seed_hex);
    assert.equal(hex(k.masterKey), d.derived.master_key_hex);
    assert.equal(hex(k.passwordKey), d.derived.password_key_hex);
  });
  it('auth_check "magma": master key, verification token, ephemeral token', () => {
    const a = S.auth_check;
    const salt = b64u(a.inputs.salt_b64url);
    const k = deriveStacie(crypto, { username: a.inputs.username, password: a.inputs.password, salt, bonus: a.inputs.bonus });
    assert.equal(k.rounds, a.expected.rounds);
    assert.equal(Buffer.from(k.masterKey).toString('base64url'), a.expected.master_key_b64url);
    assert.equal(Buffer.from(k.verificationToken).toString('base64url'), a.expected.verification_token_b64url);
    assert.equal(Buffer.from(ephemeralLoginToken(crypto, k.verificationToken, a.inputs.username, salt, b64u(a.inputs.nonce_b64url))).toString('base64url'), a.expected.ephemeral_login_token_b64url);
    assert.equal(hex(k.seed), a.derived.seed_hex);
    assert.equal(hex(k.passwordKey), a.derived.password_key_hex);
  });
  it('legacy scheme: key and token of auth_check, and the Data.sql legacy tokens', () => {
    const l = S.legacy;
    const key = legacyKey(crypto, l.auth_check.username, l.global_salt, l.auth_check.password);
    assert.equal(Buffer.from(key).toString('base64url'), l.auth_check.key_b64url);
    assert.equal(Buffer.from(legacyToken(crypto, key, l.auth_check.password)).toString('base64url'), l.auth_check.token_b64url);
    for (const row of l.database_rows) {
      const k = legacyKey(crypto, row.username, l.global_salt, row.password);
      assert.equal(hex(legacyToken(crypto, k, row.password)), row.legacy_token_hex, row.username);
    }
  });
  it('rfc-test-vectors.py inputs (derived cross-check, bonus 131072)', () => {
    const r = S.rfc_script_inputs;
    const salt = b64u(r.inputs.salt_b64url);
    const k = deriveStacie(crypto, { username: r.inputs.username, password: r.inputs.password, salt, bonus: r.inputs.bonus });
    assert.equal(k.rounds, r.derived.rounds);
    assert.equal(Buffer.from(k.seed).toString('base64url'), r.derived.seed_b64url);
    assert.equal(Buffer.from(k.masterKey).toString('base64url'), r.derived.master_key_b64url);
    assert.equal(Buffer.from(k.passwordKey).toString('base64url'), r.derived.password_key_b64url);
    assert.equal(Buffer.from(k.verificationToken).toString('base64url'), r.derived.verification_token_b64url);
    assert.equal(Buffer.from(ephemeralLoginToken(crypto, k.verificationToken, r.inputs.username, salt, b64u(r.inputs.nonce_b64url))).toString('base64url'), r.derived.ephemeral_login_token_b64url);
    const parts = splitRealmKey(realmKey(crypto, k.masterKey, r.inputs.realm_label, salt, b64u(r.inputs.shard_b64url), false));
    assert.equal(Buffer.from(parts.vectorKey).toString('base64url'), r.derived.realm_vector_key_b64url);
    assert.equal(Buffer.from(parts.tagKey).toString('base64url'), r.derived.realm_tag_key_b64url);
    assert.equal(Buffer.from(parts.cipherKey).toString('base64url'), r.derived.realm_cipher_key_b64url);
  });
  it('user names are normalised as magma does', () => {
    assert.equal(stacieUsername('user@example.tld'), 'user@example.tld');
    assert.equal(stacieUsername(' Lock.None-x+tag@Lavabit.com ', 'lavabit.com'), 'lock_none_x');
    assert.equal(stacieUsername('lock_none@lavabit.com', 'lavabit.com'), 'lock_none');
    assert.equal(stacieUsername('a.b@other.org', 'lavabit.com'), 'a_b@other.org');
  });
});

/** Signet checks that hold for every users.json row, password or not. */
function checkSignetAndEnvelope(u: any): void {
  const bytes = b64u(u.signet_b64url);
  assert.equal(Buffer.from(bytes).toString('base64'), u.signet_base64);
  assert.equal(bytes.length, u.signet.total_length);
  assert.equal(hex(bytes.subarray(0, 5)), u.signet.header_hex);
  const s = decodeSignet(bytes);
  assert.equal(s.type, 'user');
  assert.equal(s.dialect, 'prime');
  assert.deepEqual(s.fields.map((f) => f.id), u.signet.fields.map((f: any) => f.type));
  assert.equal(hex(signingKeyOf(s)!), u.signet.signing_public_key_hex);
  assert.equal(hex(encryptionKeyOf(s)!), u.signet.encryption_public_key_hex);
  // Field 5 under field 1 over F1‖F2; field 6 under the org signet's key over F1‖F2‖F5.
  const f5 = getField(s, 5)!.value;
  const f6 = getField(s, 6)!.value;
  assert.equal(hex(fieldsThrough(s, 4)), u.signet.self_signature.signed_bytes_hex);
  assert.equal(hex(fieldsThrough(s, 5)), u.signet.org_signature.signed_bytes_hex);
  assert.ok(crypto.ed25519Verify(signingKeyOf(s)!, fieldsThrough(s, 4), f5), 'field 5');
  assert.ok(crypto.ed25519Verify(signingKeyOf(orgSignet)!, fieldsThrough(s, 5), f6), 'field 6 under the sandbox org signet');
  assert.ok(!crypto.ed25519Verify(signingKeyOf(orgSignet)!, fieldsThrough(s, 4), f6), 'field 6 must not verify over fields 1 + 2 only');
  assert.equal(validateSignet(crypto, s, { org: orgSignet }).state, 'crypto');
  assert.equal(hex(crypto.sha512(fieldsThrough(s, 255))), u.signet.fingerprint_sha512_hex);
  // The 1976 envelope's structure.
  const env = b64u(u.encrypted_key_b64url);
  assert.equal(Buffer.from(env).toString('base64'), u.encrypted_key_base64);
  assert.equal(env.length, u.encrypted_key.total_length);
  assert.equal(hex(env.subarray(0, 6)), u.encrypted_key.header_hex);
  assert.equal(hex(env.subarray(6, 22)), u.encrypted_key.vector_shard_hex);
  assert.equal(hex(env.subarray(22, 38)), u.encrypted_key.masked_tag_hex);
  assert.equal(hex(env.subarray(38)), u.encrypted_key.ciphertext_hex);
}

describe('users.json: the unlock path end to end', () => {
  for (const name of U.golden_path_users as string[]) {
    const u = U.users.find((x: any) => x.username === name);
    const d = u.derived;
    it(`${name}: password → STACIE → realm key → 1976 → user key → user signet → org signet`, () => {
      assert.equal(u.stacie_username, stacieUsername(`${u.username}@${U.system_domain_in_sandbox}`, U.system_domain_in_sandbox));
      const salt = b64u(u.salt_b64url);
      const shard = b64u(u.realm.shard_b64url);
      // 1–4: STACIE; the verification token must equal Users.auth.
      const k = deriveStacie(crypto, { username: u.stacie_username, password: u.password, salt, bonus: u.bonus });
      assert.equal(k.rounds, d.rounds);
      assert.equal(hex(k.seed), d.seed_hex);
      assert.equal(hex(k.masterKey), d.master_key_hex);
      assert.equal(hex(k.passwordKey), d.password_key_hex);
      assert.equal(hex(k.verificationToken), d.verification_token_hex);
      assert.equal(Buffer.from(k.verificationToken).toString('base64url'), u.auth_b64url);
      // 5: realm key with S = salt because rotated = 1.
      assert.equal(u.realm.rotated, 1);
      const key = realmKey(crypto, k.masterKey, u.realm.label, salt, shard, u.realm.rotated === 1);
      assert.equal(hex(key), d.realm_key_hex);
      const parts = splitRealmKey(key);
      assert.equal(hex(parts.vectorKey), d.realm_vector_key_hex);
      assert.equal(hex(parts.tagKey), d.realm_tag_key_hex);
      assert.equal(hex(parts.cipherKey), d.realm_cipher_key_hex);
      // 6–7: the envelope, step by step with the backend, then through openPrimeKey.
      const env = b64u(u.encrypted_key_b64url);
      const iv = xor(parts.vectorKey, env.subarray(6, 22));
      const tag = xor(env.subarray(22, 38), parts.tagKey);
      assert.equal(hex(iv), d.gcm_iv_hex);
      assert.equal(hex(tag), d.gcm_tag_hex);
      const plain = crypto.aes256GcmDecrypt(parts.cipherKey, iv, env.subarray(38), tag);
      assert.equal(hex(plain), d.plaintext_hex);
      assert.equal((plain[0]! << 16) | (plain[1]! << 8) | plain[2]!, d.plaintext_object_size);
      assert.equal(plain[3], d.plaintext_pad);
      assert.ok(plain.subarray(plain.length - d.plaintext_pad).every((b) => b === d.plaintext_pad));
      const userKey = openPrimeKey(crypto, key, env);
      assert.equal(hex(userKey), d.user_key_hex);
      assert.equal(Buffer.from(userKey).toString('base64'), d.user_key_base64);
      const keys = decodeKeys(userKey);
      assert.equal(keys.type, 'user');
      assert.equal(keys.dialect, 'magma');
      assert.equal(hex(keys.signingKey), d.user_key_fields[0].payload_hex);
      assert.equal(hex(keys.encryptionKey), d.user_key_fields[1].payload_hex);
      // 8: the derived public keys are the signet's.
      const s = decodeSignet(b64u(u.signet_b64url));
      assert.equal(hex(crypto.ed25519PublicKey(keys.signingKey)), d.derived_signing_public_key_hex);
      assert.equal(hex(crypto.secp256k1PublicKey(keys.encryptionKey)), d.derived_encryption_public_key_hex);
      assert.equal(hex(signingKeyOf(s)!), d.derived_signing_public_key_hex);
      assert.equal(hex(encryptionKeyOf(s)!), d.derived_encryption_public_key_hex);
      // 9: both signatures, and signing again gives the stored bytes.
      checkSignetAndEnvelope(u);
      assert.equal(hex(crypto.ed25519Sign(keys.signingKey, fieldsThrough(s, 4))), hex(getField(s, 5)!.value));
      assert.equal(hex(crypto.ed25519Sign(orgKeys.signingKey, fieldsThrough(s, 5))), hex(getField(s, 6)!.value));
      // The KEK between the user key and the org key, from either side.
      assert.equal(hex(crypto.secp256k1Ecdh(keys.encryptionKey, encryptionKeyOf(orgSignet)!)), d.kek_user_org_hex);
      assert.equal(hex(crypto.secp256k1Ecdh(orgKeys.encryptionKey, encryptionKeyOf(s)!)), d.kek_user_org_hex);

      // Negatives: the legacy realm key (S = shard) and a wrong master key both fail GCM.
      const legacy = realmKey(crypto, k.masterKey, u.realm.label, salt, shard, false);
      assert.equal(hex(legacy), d.legacy_realm_key_hex);
      assert.throws(() => openPrimeKey(crypto, legacy, env), isCode('CRYPTO_AUTH_FAILED'), 'legacy realm key');
      const wrongMaster = xor(k.masterKey, k.verificationToken);
      assert.throws(() => openPrimeKey(crypto, realmKey(crypto, wrongMaster, u.realm.label, salt, shard, true), env), isCode('CRYPTO_AUTH_FAILED'), 'wrong master key');
      // Re-encrypting with the same realm key and the stored vector shard reproduces Keys.key.
      assert.equal(hex(sealPrimeKey(crypto, key, userKey, { vectorShard: env.subarray(6, 22) })), hex(env));
      // And re-encoding the decoded key object gives the same bytes (PRIME 2013 = magma keys layout).
      assert.equal(hex(encodeKeys({ ...keys })), d.user_key_hex);
    });
  }

  for (const name of U.users_without_documented_password as string[]) {
    it(`${name}: signet and envelope checks only (no documented password)`, () => {
      checkSignetAndEnvelope(U.users.find((x: any) => x.username === name));
    });
  }
});

describe('encrypted PRIME keys: seal/open and malformed input', () => {
  const key = crypto.randomBytes(64);
  const userKey = encodeKeys({ type: 'user', dialect: 'magma', signingKey: crypto.randomBytes(32), encryptionKey: crypto.randomBytes(32) });
  const orgKey = encodeKeys({ type: 'org', dialect: 'magma', signingKey: crypto.randomBytes(32), encryptionKey: crypto.randomBytes(32) });

  it('user (1976) and org (1947) keys round-trip; sizes as magma writes them', () => {
    const u = sealPrimeKey(crypto, key, userKey);
    assert.equal(u.length, 118);
    assert.equal(hex(u.subarray(0, 6)), '07b800000070');
    assert.deepEqual(openPrimeKey(crypto, key, u), userKey);
    const o = sealPrimeKey(crypto, key, orgKey);
    assert.equal(hex(o.subarray(0, 2)), '079b');
    assert.deepEqual(openPrimeKey(crypto, key, o), orgKey);
    // A libdime-layout key (2-byte encryption-key length) is 69 bytes of fields: padding adapts.
    const libdime = encodeKeys({ type: 'user', dialect: 'libdime', signingKey: crypto.randomBytes(32), encryptionKey: crypto.randomBytes(32) });
    assert.deepEqual(openPrimeKey(crypto, key, sealPrimeKey(crypto, key, libdime)), libdime);
  });

  it('every truncation, a bad type, a bad size and every flipped byte are typed errors', () => {
    const sealed = sealPrimeKey(crypto, key, userKey);
    for (let n = 0; n < sealed.length; n++) {
      assert.throws(() => openPrimeKey(crypto, key, sealed.subarray(0, n)), (e: unknown) => isDimeError(e, 'PRIME_KEY_MALFORMED') || isDimeError(e, 'CRYPTO_AUTH_FAILED'), `truncated to ${n}`);
    }
    for (let i = 0; i < sealed.length; i++) {
      const bad = sealed.slice();
      bad[i]! ^= 0x40;
      assert.throws(() => openPrimeKey(crypto, key, bad), (e: unknown) => isDimeError(e, 'PRIME_KEY_MALFORMED') || isDimeError(e, 'CRYPTO_AUTH_FAILED'), `byte ${i}`);
    }
    assert.throws(() => sealPrimeKey(crypto, key, concatBytes(Uint8Array.of(0x06, 0xf0), userKey.subarray(2))), isCode('PRIME_KEY_MALFORMED'));
    assert.throws(() => sealPrimeKey(crypto, key, userKey.subarray(0, 40)), isCode('PRIME_KEY_MALFORMED'));
  });
});
