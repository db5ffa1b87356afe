/**
 * Peak resident memory while sealing a 25 MiB message (issue 3: below 4× the message size).
 * Run in a fresh process so earlier benchmarks' garbage does not count: `node dist/bench/seal-memory.js`.
 * Reported: peak RSS during the seal minus RSS just before it (the content already in memory).
 */
import * as nodeCrypto from 'node:crypto';
import { createNodeBackend } from '../src/crypto/index.js';
import { sealMessage } from '../src/dime/message/index.js';
import { createOrgSignet, createSigningRequest, signUserSignet } from '../src/dime/signet/index.js';

const MIB = 1024 * 1024;
const SIZE = 25 * MIB;
const crypto = createNodeBackend();
const te = (s: string) => new TextEncoder().encode(s);
const key = (l: string) => new Uint8Array(nodeCrypto.createHash('sha256').update(l).digest());

const orgA = crypto.ed25519Signer(key('oa'));
const orgB = crypto.ed25519Signer(key('ob'));
const origin = await createOrgSignet({ signer: orgA, encryptionKey: crypto.secp256k1PublicKey(key('oe')), domain: 'example.com' });
const destination = await createOrgSignet({ signer: orgB, encryptionKey: crypto.secp256k1PublicKey(key('de')), domain: 'example.org' });
const authorSigner = crypto.ed25519Signer(key('as'));
const author = await signUserSignet(crypto, await createSigningRequest({ signer: authorSigner, encryptionKey: crypto.secp256k1PublicKey(key('ae')) }), { orgSigner: orgA, address: 'alice@example.com' });
const recipient = await signUserSignet(crypto, await createSigningRequest({ signer: crypto.ed25519Signer(key('rs')), encryptionKey: crypto.secp256k1PublicKey(key('re')) }), { orgSigner: orgB, address: 'bob@example.org' });

const display = new Uint8Array(nodeCrypto.randomBytes(SIZE));
global.gc?.();
const before = process.memoryUsage().rss;
let peak = before;
const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 2);
const sealed = await sealMessage(
  crypto,
  {
    author: { address: 'alice@example.com', signet: author, signer: authorSigner },
    origin: { domain: 'example.com', signet: origin },
    destination: { domain: 'example.org', signet: destination },
    recipient: { address: 'bob@example.org', signet: recipient },
  },
  { commonHeaders: { Date: te('x'), To: te('bob@example.org'), From: te('alice@example.com'), Subject: te('25 MiB') }, otherHeaders: new Uint8Array(0), display: [display] },
);
clearInterval(timer);
// maxRSS is the kernel's own peak (KiB), which the 2 ms sampling could miss between samples.
peak = Math.max(peak, process.resourceUsage().maxRSS * 1024);
const ratio = (peak - before) / SIZE;
console.log(`seal of a ${SIZE / MIB} MiB message (${(sealed.length / MIB).toFixed(1)} MiB sealed): peak RSS ${(peak / MIB).toFixed(0)} MiB, ${((peak - before) / MIB).toFixed(0)} MiB above the ${(before / MIB).toFixed(0)} MiB before it = ${ratio.toFixed(2)}× the message size (target < 4×)`);
