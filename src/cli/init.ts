/**
 * `dime init`: bootstrap a dark domain. `dime keys rotate` and `dime keys add-sok`: change the
 * organisation's signing keys; `dime keys record`: the record as it stands (after a certificate
 * change). Each prints the exact management record to publish.
 *
 *   dime init --domain DOMAIN [--dir DIR] [--config FILE]
 *             [--hsm-module PATH --hsm-token LABEL --hsm-pin-file FILE [--hsm-label PREFIX]]
 *             [--tls-cert CERT --tls-key KEY] [--dx HOST] [--json]
 *
 * Steps (each undone if a later one fails, so a failed init leaves nothing behind): the relay's TLS
 * certificate (the given one, checked against its key, or a self-signed RSA one made with the
 * `openssl` CLI: node has no X.509 writer, and RSA because libdime's DMTP client offers only
 * ECDHE-RSA-AES256-GCM-SHA384), the organisation keys in the keystore (generated inside the HSM
 * with --hsm-*), the org signet published in the signet store, the configuration file, and the
 * `_dx` record with the POK and the certificate's tls= pin.
 */
import { spawnSync } from 'node:child_process';
import * as nodeCrypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { loadConfig, parseConfig, renderConfig, type DimeConfig, type KeystoreConfig } from '../config/config.js';
import { defaultCrypto } from '../crypto/index.js';
import { certificateDer, isHostName } from '../dime/record.js';
import { fingerprints, pokText } from '../dime/signet/index.js';
import { DimeError } from '../errors.js';
import { atomicCreateFile, ensurePrivateDir } from '../keystore/files.js';
import { createKeystore, discardKeystore, parsePermissions, permissionNames } from '../keystore/keystore.js';
import { dataLayout } from '../keystore/layout.js';
import { issueOrgSignet, managementRecord, openOrg, signetIsCurrent, type RecordOptions } from '../keystore/org.js';
import { FileSignetStore } from '../keystore/signets.js';
import { readInputFile } from './io.js';
import { progress } from './progress.js';

export const DEFAULT_DATA_DIR = '/var/lib/dime';
/** The self-signed certificate: RSA 3072 (libdime's client needs RSA; 3072 = NIST's 128-bit level), 825 days (CA/B maximum, a habit clients share). */
const RSA_BITS = 3072;
const CERT_DAYS = 825;

interface InitOptions {
  domain: string;
  dir?: string;
  config?: string;
  hsmModule?: string;
  hsmToken?: string;
  hsmPinFile?: string;
  hsmLabel?: string;
  tlsCert?: string;
  tlsKey?: string;
  dx?: string;
  json?: boolean;
}

/** The config file named by --config, else DIME_CONFIG / the default path / embedded defaults. */
export function configFrom(opts: { config?: string }): DimeConfig {
  return loadConfig(opts.config);
}

function readCertificate(file: string): { der: Uint8Array; x509: nodeCrypto.X509Certificate } {
  const der = certificateDer(new Uint8Array(readInputFile(file)));
  try {
    return { der, x509: new nodeCrypto.X509Certificate(Buffer.from(der)) };
  } catch (err) {
    throw new DimeError('TLS_BAD_CERTIFICATE', `${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** A given certificate and key: the key must belong to the certificate. */
function checkGivenTls(certFile: string, keyFile: string): Uint8Array {
  const { der, x509 } = readCertificate(certFile);
  let key: nodeCrypto.KeyObject;
  try {
    key = nodeCrypto.createPrivateKey(readInputFile(keyFile));
  } catch (err) {
    throw new DimeError('TLS_BAD_CERTIFICATE', `${keyFile} is not a PEM or DER private key: ${(err as Error).message}`, { cause: err });
  }
  if (!x509.checkPrivateKey(key)) throw new DimeError('TLS_BAD_CERTIFICATE', `${keyFile} is not the private key of ${certFile}`);
  if (x509.publicKey.asymmetricKeyType !== 'rsa') process.stderr.write(`warning: ${certFile} is not an RSA certificate; libdime's DMTP client only offers ECDHE-RSA\n`);
  return der;
}

/** Make a self-signed RSA certificate with the openssl CLI into `dir` (private, fresh). */
function makeSelfSigned(dir: string, host: string): { cert: string; key: string; der: Uint8Array } {
  const cert = path.join(dir, 'relay.crt');
  const key = path.join(dir, 'relay.key');
  const r = spawnSync(
    'openssl',
    ['req', '-x509', '-newkey', `rsa:${RSA_BITS}`, '-sha256', '-days', String(CERT_DAYS), '-nodes', '-keyout', key, '-out', cert, '-subj', `/CN=${host}`, '-addext', `subjectAltName=DNS:${host}`],
    { encoding: 'utf8', timeout: 60_000 },
  );
  if (r.error || r.status !== 0) {
    const why = r.error ? (r.error as NodeJS.ErrnoException).code === 'ENOENT' ? 'the openssl command is not installed' : r.error.message : r.stderr.trim().split('\n').at(-1);
    throw new DimeError('FILE_WRITE_FAILED', `making the relay certificate with openssl failed: ${why}; give --tls-cert and --tls-key instead`);
  }
  fs.chmodSync(key, 0o600);
  fs.chmodSync(cert, 0o644);
  return { cert, key, der: readCertificate(cert).der };
}

async function init(opts: InitOptions): Promise<void> {
  const domain = opts.domain.toLowerCase().replace(/\.$/, '');
  if (!isHostName(domain) || !domain.includes('.')) throw new DimeError('USAGE', `--domain ${JSON.stringify(opts.domain)} is not a domain name`);
  if (opts.dx !== undefined && !isHostName(opts.dx)) throw new DimeError('USAGE', `--dx ${JSON.stringify(opts.dx)} is not a host name`);
  const hsm = [opts.hsmModule, opts.hsmToken].filter((x) => x !== undefined).length;
  if (hsm === 1) throw new DimeError('USAGE', 'give both --hsm-module and --hsm-token (and --hsm-pin-file, or set DIME_HSM_PIN)');
  if (hsm === 0 && (opts.hsmPinFile || opts.hsmLabel)) throw new DimeError('USAGE', '--hsm-pin-file and --hsm-label need --hsm-module and --hsm-token');
  if (hsm === 2 && !opts.hsmPinFile && !process.env.DIME_HSM_PIN) throw new DimeError('USAGE', 'give --hsm-pin-file FILE or set DIME_HSM_PIN');
  if (!!opts.tlsCert !== !!opts.tlsKey) throw new DimeError('USAGE', 'give both --tls-cert and --tls-key, or neither (a self-signed certificate is made)');

  const dir = path.resolve(opts.dir ?? DEFAULT_DATA_DIR);
  const configFile = path.resolve(opts.config ?? path.join(dir, 'dime.toml'));
  if (fs.existsSync(configFile)) throw new DimeError('FILE_EXISTS', `${configFile} exists: this domain looks initialised already (remove it, or give another --config)`);
  ensurePrivateDir(dir);
  const layout = dataLayout(dir);
  const crypto = defaultCrypto();
  const keystoreConfig: KeystoreConfig =
    hsm === 2
      ? {
          type: 'pkcs11',
          file: path.join(dir, 'org.keys'),
          module: opts.hsmModule!,
          token: opts.hsmToken!,
          ...(opts.hsmPinFile ? { pinFile: path.resolve(opts.hsmPinFile) } : {}),
          ...(process.env.DIME_HSM_PIN ? { pin: process.env.DIME_HSM_PIN } : {}),
          ...(opts.hsmLabel ? { label: opts.hsmLabel } : {}),
        }
      : { type: 'file', file: path.join(dir, 'org.keys') };
  const signets = new FileSignetStore(layout.signets, crypto);
  if (await signets.org(domain)) throw new DimeError('FILE_EXISTS', `${layout.signets} already holds an org signet for ${domain}`);

  const undo: (() => void | Promise<void>)[] = [];
  // Generating an RSA certificate and keys inside an HSM takes seconds: say which step is running.
  const bar = progress('dime init', { total: 5 });
  try {
    // 1. The TLS certificate: checked or made before any key exists.
    bar.step(opts.tlsCert ? 'checking the relay certificate' : `making the relay certificate (RSA ${RSA_BITS})`);
    let tlsCert: string;
    let tlsKey: string;
    let der: Uint8Array;
    let made = false;
    if (opts.tlsCert) {
      tlsCert = path.resolve(opts.tlsCert);
      tlsKey = path.resolve(opts.tlsKey!);
      der = checkGivenTls(tlsCert, tlsKey);
    } else {
      if (fs.existsSync(layout.tls)) throw new DimeError('FILE_EXISTS', `${layout.tls} exists; remove it or give --tls-cert and --tls-key`);
      ensurePrivateDir(path.dirname(layout.tls));
      const tmp = fs.mkdtempSync(path.join(dir, '.tls-'));
      undo.push(() => fs.rmSync(tmp, { recursive: true, force: true }));
      ({ der } = makeSelfSigned(tmp, opts.dx ?? domain));
      tlsCert = layout.tlsCert;
      tlsKey = layout.tlsKey;
      made = true;
      // Moved into place last, once everything else worked.
      undo.push(() => fs.rmSync(layout.tls, { recursive: true, force: true }));
      fs.renameSync(tmp, layout.tls);
    }

    // 2. The keystore: keys generated inside the HSM, or the development key files.
    bar.step(keystoreConfig.type === 'pkcs11' ? 'generating the organisation keys in the HSM' : 'generating the organisation keys');
    const keystore = await createKeystore(keystoreConfig, { crypto });
    undo.push(() => discardKeystore(keystoreConfig, { crypto }));
    let result;
    try {
      // 3. The org signet, published.
      bar.step('issuing the organisational signet');
      const signet = await issueOrgSignet(keystore, domain);
      // Undo removes the outermost directory of the store that this init created.
      const created = [layout.signets, path.join(layout.signets, domain), path.join(layout.signets, domain, 'org')].find((d) => !fs.existsSync(d));
      if (created) undo.push(() => fs.rmSync(created, { recursive: true, force: true }));
      await signets.put(signet);
      // 4. The record with the POK and the certificate's pin.
      bar.step('signing the management record');
      const rec = await managementRecord(keystore, domain, crypto, { certificateDer: der, ...(opts.dx ? { dx: [opts.dx] } : {}) });
      result = { signet, rec, pok: keystore.pok, kind: keystore.kind };
    } finally {
      await keystore.close();
    }

    // 5. The configuration file, last: its presence marks the domain as initialised.
    bar.step('writing the configuration');
    const base = parseConfig(`data_dir = ${JSON.stringify(dir)}\n`, '(dime init)', {});
    // The PIN never goes into the file: it stays in the PIN file or DIME_HSM_PIN.
    const fileKeystore: KeystoreConfig = { ...keystoreConfig };
    delete fileKeystore.pin;
    const config: DimeConfig = { ...base, domain, keystore: fileKeystore, relay: { ...base.relay, tlsCert, tlsKey, ...(opts.dx ? { hostname: opts.dx } : {}) } };
    delete config.source;
    ensurePrivateDir(path.dirname(configFile));
    atomicCreateFile(configFile, renderConfig(config), 0o644);
    undo.push(() => fs.rmSync(configFile, { force: true }));
    loadConfig(configFile); // what we wrote must be what we read

    bar.done();
    const fp = fingerprints(crypto, result.signet);
    if (opts.json) {
      process.stdout.write(
        JSON.stringify({
          domain,
          config: configFile,
          dataDir: dir,
          keystore: result.kind,
          pok: pokText(result.pok.publicKey),
          orgSignet: { fingerprint: fp.id ?? fp.full ?? fp.crypto, file: path.join(layout.signets, domain, 'org', '1.signet') },
          tls: { cert: tlsCert, key: tlsKey, selfSigned: made },
          record: result.rec.text,
          zone: result.rec.zone,
        }) + '\n',
      );
    } else {
      process.stdout.write(
        `dime init: ${domain}\n` +
          `  keystore    ${result.kind === 'file' ? `file ${keystoreConfig.file} (development only: not an HSM)` : `PKCS#11 token ${JSON.stringify(keystoreConfig.token)} (${keystoreConfig.module})`}\n` +
          `  POK         ${result.pok.label} ${pokText(result.pok.publicKey)}\n` +
          `  org signet  ${path.join(layout.signets, domain, 'org', '1.signet')}\n` +
          `  TLS         ${tlsCert}${made ? ` (self-signed RSA ${RSA_BITS}, CN=${opts.dx ?? domain})` : ''}\n` +
          `  config      ${configFile}${opts.config ? '' : `  (export DIME_CONFIG=${configFile})`}\n\n` +
          `Publish this record in the domain's DNSSEC-signed zone:\n\n${result.rec.zone}\n`,
      );
    }
  } catch (err) {
    bar.done();
    for (const u of undo.reverse()) {
      try {
        await u();
      } catch {
        /* best effort: the original error is what matters */
      }
    }
    throw err;
  }
}

function printRecord(rec: { text: string; zone: string }, json: boolean | undefined, extra: Record<string, unknown>, lines: string[]): void {
  if (json) process.stdout.write(JSON.stringify({ ...extra, record: rec.text, zone: rec.zone }) + '\n');
  else process.stdout.write(`${lines.join('\n')}\n\nPublish this record in the domain's DNSSEC-signed zone:\n\n${rec.zone}\n`);
}

/** The record's tls= pin and dx= come from the configured relay certificate and host name. */
export function recordOptions(config: DimeConfig): RecordOptions {
  return {
    ...(config.relay.tlsCert ? { certificateDer: readCertificate(config.relay.tlsCert).der } : {}),
    ...(config.relay.hostname ? { dx: [config.relay.hostname] } : {}),
  };
}

async function rotate(opts: { config?: string; json?: boolean }): Promise<void> {
  const bar = progress('dime keys rotate', { total: 4 });
  bar.step('opening the keystore');
  const org = await openOrg(configFrom(opts)).catch((err: unknown) => {
    bar.done();
    throw err;
  });
  try {
    const current = await org.signets.org(org.domain);
    let note: string;
    bar.step(org.keystore.kind === 'pkcs11' ? 'generating the new POK in the HSM' : 'generating the new POK');
    if (current && !signetIsCurrent(org.keystore, current)) {
      // An earlier rotation made the key but did not publish: finish it instead of making another.
      note = `finishing the rotation to ${org.keystore.pok.label} (its org signet was not published)`;
    } else {
      const previous = org.keystore.pok.label;
      await org.keystore.rotatePok();
      note = `rotated ${previous} → ${org.keystore.pok.label}; ${previous} is kept to verify old mail`;
    }
    bar.step('re-issuing the organisational signet');
    const signet = await issueOrgSignet(org.keystore, org.domain);
    await org.signets.put(signet);
    bar.step('signing the management record');
    const rec = await managementRecord(org.keystore, org.domain, org.crypto, recordOptions(org.config));
    bar.done();
    printRecord(rec, opts.json, { pok: pokText(org.keystore.pok.publicKey), label: org.keystore.pok.label, poks: org.keystore.poks.map((p) => p.label) }, [
      `dime keys rotate: ${note}`,
      `  org signet re-issued (version ${(await org.signets.orgHistory(org.domain)).length}); earlier POKs are listed in it as signet-signing keys`,
      `  keep the previous pok= in the record until mail signed with it has aged out`,
    ]);
  } finally {
    bar.done();
    await org.close();
  }
}

async function addSok(permissionsText: string, opts: { config?: string; json?: boolean }): Promise<void> {
  const permissions = parsePermissions(permissionsText);
  if (permissions === 0) throw new DimeError('USAGE', 'a SOK without any permission signs nothing; give e.g. signets,messages');
  const bar = progress('dime keys add-sok', { total: 4 });
  bar.step('opening the keystore');
  const org = await openOrg(configFrom(opts)).catch((err: unknown) => {
    bar.done();
    throw err;
  });
  try {
    bar.step(org.keystore.kind === 'pkcs11' ? 'generating the SOK in the HSM' : 'generating the SOK');
    const sok = await org.keystore.addSok(permissions);
    bar.step('re-issuing the organisational signet');
    await org.signets.put(await issueOrgSignet(org.keystore, org.domain));
    bar.step('signing the management record');
    const rec = await managementRecord(org.keystore, org.domain, org.crypto, { ...recordOptions(org.config), pokCount: 1 });
    bar.done();
    printRecord(rec, opts.json, { sok: sok.label, permissions: permissionNames(permissions), publicKey: pokText(sok.publicKey) }, [
      `dime keys add-sok: ${sok.label} (${permissionNames(permissions).join(', ')}) ${pokText(sok.publicKey)}`,
      '  org signet re-issued; the record is unchanged (SOKs are not in DNS)',
    ]);
  } finally {
    bar.done();
    await org.close();
  }
}

/** The record for the keystore as it is now (e.g. after a new relay certificate): no key changes. */
async function printCurrentRecord(opts: { config?: string; json?: boolean }): Promise<void> {
  const org = await openOrg(configFrom(opts));
  try {
    const rec = await managementRecord(org.keystore, org.domain, org.crypto, recordOptions(org.config));
    printRecord(rec, opts.json, { poks: org.keystore.poks.slice(-2).reverse().map((p) => p.label) }, [`dime keys record: ${org.domain}, POKs ${org.keystore.poks.slice(-2).reverse().map((p) => p.label).join(', ')}${org.config.relay.tlsCert ? `, tls= pin of ${org.config.relay.tlsCert}` : ''}`]);
  } finally {
    await org.close();
  }
}

export function registerInitCommands(program: Command): void {
  program
    .command('init')
    .description('bootstrap a dark domain: organisation keys (file or HSM), org signet, relay TLS certificate, configuration, DNS record')
    .requiredOption('--domain <domain>', 'the dark domain')
    .option('--dir <dir>', `data directory (keys, signets, users, TLS)`, DEFAULT_DATA_DIR)
    .option('--config <file>', 'configuration file to write (default DIR/dime.toml)')
    .option('--hsm-module <path>', 'PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so')
    .option('--hsm-token <label>', 'label of the token to generate the keys in')
    .option('--hsm-pin-file <file>', 'file holding the user PIN (or set DIME_HSM_PIN)')
    .option('--hsm-label <prefix>', 'prefix of the key labels in the token (default "dime")')
    .option('--tls-cert <file>', 'the relay certificate (PEM or DER); default: a self-signed RSA certificate')
    .option('--tls-key <file>', 'the private key of --tls-cert')
    .option('--dx <host>', 'the relay host name (dx= in the record, the self-signed certificate\'s name)')
    .option('--json', 'print one JSON object')
    .action((opts: InitOptions) => init(opts));

  // `dime keys` is registered by keys.ts; the rotation commands join it.
  const keys = program.commands.find((c) => c.name() === 'keys') ?? program.command('keys').description('organisation keys');
  keys
    .command('rotate')
    .description('new POK in the same keystore (old ones kept), org signet re-issued, record printed with both pok= values')
    .option('--config <file>', 'configuration file')
    .option('--json', 'print one JSON object')
    .action((opts: { config?: string; json?: boolean }) => rotate(opts));
  keys
    .command('record')
    .description('print the management record for the keystore\'s POKs and the configured relay certificate (after a certificate change)')
    .option('--config <file>', 'configuration file')
    .option('--json', 'print one JSON object')
    .action((opts: { config?: string; json?: boolean }) => printCurrentRecord(opts));
  keys
    .command('add-sok')
    .description('new secondary organisational key with permission bits (signets, messages, tls, software); org signet re-issued')
    .argument('<permissions>', 'comma-separated, e.g. signets,messages')
    .option('--config <file>', 'configuration file')
    .option('--json', 'print one JSON object')
    .action((permissions: string, opts: { config?: string; json?: boolean }) => addSok(permissions, opts));
}
