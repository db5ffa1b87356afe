/** The file keystore: real files in a scratch directory, keys checked with node:crypto. */
import assert from 'node:assert/strict';
import * as nodeCrypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import type { KeystoreConfig } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { armorKeys, dearmorKeys, generateKeys } from '../src/dime/keys.js';
import { isDimeError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { ringFile, wrapFile } from '../src/keystore/file.js';
import { SOK_PERMISSIONS, createKeystore, openKeystore, parsePermissions, type OrgKeystore } from '../src/keystore/keystore.js';
import { scratchDir } from './helpers/cli.js';

const crypto = defaultCrypto();
const isCode = (code: string) => (e: unknown) => isDimeError(e) && e.code === code;

function capture(): { logger: ReturnType<typeof createLogger>; lines: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return { logger: createLogger({ destination: stream, level: 'debug' }), lines: () => chunks.join('') };
}

/** Verify with node:crypto directly (raw key imported as JWK), not through our backend. */
function nodeVerify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  const key = nodeCrypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicKey).toString('base64url') }, format: 'jwk' });
  return nodeCrypto.verify(null, message, key, signature);
}

function config(dir: string): KeystoreConfig {
  return { type: 'file', file: path.join(dir, 'org.keys') };
}

const mode = (f: string) => fs.statSync(f).mode & 0o777;
const noTempFiles = (dir: string) => assert.deepEqual(fs.readdirSync(dir).filter((n) => n.endsWith('.tmp')), [], 'no temporary files left');

describe('file keystore', () => {
  it('creates a libdime keys file and its companions, mode 0600, and warns that it is not an HSM', async () => {
    const dir = scratchDir();
    const c = config(dir);
    const log = capture();
    const ks = await createKeystore(c, { crypto, logger: log.logger });
    for (const f of [c.file, ringFile(c.file), wrapFile(c.file)]) assert.equal(mode(f), 0o600, f);
    assert.match(log.lines(), /not an HSM/);
    assert.doesNotMatch(log.lines(), /seed|"key"/i, 'no key material in the log');
    const keys = dearmorKeys(fs.readFileSync(c.file, 'latin1'));
    assert.equal(keys.type, 'org');
    assert.equal(keys.dialect, 'libdime');
    assert.deepEqual(ks.pok.publicKey, crypto.ed25519PublicKey(keys.signingKey));
    assert.deepEqual(ks.encryptionPublicKey, crypto.secp256k1PublicKey(keys.encryptionKey));
    assert.equal(ks.kind, 'file');
    assert.deepEqual(ks.poks.map((p) => p.label), ['pok/1']);
    await ks.close();
    await assert.rejects(createKeystore(c, { crypto, logger: log.logger }), isCode('KEYSTORE_EXISTS'));
    noTempFiles(dir);
  });

  it('signs with the POK (verified by node:crypto) and does ECDH equal to the keys file computation', async () => {
    const dir = scratchDir();
    const c = config(dir);
    const ks = await createKeystore(c, { crypto, logger: capture().logger });
    const keys = dearmorKeys(fs.readFileSync(c.file, 'latin1'));
    const msg = crypto.randomBytes(100);
    assert.ok(nodeVerify(ks.pok.publicKey, msg, await ks.pok.sign(msg)));
    const eph = generateKeys('user', crypto).encryptionKey;
    const ephPub = crypto.secp256k1PublicKey(eph);
    const viaKeystore = await ks.ecdh(ephPub);
    assert.deepEqual(viaKeystore, crypto.secp256k1Ecdh(keys.encryptionKey, ephPub));
    assert.deepEqual(viaKeystore, crypto.secp256k1Ecdh(eph, ks.encryptionPublicKey), 'both sides agree');
    assert.deepEqual(await ks.actorKeys.ecdh(ephPub), viaKeystore, 'ActorKeys for the relay and the milter');
    await assert.rejects(ks.ecdh(new Uint8Array(33)), isCode('CRYPTO_BAD_KEY'));
    await ks.close();
    await assert.rejects(ks.pok.sign(msg), isCode('HSM_UNAVAILABLE'), 'closed');
  });

  it('refuses group- or world-readable key files with a clear error', async () => {
    const dir = scratchDir();
    const c = config(dir);
    await (await createKeystore(c, { crypto, logger: capture().logger })).close();
    for (const f of [c.file, ringFile(c.file), wrapFile(c.file)]) {
      for (const m of [0o640, 0o604]) {
        fs.chmodSync(f, m);
        await assert.rejects(openKeystore(c, { crypto, logger: capture().logger }), (e: unknown) => isCode('KEYSTORE_INSECURE')(e) && (e as Error).message.includes(`chmod 600 ${f}`), `${f} ${m.toString(8)}`);
      }
      fs.chmodSync(f, 0o600);
    }
    await (await openKeystore(c, { crypto, logger: capture().logger })).close();
  });

  it('wraps and unwraps under the wrapping key; another context, a flipped byte or a truncation is SEALED_KEY_CORRUPT', async () => {
    const dir = scratchDir();
    const ks = await createKeystore(config(dir), { crypto, logger: capture().logger });
    const secret = crypto.randomBytes(73);
    const blob = await ks.wrap(secret, 'user-key:a@example.com:1');
    assert.ok(!Buffer.from(blob).includes(Buffer.from(secret)), 'ciphertext, not the secret');
    assert.deepEqual(await ks.unwrap(blob, 'user-key:a@example.com:1'), secret);
    await assert.rejects(ks.unwrap(blob, 'user-key:b@example.com:1'), isCode('SEALED_KEY_CORRUPT'));
    for (let i = 0; i < blob.length; i++) {
      const bad = blob.slice();
      bad[i]! ^= 1;
      await assert.rejects(ks.unwrap(bad, 'user-key:a@example.com:1'), (e: unknown) => isCode('SEALED_KEY_CORRUPT')(e) || isCode('HSM_KEY_NOT_FOUND')(e), `byte ${i}`);
    }
    for (const n of [0, 4, 10, 30, blob.length - 1]) await assert.rejects(ks.unwrap(blob.subarray(0, n), 'user-key:a@example.com:1'), isCode('SEALED_KEY_CORRUPT'), `length ${n}`);
    await ks.close();
  });

  it('rotates the POK (old ones kept and usable), adds SOKs, and reopens with all of them', async () => {
    const dir = scratchDir();
    const c = config(dir);
    const ks: OrgKeystore = await createKeystore(c, { crypto, logger: capture().logger });
    const first = ks.pok;
    const msg = crypto.randomBytes(32);
    const oldSig = await first.sign(msg);
    const second = await ks.rotatePok();
    assert.equal(second.label, 'pok/2');
    assert.deepEqual(ks.poks.map((p) => p.label), ['pok/1', 'pok/2']);
    assert.equal(ks.pok, second);
    assert.deepEqual(dearmorKeys(fs.readFileSync(c.file, 'latin1')).signingKey.length, 32);
    assert.deepEqual(crypto.ed25519PublicKey(dearmorKeys(fs.readFileSync(c.file, 'latin1')).signingKey), second.publicKey, 'the keys file holds the current POK');
    const sok = await ks.addSok(parsePermissions('signets,messages'));
    assert.equal(sok.label, 'sok/1');
    assert.equal(sok.permissions, SOK_PERMISSIONS.signets | SOK_PERMISSIONS.messages);
    assert.equal(ks.signerFor(SOK_PERMISSIONS.signets).label, 'sok/1');
    assert.equal(ks.signerFor(SOK_PERMISSIONS.tls).label, 'pok/2', 'no SOK may sign TLS pins: the POK does');
    await assert.rejects(ks.addSok(0x100), isCode('USAGE'));
    assert.throws(() => ks.signer('pok/9'), isCode('HSM_KEY_NOT_FOUND'));
    await ks.close();
    const again = await openKeystore(c, { crypto, logger: capture().logger });
    assert.deepEqual(again.poks.map((p) => p.label), ['pok/1', 'pok/2']);
    assert.deepEqual(again.soks.map((p) => [p.label, p.permissions]), [['sok/1', 3]]);
    assert.deepEqual(again.signer('pok/1').publicKey, first.publicKey);
    assert.ok(nodeVerify(first.publicKey, msg, oldSig), 'old signatures still verify');
    assert.ok(nodeVerify(first.publicKey, msg, await again.signer('pok/1').sign(msg)), 'the old POK still signs');
    noTempFiles(dir);
    await again.close();
  });

  it('finishes an interrupted rotation and refuses a keys file that does not belong to its ring', async () => {
    const dir = scratchDir();
    const c = config(dir);
    const ks = await createKeystore(c, { crypto, logger: capture().logger });
    const before = fs.readFileSync(c.file);
    const p2 = await ks.rotatePok();
    await ks.close();
    // Crash after the ring was written, before the keys file: the keys file still has pok/1.
    fs.writeFileSync(c.file, before, { mode: 0o600 });
    const log = capture();
    const reopened = await openKeystore(c, { crypto, logger: log.logger });
    assert.deepEqual(reopened.pok.publicKey, p2.publicKey);
    assert.match(log.lines(), /interrupted POK rotation/);
    assert.deepEqual(crypto.ed25519PublicKey(dearmorKeys(fs.readFileSync(c.file, 'latin1')).signingKey), p2.publicKey);
    await reopened.close();
    // A foreign keys file next to the ring.
    const foreign = generateKeys('org', crypto);
    fs.writeFileSync(c.file, armorKeys(foreign), { mode: 0o600 });
    await assert.rejects(openKeystore(c, { crypto, logger: capture().logger }), isCode('KEYSTORE_CORRUPT'));
  });

  it('opens a keys file made by `dime keys generate` (pok/1, no ring) and creates the wrapping key on first use', async () => {
    const dir = scratchDir();
    const c = config(dir);
    const keys = generateKeys('org', crypto);
    fs.writeFileSync(c.file, armorKeys(keys), { mode: 0o600 });
    const ks = await openKeystore(c, { crypto, logger: capture().logger });
    assert.deepEqual(ks.pok.publicKey, crypto.ed25519PublicKey(keys.signingKey));
    assert.ok(!fs.existsSync(wrapFile(c.file)));
    const blob = await ks.wrap(Uint8Array.of(1, 2, 3), 'x');
    assert.equal(mode(wrapFile(c.file)), 0o600);
    assert.deepEqual(await ks.unwrap(blob, 'x'), Uint8Array.of(1, 2, 3));
    await ks.close();
  });

  it('typed errors for a missing file, user keys, damaged companions', async () => {
    const dir = scratchDir();
    const c = config(dir);
    await assert.rejects(openKeystore(c, { crypto, logger: capture().logger }), isCode('HSM_KEY_NOT_FOUND'));
    fs.writeFileSync(c.file, armorKeys(generateKeys('user', crypto)), { mode: 0o600 });
    await assert.rejects(openKeystore(c, { crypto, logger: capture().logger }), isCode('HSM_KEY_NOT_FOUND'));
    fs.writeFileSync(c.file, 'not a keys file', { mode: 0o600 });
    await assert.rejects(openKeystore(c, { crypto, logger: capture().logger }), isCode('KEYSTORE_CORRUPT'));
    fs.rmSync(c.file);
    await (await createKeystore(c, { crypto, logger: capture().logger })).close();
    const ring = fs.readFileSync(ringFile(c.file), 'utf8');
    for (const bad of ['{', '{"format":"x","version":1}', ring.replace(/"seed": "[^"]+"/, '"seed": "AAAA"'), ring.replace('"pok/1"', '"pok/x"')]) {
      fs.writeFileSync(ringFile(c.file), bad, { mode: 0o600 });
      await assert.rejects(openKeystore(c, { crypto, logger: capture().logger }), isCode('KEYSTORE_CORRUPT'), bad.slice(0, 40));
    }
    fs.writeFileSync(ringFile(c.file), ring, { mode: 0o600 });
    fs.writeFileSync(wrapFile(c.file), '{"format":"dime-sidecar wrapping key","version":1,"label":"wrap","key":"AAAA"}', { mode: 0o600 });
    await assert.rejects(openKeystore(c, { crypto, logger: capture().logger }), isCode('KEYSTORE_CORRUPT'));
  });
});
