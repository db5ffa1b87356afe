import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runDemo } from '../src/cli/demo.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { dime, oneJsonObject } from './helpers/cli.js';

describe('dime demo', () => {
  it('each hop sees only what DIME allows, and the recipient gets the original byte for byte', async () => {
    const r = await runDemo(defaultCrypto());
    assert.equal(r.faithful, true);
    assert.equal(r.wireHidesContent, true);
    const hop = (prefix: string) => r.hops.find((h) => h.who.startsWith(prefix))!.sees.join('\n');
    assert.match(hop('origin'), /author: alice@a\.test/);
    assert.match(hop('origin'), /destination: b\.test/);
    assert.doesNotMatch(hop('origin'), /bob|secret plan/i);
    assert.match(hop('destination'), /recipient: bob@b\.test/);
    assert.doesNotMatch(hop('destination'), /alice|secret plan/i);
    assert.match(hop('recipient'), /Subject Our secret plan/);
  });

  it('the CLI prints one JSON object and exits 0', () => {
    const r = dime(['demo', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const o = oneJsonObject(r.stdout);
    assert.equal(o.faithful, true);
    assert.equal(o.hops.length, 5);
  });
});

describe('npm run quickstart (the README\'s first command, after npm ci)', () => {
  it('shows the demo, bootstraps a dark domain, and leaves a running sidecar that stops cleanly', { timeout: 120_000 }, async () => {
    const { spawn } = await import('node:child_process');
    const path = await import('node:path');
    const { fileURLToPath } = await import('node:url');
    const { scratchDir } = await import('./helpers/cli.js');
    const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../scripts/quickstart.sh');
    const dir = path.join(scratchDir('dime-quickstart-'), 'demo');
    // The script ends in `exec dime start`, so this child becomes the sidecar itself.
    const child = spawn('bash', [script, 'quick.test', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    try {
      const deadline = Date.now() + 90_000;
      while (!/"msg":"dime started"/.test(out)) {
        if (Date.now() > deadline || child.exitCode !== null) assert.fail(`no running sidecar:\n${out.slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.match(out, /the original message, byte for byte/);
      assert.match(out, /_dx\.quick\.test\. 3600 IN TXT "ver=1 pok=/);
      assert.match(out, /added: postmaster@quick\.test\s+trustful/);
      for (const service of ['gateway', 'milter', 'policy', 'socketmap', 'relay', 'lmtp', 'metrics']) assert.match(out, new RegExp(`"${service}=`));
      const health = await fetch('http://127.0.0.1:9464/healthz');
      assert.equal(health.status, 200);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await new Promise<number | null>((r) => child.once('exit', (c) => r(c))), 0, out.slice(-2000));
  });
});
