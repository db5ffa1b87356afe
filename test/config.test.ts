import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { loadConfig, parseConfig, renderConfig } from '../src/config/config.js';
import { isDimeError } from '../src/errors.js';
import { dime, oneJsonObject, scratchDir } from './helpers/cli.js';

const bad = (text: string, re: RegExp) =>
  assert.throws(() => parseConfig(text, 'test.toml', {}), (e: unknown) => isDimeError(e, 'CONFIG_INVALID') && re.test((e as Error).message), text);

describe('configuration', () => {
  it('embedded defaults: file keystore and loopback listeners', () => {
    const c = loadConfig(undefined, {});
    assert.equal(c.keystore.type, 'file');
    assert.equal(c.milter.listen, 'inet:127.0.0.1:8899');
    assert.equal(c.source, undefined);
  });

  it('parses every section and takes the HSM PIN from the environment only', () => {
    const c = parseConfig(
      'domain = "Example.COM"\ndata_dir = "/srv/dime"\n[keystore]\ntype = "pkcs11"\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\ntoken = "dime"\n[relay]\nlisten = "inet:0.0.0.0:26"\ntls_cert = "/c"\ntls_key = "/k"\n[log]\nlevel = "debug"\n',
      'x.toml',
      { DIME_HSM_PIN: '1234' },
    );
    assert.equal(c.domain, 'example.com');
    assert.deepEqual(c.keystore, { type: 'pkcs11', file: '/srv/dime/org.keys', module: '/usr/lib/softhsm/libsofthsm2.so', token: 'dime', pin: '1234' });
    assert.equal(c.relay.tlsKey, '/k');
    assert.equal(c.log.level, 'debug');
  });

  it('errors name the key and the fix', () => {
    bad('domian = "x"', /domian is not a setting; known settings: domain, data_dir/);
    bad('[milter]\nlisten = 8899', /milter.listen must be a string; inet:HOST:PORT/);
    bad('[milter]\nlisten = "127.0.0.1:8899"', /milter.listen is "127.0.0.1:8899"; use inet:HOST:PORT or unix:/);
    bad('[keystore]\ntype = "hsm"', /keystore.type is "hsm"; type = "file" or type = "pkcs11"/);
    bad('[keystore]\ntype = "pkcs11"\nmodule = "/m"\ntoken = "t"', /keystore.pin_file is required .* unless DIME_HSM_PIN is set/);
    bad('[relay]\ntls_cert = "/c"', /relay.tls_key is missing/);
    bad('[relays]\nlisten = "inet:1.2.3.4:26"', /\[relays\] is not a section/);
    bad('domain = "x', /line 1/);
  });

  it('renderConfig writes a file that parses back to the same settings', () => {
    const c = parseConfig('domain = "example.com"\n[relay]\ntls_cert = "/c"\ntls_key = "/k"\ndual_listen = "inet:0.0.0.0:25"\n', 'a', {});
    const again = parseConfig(renderConfig(c), 'b', {});
    assert.deepEqual({ ...again, source: undefined }, { ...c, source: undefined });
  });

  it('dime config check: exit 0 when valid, 2 with the message when not', () => {
    const dir = scratchDir();
    const good = path.join(dir, 'good.toml');
    fs.writeFileSync(good, 'domain = "example.com"\n');
    assert.equal(oneJsonObject(dime(['config', 'check', good, '--json']).stdout).domain, 'example.com');
    const wrong = path.join(dir, 'bad.toml');
    fs.writeFileSync(wrong, '[milter]\nlisten = "nowhere"\n');
    const r = dime(['config', 'check', wrong]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /milter.listen is "nowhere".*\[CONFIG_INVALID\]/);
  });
});
