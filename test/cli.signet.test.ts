/** The `dime keys` and `dime signet` commands, run as a sysadmin runs them: through bin/dime. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { dime, oneJsonObject, scratchDir } from './helpers/cli.js';
import { vectorPath, vectorText } from './helpers/vectors.js';

const V = (...p: string[]) => vectorPath('libdime', ...p);
const JSON_KEYS = ['type', 'id', 'dialect', 'state', 'fingerprints'];

describe('dime keys', () => {
  it('generates keys files with mode 0600, refuses to overwrite, and warns it is not an HSM', () => {
    const dir = scratchDir();
    const out = path.join(dir, 'org.keys');
    const r = dime(['keys', 'generate', '--org', 'example.net', '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /unencrypted private keys/);
    assert.equal(fs.statSync(out).mode & 0o777, 0o600);
    assert.match(fs.readFileSync(out, 'latin1'), /^-----BEGIN ORGANIZATIONAL KEY-----\n[\s\S]*\n=[A-Za-z0-9+/]{4}\n-----END ORGANIZATIONAL KEY-----\n$/);
    const again = dime(['keys', 'generate', '--org', 'example.net', '--out', out]);
    assert.equal(again.status, 2);
    assert.match(again.stderr, /FILE_EXISTS/);
    assert.equal(dime(['keys', 'generate', '--org', 'example.net', '--out', out, '--force']).status, 0);
    assert.equal(fs.statSync(out).mode & 0o777, 0o600);
    const user = path.join(dir, 'user.keys');
    assert.equal(dime(['keys', 'generate', '--user', 'a@example.net', '--out', user]).status, 0);
    assert.match(fs.readFileSync(user, 'latin1'), /^-----BEGIN USER KEY-----/);
  });

  it('needs exactly one of --org and --user (usage error, exit 2)', () => {
    const dir = scratchDir();
    assert.equal(dime(['keys', 'generate', '--out', path.join(dir, 'k')]).status, 2);
    assert.equal(dime(['keys', 'generate', '--org', 'a', '--user', 'b@a', '--out', path.join(dir, 'k')]).status, 2);
  });

  it('shows the public halves of a libdime keys file as libdime printed them', () => {
    const r = dime(['keys', 'show', V('keys/example.com.keys'), '--json']);
    assert.equal(r.status, 0, r.stderr);
    const o = oneJsonObject(r.stdout);
    const expected = vectorText('libdime/keys/example.com.keys.stdout');
    assert.ok(expected.includes(`= ${o.signingKey}`), 'pok= value');
    assert.ok(expected.includes(o.encryptionKey));
    assert.equal(o.dialect, 'libdime');
  });
});

describe('dime signet: reproduces libdime files byte for byte', () => {
  const dir = scratchDir();

  it('create (org signet from keys and wizard values)', () => {
    const out = path.join(dir, 'example.com.signet');
    const r = dime(['signet', 'create', '--keys', V('keys/example.com.keys'), '--domain', 'example.com', '--name', 'Example Organization', '--address', '1 Example Way, Springfield', '--country', 'US', '--postal-code', '12345', '--phone', '+1-555-0100', '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(fs.readFileSync(out, 'latin1'), vectorText('libdime/signets/example.com.signet'));
  });

  it('request (SSR, and a rotation SSR with --previous-keys)', () => {
    const out = path.join(dir, 'alice.ssr');
    assert.equal(dime(['signet', 'request', '--keys', V('keys/alice-example.com.keys'), '--out', out]).status, 0);
    assert.equal(fs.readFileSync(out, 'latin1'), vectorText('libdime/signets/alice-example.com.ssr'));
    const rot = path.join(dir, 'rot.ssr');
    assert.equal(dime(['signet', 'request', '--keys', V('keys/alice-rotated.keys'), '--previous-keys', V('keys/alice-example.com.keys'), '--out', rot]).status, 0);
    assert.equal(fs.readFileSync(rot, 'latin1'), vectorText('libdime/signets/alice-rotated.ssr'));
  });

  it('sign (user signet from an SSR with the org keys)', () => {
    const out = path.join(dir, 'bob.signet');
    const r = dime(['signet', 'sign', V('signets/bob-example.org.ssr'), '--org-keys', V('keys/example.org.keys'), '--address', 'bob@example.org', '--name', 'Bob Example', '--postal-address', '10 Other Road', '--country', 'CA', '--postal-code', 'H0H0H0', '--phone', '+1-555-0201', '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(fs.readFileSync(out, 'latin1'), vectorText('libdime/signets/bob@example.org.signet'));
  });

  it('sign accepts a rotation SSR and checks its custody with --previous', () => {
    const out = path.join(dir, 'rot.signet');
    const r = dime(['signet', 'sign', V('signets/alice-rotated.ssr'), '--org-keys', V('keys/example.com.keys'), '--address', 'alice@example.com', '--previous', V('signets/alice@example.com.signet'), '--name', 'Alice Example', '--postal-address', '2 Example Way, Springfield', '--country', 'US', '--postal-code', '12345', '--phone', '+1-555-0101', '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(fs.readFileSync(out, 'latin1'), vectorText('libdime/signets/alice-rotated.signet'));
    // With the wrong previous signet the custody check fails and nothing is signed.
    const bad = dime(['signet', 'sign', V('signets/alice-rotated.ssr'), '--org-keys', V('keys/example.com.keys'), '--address', 'alice@example.com', '--previous', V('signets/bob@example.org.signet'), '--out', path.join(dir, 'bad.signet')]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /SIGNET_NOT_SIGNABLE/);
    assert.ok(!fs.existsSync(path.join(dir, 'bad.signet')));
  });

  it('refuses user keys where org keys are needed', () => {
    const r = dime(['signet', 'create', '--keys', V('keys/alice-example.com.keys'), '--domain', 'example.com', '--out', path.join(dir, 'x')]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /USAGE/);
  });
});

describe('dime signet verify', () => {
  const cases: [string, string[], string, number][] = [
    ['org, own POK', [V('signets/example.com.signet')], 'id', 0],
    ['org, record POK', [V('signets/example.com.signet'), '--pok', '9/GgKfjc+40UhLxLbu3xockoxkWicFPEzIaxMVrSqsw'], 'id', 0],
    ['org, wrong POK', [V('signets/example.org.signet'), '--pok', '9/GgKfjc+40UhLxLbu3xockoxkWicFPEzIaxMVrSqsw'], 'unknown-pok', 1],
    ['user with org', [V('signets/alice@example.com.signet'), '--org', V('signets/example.com.signet')], 'id', 0],
    ['user with the wrong org', [V('signets/alice@example.com.signet'), '--org', V('signets/example.org.signet')], 'invalid', 1],
    ['tampered name', [V('signets/alice-tampered-name.signet'), '--org', V('signets/example.com.signet')], 'invalid', 1],
    ['tampered crypto signature', [V('signets/alice-tampered-cryptosig.signet'), '--org', V('signets/example.com.signet')], 'invalid', 1],
    ['user without org: only the SSR part is checked', [V('signets/alice@example.com.signet')], 'ssr', 1],
    ['SSR', [V('signets/alice-example.com.ssr')], 'ssr', 0],
    ['rotation SSR without previous', [V('signets/alice-rotated.ssr')], 'broken-custody', 1],
    ['rotation SSR with previous', [V('signets/alice-rotated.ssr'), '--previous', V('signets/alice@example.com.signet')], 'ssr', 0],
    ['rotated signet with previous', [V('signets/alice-rotated.signet'), '--org', V('signets/example.com.signet'), '--previous', V('signets/alice@example.com.signet')], 'id', 0],
    ['rotated signet without previous', [V('signets/alice-rotated.signet'), '--org', V('signets/example.com.signet')], 'broken-custody', 1],
    ['rotated signet, wrong previous', [V('signets/alice-rotated.signet'), '--org', V('signets/example.com.signet'), '--previous', V('signets/bob@example.org.signet')], 'broken-custody', 1],
    ['binary signet file', [V('signets/bob@example.org.signet.bin'), '--org', V('signets/example.org.signet.bin')], 'id', 0],
    ['Appendix B crypto-only org signet', [vectorPath('libdime/appendix-b-check/appB-org.signet'), '--pok', 'h44kA4AXy2gFnlF+osucG2t4SOBeu8CA3WWxo6RLfIA'], 'crypto', 0],
    ['PRIME org signet', [vectorPath('magma/sandbox/dime.localhost.localdomain.signet')], 'crypto', 0],
  ];
  for (const [name, args, state, status] of cases) {
    it(`${name}: ${state}, exit ${status}`, () => {
      const r = dime(['signet', 'verify', ...args, '--json']);
      assert.equal(r.status, status, r.stderr);
      const o = oneJsonObject(r.stdout);
      assert.deepEqual(Object.keys(o), JSON_KEYS);
      assert.equal(o.state, state);
      for (const fp of Object.values(o.fingerprints)) assert.match(fp as string, /^[A-Za-z0-9+/]{86}$/);
      // Human output says the same.
      const h = dime(['signet', 'verify', ...args]);
      assert.equal(h.status, status);
      assert.match(h.stdout, new RegExp(`^state\\s+: ${state} `, 'm'));
    });
  }

  it('reports dialect, id and the libdime fingerprints in JSON', () => {
    const o = oneJsonObject(dime(['signet', 'verify', V('signets/bob@example.org.signet'), '--org', V('signets/example.org.signet'), '--json']).stdout);
    assert.deepEqual(o, {
      type: 'user',
      id: 'bob@example.org',
      dialect: 'libdime',
      state: 'id',
      fingerprints: {
        ssr: 'NnYTLYb1bPrqOxADO/dM4G/zj3RKAahwS0g2ZshA4Iqo93ICNij4MspshbHD4Vt7DtWeD8tUdvfSdHtuNVeIhg',
        crypto: 'BY4tjwTB0gCEeGZLHFXF1+s+sAtq1kjitN6/+la5JmmX0e+/Tr2IG9KkuWZePKCXpWSGuaMnSwjx5K98kY48wQ',
        full: 'tZjQ/cJ9UYC6J/a5lcvOpsrrta+8Il3Fj/wmJvBtDto2ilGzib8eQPgzh9k/iInmmRxZKSgXnq7NoVw3Irp3iw',
        id: 'AlY0sU2IQNLS97HEViSBSmqUpamY9OV1+lCFvb4O2e9HCI54sRcN6dGrRjST33e4TOAkALx/p6bDOSygAivzow',
      },
    });
    const prime = oneJsonObject(dime(['signet', 'verify', vectorPath('magma/sandbox/dime.localhost.localdomain.signet'), '--json']).stdout);
    assert.equal(prime.dialect, 'prime');
    assert.equal(prime.id, null);
  });

  it('damaged signet files are malformed (exit 1), not crashes; non-signets are unreadable (exit 2)', () => {
    const dir = scratchDir();
    const text = vectorText('libdime/signets/alice@example.com.signet');
    // A changed checksum: the type is still known, the object is not trustworthy.
    const badCrc = path.join(dir, 'crc.signet');
    fs.writeFileSync(badCrc, text.replace(/^=.{4}$/m, '=AAAA'));
    let o = oneJsonObject(dime(['signet', 'verify', badCrc, '--json']).stdout);
    assert.equal(o.state, 'malformed');
    assert.equal(o.type, 'user');
    // A field length running past the end: overflow.
    const bin = fs.readFileSync(V('signets/alice@example.com.signet.bin'));
    const cut = Buffer.from(bin.subarray(0, 150));
    cut.writeUIntBE(cut.length - 5, 2, 3);
    const overflow = path.join(dir, 'cut.bin');
    fs.writeFileSync(overflow, cut);
    const r = dime(['signet', 'verify', overflow, '--json']);
    assert.equal(r.status, 1);
    o = oneJsonObject(r.stdout);
    assert.equal(o.state, 'overflow');
    // An unknown field id: malformed.
    const unknown = Buffer.from(bin);
    unknown[5 + 35 + 36 + 65 + 65] = 28; // first informational field id 16 → 28, an unnamed id
    const unk = path.join(dir, 'unknown.bin');
    fs.writeFileSync(unk, unknown);
    assert.equal(oneJsonObject(dime(['signet', 'verify', unk, '--json']).stdout).state, 'malformed');
    // Not a signet at all, or no file: exit 2 with a JSON error object.
    for (const file of [V('keys/example.com.keys'), path.join(dir, 'missing')]) {
      const e = dime(['signet', 'verify', file, '--json']);
      assert.equal(e.status, 2);
      assert.ok(oneJsonObject(e.stdout).error.code);
      assert.match(e.stderr, /\[FILE_UNREADABLE\]/);
    }
  });

  it('usage errors exit 2', () => {
    assert.equal(dime(['signet', 'verify', V('signets/example.com.signet'), '--org', V('signets/example.org.signet')]).status, 2);
    assert.equal(dime(['signet', 'verify', V('signets/example.com.signet'), '--pok', 'short']).status, 2);
    assert.equal(dime(['signet', 'verify']).status, 2);
  });
});

describe('dime signet show', () => {
  it('lists every field and the fingerprints, and does not verify', () => {
    const r = dime(['signet', 'show', V('signets/alice-tampered-name.signet')]);
    assert.equal(r.status, 0);
    assert.match(r.stdout, /^user signet for alice@example\.com: 422 bytes, libdime layout/);
    assert.match(r.stdout, /16 {2}Name {26}Alicg Example\n/); // the tampered byte shows
    assert.match(r.stdout, /ID {13}QifR\/Xk\+AScr/);
    const j = oneJsonObject(dime(['signet', 'show', V('signets/example.com.signet'), '--json']).stdout);
    assert.equal(j.fields.length, 11);
    assert.equal(j.fields[3].text, 'Example Organization');
  });
});
