import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger } from '../src/log.js';

function capture() {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return { lines, log: createLogger({ destination, level: 'debug' }) };
}

describe('logger redaction', () => {
  it('censors keys, passwords and message content at the top level and one level down', () => {
    const { lines, log } = capture();
    log.info({ seed: 'AAAA', password: 'hunter2', user: { privateKey: 'BBBB', address: 'a@example.net' }, msg2: { body: 'Dear Bob' } }, 'event');
    const out = lines.join('');
    for (const secret of ['AAAA', 'hunter2', 'BBBB', 'Dear Bob']) assert.ok(!out.includes(secret), `${secret} leaked: ${out}`);
    const entry = JSON.parse(lines[0]!);
    assert.equal(entry.user.address, 'a@example.net');
    assert.equal(entry.user.privateKey, '[redacted]');
    assert.equal(entry.msg, 'event');
  });
});
