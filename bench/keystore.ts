/**
 * Organisation key operations through the keystores, in the same run: the file keystore (keys in
 * process, node:crypto) against a SoftHSM2 token through PKCS#11 (graphene-pk11), with 1 and 4
 * sessions. "4 in flight" starts 4 signatures at once and waits for all of them: one measured
 * operation is 4 signatures, so signatures/s = 4 × ops/s. SoftHSM figures are a test-rig baseline
 * (crypto-hsm-baseline.md §2); real HSMs differ.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { createNodeBackend } from '../src/crypto/index.js';
import { generateKeys } from '../src/dime/keys.js';
import { createLogger } from '../src/log.js';
import { createKeystore, openKeystore, type OrgKeystore } from '../src/keystore/keystore.js';
import { createSoftHsmToken, softHsmAvailable } from '../src/keystore/softhsm.js';
import { registerBench, type BenchCase, type BenchGroup } from './lib.js';

async function groups(): Promise<BenchGroup[]> {
  const crypto = createNodeBackend();
  const logger = createLogger({ destination: new Writable({ write: (_c, _e, cb) => cb() }) });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dime-bench-keystore-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const file = await createKeystore({ type: 'file', file: path.join(dir, 'org.keys') }, { crypto, logger });

  let hsm1: OrgKeystore | undefined;
  let hsm4: OrgKeystore | undefined;
  if (softHsmAvailable()) {
    const token = createSoftHsmToken({ label: 'dime-bench', parent: dir });
    token.useIn();
    const config = { type: 'pkcs11' as const, file: '', module: token.module, token: token.label, pinFile: token.pinFile };
    await (await createKeystore(config, { crypto, logger })).close();
    hsm1 = await openKeystore(config, { crypto, logger, sessions: 1 });
    hsm4 = await openKeystore(config, { crypto, logger, sessions: 4 });
  } else {
    console.log('(keystore: SoftHSM2 is not installed; only the file keystore is measured)\n');
  }

  const msg = crypto.randomBytes(64);
  const four = (ks: OrgKeystore) => () => Promise.all([ks.pok.sign(msg), ks.pok.sign(msg), ks.pok.sign(msg), ks.pok.sign(msg)]);
  const peer = crypto.secp256k1PublicKey(generateKeys('user', crypto).encryptionKey);
  const hsm = (name: string, ks: OrgKeystore | undefined, fn: (ks: OrgKeystore) => () => unknown): BenchCase[] => (ks ? [{ name, fn: fn(ks) }] : []);

  return [
    {
      name: 'POK Ed25519 signature (64 B), 1 in flight',
      baseline: 'file keystore',
      cases: [{ name: 'file keystore', fn: () => file.pok.sign(msg) }, ...hsm('SoftHSM2, 1 session', hsm1, (ks) => () => ks.pok.sign(msg)), ...hsm('SoftHSM2, 4 sessions', hsm4, (ks) => () => ks.pok.sign(msg))],
    },
    {
      name: 'POK Ed25519 signatures (64 B), 4 in flight (one op = 4 signatures)',
      baseline: 'file keystore',
      cases: [{ name: 'file keystore', fn: four(file) }, ...hsm('SoftHSM2, 4 sessions', hsm4, four), ...hsm('SoftHSM2, 1 session (queued)', hsm1, four)],
    },
    {
      name: 'organisation secp256k1 ECDH, 1 in flight',
      baseline: 'file keystore',
      cases: [{ name: 'file keystore', fn: () => file.ecdh(peer) }, ...hsm('SoftHSM2, 1 session', hsm1, (ks) => () => ks.ecdh(peer))],
    },
  ];
}

registerBench({ name: 'keystore', groups });
