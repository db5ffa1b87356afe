/**
 * Signet signing and verification against raw node:crypto Ed25519 doing the same signatures over the
 * same bytes in the same run: the ratio is what our codec, validation and async signing cost on top
 * of the cryptography. Target (issue 2): ≥ 0.7× raw.
 */
import * as crypto from 'node:crypto';
import { createNodeBackend } from '../src/crypto/index.js';
import { dearmorKeys } from '../src/dime/keys.js';
import {
  createOrgSignet,
  createSigningRequest,
  decodeSignet,
  fieldsThrough,
  getField,
  signUserSignet,
  validateSignet,
  type Signet,
} from '../src/dime/signet/index.js';
import { registerBench, type BenchGroup } from './lib.js';

const ORG_KEYS = `-----BEGIN ORGANIZATIONAL KEY-----
B6AAAEUBICZMqjtmyoPbQDupgK4VT7f+iy9IXD/9fyMAi0ks/txDAwAguA1jpR2r
NGWUmeW6HTaBAqWF8zp2KM8O0V9P82hrSh0=
=TCPI
-----END ORGANIZATIONAL KEY-----
`; // test/vectors/libdime/keys/example.com.keys (public test key)

const INFO = {
  text: [
    { id: 16, value: 'Example Organization' },
    { id: 17, value: '1 Example Way, Springfield' },
    { id: 19, value: 'US' },
    { id: 20, value: '12345' },
    { id: 21, value: '+1-555-0100' },
  ],
};

function pkcs8(seed: Uint8Array): crypto.KeyObject {
  return crypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]), format: 'der', type: 'pkcs8' });
}

/** The byte strings a signet's signatures cover, to sign or verify them raw in the baseline. */
function signedInputs(s: Signet, sigIds: number[]): { covered: Uint8Array; signature: Uint8Array }[] {
  return sigIds.map((id) => ({ covered: fieldsThrough(s, id - 1), signature: getField(s, id)!.value }));
}

async function groups(): Promise<BenchGroup[]> {
  const backend = createNodeBackend();
  const orgKeys = dearmorKeys(ORG_KEYS);
  const orgSigner = backend.ed25519Signer(orgKeys.signingKey);
  const orgEnc = backend.secp256k1PublicKey(orgKeys.encryptionKey);
  const userSeed = crypto.createHash('sha256').update('bench user').digest();
  const userSigner = backend.ed25519Signer(userSeed);
  const userEnc = backend.secp256k1PublicKey(crypto.createHash('sha256').update('bench user enc').digest());

  const org = await createOrgSignet({ signer: orgSigner, encryptionKey: orgEnc, info: INFO, domain: 'example.com' });
  const ssr = await createSigningRequest({ signer: userSigner, encryptionKey: userEnc });
  const user = await signUserSignet(backend, ssr, { orgSigner, address: 'alice@example.com', info: INFO });
  if (validateSignet(backend, user, { org }).state !== 'id') throw new Error('bench user signet does not validate');

  // Raw baseline keys: imported once, as the backend caches them.
  const orgPriv = pkcs8(orgKeys.signingKey);
  const orgPub = crypto.createPublicKey(orgPriv);
  const userPub = crypto.createPublicKey(pkcs8(userSeed));

  const orgSigs = signedInputs(org, [4, 253, 255]);
  const userSigs = signedInputs(user, [6, 253, 255]);
  const userSsrSig = signedInputs(user, [5])[0]!;
  const orgBytes = org.bytes;
  const userBytes = user.bytes;
  const poks = [orgSigner.publicKey];

  const rawSign = (inputs: { covered: Uint8Array }[]) => inputs.map((i) => crypto.sign(null, i.covered, orgPriv));
  const rawVerify = (inputs: { covered: Uint8Array; signature: Uint8Array }[]) => {
    let ok = true;
    for (const i of inputs) ok = crypto.verify(null, i.covered, orgPub, i.signature) && ok;
    return ok;
  };

  return [
    {
      name: 'org signet create (3 POK signatures: crypto, full, ID)',
      baseline: 'raw node:crypto Ed25519 ×3',
      cases: [
        { name: 'raw node:crypto Ed25519 ×3', fn: () => rawSign(orgSigs) },
        { name: 'createOrgSignet', fn: () => createOrgSignet({ signer: orgSigner, encryptionKey: orgEnc, info: INFO, domain: 'example.com' }) },
      ],
    },
    {
      name: 'user signet sign (verify the SSR, then 3 org signatures)',
      baseline: 'raw node:crypto Ed25519 verify + sign ×3',
      cases: [
        {
          name: 'raw node:crypto Ed25519 verify + sign ×3',
          fn: () => crypto.verify(null, userSsrSig.covered, userPub, userSsrSig.signature) && rawSign(userSigs),
        },
        { name: 'signUserSignet', fn: () => signUserSignet(backend, ssr, { orgSigner, address: 'alice@example.com', info: INFO }) },
      ],
    },
    {
      name: 'org signet verify from bytes (3 signatures against the record POK)',
      baseline: 'raw node:crypto Ed25519 verify ×3',
      cases: [
        { name: 'raw node:crypto Ed25519 verify ×3', fn: () => rawVerify(orgSigs) },
        { name: 'decodeSignet + validateSignet', fn: () => validateSignet(backend, decodeSignet(orgBytes), { poks }).state },
      ],
    },
    {
      name: 'user signet verify from bytes (own signature + 3 org signatures)',
      baseline: 'raw node:crypto Ed25519 verify ×4',
      cases: [
        { name: 'raw node:crypto Ed25519 verify ×4', fn: () => crypto.verify(null, userSsrSig.covered, userPub, userSsrSig.signature) && rawVerify(userSigs) },
        { name: 'decodeSignet + validateSignet', fn: () => validateSignet(backend, decodeSignet(userBytes), { org }).state },
      ],
    },
  ];
}

registerBench({ name: 'signet', groups });
