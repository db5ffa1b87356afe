/**
 * Users' key custody with real components: a file keystore (and a SoftHSM2 keystore for escrow in
 * the HSM), a FileSignetStore and the user store in scratch directories.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import type { KeystoreConfig } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { decodeKeys, generateKeys } from '../src/dime/keys.js';
import { createOrgSignet, createSigningRequest, encryptionKeyOf, signingKeyOf, validateSignet, type Signet } from '../src/dime/signet/index.js';
import { isDimeError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { createKeystore, type OrgKeystore } from '../src/keystore/keystore.js';
import { dataLayout } from '../src/keystore/layout.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { createSoftHsmToken, softHsmAvailable, type SoftHsmToken } from '../src/keystore/softhsm.js';
import { deriveStacie, openPrimeKey, realmKey } from '../src/keystore/stacie.js';
import { UserKeyStore, type UserStoreOptions } from '../src/keystore/users.js';
import { scratchDir } from './helpers/cli.js';

const crypto = defaultCrypto();
const isCode = (code: string) => (e: unknown) => isDimeError(e) && e.code === code;
const DOMAIN = 'example.com';
const PASSWORD = 'correct horse battery staple';

function quietLogger() {
  return createLogger({ destination: new Writable({ write: (_c, _e, cb) => cb() }) });
}

interface Env {
  dir: string;
  keystore: OrgKeystore;
  signets: FileSignetStore;
  org: Signet;
  users: UserKeyStore;
  unwraps: () => number;
  clock: { t: number };
  make(o?: Partial<UserStoreOptions>): UserKeyStore;
}

/** A keystore wrapped to count unwrap() calls: proof that cautious blobs are never opened. */
function counting(ks: OrgKeystore): { keystore: OrgKeystore; count: () => number } {
  let n = 0;
  const keystore = new Proxy(ks, {
    get(target, prop, receiver) {
      if (prop === 'unwrap') return (blob: Uint8Array, ctx: string) => (n++, target.unwrap(blob, ctx));
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return { keystore, count: () => n };
}

/** One scratch root for the file (removed at exit); every environment gets its own directory in it. */
const ROOT = scratchDir();

async function setup(config: (dir: string) => KeystoreConfig): Promise<Env> {
  const dir = fs.mkdtempSync(path.join(ROOT, 'env-'));
  const raw = await createKeystore(config(dir), { crypto, logger: quietLogger() });
  const { keystore, count } = counting(raw);
  const signets = new FileSignetStore(dataLayout(dir).signets, crypto);
  const org = await createOrgSignet({ signer: keystore.pok, encryptionKey: keystore.encryptionPublicKey, domain: DOMAIN });
  await signets.put(org);
  const clock = { t: 1_000_000 };
  const make = (o: Partial<UserStoreOptions> = {}) => new UserKeyStore({ dataDir: dir, domain: DOMAIN, keystore, signets, crypto, logger: quietLogger(), now: () => clock.t, ...o });
  return { dir, keystore, signets, org, users: make(), unwraps: count, clock, make };
}

const userDir = (env: Env, local: string) => path.join(dataLayout(env.dir).users, DOMAIN, local);
const mode = (f: string) => fs.statSync(f).mode & 0o777;
const leftovers = (dir: string) => fs.readdirSync(dir).filter((n) => n.endsWith('.tmp'));

/** A client's own keys and signing request (cautious and paranoid users). */
async function clientRequest(previous?: { signingKey: Uint8Array }) {
  const keys = generateKeys('user', crypto);
  const request = await createSigningRequest({
    signer: crypto.ed25519Signer(keys.signingKey),
    encryptionKey: crypto.secp256k1PublicKey(keys.encryptionKey),
    ...(previous ? { previousSigner: crypto.ed25519Signer(previous.signingKey) } : {}),
  });
  return { keys, request };
}

function trustfulSuite(name: string, config: (dir: string) => KeystoreConfig): void {
  describe(`trustful users (${name})`, () => {
    it('escrow: keys made, sealed under the wrapping key, signet published; unsealed keys sign and derive', async () => {
      const env = await setup(config);
      const info = await env.users.add('Alice@Example.com');
      assert.equal(info.address, 'alice@example.com');
      assert.deepEqual([info.mode, info.generation, info.escrow, info.passwordSealed, info.published], ['trustful', 1, true, false, true]);
      const d = userDir(env, 'alice');
      assert.equal(mode(d), 0o700);
      assert.deepEqual(fs.readdirSync(d).sort(), ['1.sealed', 'user.json']);
      for (const f of fs.readdirSync(d)) assert.equal(mode(path.join(d, f)), 0o600, f);
      assert.equal(fs.readFileSync(path.join(d, '1.sealed')).subarray(0, 4).toString(), 'DKW1');
      const signet = (await env.signets.user('alice@example.com'))!;
      assert.equal(validateSignet(crypto, signet, { org: env.org }).state, 'id');
      const key = await env.users.unseal('alice@example.com');
      assert.deepEqual(key.signer.publicKey, signingKeyOf(signet));
      const msg = crypto.randomBytes(50);
      assert.ok(crypto.ed25519Verify(signingKeyOf(signet)!, msg, await key.signer.sign(msg)));
      const eph = generateKeys('user', crypto).encryptionKey;
      assert.deepEqual(await key.actorKeys.ecdh(crypto.secp256k1PublicKey(eph)), crypto.secp256k1Ecdh(eph, encryptionKeyOf(signet)!));
      assert.ok(env.unwraps() >= 1);
      await assert.rejects(env.users.add('alice@example.com'), isCode('USER_EXISTS'));
    });

    it('password seal (STACIE, 1976): opens with the password, magma can open it too, wrong password refused', async () => {
      const env = await setup(config);
      await env.users.add('bob@example.com', { password: PASSWORD });
      const d = userDir(env, 'bob');
      assert.deepEqual(fs.readdirSync(d).sort(), ['1.1976', '1.sealed', 'user.json']);
      const blob = new Uint8Array(fs.readFileSync(path.join(d, '1.1976')));
      assert.equal(blob.length, 118);
      assert.equal(Buffer.from(blob.subarray(0, 6)).toString('hex'), '07b800000070');
      // Open it the way magma does, from the stored STACIE parameters alone.
      const rec = JSON.parse(fs.readFileSync(path.join(d, 'user.json'), 'utf8'));
      const salt = new Uint8Array(Buffer.from(rec.password.salt, 'base64url'));
      const k = deriveStacie(crypto, { username: rec.password.username, password: PASSWORD, salt, bonus: rec.password.bonus });
      assert.equal(Buffer.from(k.verificationToken).toString('base64url'), rec.password.auth);
      assert.equal(rec.password.username, 'bob', 'magma normalisation: the system domain is dropped');
      const keys = decodeKeys(openPrimeKey(crypto, realmKey(crypto, k.masterKey, 'mail', salt, new Uint8Array(Buffer.from(rec.password.realm.shard, 'base64url')), true), blob));
      const signet = (await env.signets.user('bob@example.com'))!;
      assert.deepEqual(crypto.ed25519PublicKey(keys.signingKey), signingKeyOf(signet));
      const before = env.unwraps();
      const key = await env.users.unseal('bob@example.com', { password: PASSWORD });
      assert.equal(env.unwraps(), before, 'the password path does not touch the escrow');
      assert.deepEqual(key.encryptionPublicKey, encryptionKeyOf(signet));
      await assert.rejects(env.users.unseal('bob@example.com', { password: 'correct horse battery stapler' }), isCode('USER_BAD_PASSWORD'));
      await assert.rejects(env.users.add('carol@example.com', { password: 'short' }), isCode('USER_BAD_PASSWORD'), 'at least 8 characters');
      assert.ok(!fs.existsSync(userDir(env, 'carol')) || !fs.existsSync(path.join(userDir(env, 'carol'), 'user.json')));
    });

    it('without escrow only the password opens the key; after its lifetime the key is locked again', async () => {
      const env = await setup(config);
      const users = env.make({ unlockTtlMs: 60_000 });
      await users.add('dora@example.com', { password: PASSWORD, escrow: false });
      assert.deepEqual(fs.readdirSync(userDir(env, 'dora')).sort(), ['1.1976', 'user.json']);
      await assert.rejects(users.unseal('dora@example.com'), isCode('USER_LOCKED'));
      await assert.rejects(users.add('erin@example.com', { escrow: false }), isCode('USAGE'));
      const key = await users.unseal('dora@example.com', { password: PASSWORD });
      const msg = crypto.randomBytes(8);
      assert.ok(crypto.ed25519Verify(key.signer.publicKey, msg, await key.signer.sign(msg)));
      env.clock.t += 60_001;
      await assert.rejects(key.signer.sign(msg), isCode('USER_LOCKED'));
      assert.equal(users.cache.size, 0);
    });

    it('rotation: new keys with a chain-of-custody signature, old generation kept and still opens', async () => {
      const env = await setup(config);
      await env.users.add('fay@example.com', { password: PASSWORD });
      const old = (await env.signets.user('fay@example.com'))!;
      await assert.rejects(env.users.rotate('fay@example.com'), isCode('USAGE'), 'the password seal needs the password');
      await assert.rejects(env.users.rotate('fay@example.com', { password: 'wrong password here' }), isCode('USER_BAD_PASSWORD'));
      const info = await env.users.rotate('fay@example.com', { password: PASSWORD });
      assert.equal(info.generation, 2);
      const now = (await env.signets.user('fay@example.com'))!;
      assert.notDeepEqual(signingKeyOf(now), signingKeyOf(old));
      assert.equal(validateSignet(crypto, now, { org: env.org, previous: old }).state, 'id', 'custody verifies against the previous signet');
      assert.equal(validateSignet(crypto, now, { org: env.org, previous: now }).state, 'broken-custody');
      assert.deepEqual(fs.readdirSync(userDir(env, 'fay')).sort(), ['1.1976', '1.sealed', '2.1976', '2.sealed', 'user.json']);
      const g1 = await env.users.unseal('fay@example.com', { generation: 1 });
      assert.deepEqual(g1.signer.publicKey, signingKeyOf(old), 'old mail stays readable');
      const g2 = await env.users.unseal('fay@example.com', { password: PASSWORD });
      assert.deepEqual(g2.signer.publicKey, signingKeyOf(now));
      assert.equal((await env.signets.userHistory('fay@example.com')).length, 2);
    });
  });
}

trustfulSuite('file keystore', (dir) => ({ type: 'file', file: path.join(dir, 'org.keys') }));

describe('escrow in the HSM', { skip: softHsmAvailable() ? false : 'SoftHSM2 is not installed' }, () => {
  let token: SoftHsmToken;
  let n = 0;
  before(() => {
    token = createSoftHsmToken({ label: 'dime-users' });
    token.useIn();
  });
  after(() => token?.remove());
  trustfulSuite('SoftHSM2 keystore', () => ({ type: 'pkcs11', file: '/nonexistent', module: token.module, token: token.label, pinFile: token.pinFile, label: `u${++n}` }));
});

describe('user key cache', () => {
  it('zeroes keys on TTL expiry and on overflow (least recently used first); escrow users re-open transparently', async () => {
    const env = await setup((dir) => ({ type: 'file', file: path.join(dir, 'org.keys') }));
    const users = env.make({ unlockTtlMs: 1000, maxUnsealed: 2 });
    for (const u of ['a', 'b', 'c']) await users.add(`${u}@example.com`);
    const a = await users.unseal('a@example.com');
    const cachedA = users.cache.get('a@example.com#1')!;
    assert.ok(cachedA.signingKey.some((x) => x !== 0));
    await users.unseal('b@example.com');
    await users.unseal('c@example.com');
    assert.equal(users.cache.size, 2);
    assert.ok(cachedA.signingKey.every((x) => x === 0) && cachedA.encryptionKey.every((x) => x === 0), 'the evicted key is zeroed');
    const cachedC = users.cache.get('c@example.com#1')!;
    env.clock.t += 1001;
    users.cache.sweep();
    assert.equal(users.cache.size, 0);
    assert.ok(cachedC.signingKey.every((x) => x === 0), 'expired keys are zeroed by the sweep');
    const msg = crypto.randomBytes(8);
    const before = env.unwraps();
    assert.ok(crypto.ed25519Verify(a.signer.publicKey, msg, await a.signer.sign(msg)), 're-opened through escrow');
    assert.equal(env.unwraps(), before + 1);
    users.close();
    assert.equal(users.cache.size, 0);
  });
});

describe('cautious and paranoid users', () => {
  it('cautious: the signing request is signed, the blob stored as given and never opened; rotation needs custody', async () => {
    const env = await setup((dir) => ({ type: 'file', file: path.join(dir, 'org.keys') }));
    const first = await clientRequest();
    const blob = crypto.randomBytes(300); // not any format: proof that nobody parses it
    const info = await env.users.add('gus@example.com', { mode: 'cautious', request: first.request, encryptedKey: blob });
    assert.deepEqual([info.mode, info.escrow, info.passwordSealed], ['cautious', false, false]);
    const signet = (await env.signets.user('gus@example.com'))!;
    assert.equal(validateSignet(crypto, signet, { org: env.org }).state, 'id');
    assert.deepEqual(signingKeyOf(signet), crypto.ed25519PublicKey(first.keys.signingKey));
    assert.deepEqual(env.users.ownEncryptedKey('gus@example.com'), blob);
    assert.deepEqual(fs.readdirSync(userDir(env, 'gus')).sort(), ['1.blob', 'user.json']);
    await assert.rejects(env.users.unseal('gus@example.com'), isCode('USER_WRONG_MODE'));
    await assert.rejects(env.users.add('hal@example.com', { mode: 'cautious', request: first.request }), isCode('USAGE'), 'needs the blob');
    await assert.rejects(env.users.add('hal@example.com', { mode: 'cautious', request: first.request, encryptedKey: blob, password: PASSWORD }), isCode('USAGE'));
    // Rotation without a custody signature is refused; with one it verifies.
    const noCustody = await clientRequest();
    await assert.rejects(env.users.rotate('gus@example.com', { request: noCustody.request, encryptedKey: blob }), isCode('SIGNET_NOT_SIGNABLE'));
    const second = await clientRequest(first.keys);
    await env.users.rotate('gus@example.com', { request: second.request, encryptedKey: crypto.randomBytes(10) });
    const now = (await env.signets.user('gus@example.com'))!;
    assert.equal(validateSignet(crypto, now, { org: env.org, previous: signet }).state, 'id');
    assert.equal(env.unwraps(), 0, 'the keystore never opened anything for a cautious user');
    assert.deepEqual(env.users.ownEncryptedKey('gus@example.com', 1), blob);
  });

  it('paranoid: public signet only', async () => {
    const env = await setup((dir) => ({ type: 'file', file: path.join(dir, 'org.keys') }));
    const { request, keys } = await clientRequest();
    await assert.rejects(env.users.add('ida@example.com', { mode: 'paranoid', request, encryptedKey: crypto.randomBytes(10) }), isCode('USAGE'));
    await assert.rejects(env.users.add('ida@example.com', { mode: 'paranoid' }), isCode('USAGE'));
    await env.users.add('ida@example.com', { mode: 'paranoid', request });
    assert.deepEqual(fs.readdirSync(userDir(env, 'ida')), ['user.json']);
    await assert.rejects(env.users.unseal('ida@example.com'), isCode('USER_WRONG_MODE'));
    assert.throws(() => env.users.ownEncryptedKey('ida@example.com'), isCode('USER_WRONG_MODE'));
    const next = await clientRequest(keys);
    await env.users.rotate('ida@example.com', { request: next.request });
    assert.equal((await env.users.show('ida@example.com')).history.length, 2);
  });
});

describe('removal, bad input, nothing half-written', () => {
  it('remove withdraws the signet (history kept) and keeps keys unless purged; a re-add continues the generations', async () => {
    const env = await setup((dir) => ({ type: 'file', file: path.join(dir, 'org.keys') }));
    await env.users.add('jo@example.com');
    await env.users.add('kim@example.com');
    await env.users.remove('jo@example.com');
    assert.equal(await env.signets.user('jo@example.com'), undefined);
    assert.equal((await env.signets.userHistory('jo@example.com')).length, 1);
    assert.ok(fs.existsSync(path.join(userDir(env, 'jo'), '1.sealed')), 'escrow kept: old mail stays readable');
    assert.ok((await env.users.unseal('jo@example.com')).signer);
    const list = await env.users.list();
    assert.deepEqual(list.map((u) => [u.address, !!u.removed, u.published]), [['jo@example.com', true, false], ['kim@example.com', false, true]]);
    await env.users.remove('jo@example.com', { purgeKeys: true });
    assert.deepEqual(fs.readdirSync(userDir(env, 'jo')), ['user.json']);
    const back = await env.users.add('jo@example.com');
    assert.equal(back.generation, 2);
    assert.ok(back.published);
    await assert.rejects(env.users.remove('nobody@example.com'), isCode('USER_NOT_FOUND'));
  });

  it('addresses outside the domain or that could escape the directory are refused', async () => {
    const env = await setup((dir) => ({ type: 'file', file: path.join(dir, 'org.keys') }));
    for (const bad of ['a@example.org', 'example.com', '@example.com', '../x@example.com', '.hidden@example.com', 'a/b@example.com', 'a b@example.com']) {
      await assert.rejects(env.users.add(bad), isCode('USER_BAD_ADDRESS'), bad);
    }
  });

  it('corrupted, swapped or loosened files are typed errors', async () => {
    const env = await setup((dir) => ({ type: 'file', file: path.join(dir, 'org.keys') }));
    await env.users.add('lee@example.com', { password: PASSWORD });
    await env.users.add('max@example.com');
    const lee = userDir(env, 'lee');
    const sealed = path.join(lee, '1.sealed');
    const good = fs.readFileSync(sealed);
    const users = () => env.make(); // a fresh store: nothing cached
    for (const bad of [Buffer.from(good.map((b, i) => (i === good.length - 3 ? b ^ 1 : b))), good.subarray(0, 30), Buffer.alloc(0)]) {
      fs.writeFileSync(sealed, bad, { mode: 0o600 });
      await assert.rejects(users().unseal('lee@example.com'), isCode('SEALED_KEY_CORRUPT'));
    }
    // Max's sealed key copied over Lee's: the context binds it to its owner.
    fs.copyFileSync(path.join(userDir(env, 'max'), '1.sealed'), sealed);
    await assert.rejects(users().unseal('lee@example.com'), isCode('SEALED_KEY_CORRUPT'));
    fs.rmSync(sealed);
    await assert.rejects(users().unseal('lee@example.com'), isCode('SEALED_KEY_CORRUPT'));
    fs.writeFileSync(sealed, good, { mode: 0o600 });
    // The password seal: the password checks out, so a damaged file is the file's fault.
    const pw = path.join(lee, '1.1976');
    const goodPw = fs.readFileSync(pw);
    fs.writeFileSync(pw, Buffer.from(goodPw.map((b, i) => (i === 50 ? b ^ 1 : b))), { mode: 0o600 });
    await assert.rejects(users().unseal('lee@example.com', { password: PASSWORD }), isCode('SEALED_KEY_CORRUPT'));
    fs.writeFileSync(pw, goodPw, { mode: 0o600 });
    assert.ok(await users().unseal('lee@example.com', { password: PASSWORD }));
    const rec = path.join(lee, 'user.json');
    const goodRec = fs.readFileSync(rec);
    fs.chmodSync(rec, 0o644);
    await assert.rejects(users().unseal('lee@example.com'), isCode('KEYSTORE_INSECURE'));
    fs.chmodSync(rec, 0o600);
    for (const bad of ['{', '{"format":"dime-sidecar user","version":2}', '']) {
      fs.writeFileSync(rec, bad, { mode: 0o600 });
      await assert.rejects(users().unseal('lee@example.com'), isCode('KEYSTORE_CORRUPT'));
    }
    fs.writeFileSync(rec, goodRec, { mode: 0o600 });
  });

  it('a failure at any step leaves nothing behind (no record, no key files, no temporary files)', async () => {
    const env = await setup((dir) => ({ type: 'file', file: path.join(dir, 'org.keys') }));
    // Publishing fails: the record and the sealed files are removed again.
    const failing = new Proxy(env.signets, {
      get(target, prop, receiver) {
        if (prop === 'put') return async () => {
          throw new Error('disk full');
        };
        const v = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const users = env.make({ signets: failing });
    await assert.rejects(users.add('ned@example.com', { password: PASSWORD }), /disk full/);
    assert.deepEqual(fs.readdirSync(userDir(env, 'ned')), [], 'nothing half-written');
    await assert.rejects(users.unseal('ned@example.com'), isCode('USER_NOT_FOUND'));
    // Sealing fails (the keystore is closed): nothing is written at all.
    await env.users.add('oli@example.com');
    const broken = env.make({ keystore: new Proxy(env.keystore, { get: (t, p) => (p === 'wrap' ? async () => Promise.reject(new Error('HSM gone')) : Reflect.get(t, p)) }) });
    await assert.rejects(broken.add('pat@example.com'), /HSM gone/);
    assert.ok(!fs.existsSync(path.join(userDir(env, 'pat'), 'user.json')));
    // A rotation that collides with a file already there leaves generation 1 intact.
    fs.writeFileSync(path.join(userDir(env, 'oli'), '2.sealed'), 'in the way', { mode: 0o600 });
    await assert.rejects(env.users.rotate('oli@example.com'), isCode('USER_EXISTS'));
    assert.equal((await env.users.show('oli@example.com')).generation, 1);
    assert.ok((await env.users.show('oli@example.com')).published);
    assert.equal(fs.readFileSync(path.join(userDir(env, 'oli'), '2.sealed'), 'utf8'), 'in the way');
    for (const d of [userDir(env, 'ned'), userDir(env, 'oli')]) assert.deepEqual(leftovers(d), []);
  });
});
