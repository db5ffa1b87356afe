/**
 * `dime init`, `dime user …` and `dime keys rotate|add-sok` as a sysadmin runs them (bin/dime in a
 * child process), with a file keystore and with a SoftHSM2 token. What they publish is checked
 * with the library: the record parses, its tls= pin verifies against the certificate, signets
 * validate (custody included), and signatures made before a rotation still verify after it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as nodeCrypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { certificateDer, parseRecord, verifyTlsPin, type DimeRecord } from '../src/dime/record.js';
import { dearmorSignet, secondaryKeysOf, signingKeyOf, validateSignet, type Signet } from '../src/dime/signet/index.js';
import { createLogger } from '../src/log.js';
import { openKeystore } from '../src/keystore/keystore.js';
import { dataLayout } from '../src/keystore/layout.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { createSoftHsmToken, softHsmAvailable, type SoftHsmToken } from '../src/keystore/softhsm.js';
import { dime, oneJsonObject, scratchDir } from './helpers/cli.js';

const crypto = defaultCrypto();
const quiet = () => createLogger({ destination: new Writable({ write: (_c, _e, cb) => cb() }) });
const root = scratchDir();
let n = 0;
const fresh = () => fs.mkdtempSync(path.join(root, `case${++n}-`));

function ok(r: { status: number | null; stdout: string; stderr: string }, what: string): void {
  assert.equal(r.status, 0, `${what}: ${r.stderr}`);
}

function recordOf(json: { record: string; zone: string }): DimeRecord {
  const record = parseRecord(json.record);
  assert.deepEqual(parseRecord(json.zone.replace(/^\S+ \d+ IN TXT /, '')), record, 'the zone line carries the same record');
  return record;
}

const signetsOf = (dir: string) => new FileSignetStore(dataLayout(dir).signets, crypto);
const writeSecret = (file: string, text: string) => fs.writeFileSync(file, `${text}\n`, { mode: 0o600 });

describe('dime init (file keystore)', () => {
  it('bootstraps keys, signet, TLS certificate, config, and prints a record whose tls= pin verifies', async () => {
    const dir = fresh();
    const r = dime(['init', '--domain', 'Example.COM', '--dir', dir, '--dx', 'dx.example.com', '--json']);
    ok(r, 'init');
    const out = oneJsonObject(r.stdout);
    assert.equal(out.domain, 'example.com');
    assert.equal(out.keystore, 'file');
    const config = loadConfig(out.config, {});
    assert.equal(config.domain, 'example.com');
    assert.equal(config.dataDir, dir);
    assert.equal(config.keystore.type, 'file');
    assert.equal(config.relay.tlsCert, path.join(dir, 'tls', 'relay.crt'));
    assert.equal(fs.statSync(config.keystore.file).mode & 0o777, 0o600);
    assert.equal(fs.statSync(config.relay.tlsKey!).mode & 0o777, 0o600);
    const cert = new nodeCrypto.X509Certificate(fs.readFileSync(config.relay.tlsCert!));
    assert.equal(cert.publicKey.asymmetricKeyType, 'rsa', 'libdime clients need RSA');
    assert.match(cert.subject, /CN=dx\.example\.com/);
    assert.ok(cert.checkPrivateKey(nodeCrypto.createPrivateKey(fs.readFileSync(config.relay.tlsKey!))));
    const record = recordOf(out);
    assert.deepEqual(record.dx, ['dx.example.com']);
    assert.equal(record.poks.length, 1);
    assert.equal(Buffer.from(record.poks[0]!).toString('base64').replace(/=+$/, ''), out.pok);
    const pin = verifyTlsPin(record, certificateDer(fs.readFileSync(config.relay.tlsCert!, 'latin1')), crypto);
    assert.ok(pin, 'the tls= pin verifies against the generated certificate');
    const org = (await signetsOf(dir).org('example.com'))!;
    assert.equal(validateSignet(crypto, org, { poks: record.poks }).state, 'id');
    // Again: refused, nothing changed.
    const again = dime(['init', '--domain', 'example.com', '--dir', dir]);
    assert.equal(again.status, 2);
    assert.match(again.stderr, /FILE_EXISTS/);
  });

  it('takes a given certificate (checked against its key) and leaves nothing behind when a step fails', () => {
    const dir = fresh();
    const certDir = fresh();
    const mk = (name: string) => {
      const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', path.join(certDir, `${name}.key`), '-out', path.join(certDir, `${name}.crt`)], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
    };
    mk('a');
    mk('b');
    const bad = dime(['init', '--domain', 'example.net', '--dir', dir, '--tls-cert', path.join(certDir, 'a.crt'), '--tls-key', path.join(certDir, 'b.key')]);
    assert.equal(bad.status, 1, bad.stderr);
    assert.match(bad.stderr, /TLS_BAD_CERTIFICATE/);
    assert.deepEqual(fs.readdirSync(dir), [], 'nothing half-written');
    assert.equal(dime(['init', '--domain', 'example.net', '--dir', dir, '--tls-cert', path.join(certDir, 'a.crt')]).status, 2, '--tls-key is required with --tls-cert');
    const good = dime(['init', '--domain', 'example.net', '--dir', dir, '--tls-cert', path.join(certDir, 'a.crt'), '--tls-key', path.join(certDir, 'a.key'), '--json']);
    ok(good, 'init with a given certificate');
    const out = oneJsonObject(good.stdout);
    assert.equal(out.tls.selfSigned, false);
    assert.ok(verifyTlsPin(recordOf(out), certificateDer(fs.readFileSync(path.join(certDir, 'a.crt'), 'latin1')), crypto));
    assert.ok(!fs.existsSync(path.join(dir, 'tls')), 'no certificate made');
  });

  it('undoes every step when the last one (the configuration file) fails', () => {
    const dir = fresh();
    const r = dime(['init', '--domain', 'example.net', '--dir', dir, '--config', '/dev/null/dime.toml']);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /FILE_WRITE_FAILED/);
    assert.deepEqual(fs.readdirSync(dir), [], 'keys, signet and certificate removed again');
  });
});

describe('dime user and dime keys rotate (file keystore)', () => {
  const dir = fresh();
  const env = () => ({ DIME_CONFIG: path.join(dir, 'dime.toml') });
  const pw = path.join(dir, '..', `pw-${n}`);
  let initRecord: DimeRecord;
  let oldUser: Signet;
  const oldMessage = crypto.randomBytes(64);
  let oldSignature: Uint8Array;

  before(() => {
    const r = dime(['init', '--domain', 'example.org', '--dir', dir, '--json']);
    ok(r, 'init');
    initRecord = recordOf(oneJsonObject(r.stdout));
    writeSecret(pw, 'correct horse battery staple');
  });

  it('add (trustful with a password, cautious, paranoid), list, show', async () => {
    const a = dime(['user', 'add', 'alice@example.org', '--password-file', pw, '--json'], { env: env() });
    ok(a, 'add alice');
    assert.deepEqual(
      (({ mode, generation, escrow, passwordSealed, published }) => ({ mode, generation, escrow, passwordSealed, published }))(oneJsonObject(a.stdout)),
      { mode: 'trustful', generation: 1, escrow: true, passwordSealed: true, published: true },
    );
    // Cautious: the user's own keys, request and encrypted key, made with the CLI as a client would.
    const keys = path.join(dir, '..', `carol-${n}.keys`);
    const ssr = path.join(dir, '..', `carol-${n}.ssr`);
    const blob = path.join(dir, '..', `carol-${n}.blob`);
    ok(dime(['keys', 'generate', '--user', 'carol@example.org', '--out', keys]), 'carol keys');
    ok(dime(['signet', 'request', '--keys', keys, '--out', ssr]), 'carol request');
    fs.writeFileSync(blob, nodeCrypto.randomBytes(118));
    ok(dime(['user', 'add', 'carol@example.org', '--mode', 'cautious', '--request', ssr, '--encrypted-key', blob], { env: env() }), 'add carol');
    ok(dime(['user', 'add', 'dave@example.org', '--mode', 'paranoid', '--request', ssr], { env: env() }), 'add dave (same keys, a test shortcut)');
    const list = dime(['user', 'list', '--json'], { env: env() });
    ok(list, 'list');
    const rows = list.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(rows.map((u) => [u.address, u.mode, u.published]), [
      ['alice@example.org', 'trustful', true],
      ['carol@example.org', 'cautious', true],
      ['dave@example.org', 'paranoid', true],
    ]);
    const show = dime(['user', 'show', 'carol@example.org'], { env: env() });
    ok(show, 'show');
    assert.match(show.stdout, /cautious \(own encrypted key stored, never opened\)/);
    const signet = dearmorSignet(show.stdout.slice(show.stdout.indexOf('-----BEGIN')));
    const org = (await signetsOf(dir).org('example.org'))!;
    assert.equal(validateSignet(crypto, signet, { org }).state, 'id');
    const missing = dime(['user', 'show', 'nobody@example.org'], { env: env() });
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /USER_NOT_FOUND/);
    const foreign = dime(['user', 'add', 'x@example.com'], { env: env() });
    assert.match(foreign.stderr, /USER_BAD_ADDRESS/);
    oldUser = (await signetsOf(dir).user('alice@example.org'))!;
  });

  it('rotate: new keys with custody verified against the previous signet; remove withdraws', async () => {
    const noPw = dime(['user', 'rotate', 'alice@example.org'], { env: env() });
    assert.equal(noPw.status, 2, 'the password seal needs the password');
    ok(dime(['user', 'rotate', 'alice@example.org', '--password-file', pw], { env: env() }), 'rotate alice');
    const history = await signetsOf(dir).userHistory('alice@example.org');
    assert.equal(history.length, 2);
    const org = (await signetsOf(dir).org('example.org'))!;
    assert.equal(validateSignet(crypto, history[1]!, { org, previous: history[0]! }).state, 'id', 'chain of custody');
    ok(dime(['user', 'remove', 'dave@example.org'], { env: env() }), 'remove dave');
    assert.equal(await signetsOf(dir).user('dave@example.org'), undefined);
    const list = dime(['user', 'list', '--json'], { env: env() }).stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(list.find((u) => u.address === 'dave@example.org').removed);
  });

  it('keys rotate: both pok= values printed, old signatures (signets, tls= pin, messages) still verify', async () => {
    // A signature by the old POK, made through the keystore before the rotation (as on old mail).
    {
      const ks = await openKeystore(loadConfig(env().DIME_CONFIG, {}).keystore, { crypto, logger: quiet() });
      oldSignature = await ks.pok.sign(oldMessage);
      await ks.close();
    }
    const oldOrg = (await signetsOf(dir).org('example.org'))!;
    const r = dime(['keys', 'rotate', '--json'], { env: env() });
    ok(r, 'keys rotate');
    const out = oneJsonObject(r.stdout);
    assert.deepEqual(out.poks, ['pok/1', 'pok/2']);
    const record = recordOf(out);
    assert.equal(record.poks.length, 2, 'both pok= values');
    assert.deepEqual(record.poks[1], initRecord.poks[0], 'the previous POK stays in the record');
    assert.deepEqual(record.poks[0], signingKeyOf((await signetsOf(dir).org('example.org'))!), 'the new POK signs the re-issued org signet');
    const cert = certificateDer(fs.readFileSync(path.join(dir, 'tls', 'relay.crt'), 'latin1'));
    assert.ok(verifyTlsPin(record, cert, crypto), 'the new tls= pin');
    assert.ok(verifyTlsPin({ poks: record.poks, tls: initRecord.tls }, cert, crypto), 'the tls= pin published before still verifies under the new record');
    // Old org signet (history) and every signet it signed remain valid under the new record.
    const orgs = await signetsOf(dir).orgHistory('example.org');
    assert.equal(orgs.length, 2);
    assert.deepEqual(orgs[0]!.bytes, oldOrg.bytes);
    for (const o of orgs) assert.equal(validateSignet(crypto, o, { poks: record.poks }).state, 'id');
    const newOrg = orgs[1]!;
    assert.deepEqual(secondaryKeysOf(newOrg).map((k) => k.permissions), [1], 'the previous POK listed with the signets permission');
    assert.equal(validateSignet(crypto, oldUser, { org: newOrg }).state, 'id', 'a user signet signed by the old POK is valid under the new org signet');
    assert.equal(validateSignet(crypto, (await signetsOf(dir).user('carol@example.org'))!, { org: newOrg }).state, 'id');
    assert.ok(crypto.ed25519Verify(signingKeyOf(oldOrg)!, oldMessage, oldSignature) && record.poks.some((p) => Buffer.from(p).equals(Buffer.from(signingKeyOf(oldOrg)!))), 'old mail: signed by a POK still in the record');
    // New users are signed by the new POK.
    ok(dime(['user', 'add', 'erin@example.org'], { env: env() }), 'add erin after the rotation');
    const erin = (await signetsOf(dir).user('erin@example.org'))!;
    assert.equal(validateSignet(crypto, erin, { org: newOrg }).state, 'id');
    assert.equal(validateSignet(crypto, erin, { org: oldOrg }).state, 'invalid', 'not signed by the old POK');
    // The old POK is still in the keystore.
    const ks = await openKeystore(loadConfig(env().DIME_CONFIG, {}).keystore, { crypto, logger: quiet() });
    assert.deepEqual(ks.signer('pok/1').publicKey, signingKeyOf(oldOrg));
    await ks.close();
  });

  it('keys add-sok: the SOK signs new user signets and is listed with its permissions', async () => {
    const r = dime(['keys', 'add-sok', 'signets,messages', '--json'], { env: env() });
    ok(r, 'add-sok');
    assert.deepEqual(oneJsonObject(r.stdout).permissions, ['signets', 'messages']);
    const org = (await signetsOf(dir).org('example.org'))!;
    assert.deepEqual(secondaryKeysOf(org).map((k) => k.permissions), [3, 1]);
    ok(dime(['user', 'add', 'finn@example.org'], { env: env() }), 'add finn');
    assert.equal(validateSignet(crypto, (await signetsOf(dir).user('finn@example.org'))!, { org }).state, 'id');
    const now = dime(['keys', 'record', '--json'], { env: env() });
    ok(now, 'keys record');
    const rec = recordOf(oneJsonObject(now.stdout));
    assert.deepEqual(rec.poks, parseRecord(oneJsonObject(dime(['keys', 'record', '--json'], { env: env() }).stdout).record).poks);
    assert.equal(rec.poks.length, 2);
    assert.ok(verifyTlsPin(rec, certificateDer(fs.readFileSync(path.join(dir, 'tls', 'relay.crt'), 'latin1')), crypto));
    assert.equal(dime(['keys', 'add-sok', 'none'], { env: env() }).status, 2);
    assert.equal(dime(['keys', 'add-sok', 'everything'], { env: env() }).status, 2);
  });
});

describe('dime init with a SoftHSM2 token', { skip: softHsmAvailable() ? false : 'SoftHSM2 is not installed' }, () => {
  let token: SoftHsmToken;
  before(() => {
    token = createSoftHsmToken({ label: 'dime-cli' });
  });
  after(() => token?.remove());

  it('generates the keys in the token; users and rotation work through it', async () => {
    const dir = fresh();
    const env = { ...token.env, DIME_CONFIG: path.join(dir, 'dime.toml') };
    const hsmArgs = ['--hsm-module', token.module, '--hsm-token', token.label, '--hsm-pin-file', token.pinFile];
    // A failed init destroys the keys it generated in the token: the next init can use the labels.
    const failed = dime(['init', '--domain', 'hsm.example', '--dir', fresh(), ...hsmArgs, '--config', '/dev/null/dime.toml'], { env: token.env });
    assert.match(failed.stderr, /FILE_WRITE_FAILED/);
    const r = dime(['init', '--domain', 'hsm.example', '--dir', dir, ...hsmArgs, '--json'], { env: token.env });
    ok(r, 'init with the HSM');
    const out = oneJsonObject(r.stdout);
    assert.equal(out.keystore, 'pkcs11');
    assert.ok(!fs.existsSync(path.join(dir, 'org.keys')), 'no key on disk');
    const config = loadConfig(env.DIME_CONFIG, {});
    assert.deepEqual([config.keystore.type, config.keystore.module, config.keystore.token, config.keystore.pinFile], ['pkcs11', token.module, token.label, token.pinFile]);
    assert.ok(!fs.readFileSync(env.DIME_CONFIG, 'utf8').includes(token.pin), 'the PIN is not in the configuration');
    const record = recordOf(out);
    assert.ok(verifyTlsPin(record, certificateDer(fs.readFileSync(config.relay.tlsCert!, 'latin1')), crypto));
    ok(dime(['user', 'add', 'ann@hsm.example'], { env }), 'add through the HSM');
    const org = (await signetsOf(dir).org('hsm.example'))!;
    assert.equal(validateSignet(crypto, (await signetsOf(dir).user('ann@hsm.example'))!, { org }).state, 'id');
    ok(dime(['user', 'rotate', 'ann@hsm.example'], { env }), 'rotate (the old key opened through escrow in the HSM)');
    const h = await signetsOf(dir).userHistory('ann@hsm.example');
    assert.equal(validateSignet(crypto, h[1]!, { org, previous: h[0]! }).state, 'id');
    const rot = dime(['keys', 'rotate', '--json'], { env });
    ok(rot, 'keys rotate in the HSM');
    assert.equal(recordOf(oneJsonObject(rot.stdout)).poks.length, 2);
    const wrongPin = path.join(dir, 'wrong-pin');
    writeSecret(wrongPin, '9999');
    const badInit = dime(['init', '--domain', 'other.example', '--dir', fresh(), '--hsm-module', token.module, '--hsm-token', token.label, '--hsm-pin-file', wrongPin], { env: token.env });
    assert.equal(badInit.status, 1);
    assert.match(badInit.stderr, /HSM_BAD_PIN/);
    const noModule = dime(['init', '--domain', 'other.example', '--dir', fresh(), '--hsm-module', '/nonexistent.so', '--hsm-token', token.label, '--hsm-pin-file', token.pinFile], { env: token.env });
    assert.match(noModule.stderr, /HSM_MODULE_NOT_FOUND/);
    const again = dime(['init', '--domain', 'other.example', '--dir', fresh(), '--hsm-module', token.module, '--hsm-token', token.label, '--hsm-pin-file', token.pinFile], { env: token.env });
    assert.match(again.stderr, /KEYSTORE_EXISTS/, 'the default label prefix is taken in this token');
  });
});
