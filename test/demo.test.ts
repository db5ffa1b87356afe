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
