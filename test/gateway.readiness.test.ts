/**
 * The keystore check behind /readyz (src/gateway/open.ts): a POK that signs is ready; one that
 * fails, hangs or signs wrongly is not, with the failure's code. The signers here stand in for an
 * HSM that is gone, stuck or broken, which a test cannot make SoftHSM2 do on demand; the healthy
 * path and Redis run for real in test/start.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { defaultCrypto } from '../src/crypto/index.js';
import { DimeError } from '../src/errors.js';
import { keystoreReadiness, READINESS_TIMEOUT_MS } from '../src/gateway/open.js';
import type { OrgContext } from '../src/keystore/org.js';

const crypto = defaultCrypto();
const seed = new Uint8Array(32).fill(7);
const publicKey = crypto.ed25519PublicKey(seed);

function org(sign: (data: Uint8Array) => Promise<Uint8Array>): Pick<OrgContext, 'keystore' | 'crypto'> {
  return { crypto, keystore: { kind: 'pkcs11', pok: { label: 'pok/2', publicKey, sign } } as unknown as OrgContext['keystore'] };
}

describe('/readyz keystore check', () => {
  it('ready when the POK signs and the signature verifies', async () => {
    const c = await keystoreReadiness(org(async (data) => crypto.ed25519Sign(seed, data)));
    assert.deepEqual([c.name, c.ok, c.required, c.detail], ['keystore', true, true, 'the POK pok/2 signs (pkcs11)']);
  });

  it('not ready when the HSM refuses, with its code', async () => {
    const c = await keystoreReadiness(org(() => Promise.reject(new DimeError('HSM_UNAVAILABLE', 'C_Sign: CKR_DEVICE_REMOVED'))));
    assert.deepEqual([c.ok, c.required, c.code], [false, true, 'HSM_UNAVAILABLE']);
    assert.match(c.detail, /^the POK pok\/2 cannot sign: .*C_Sign: CKR_DEVICE_REMOVED$/);
  });

  it('not ready when the HSM does not answer in time', async () => {
    const t0 = Date.now();
    const c = await keystoreReadiness(org(() => new Promise<Uint8Array>(() => undefined)));
    assert.deepEqual([c.ok, c.code], [false, 'DEADLINE_EXCEEDED']);
    assert.ok(Date.now() - t0 >= READINESS_TIMEOUT_MS - 50, 'waited for the deadline');
  });

  it('not ready when the signature does not verify under the POK', async () => {
    const other = new Uint8Array(32).fill(9);
    const c = await keystoreReadiness(org(async (data) => crypto.ed25519Sign(other, data)));
    assert.deepEqual([c.ok, c.code], [false, 'KEYSTORE_CORRUPT']);
  });
});
