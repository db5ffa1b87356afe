import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { defaultCrypto } from '../src/crypto/index.js';
import { fingerprints } from '../src/dime/signet/index.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { isDimeError } from '../src/errors.js';
import { scratchDir } from './helpers/cli.js';
import { vectorParties } from './helpers/dime-parties.js';
import { dearmorSignet } from '../src/dime/signet/index.js';
import { vectorText } from './helpers/vectors.js';

const crypto = defaultCrypto();
const p = vectorParties(crypto);

describe('file signet store', () => {
  it('publishes versions, answers current, history and by fingerprint, and withdraws users', async () => {
    const store = new FileSignetStore(scratchDir(), crypto);
    assert.equal(await store.org('example.com'), undefined);
    await store.put(p.signets.origin);
    await store.put(p.signets.author);
    const rotated = dearmorSignet(vectorText('libdime/signets/alice-rotated.signet'));
    await store.put(rotated);
    assert.deepEqual((await store.org('EXAMPLE.com'))!.bytes, p.signets.origin.bytes);
    assert.deepEqual((await store.user('alice@example.com'))!.bytes, rotated.bytes);
    assert.deepEqual((await store.userHistory('alice@example.com')).map((s) => s.bytes), [p.signets.author.bytes, rotated.bytes]);
    const oldFp = fingerprints(crypto, p.signets.author).crypto!;
    assert.deepEqual((await store.byFingerprint('alice@example.com', oldFp))!.bytes, p.signets.author.bytes);
    assert.equal(await store.byFingerprint('alice@example.com', 'x'.repeat(86)), undefined);
    assert.deepEqual(await store.users('example.com'), ['alice@example.com']);
    await store.removeUser('alice@example.com');
    assert.equal(await store.user('alice@example.com'), undefined);
    assert.equal((await store.userHistory('alice@example.com')).length, 2, 'history kept to verify old mail');
    assert.deepEqual(await store.users('example.com'), []);
    await store.put(rotated);
    assert.ok(await store.user('alice@example.com'), 'publishing again reinstates');
    assert.deepEqual(fs.readdirSync(path.join(store.dir, 'example.com', 'users', 'alice')).sort(), ['1.signet', '2.signet', '3.signet']);
  });

  it('refuses names that could escape its directory, SSRs and signets without identifier', async () => {
    const store = new FileSignetStore(scratchDir(), crypto);
    for (const bad of ['../etc@example.com', 'a@..', 'a/b@example.com', '@example.com']) {
      await assert.rejects(store.user(bad), (e: unknown) => isDimeError(e, 'SIGNET_BAD_ARGUMENT'), bad);
    }
    await assert.rejects(store.put(dearmorSignet(vectorText('libdime/signets/alice-example.com.ssr'))), (e: unknown) => isDimeError(e, 'SIGNET_BAD_ARGUMENT'));
  });
});
