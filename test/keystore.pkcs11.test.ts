/**
 * The PKCS#11 keystore against a real SoftHSM2 token initialised in a scratch directory
 * (SOFTHSM2_CONF points at a private configuration). Signatures are checked with node:crypto, the
 * keys' attributes are read back through graphene, and the token is taken away mid-run.
 */
import assert from 'node:assert/strict';
import * as nodeCrypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { Module, ObjectClass, SessionFlag, type Session } from 'graphene-pk11';
import type { KeystoreConfig } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { generateKeys } from '../src/dime/keys.js';
import { isDimeError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { SOK_PERMISSIONS, createKeystore, openKeystore, type OrgKeystore } from '../src/keystore/keystore.js';
import { createSoftHsmToken, softHsmAvailable, type SoftHsmToken } from '../src/keystore/softhsm.js';

const crypto = defaultCrypto();
const isCode = (code: string) => (e: unknown) => isDimeError(e) && e.code === code;
const skip = softHsmAvailable() ? false : 'SoftHSM2 (softhsm2-util, libsofthsm2.so) is not installed';

function capture(): { logger: ReturnType<typeof createLogger>; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return { logger: createLogger({ destination: stream, level: 'debug' }), text: () => chunks.join('') };
}

function nodeVerify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  const key = nodeCrypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicKey).toString('base64url') }, format: 'jwk' });
  return nodeCrypto.verify(null, message, key, signature);
}

let token: SoftHsmToken;
const cfg = (label: string, extra: Partial<KeystoreConfig> = {}): KeystoreConfig => ({ type: 'pkcs11', file: '/nonexistent', module: token.module, token: token.label, pinFile: token.pinFile, label, ...extra });

/**
 * A second handle on the same PKCS#11 library, as another part of the process (or an operator's
 * tool) would have: it shares the library's state, which is what lets the tests log out or
 * finalise underneath the keystore.
 */
function withInspector<T>(fn: (session: Session, module: Module) => T): T {
  const module = Module.load(token.module, 'inspector');
  module.initialize({ flags: 2 }); // already initialised by the keystore: graphene ignores that
  const slots = module.getSlots(true);
  let session: Session | undefined;
  for (let i = 0; i < slots.length; i++) if (slots.items(i).getToken().label.trim() === token.label) session = slots.items(i).open(SessionFlag.SERIAL_SESSION | SessionFlag.RW_SESSION);
  assert.ok(session, 'token found by label');
  try {
    session.login(token.pin);
  } catch (err) {
    assert.match((err as Error).message, /CKR_USER_ALREADY_LOGGED_IN/);
  }
  try {
    return fn(session, module);
  } finally {
    try {
      session.close();
    } catch {
      /* the test may have finalised the library */
    }
  }
}

describe('PKCS#11 keystore (SoftHSM2)', { skip }, () => {
  before(() => {
    token = createSoftHsmToken({ label: 'dime-test' });
    token.useIn();
  });
  after(() => token?.remove());

  it('generates the keys inside the token: sensitive, never extractable, values unreadable', async () => {
    const log = capture();
    const ks = await createKeystore(cfg('gen'), { crypto, logger: log.logger });
    try {
      assert.equal(ks.kind, 'pkcs11');
      assert.deepEqual(ks.poks.map((p) => p.label), ['pok/1']);
      assert.equal(ks.pok.publicKey.length, 32);
      assert.ok(crypto.secp256k1IsValidPublicKey(ks.encryptionPublicKey));
      withInspector((s) => {
        const labels: [ObjectClass, string][] = [
          [ObjectClass.PRIVATE_KEY, 'gen/pok/1'],
          [ObjectClass.PRIVATE_KEY, 'gen/enc'],
          [ObjectClass.SECRET_KEY, 'gen/wrap'],
        ];
        for (const [cls, label] of labels) {
          const found = s.find({ class: cls, label });
          assert.equal(found.length, 1, label);
          const obj = found.items(0);
          const a = obj.getAttribute({ sensitive: null, extractable: null, neverExtractable: null, alwaysSensitive: null, token: null });
          assert.deepEqual(a, { sensitive: true, extractable: false, neverExtractable: true, alwaysSensitive: true, token: true }, label);
          assert.throws(() => obj.getAttribute({ value: null }), /CKR_ATTRIBUTE_SENSITIVE/, `${label}: CKA_VALUE is not readable`);
        }
        // The public half carries the Ed25519 OID and the key we were told.
        const pub = s.find({ class: ObjectClass.PUBLIC_KEY, label: 'gen/pok/1' }).items(0);
        assert.equal(pub.getAttribute(0x180 /* CKA_EC_PARAMS */).toString('hex'), '06032b6570');
        assert.deepEqual(new Uint8Array((pub.getAttribute({ pointEC: null }) as { pointEC: Buffer }).pointEC.subarray(2)), ks.pok.publicKey);
      });
      await assert.rejects(createKeystore(cfg('gen'), { crypto, logger: log.logger }), isCode('KEYSTORE_EXISTS'));
      assert.ok(!log.text().includes(token.pin), 'the PIN never reaches the log');
    } finally {
      await ks.close();
    }
  });

  it('signs with CKM_EDDSA (verified by node:crypto) and derives with CKM_ECDH1_DERIVE what the other side computes', async () => {
    const ks = await openKeystore(cfg('gen'), { crypto, logger: capture().logger });
    try {
      await assert.rejects(ks.pok.sign(new Uint8Array(0)), isCode('CRYPTO_BAD_INPUT'), 'DIME never signs nothing; PKCS#11 refuses it');
      for (const len of [1, 64, 1000]) {
        const msg = crypto.randomBytes(len);
        const sig = await ks.pok.sign(msg);
        assert.ok(nodeVerify(ks.pok.publicKey, msg, sig), `${len}-byte message`);
        assert.ok(crypto.ed25519Verify(ks.pok.publicKey, msg, sig));
      }
      for (let i = 0; i < 5; i++) {
        const eph = generateKeys('user', crypto).encryptionKey;
        const shared = await ks.actorKeys.ecdh(crypto.secp256k1PublicKey(eph));
        assert.equal(shared.length, 32);
        assert.deepEqual(shared, crypto.secp256k1Ecdh(eph, ks.encryptionPublicKey), 'the x-coordinate, as the file keystore computes it');
      }
      await assert.rejects(ks.ecdh(new Uint8Array(33)), isCode('CRYPTO_BAD_KEY'));
      // Derived secrets are session objects; they must not accumulate.
      withInspector((s) => assert.equal(s.find({ class: ObjectClass.SECRET_KEY }).length, 1, 'only gen/wrap'));
    } finally {
      await ks.close();
    }
  });

  it('seals with AES-256-GCM in the token; a wrong context or a flipped byte is SEALED_KEY_CORRUPT and the token stays usable', async () => {
    const ks = await openKeystore(cfg('gen'), { crypto, logger: capture().logger });
    try {
      const secret = crypto.randomBytes(73);
      const blob = await ks.wrap(secret, 'user-key:a@example.com:1');
      assert.deepEqual(await ks.unwrap(blob, 'user-key:a@example.com:1'), secret);
      await assert.rejects(ks.unwrap(blob, 'user-key:b@example.com:1'), isCode('SEALED_KEY_CORRUPT'));
      const bad = blob.slice();
      bad[bad.length - 1]! ^= 1;
      await assert.rejects(ks.unwrap(bad, 'user-key:a@example.com:1'), isCode('SEALED_KEY_CORRUPT'));
      assert.deepEqual(await ks.unwrap(blob, 'user-key:a@example.com:1'), secret, 'still works');
    } finally {
      await ks.close();
    }
  });

  it('signs concurrently through 4 sessions (and queues with 1) without CKR_OPERATION_ACTIVE', async () => {
    for (const sessions of [4, 1]) {
      const ks = await openKeystore(cfg('gen'), { crypto, logger: capture().logger, sessions });
      try {
        const msgs = Array.from({ length: 64 }, () => crypto.randomBytes(64));
        const ephs = Array.from({ length: 8 }, () => generateKeys('user', crypto).encryptionKey);
        const [sigs, shared] = await Promise.all([Promise.all(msgs.map((m) => ks.pok.sign(m))), Promise.all(ephs.map((e) => ks.ecdh(crypto.secp256k1PublicKey(e))))]);
        sigs.forEach((s, i) => assert.ok(nodeVerify(ks.pok.publicKey, msgs[i]!, s), `signature ${i} with ${sessions} sessions`));
        shared.forEach((x, i) => assert.deepEqual(x, crypto.secp256k1Ecdh(ephs[i]!, ks.encryptionPublicKey)));
      } finally {
        await ks.close();
      }
    }
  });

  it('rotates the POK and adds SOKs inside the token; a reopen finds every generation', async () => {
    const ks = await createKeystore(cfg('rot'), { crypto, logger: capture().logger });
    const msg = crypto.randomBytes(32);
    const first = ks.pok;
    const oldSig = await first.sign(msg);
    const second = await ks.rotatePok();
    const sok = await ks.addSok(SOK_PERMISSIONS.signets | SOK_PERMISSIONS.messages);
    assert.deepEqual([second.label, sok.label, sok.permissions], ['pok/2', 'sok/1', 3]);
    assert.equal(ks.signerFor(SOK_PERMISSIONS.messages), ks.soks[0]);
    assert.ok(nodeVerify(sok.publicKey, msg, await sok.sign(msg)));
    await ks.close();
    const again: OrgKeystore = await openKeystore(cfg('rot'), { crypto, logger: capture().logger });
    try {
      assert.deepEqual(again.poks.map((p) => p.label), ['pok/1', 'pok/2']);
      assert.deepEqual(again.pok.publicKey, second.publicKey);
      assert.deepEqual(again.soks.map((s) => [s.label, s.permissions]), [['sok/1', 3]]);
      assert.ok(nodeVerify(first.publicKey, msg, oldSig));
      assert.ok(nodeVerify(first.publicKey, msg, await again.signer('pok/1').sign(msg)), 'the old POK is kept and still signs');
      withInspector((s) => assert.equal(s.find({ class: ObjectClass.PRIVATE_KEY, label: 'rot/sok/1/3' }).length, 1, 'permission bits in the label'));
    } finally {
      await again.close();
    }
  });

  it('typed errors: wrong PIN, missing module, unknown token, token without the keys, readable PIN file', async () => {
    const o = { crypto, logger: capture().logger };
    await assert.rejects(openKeystore(cfg('gen', { pinFile: undefined, pin: '9999' }), o), isCode('HSM_BAD_PIN'));
    await assert.rejects(openKeystore(cfg('gen', { module: '/nonexistent/libpkcs11.so' }), o), isCode('HSM_MODULE_NOT_FOUND'));
    const notPkcs11 = ['/usr/lib/x86_64-linux-gnu/libc.so.6', '/lib/x86_64-linux-gnu/libc.so.6', '/etc/hostname'].find((f) => fs.existsSync(f))!;
    await assert.rejects(openKeystore(cfg('gen', { module: notPkcs11 }), o), isCode('HSM_MODULE_NOT_FOUND'));
    await assert.rejects(openKeystore(cfg('gen', { token: 'no-such-token' }), o), isCode('HSM_TOKEN_NOT_FOUND'));
    await assert.rejects(openKeystore(cfg('empty'), o), (e: unknown) => isCode('HSM_KEY_NOT_FOUND')(e) && /empty\/pok\/1/.test((e as Error).message));
    const loose = path.join(token.dir, 'pin-loose');
    fs.writeFileSync(loose, `${token.pin}\n`, { mode: 0o644 });
    fs.chmodSync(loose, 0o644);
    await assert.rejects(openKeystore(cfg('gen', { pinFile: loose }), o), isCode('KEYSTORE_INSECURE'));
    // After all that the right PIN still works (nothing locked).
    await (await openKeystore(cfg('gen'), o)).close();
  });

  it('logs in again when the login is lost and re-initialises when the library is finalised underneath', async () => {
    const log = capture();
    const ks = await openKeystore(cfg('gen'), { crypto, logger: log.logger, reconnectBackoffMs: 0 });
    try {
      const msg = crypto.randomBytes(16);
      assert.ok(nodeVerify(ks.pok.publicKey, msg, await ks.pok.sign(msg)));
      withInspector((s) => s.logout()); // logs out every session of the application
      assert.ok(nodeVerify(ks.pok.publicKey, msg, await ks.pok.sign(msg)), 'signed after logging in again');
      withInspector((_s, module) => module.finalize());
      assert.ok(nodeVerify(ks.pok.publicKey, msg, await ks.pok.sign(msg)), 'signed after re-initialising');
      assert.match(log.text(), /reconnected/);
    } finally {
      await ks.close();
    }
  });

  it('a PIN changed under the running keystore: HSM_UNAVAILABLE, and no further login attempts', async () => {
    const ks = await openKeystore(cfg('gen'), { crypto, logger: capture().logger, reconnectBackoffMs: 0 });
    try {
      const msg = crypto.randomBytes(16);
      assert.ok(nodeVerify(ks.pok.publicKey, msg, await ks.pok.sign(msg)));
      withInspector((s) => {
        s.setPin(token.pin, '4321');
        s.logout();
      });
      await assert.rejects(ks.pok.sign(msg), isCode('HSM_UNAVAILABLE'));
      await assert.rejects(ks.pok.sign(msg), (e: unknown) => isCode('HSM_UNAVAILABLE')(e) && /refused the PIN/.test((e as Error).message));
    } finally {
      await ks.close();
      const module = Module.load(token.module, 'restore');
      module.initialize({ flags: 2 });
      const slots = module.getSlots(true);
      for (let i = 0; i < slots.length; i++) {
        if (slots.items(i).getToken().label.trim() !== token.label) continue;
        const s = slots.items(i).open(SessionFlag.SERIAL_SESSION | SessionFlag.RW_SESSION);
        s.login('4321');
        s.setPin('4321', token.pin);
        s.logout();
        s.close();
      }
      module.finalize();
    }
    await (await openKeystore(cfg('gen'), { crypto, logger: capture().logger })).close();
  });

  it('token removed mid-run: HSM_UNAVAILABLE (fast while it is gone), then recovery when it is back', async () => {
    const log = capture();
    const ks = await openKeystore(cfg('gen'), { crypto, logger: log.logger, reconnectBackoffMs: 200 });
    const [tokenSub] = fs.readdirSync(token.tokenDir);
    const live = path.join(token.tokenDir, tokenSub!);
    const aside = path.join(token.dir, 'removed-token');
    try {
      const msg = crypto.randomBytes(16);
      const pok = ks.pok.publicKey;
      assert.ok(nodeVerify(pok, msg, await ks.pok.sign(msg)));
      // Signatures in flight while the token disappears: each one is valid or HSM_UNAVAILABLE, none crashes.
      const inFlight = Array.from({ length: 16 }, () => ks.pok.sign(msg));
      fs.renameSync(live, aside);
      for (const r of await Promise.allSettled(inFlight)) {
        if (r.status === 'fulfilled') assert.ok(nodeVerify(pok, msg, r.value));
        else assert.ok(isDimeError(r.reason, 'HSM_UNAVAILABLE'), String(r.reason));
      }
      await assert.rejects(ks.pok.sign(msg), isCode('HSM_UNAVAILABLE'));
      await assert.rejects(ks.ecdh(crypto.secp256k1PublicKey(generateKeys('user', crypto).encryptionKey)), isCode('HSM_UNAVAILABLE'));
      const t0 = Date.now();
      await assert.rejects(ks.pok.sign(msg), (e: unknown) => isCode('HSM_UNAVAILABLE')(e) && /next try/.test((e as Error).message), 'fails fast within the backoff');
      assert.ok(Date.now() - t0 < 100);
      fs.renameSync(aside, live);
      await new Promise((r) => setTimeout(r, 250));
      assert.ok(nodeVerify(pok, msg, await ks.pok.sign(msg)), 'the same POK signs again after the token is back');
      assert.match(log.text(), /unavailable/);
      assert.match(log.text(), /reconnected/);
    } finally {
      if (fs.existsSync(aside)) fs.renameSync(aside, live);
      await ks.close();
    }
  });
});

describe('CKA_EC_POINT decoding', () => {
  it('takes the point out of a DER OCTET STRING, or bare, by the expected length (no guessing from the first bytes)', async () => {
    const { compressSecp256k1Point, ecPointContent } = await import('../src/keystore/keystore.js');
    for (let i = 0; i < 300; i++) {
      const priv = generateKeys('user', crypto).encryptionKey;
      const compressed = crypto.secp256k1PublicKey(priv);
      const ecdh = nodeCrypto.createECDH('secp256k1');
      ecdh.setPrivateKey(priv);
      const uncompressed = new Uint8Array(ecdh.getPublicKey());
      // Force the ambiguous case now and then: a bare point whose second byte equals length − 2.
      assert.deepEqual(compressSecp256k1Point(uncompressed), compressed, 'bare');
      assert.deepEqual(compressSecp256k1Point(new Uint8Array([0x04, 0x41, ...uncompressed])), compressed, 'DER');
      assert.deepEqual(compressSecp256k1Point(compressed), compressed, 'already compressed');
    }
    const ambiguous = new Uint8Array(65);
    ambiguous[0] = 0x04;
    ambiguous[1] = 63;
    assert.equal(ecPointContent(ambiguous, [65, 33]).length, 65);
    const ed = crypto.randomBytes(32);
    assert.deepEqual(ecPointContent(new Uint8Array([0x04, 0x20, ...ed]), [32]), ed);
    assert.deepEqual(ecPointContent(ed, [32]), ed);
    assert.throws(() => ecPointContent(new Uint8Array(40), [32]), isCode('KEYSTORE_CORRUPT'));
  });
});
