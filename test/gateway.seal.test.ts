/** Every corpus message sealed, signed by the origin and opened by the recipient comes back byte for byte. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { defaultCrypto } from '../src/crypto/index.js';
import { openMessage, sealMessage, signAsOrigin } from '../src/dime/message/index.js';
import { mimeToParts, partsToMime } from '../src/gateway/mime.js';
import { dime, scratchDir } from './helpers/cli.js';
import { vectorParties } from './helpers/dime-parties.js';
import { vectorPath } from './helpers/vectors.js';

const crypto = defaultCrypto();
const p = vectorParties(crypto);
const CORPUS = path.resolve(vectorPath(), '../fixtures/mail');
const files = fs.readdirSync(CORPUS).filter((f) => f.endsWith('.eml')).sort();

describe('RFC 5322 → DMIME → RFC 5322 through all four stages', () => {
  it(`the corpus (${files.length} messages) survives seal, origin signing and the recipient's open byte for byte`, async () => {
    assert.ok(files.length >= 15);
    for (const f of files) {
      const raw = new Uint8Array(fs.readFileSync(path.join(CORPUS, f)));
      const parts = mimeToParts(raw);
      const sealed = await sealMessage(crypto, p.seal, { commonHeaders: parts.common, otherHeaders: parts.otherHeaders, display: parts.display, attachments: parts.attachments });
      const { message } = await signAsOrigin(crypto, sealed, { keys: p.actorKeys('origin'), signer: crypto.ed25519Signer(p.keys.origin.signingKey), signets: p.signets, bounce: { meta: true } });
      const v = await openMessage(crypto, message, { actor: 'recipient', keys: p.actorKeys('recipient'), signets: p.signets });
      const back = partsToMime({ common: v.common!, otherHeaders: v.otherHeaders!, display: v.display!, attachments: v.attachments! });
      assert.ok(Buffer.from(back).equals(Buffer.from(raw)), f);
    }
  });

  it('dime message seal --eml / open --eml round-trip a file', () => {
    const dir = scratchDir();
    const V = (...x: string[]) => vectorPath('libdime', ...x);
    const signets = ['--author-signet', V('signets/alice@example.com.signet'), '--origin-signet', V('signets/example.com.signet'), '--destination-signet', V('signets/example.org.signet'), '--recipient-signet', V('signets/bob@example.org.signet')];
    const eml = path.join(CORPUS, files.find((f) => /alternative|mixed/.test(f)) ?? files[0]!);
    assert.equal(dime(['message', 'seal', '--author-keys', V('keys/alice-example.com.keys'), ...signets, '--eml', eml, '--out', path.join(dir, 'm1')]).status, 0);
    assert.equal(dime(['message', 'sign-origin', path.join(dir, 'm1'), '--org-keys', V('keys/example.com.keys'), ...signets, '--out', path.join(dir, 'm2')]).status, 0);
    const r = dime(['message', 'open', path.join(dir, 'm2'), '--as', 'recipient', '--keys', V('keys/bob-example.org.keys'), ...signets, '--eml', path.join(dir, 'out.eml')]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(fs.readFileSync(path.join(dir, 'out.eml')).equals(fs.readFileSync(eml)));
    assert.equal(dime(['message', 'open', path.join(dir, 'm2'), '--as', 'destination', '--keys', V('keys/example.org.keys'), ...signets, '--eml', path.join(dir, 'x.eml')]).status, 2);
  });
});
