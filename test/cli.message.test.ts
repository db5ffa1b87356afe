/** `dime message seal | sign-origin | open` through bin/dime: files, JSON views per actor, exit codes. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { dime, oneJsonObject, scratchDir } from './helpers/cli.js';
import { vectorPath } from './helpers/vectors.js';

const V = (...p: string[]) => vectorPath('libdime', ...p);
const SIGNETS = [
  '--author-signet', V('signets/alice@example.com.signet'),
  '--origin-signet', V('signets/example.com.signet'),
  '--destination-signet', V('signets/example.org.signet'),
  '--recipient-signet', V('signets/bob@example.org.signet'),
];
const KEYS = { author: 'alice-example.com', origin: 'example.com', destination: 'example.org', recipient: 'bob-example.org' } as const;
const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('dime message open on the libdime vectors', () => {
  for (const actor of Object.keys(KEYS) as (keyof typeof KEYS)[]) {
    it(`--as ${actor}: one JSON object holding only what the ${actor} may read`, () => {
      const r = dime(['message', 'open', V('messages/msg-2-origin-signed.dmime'), '--as', actor, '--keys', V(`keys/${KEYS[actor]}.keys`), ...SIGNETS, '--json']);
      assert.equal(r.status, 0, r.stderr);
      const o = oneJsonObject(r.stdout);
      assert.equal(o.ok, true);
      assert.equal(o.actor, actor);
      const expected = {
        author: ['attachments', 'commonHeaders', 'display', 'otherHeaders'],
        recipient: ['attachments', 'commonHeaders', 'display', 'otherHeaders'],
        origin: [],
        destination: [],
      }[actor];
      assert.deepEqual(Object.keys(o).filter((k) => !['ok', 'actor', 'envelope'].includes(k)).sort(), expected);
      const envelopeKeys = {
        author: ['author', 'authorSignet', 'destination', 'destinationSignet', 'origin', 'originSignet', 'recipient', 'recipientSignet'],
        recipient: ['author', 'authorSignet', 'destination', 'destinationSignet', 'origin', 'originSignet', 'recipient', 'recipientSignet'],
        origin: ['author', 'authorSignet', 'destination', 'destinationSignet'],
        destination: ['origin', 'originSignet', 'recipient', 'recipientSignet'],
      }[actor];
      assert.deepEqual(Object.keys(o.envelope).sort(), envelopeKeys);
      if (actor === 'recipient' || actor === 'author') {
        assert.equal(o.display[0], b64('Hello from libdime.\r\nThis is the display chunk.\r\n'));
        assert.equal(o.otherHeaders, b64('X-Interop: libdime\r\n'));
        assert.deepEqual(o.attachments, []);
      }
    });
  }

  it('negative verdicts: ok false, the error code, exit 1', () => {
    const cases: [string, string, string, RegExp][] = [
      ['msg-3-tampered-byte2700.dmime', 'recipient', 'MESSAGE_SIGNATURE_INVALID', /author tree signature/],
      ['msg-1-author.dmime', 'recipient', 'MESSAGE_SIGNATURE_INVALID', /origin meta bounce signature/],
      ['msg-1-author.dmime', 'destination', 'MESSAGE_SIGNATURE_INVALID', /origin meta bounce signature/],
    ];
    for (const [file, actor, code, message] of cases) {
      const r = dime(['message', 'open', V(`messages/${file}`), '--as', actor, '--keys', V(`keys/${KEYS[actor as keyof typeof KEYS]}.keys`), ...SIGNETS, '--json']);
      assert.equal(r.status, 1, `${file} as ${actor}`);
      const o = oneJsonObject(r.stdout);
      assert.deepEqual(Object.keys(o), ['ok', 'actor', 'error', 'envelope']);
      assert.equal(o.ok, false);
      assert.equal(o.error.code, code);
      assert.match(o.error.message, message);
      assert.deepEqual(o.envelope, {});
    }
  });

  it('usage errors exit 2: unknown actor, wrong kind of keys, missing signets', () => {
    const m = V('messages/msg-2-origin-signed.dmime');
    assert.equal(dime(['message', 'open', m, '--as', 'postmaster', '--keys', V('keys/example.com.keys'), ...SIGNETS]).status, 2);
    assert.equal(dime(['message', 'open', m, '--as', 'origin', '--keys', V('keys/bob-example.org.keys'), ...SIGNETS]).status, 2);
    const r = dime(['message', 'open', m, '--as', 'recipient', '--keys', V('keys/bob-example.org.keys'), '--json']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /MESSAGE_BAD_ARGUMENT/);
  });
});

describe('dime message seal → sign-origin → open', () => {
  it('round-trips through files, with bounce signatures as asked', () => {
    const dir = scratchDir();
    const f = (n: string) => path.join(dir, n);
    fs.writeFileSync(f('common'), 'Date: Sun, 22 Nov 2026 10:00:00 +0000\nTo: Bob <bob@example.org>\nFrom: Alice <alice@example.com>\nSubject: Files\n');
    fs.writeFileSync(f('other'), 'Message-ID: <x@example.com>\r\n');
    fs.writeFileSync(f('d1'), 'First display part\r\n');
    fs.writeFileSync(f('a1'), Buffer.from([0, 1, 2, 255]));
    let r = dime(['message', 'seal', '--author-keys', V('keys/alice-example.com.keys'), ...SIGNETS, '--common-headers', f('common'), '--other-headers', f('other'), '--display', f('d1'), '--attachment', f('a1'), '--out', f('m1')]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(fs.statSync(f('m1')).mode & 0o777, 0o600);
    r = dime(['message', 'sign-origin', f('m1'), '--org-keys', V('keys/example.com.keys'), ...SIGNETS, '--bounce', 'meta', '--out', f('m2')]);
    assert.equal(r.status, 0, r.stderr);
    const o = oneJsonObject(dime(['message', 'open', f('m2'), '--as', 'recipient', '--keys', V('keys/bob-example.org.keys'), ...SIGNETS, '--json']).stdout);
    assert.equal(o.ok, true);
    assert.equal(Buffer.from(o.commonHeaders, 'base64').toString(), 'Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nTo: Bob <bob@example.org>\r\nFrom: Alice <alice@example.com>\r\nSubject: Files\r\n');
    assert.deepEqual(o.attachments, [Buffer.from([0, 1, 2, 255]).toString('base64')]);
    // The author-stage file is not yet acceptable to the recipient.
    assert.equal(dime(['message', 'open', f('m1'), '--as', 'recipient', '--keys', V('keys/bob-example.org.keys'), ...SIGNETS]).status, 1);
    assert.equal(dime(['message', 'sign-origin', f('m1'), '--org-keys', V('keys/example.com.keys'), ...SIGNETS, '--bounce', 'everything', '--out', f('m3')]).status, 2);
  });
});
