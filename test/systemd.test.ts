/** The systemd units pass `systemd-analyze verify`, with ExecStart pointed at this checkout's bin/dime. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { DIME_BIN, scratchDir } from './helpers/cli.js';

const UNITS = path.resolve(path.dirname(DIME_BIN), '../systemd');

describe('systemd units', () => {
  const units = fs.readdirSync(UNITS).filter((f) => f.endsWith('.service'));

  it('exist for the all-in-one and the split services', () => {
    assert.deepEqual(units.sort(), ['dime-milter.service', 'dime-policy.service', 'dime-relay.service', 'dime.service']);
  });

  it('verify cleanly, and a broken unit does not (the check can fail)', { skip: !fs.existsSync('/usr/bin/systemd-analyze') && 'systemd-analyze is not installed' }, () => {
    const dir = scratchDir();
    for (const u of units) fs.writeFileSync(path.join(dir, u), fs.readFileSync(path.join(UNITS, u), 'utf8').replaceAll('/usr/bin/dime', DIME_BIN));
    const ok = spawnSync('systemd-analyze', ['verify', ...units.map((u) => path.join(dir, u))], { encoding: 'utf8' });
    // verify reports bad values as warnings with exit 0: clean means no line about our files at all.
    assert.equal(ok.status, 0, ok.stderr);
    assert.deepEqual(ok.stderr.split('\n').filter((l) => l.includes(dir)), []);
    fs.writeFileSync(path.join(dir, 'broken.service'), fs.readFileSync(path.join(dir, 'dime.service'), 'utf8').replace('ProtectSystem=strict', 'ProtectSystem=banana'));
    const bad = spawnSync('systemd-analyze', ['verify', path.join(dir, 'broken.service')], { encoding: 'utf8' });
    assert.match(bad.stderr, /broken\.service:\d+: .*banana/);
  });

  it('harden every unit, and grant CAP_NET_BIND_SERVICE only where the DMTP port is bound', () => {
    for (const u of units) {
      const text = fs.readFileSync(path.join(UNITS, u), 'utf8');
      for (const line of ['ProtectSystem=strict', 'NoNewPrivileges=yes', 'PrivateTmp=yes', 'User=dime']) assert.ok(text.includes(line), `${u}: ${line}`);
      assert.equal(/AmbientCapabilities=CAP_NET_BIND_SERVICE/.test(text), u === 'dime.service' || u === 'dime-relay.service', u);
    }
    assert.match(fs.readFileSync(path.join(UNITS, 'dime.service'), 'utf8'), /Type=notify[\s\S]*ExecReload=\/bin\/kill -HUP \$MAINPID/);
  });
});
