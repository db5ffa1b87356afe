/**
 * `dime doctor` against a real deployment on loopback: `dime init` domains in scratch directories,
 * bind9 + unbound serving their `_dx` records (signed and unsigned zones), `dime start` running the
 * milter, policy, socketmap and relay, a private Postfix, and redis-server. Each broken piece makes
 * the right check fail or warn, and the fix it prints is applied (the exact TXT line published, the
 * exact postconf command run) to show the check then passes.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../src/config/config.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { base64EncodeNoPad } from '../src/dime/base64.js';
import { certificateDer, parseRecord, verifyTlsPin } from '../src/dime/record.js';
import { milterSockets, sameSocket } from '../src/cli/doctor.js';
import { createSoftHsmToken, softHsmAvailable, type SoftHsmToken } from '../src/keystore/softhsm.js';
import { DIME_BIN, oneJsonObject, scratchDir } from './helpers/cli.js';
import { dnssecToolsAvailable, freePort, startDnssecRig, type DnssecRig } from './helpers/dnssec.js';
import { startPostfix, type Postfix } from './helpers/postfix.js';
import { redisAvailable, startRedis, type RedisRig } from './helpers/redis.js';

const crypto = defaultCrypto();

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** bin/dime as a child process, asynchronously (the rigs are children of this process too). */
function dime(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [DIME_BIN, ...args], { env: { ...process.env, DIME_CONFIG: '', ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code: unknown = err ? (err as { code?: unknown }).code : 0;
      resolve({ status: typeof code === 'number' ? code : null, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

interface Check {
  name: string;
  status: 'ok' | 'warn' | 'fail';
  finding: string;
  fix?: string;
}

interface Report {
  ok: boolean;
  domain: string;
  checks: Check[];
  summary: { ok: number; warn: number; fail: number };
}

async function doctor(config: string, postfix?: Postfix, extra: string[] = []): Promise<{ run: Run; report: Report; check: (name: string) => Check }> {
  const run = await dime(['doctor', '--config', config, ...(postfix ? ['--postfix-config', postfix.configDir] : []), '--json', ...extra]);
  let report: Report;
  try {
    report = oneJsonObject(run.stdout) as Report;
  } catch (err) {
    throw new Error(`dime doctor exited ${run.status}: ${(err as Error).message}\n${run.stderr}`);
  }
  const check = (name: string) => {
    const c = report.checks.find((x) => x.name === name);
    assert.ok(c, `no ${name} check in ${run.stdout}`);
    return c;
  };
  return { run, report, check };
}

/** The zone-file line from init or a fix (`_dx.D. 3600 IN TXT "…"`) as a line of the rig's zone. */
function zoneRecord(line: string): string {
  const m = /(_dx\.\S+\.)\s+\d+\s+IN\s+TXT\s+(".*")\s*$/.exec(line);
  assert.ok(m, `no zone-file line in ${line}`);
  return `_dx 60 IN TXT ${m[2]}`;
}

function txtOf(line: string): string {
  return zoneRecord(line).replace(/^_dx 60 IN TXT /, '');
}

/** Settings the configuration schema has gained while this was written (read defensively by doctor too). */
function schemaKnows(section: string, key: string, value: string): boolean {
  try {
    parseConfig(`[${section}]\n${key} = ${JSON.stringify(value)}\n`, 'probe', {});
    return true;
  } catch {
    return false;
  }
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

function sh(command: string): void {
  const r = spawnSync('/bin/sh', ['-c', command], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, `${command}: ${r.stderr}${r.stdout}`);
}

const tools = dnssecToolsAvailable() && fs.existsSync('/usr/sbin/postconf') && process.getuid?.() === 0;

describe('dime doctor', { skip: tools ? false : 'needs bind9, unbound, Postfix and root' }, () => {
  const root = scratchDir('dime-doctor-');
  const docDir = path.join(root, 'doc');
  const plainDir = path.join(root, 'plain');
  let rig: DnssecRig;
  let pf: Postfix;
  let redis: RedisRig | undefined;
  let sidecar: ChildProcess | undefined;
  let lmtpStandIn: net.Server | undefined;
  let docZone: string;
  let plainZone: string;
  let docPok: string;
  const PORTS = ['milter', 'policy', 'socketmap', 'relay', 'metrics', 'lmtp', 'bundle'] as const;
  const ports = {} as Record<(typeof PORTS)[number], number>;
  const files = { doc: '', plain: '' };

  /** One configuration per case, all sharing the listeners `dime start` runs. */
  function writeConfig(name: string, o: { domain: string; dir: string; cert?: string; key?: string; redis?: string }): string {
    const file = path.join(root, `${name}.toml`);
    const lines = [
      `domain = "${o.domain}"`,
      `data_dir = "${o.dir}"`,
      '[keystore]',
      'type = "file"',
      `file = "${path.join(o.dir, 'org.keys')}"`,
      '[milter]',
      `listen = "inet:127.0.0.1:${ports.milter}"`,
      '[policy]',
      `listen = "inet:127.0.0.1:${ports.policy}"`,
      `socketmap = "inet:127.0.0.1:${ports.socketmap}"`,
      '[relay]',
      `listen = "inet:127.0.0.1:${ports.relay}"`,
      `tls_cert = "${o.cert ?? path.join(docDir, 'tls', 'relay.crt')}"`,
      `tls_key = "${o.key ?? path.join(docDir, 'tls', 'relay.key')}"`,
      'hostname = "dx.doc.test"',
      `mta = "inet:127.0.0.1:${pf?.smtpPort ?? 25}"`,
      ...(schemaKnows('relay', 'lmtp_listen', 'inet:127.0.0.1:1') ? [`lmtp_listen = "inet:127.0.0.1:${ports.lmtp}"`] : []),
      ...(schemaKnows('gateway', 'bundle_service', 'inet:127.0.0.1:1') ? ['[gateway]', `bundle_service = "inet:127.0.0.1:${ports.bundle}"`] : []),
      '[resolver]',
      `servers = ["${rig.resolver}"]`,
      'deadline_ms = 5000',
      ...(o.redis ? [`redis = "${o.redis}"`] : []),
      '',
    ];
    fs.writeFileSync(file, lines.join('\n'));
    return file;
  }

  before(async () => {
    for (const k of PORTS) ports[k] = await freePort();
    const doc = await dime(['init', '--domain', 'doc.test', '--dir', docDir, '--dx', 'dx.doc.test', '--json']);
    assert.equal(doc.status, 0, doc.stderr);
    const docOut = oneJsonObject(doc.stdout);
    docZone = docOut.zone;
    docPok = docOut.pok;
    // plain.test shares doc.test's relay certificate (one relay, two configurations).
    const plain = await dime(['init', '--domain', 'plain.test', '--dir', plainDir, '--dx', 'dx.doc.test', '--tls-cert', path.join(docDir, 'tls', 'relay.crt'), '--tls-key', path.join(docDir, 'tls', 'relay.key'), '--json']);
    assert.equal(plain.status, 0, plain.stderr);
    plainZone = oneJsonObject(plain.stdout).zone;
    rig = await startDnssecRig([
      { name: 'doc.test', signed: true, records: [zoneRecord(docZone)] },
      { name: 'plain.test', signed: false, records: [zoneRecord(plainZone)] },
    ]);
    pf = await startPostfix({
      main: { smtpd_milters: `inet:127.0.0.1:${ports.milter}`, milter_default_action: 'tempfail' },
      master: [
        'dmtp unix - - n - - lmtp',
        `127.0.0.1:${ports.bundle} inet n - n - - smtpd`,
        `  -o content_filter=dmtp:inet:127.0.0.1:${ports.lmtp}`,
        '  -o smtpd_milters=',
      ],
    });
    files.doc = writeConfig('doc', { domain: 'doc.test', dir: docDir });
    files.plain = writeConfig('plain', { domain: 'plain.test', dir: plainDir });
    sidecar = spawn(process.execPath, [DIME_BIN, 'start', '--config', files.doc, '--metrics', `inet:127.0.0.1:${ports.metrics}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    sidecar.stderr!.on('data', (d) => (log += d));
    const until = Date.now() + 20_000;
    while (!/dime started/.test(log)) {
      if (Date.now() > until || sidecar.exitCode !== null) assert.fail(`dime start did not start: ${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    // Until `dime start` runs the relay's LMTP listener itself, a greeter stands in for it.
    if (!(await listening(ports.lmtp))) {
      lmtpStandIn = net.createServer((s) => {
        s.on('error', () => undefined);
        s.end('220 lmtp.doc.test LMTP stand-in\r\n');
      });
      await new Promise<void>((r) => lmtpStandIn!.listen(ports.lmtp, '127.0.0.1', r));
    }
    if (redisAvailable()) redis = await startRedis();
  });

  after(async () => {
    sidecar?.kill('SIGTERM');
    await new Promise<void>((r) => lmtpStandIn ? lmtpStandIn.close(() => r()) : r());
    await pf?.stop();
    await rig?.stop();
    await redis?.stop();
  });

  it('a healthy deployment: every check ok, exit 0, one JSON object; the human form marks each check', async () => {
    const { run, report, check } = await doctor(files.doc, pf);
    assert.equal(run.status, 0, run.stdout);
    assert.equal(report.ok, true);
    assert.equal(report.domain, 'doc.test');
    const names = report.checks.map((c) => c.name);
    for (const n of ['config', 'keystore', 'org-signet', 'dns-record', 'dnssec', 'tls-pin', 'relay', 'milter', 'policy', 'socketmap', 'postfix', 'postfix-milter', 'postfix-transport', 'postfix-bundle']) assert.ok(names.includes(n), n);
    for (const c of report.checks) assert.equal(c.status, 'ok', `${c.name}: ${c.finding}`);
    assert.match(check('dnssec').finding, /validated/);
    assert.match(check('dns-record').finding, /pok= has our pok\/1/);
    assert.match(check('relay').finding, /^inet:127\.0\.0\.1:\d+: 220 .*DMTPv1/);
    assert.match(check('postfix-milter').finding, /main\.cf smtpd_milters/);
    if (names.includes('relay-lmtp')) assert.equal(check('relay-lmtp').status, 'ok');
    const human = await dime(['doctor', '--config', files.doc, '--postfix-config', pf.configDir]);
    assert.equal(human.status, 0);
    const lines = human.stdout.trim().split('\n');
    assert.equal(lines.length, report.checks.length + 1, 'one line per check and the summary');
    for (const l of lines.slice(0, -1)) assert.match(l, /^✓ [a-z-]+: \S/);
    assert.match(lines.at(-1)!, new RegExp(`^${report.checks.length} ok, 0 warnings, 0 failures$`));
  });

  it('a record with another pok=: dns-record and tls-pin fail, and the fix is the exact TXT line to publish', async () => {
    const stranger = base64EncodeNoPad(crypto.ed25519PublicKey(new Uint8Array(32).fill(3)));
    const strangerPin = base64EncodeNoPad(crypto.ed25519Sign(new Uint8Array(32).fill(3), new Uint8Array(64)));
    await rig.setZone('doc.test', [`_dx 60 IN TXT "ver=1 pok=${stranger} tls=${strangerPin} pol=strict dx=dx.doc.test"`]);
    const { run, report, check } = await doctor(files.doc, pf);
    assert.equal(run.status, 1);
    assert.equal(report.ok, false);
    const rec = check('dns-record');
    assert.equal(rec.status, 'fail');
    assert.ok(rec.finding.includes(stranger) && rec.finding.includes(docPok), rec.finding);
    assert.equal(check('tls-pin').status, 'fail');
    // The fix keeps the operator's policy and dx=, and carries our POK and our pin.
    const fixed = parseRecord(txtOf(rec.fix!));
    assert.equal(fixed.policy, 'strict');
    assert.deepEqual(fixed.dx, ['dx.doc.test']);
    assert.deepEqual(fixed.poks.map(base64EncodeNoPad), [docPok]);
    assert.ok(verifyTlsPin(fixed, certificateDer(fs.readFileSync(path.join(docDir, 'tls', 'relay.crt'), 'latin1')), crypto));
    // Publishing exactly that line makes both checks pass.
    await rig.setZone('doc.test', [zoneRecord(rec.fix!)]);
    const again = await doctor(files.doc, pf);
    assert.equal(again.check('dns-record').status, 'ok', again.check('dns-record').finding);
    assert.equal(again.check('tls-pin').status, 'ok');
    assert.equal(again.run.status, 0, again.run.stdout);
    await rig.setZone('doc.test', [zoneRecord(docZone)]);
  });

  it('no record at all: dns-record fails with the record to publish', async () => {
    await rig.setZone('doc.test', []);
    const { run, check } = await doctor(files.doc);
    assert.equal(run.status, 1);
    const rec = check('dns-record');
    assert.equal(rec.status, 'fail');
    assert.match(rec.finding, /DNS_NO_RECORD/);
    assert.deepEqual(parseRecord(txtOf(rec.fix!)), parseRecord(txtOf(docZone)), 'the record dime init printed');
    await rig.setZone('doc.test', [zoneRecord(docZone)]);
  });

  it('a bogus signature: dnssec fails with the fix to re-sign', async () => {
    await rig.setZone('doc.test', [zoneRecord(docZone)], { bogus: '_dx' });
    const { run, check } = await doctor(files.doc);
    assert.equal(run.status, 1);
    const d = check('dnssec');
    assert.equal(d.status, 'fail');
    assert.match(d.finding, /bogus/);
    assert.match(d.fix!, /re-sign the zone of doc\.test/);
    assert.equal(check('dns-record').status, 'fail');
    await rig.setZone('doc.test', [zoneRecord(docZone)]);
  });

  it('an unsigned zone: dnssec warns (sign the zone, local validating resolver); the self-signed pin alone then fails', async () => {
    const { run, check } = await doctor(files.plain);
    assert.equal(check('dns-record').status, 'ok', check('dns-record').finding);
    const d = check('dnssec');
    assert.equal(d.status, 'warn');
    assert.match(d.finding, /unsigned/);
    assert.match(d.fix!, /sign the zone of plain\.test/);
    const pin = check('tls-pin');
    assert.equal(pin.status, 'fail');
    assert.match(pin.finding, /not DNSSEC-validated and the certificate is self-signed/);
    assert.equal(run.status, 1);
    // A resolver that does not answer: dns-record fails, within the doctor's DNS bound.
    const remote = path.join(root, 'remote.toml');
    fs.writeFileSync(remote, fs.readFileSync(files.plain, 'utf8').replace(/servers = \[[^\]]*\]/, 'servers = ["192.0.2.1:53"]\nquery_timeout_ms = 300\nattempts = 1'));
    const r2 = await doctor(remote);
    assert.equal(r2.check('dns-record').status, 'fail');
    assert.ok(r2.run.ms < 20_000, `bounded: ${r2.run.ms} ms`);
  });

  it('a relay certificate the record does not pin: tls-pin and relay fail, each with its fix', async () => {
    const other = path.join(root, 'other');
    fs.mkdirSync(other);
    const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '20', '-subj', '/CN=dx.doc.test', '-keyout', path.join(other, 'relay.key'), '-out', path.join(other, 'relay.crt')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const file = writeConfig('othercert', { domain: 'doc.test', dir: docDir, cert: path.join(other, 'relay.crt'), key: path.join(other, 'relay.key') });
    const { run, check } = await doctor(file);
    assert.equal(run.status, 1);
    const pin = check('tls-pin');
    assert.equal(pin.status, 'fail');
    assert.match(pin.finding, /no tls= value of _dx\.doc\.test pins/);
    const fixed = parseRecord(txtOf(pin.fix!));
    assert.ok(verifyTlsPin(fixed, certificateDer(fs.readFileSync(path.join(other, 'relay.crt'), 'latin1')), crypto), 'the fix pins the new certificate');
    const relay = check('relay');
    assert.equal(relay.status, 'fail');
    assert.match(relay.finding, /serves another certificate/);
    assert.match(relay.fix!, /restart the relay/);
  });

  it('Postfix without our milter, the dmtp transport or the bundle service: each check fails, and its fix repairs it', async () => {
    const cases: { name: string; breakIt: () => Promise<void> | void; finding: RegExp }[] = [
      { name: 'postfix-milter', breakIt: () => pf.reload({ smtpd_milters: '' }), finding: /no smtpd_milters of Postfix names our milter/ },
      { name: 'postfix-transport', breakIt: () => sh(`postconf -c ${pf.configDir} -MX dmtp/unix`), finding: /master\.cf has no dmtp service/ },
      { name: 'postfix-bundle', breakIt: () => sh(`postconf -c ${pf.configDir} -MX 127.0.0.1:${ports.bundle}/inet`), finding: /no master\.cf service has content_filter = dmtp/ },
    ];
    if (schemaKnows('relay', 'lmtp_listen', 'inet:127.0.0.1:1')) {
      cases.push({
        name: 'postfix-bundle',
        breakIt: () => sh(`postconf -c ${pf.configDir} -P '127.0.0.1:${ports.bundle}/inet/content_filter=dmtp:inet:127.0.0.1:1' && postfix -c ${pf.configDir} reload`),
        finding: /sends bundles to inet:127\.0\.0\.1:1, but the relay's LMTP listener is inet:127\.0\.0\.1:\d+/,
      });
    }
    for (const c of cases) {
      await c.breakIt();
      const broken = await doctor(files.doc, pf);
      assert.equal(broken.run.status, 1, c.name);
      const check = broken.check(c.name);
      assert.equal(check.status, 'fail', `${c.name}: ${check.finding}`);
      assert.match(check.finding, c.finding);
      assert.match(check.fix!, /^postconf -c /);
      sh(check.fix!);
      const fixed = await doctor(files.doc, pf);
      assert.equal(fixed.check(c.name).status, 'ok', `${c.name} after the fix: ${fixed.check(c.name).finding}`);
    }
    // milter_default_action = accept lets mail pass unsealed while the milter is down: a warning.
    await pf.reload({ milter_default_action: 'accept' });
    const w = await doctor(files.doc, pf);
    assert.equal(w.check('postfix-milter').status, 'warn');
    assert.equal(w.run.status, 0, 'a warning is not a failure');
    sh(w.check('postfix-milter').fix!);
    assert.equal((await doctor(files.doc, pf)).check('postfix-milter').status, 'ok');
  });

  it('Redis: ok while it answers PING, a warning with the fix when it is down', { skip: redisAvailable() ? false : 'redis-server is not installed' }, async () => {
    const file = writeConfig('redis', { domain: 'doc.test', dir: docDir, redis: redis!.url });
    const up = await doctor(file);
    assert.equal(up.check('redis').status, 'ok');
    assert.match(up.check('redis').finding, /answers PING with PONG/);
    await redis!.kill();
    const down = await doctor(file);
    const r = down.check('redis');
    assert.equal(r.status, 'warn');
    assert.match(r.fix!, /start Redis at redis:\/\/127\.0\.0\.1:\d+/);
    assert.ok(down.run.ms < 20_000, `bounded: ${down.run.ms} ms`);
    await redis!.restart();
  });

  it('a keystore file others can read: keystore fails with chmod 600', async () => {
    const keys = path.join(plainDir, 'org.keys');
    fs.chmodSync(keys, 0o644);
    try {
      const { run, check } = await doctor(files.plain);
      assert.equal(run.status, 1);
      const k = check('keystore');
      assert.equal(k.status, 'fail');
      assert.match(k.finding, /KEYSTORE_INSECURE/);
      assert.match(k.fix!, /chmod 600/);
    } finally {
      fs.chmodSync(keys, 0o600);
    }
  });

  it('a broken configuration: only the config check, failing with the fix', async () => {
    const bad = path.join(root, 'bad.toml');
    fs.writeFileSync(bad, '[relay]\nlisten = "port 26"\n');
    const { run, report } = await doctor(bad);
    assert.equal(run.status, 1);
    assert.deepEqual(report.checks.map((c) => [c.name, c.status]), [['config', 'fail']]);
    assert.match(report.checks[0]!.fix!, /inet:HOST:PORT/);
    assert.equal((await dime(['doctor', '--config', files.doc, '--domain', 'not a domain'])).status, 2, 'usage error');
  });

  it('with the sidecar stopped: the relay fails, the other listeners warn, all within the timeouts', async () => {
    sidecar!.kill('SIGTERM');
    await new Promise((r) => sidecar!.once('exit', r));
    sidecar = undefined;
    const { run, check } = await doctor(files.doc, pf);
    assert.equal(run.status, 1);
    assert.equal(check('relay').status, 'fail');
    assert.match(check('relay').fix!, /dime start --config /);
    for (const n of ['milter', 'policy', 'socketmap']) {
      assert.equal(check(n).status, 'warn', n);
      assert.match(check(n).finding, /not running/);
    }
    assert.ok(run.ms < 20_000, `bounded: ${run.ms} ms`);
  });
});

describe('dime doctor: Postfix socket matching', () => {
  it('reads milter lists with { … } options and matches wildcard, loopback and chroot-relative sockets', () => {
    assert.deepEqual(milterSockets('{ inet:127.0.0.1:8899, connect_timeout=10s }, unix:/dime/m.sock inet:localhost:1'), ['inet:127.0.0.1:8899', 'unix:/dime/m.sock', 'inet:localhost:1']);
    const inet = { kind: 'inet' as const, host: '0.0.0.0', port: 8899 };
    assert.ok(sameSocket(inet, 'inet:127.0.0.1:8899', '/var/spool/postfix'));
    assert.ok(sameSocket({ kind: 'inet', host: '127.0.0.1', port: 8899 }, 'inet:localhost:8899', '/q'));
    assert.ok(!sameSocket({ kind: 'inet', host: '127.0.0.1', port: 8899 }, 'inet:127.0.0.1:8898', '/q'));
    assert.ok(!sameSocket({ kind: 'inet', host: '127.0.0.1', port: 8899 }, 'inet:10.0.0.1:8899', '/q'));
    assert.ok(sameSocket({ kind: 'unix', path: '/var/spool/postfix/dime/m.sock' }, 'unix:/dime/m.sock', '/var/spool/postfix'));
    assert.ok(sameSocket({ kind: 'unix', path: '/run/dime/m.sock' }, 'local:/run/dime/m.sock', '/var/spool/postfix'));
    assert.ok(!sameSocket({ kind: 'unix', path: '/run/dime/m.sock' }, 'inet:127.0.0.1:8899', '/q'));
  });
});

describe('dime doctor with a SoftHSM2 token', { skip: softHsmAvailable() ? false : 'SoftHSM2 is not installed' }, () => {
  let token: SoftHsmToken;
  const root = scratchDir('dime-doctor-hsm-');
  const dir = path.join(root, 'hsm');
  before(async () => {
    token = createSoftHsmToken({ label: 'dime-doctor' });
    const r = await dime(['init', '--domain', 'hsm.test', '--dir', dir, '--hsm-module', token.module, '--hsm-token', token.label, '--hsm-pin-file', token.pinFile], token.env);
    assert.equal(r.status, 0, r.stderr);
  });
  after(() => token?.remove());

  /** The init's configuration with a DNS server that answers nothing at once (only the keystore matters here). */
  function config(pinFile: string): string {
    const file = path.join(root, `hsm-${path.basename(pinFile)}.toml`);
    fs.writeFileSync(
      file,
      [
        'domain = "hsm.test"',
        `data_dir = "${dir}"`,
        '[keystore]',
        'type = "pkcs11"',
        `module = "${token.module}"`,
        `token = "${token.label}"`,
        `pin_file = "${pinFile}"`,
        '[resolver]',
        'servers = ["127.0.0.1:9"]',
        'query_timeout_ms = 200',
        'attempts = 1',
        '',
      ].join('\n'),
    );
    return file;
  }

  it('the HSM answers: the POK signs; a wrong PIN fails with the fix', async () => {
    const good = await dime(['doctor', '--config', config(token.pinFile), '--json'], token.env);
    const k = (oneJsonObject(good.stdout) as Report).checks.find((c) => c.name === 'keystore')!;
    assert.equal(k.status, 'ok', k.finding);
    assert.match(k.finding, /^PKCS#11 token "dime-doctor" .*: POK pok\/1 \S+ signs$/);
    const wrong = path.join(root, 'wrong-pin');
    fs.writeFileSync(wrong, '0000\n', { mode: 0o600 });
    const bad = await dime(['doctor', '--config', config(wrong), '--json'], token.env);
    assert.equal(bad.status, 1);
    const b = (oneJsonObject(bad.stdout) as Report).checks.find((c) => c.name === 'keystore')!;
    assert.equal(b.status, 'fail');
    assert.match(b.finding, /HSM_BAD_PIN/);
    assert.match(b.fix!, new RegExp(`user PIN in ${wrong}`));
  });
});
