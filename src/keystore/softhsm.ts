/**
 * A SoftHSM2 token in a private directory, for tests, benchmarks and trying the PKCS#11 keystore
 * without touching the system's tokens: a scratch softhsm2.conf whose token directory is inside
 * the scratch directory, and a token initialised there with softhsm2-util.
 *
 * SoftHSM reads SOFTHSM2_CONF when the library is initialised, so the variable must be set in the
 * process that opens the keystore before it does (`useIn(process.env)`), and child processes get
 * it through `env`.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DimeError } from '../errors.js';

export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface SoftHsmToken {
  dir: string;
  conf: string;
  tokenDir: string;
  module: string;
  label: string;
  pin: string;
  soPin: string;
  /** A PIN file (mode 0600) holding `pin`. */
  pinFile: string;
  env: { SOFTHSM2_CONF: string };
  /** Set SOFTHSM2_CONF in `env` (default: this process). */
  useIn(env?: NodeJS.ProcessEnv): void;
  /** Delete the directory and everything in it. */
  remove(): void;
}

export function softHsmAvailable(): boolean {
  return fs.existsSync(SOFTHSM_MODULE) && spawnSync('softhsm2-util', ['--version'], { encoding: 'utf8' }).status === 0;
}

export interface SoftHsmOptions {
  label?: string;
  pin?: string;
  soPin?: string;
  /** Parent of the scratch directory (default: the OS temporary directory). */
  parent?: string;
}

export function createSoftHsmToken(options: SoftHsmOptions = {}): SoftHsmToken {
  const dir = fs.mkdtempSync(path.join(options.parent ?? os.tmpdir(), 'dime-softhsm-'));
  const tokenDir = path.join(dir, 'tokens');
  fs.mkdirSync(tokenDir, { mode: 0o700 });
  const conf = path.join(dir, 'softhsm2.conf');
  fs.writeFileSync(conf, `directories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`, { mode: 0o600 });
  const label = options.label ?? 'dime-test';
  const pin = options.pin ?? '1234';
  const soPin = options.soPin ?? '12345678';
  const env = { SOFTHSM2_CONF: conf };
  const r = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin], { env: { ...process.env, ...env }, encoding: 'utf8' });
  if (r.status !== 0) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw new DimeError('HSM_UNAVAILABLE', `softhsm2-util --init-token failed: ${(r.stderr || r.stdout || String(r.error)).trim()}`);
  }
  const pinFile = path.join(dir, 'pin');
  fs.writeFileSync(pinFile, `${pin}\n`, { mode: 0o600 });
  return {
    dir,
    conf,
    tokenDir,
    module: SOFTHSM_MODULE,
    label,
    pin,
    soPin,
    pinFile,
    env,
    useIn(target: NodeJS.ProcessEnv = process.env) {
      target.SOFTHSM2_CONF = conf;
    },
    remove() {
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
