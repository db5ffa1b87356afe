/**
 * DMIME seal and open throughput next to their floor: the same AES-256-CBC, SHA-512, Ed25519 and
 * secp256k1 ECDH operations on the same byte counts, done directly with node:crypto in the same run.
 * The ratio is what chunking, padding, copying and checking cost on top of the cryptography.
 * Targets (issue 3): ≥ 0.5× the floor at 10 MiB; ≥ 300 sealed 4 KiB messages per second per core.
 */
import * as nodeCrypto from 'node:crypto';
import { createNodeBackend } from '../src/crypto/index.js';
import { decodeMessage, localActorKeys, openMessage, sealMessage, signAsOrigin, type MessageContent } from '../src/dime/message/index.js';
import { createOrgSignet, createSigningRequest, signUserSignet } from '../src/dime/signet/index.js';
import { registerBench, type BenchGroup } from './lib.js';

const te = (s: string) => new TextEncoder().encode(s);

/** Keys and signets for the four actors, made here so the bench needs no files. */
async function parties(crypto: ReturnType<typeof createNodeBackend>) {
  const make = (label: string) => ({
    seed: new Uint8Array(nodeCrypto.createHash('sha256').update(`${label} sign`).digest()),
    enc: new Uint8Array(nodeCrypto.createHash('sha256').update(`${label} enc`).digest()),
  });
  const a = make('author'), o = make('origin'), d = make('destination'), r = make('recipient');
  const orgSigner = crypto.ed25519Signer(o.seed);
  const destSigner = crypto.ed25519Signer(d.seed);
  const origin = await createOrgSignet({ signer: orgSigner, encryptionKey: crypto.secp256k1PublicKey(o.enc), domain: 'example.com' });
  const destination = await createOrgSignet({ signer: destSigner, encryptionKey: crypto.secp256k1PublicKey(d.enc), domain: 'example.org' });
  const user = async (k: typeof a, org: typeof orgSigner, address: string) =>
    signUserSignet(crypto, await createSigningRequest({ signer: crypto.ed25519Signer(k.seed), encryptionKey: crypto.secp256k1PublicKey(k.enc) }), { orgSigner: org, address });
  const author = await user(a, orgSigner, 'alice@example.com');
  const recipient = await user(r, destSigner, 'bob@example.org');
  return {
    a, o, d, r, orgSigner,
    signets: { author, origin, destination, recipient },
    seal: {
      author: { address: 'alice@example.com', signet: author, signer: crypto.ed25519Signer(a.seed) },
      origin: { domain: 'example.com', signet: origin },
      destination: { domain: 'example.org', signet: destination },
      recipient: { address: 'bob@example.org', signet: recipient },
    },
  };
}

function pkcs8(seed: Uint8Array): nodeCrypto.KeyObject {
  return nodeCrypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]), format: 'der', type: 'pkcs8' });
}

function cbc(key: Uint8Array, iv: Uint8Array, data: Uint8Array, decrypt = false): Buffer {
  const c = decrypt ? nodeCrypto.createDecipheriv('aes-256-cbc', key, iv) : nodeCrypto.createCipheriv('aes-256-cbc', key, iv);
  c.setAutoPadding(false);
  return Buffer.concat([c.update(data), c.final()]);
}

async function groups(): Promise<BenchGroup[]> {
  const crypto = createNodeBackend();
  const p = await parties(crypto);
  const out: BenchGroup[] = [];
  const authorKey = pkcs8(p.a.seed);
  const authorPub = nodeCrypto.createPublicKey(authorKey);
  const originKey = pkcs8(p.o.seed);
  const originPub = nodeCrypto.createPublicKey(originKey);
  const peerPub = crypto.secp256k1PublicKey(p.r.enc);
  const key32 = nodeCrypto.randomBytes(32);
  const iv16 = nodeCrypto.randomBytes(16);

  for (const [label, size] of [['4 KiB', 4 * 1024], ['256 KiB', 256 * 1024], ['10 MiB', 10 * 1024 * 1024]] as const) {
    const content: MessageContent = {
      commonHeaders: { Date: te('Sun, 22 Nov 2026 10:00:00 +0000'), To: te('Bob <bob@example.org>'), From: te('Alice <alice@example.com>'), Subject: te('Benchmark') },
      otherHeaders: te('Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n'),
      display: [new Uint8Array(nodeCrypto.randomBytes(size))],
    };
    const sealed = await sealMessage(crypto, p.seal, content);
    const signed = (await signAsOrigin(crypto, sealed, { keys: localActorKeys(crypto, p.o.enc), signer: p.orgSigner, signets: p.signets, bounce: { meta: true, display: true } })).message;
    const chunks = decodeMessage(signed).chunks;
    const payloads = chunks.filter((c) => c.payload.length > 64 && c.type !== 2).map((c) => c.payload.length);
    const sigChunks = chunks.filter((c) => c.payload.length === 64);
    const slotCount = chunks.reduce((n, c) => n + c.keyslots.length, 0);
    // Exactly what each signature covers (dime-formats.md §5.7).
    const end = (type: number) => {
      const last = chunks.filter((c) => c.type <= type).at(-1)!;
      return last.bytes.byteOffset - signed.byteOffset + last.bytes.length;
    };
    const treeInput = Buffer.alloc(64 * (chunks.filter((c) => [2, 4, 33, 34, 67, 131].includes(c.type)).length + 1));
    const fullInput = signed.subarray(6, end(225));
    const metaInput = signed.subarray(6, end(34));
    const displayInput = signed.subarray(6, end(67));
    const originFullInput = signed.subarray(6, end(249));
    const buffers = payloads.map((n) => nodeCrypto.randomBytes(n));

    // The operations sealMessage performs, on the same sizes, with nothing but node:crypto
    // (or, second floor, with the libsecp256k1 ECDH we actually use, so the ratio shows our overhead).
    const ephemeral = nodeCrypto.createHash('sha256').update('bench ephemeral').digest();
    const sealFloorWith = (ecdh: () => Uint8Array) => () => {
      for (let i = 0; i < 4; i++) nodeCrypto.createHash('sha512').update(ecdh()).digest();
      for (const b of buffers) {
        nodeCrypto.sign(null, b.subarray(64), authorKey);
        cbc(key32, iv16, b);
      }
      for (let i = 0; i < slotCount; i++) cbc(key32, iv16, Buffer.alloc(64));
      for (const c of chunks) nodeCrypto.createHash('sha512').update(c.bytes).digest();
      nodeCrypto.sign(null, treeInput, authorKey);
      nodeCrypto.sign(null, fullInput, authorKey);
      for (let i = 0; i < sigChunks.length; i++) cbc(key32, iv16, Buffer.alloc(64));
    };
    const sealFloor = sealFloorWith(() => {
      const e = nodeCrypto.createECDH('secp256k1');
      e.setPrivateKey(ephemeral);
      return e.computeSecret(peerPub);
    });
    const sealFloorNative = sealFloorWith(() => crypto.secp256k1Ecdh(ephemeral, peerPub));
    // What a recipient's open performs: one ECDH, every slot it holds, every payload, every signature.
    const sigs = new Map<string, Buffer>();
    const sigOf = (k: nodeCrypto.KeyObject, name: string, data: Uint8Array): Buffer => {
      let s = sigs.get(name);
      if (!s) sigs.set(name, (s = nodeCrypto.sign(null, data, k)));
      return s;
    };
    const openFloor = () => {
      const e = nodeCrypto.createECDH('secp256k1');
      e.setPrivateKey(p.r.enc);
      nodeCrypto.createHash('sha512').update(e.computeSecret(chunks[0]!.payload)).digest();
      for (let i = 0; i < chunks.length - 1; i++) cbc(key32, iv16, Buffer.alloc(64), true);
      buffers.forEach((b, i) => {
        cbc(key32, iv16, b, true);
        nodeCrypto.verify(null, b.subarray(64), authorPub, sigOf(authorKey, `p${i}`, b.subarray(64)));
      });
      for (const c of chunks) nodeCrypto.createHash('sha512').update(c.bytes).digest();
      for (let i = 0; i < sigChunks.length; i++) cbc(key32, iv16, Buffer.alloc(64), true);
      nodeCrypto.verify(null, treeInput, authorPub, sigOf(authorKey, 'tree', treeInput));
      nodeCrypto.verify(null, fullInput, authorPub, sigOf(authorKey, 'full', fullInput));
      for (const [n, input] of [['meta', metaInput], ['display', displayInput], ['full', originFullInput]] as const) nodeCrypto.verify(null, input, originPub, sigOf(originKey, `o${n}`, input));
    };
    out.push({
      name: `seal ${label} (author: encrypt, sign every chunk, tree and full signatures)`,
      baseline: 'floor: the same primitives in node:crypto',
      bytesPerOp: size,
      cases: [
        { name: 'floor: the same primitives in node:crypto', fn: sealFloor },
        { name: 'floor with libsecp256k1 ECDH', fn: sealFloorNative },
        { name: 'sealMessage', fn: () => sealMessage(crypto, p.seal, content) },
      ],
    });
    out.push({
      name: `open ${label} as the recipient (decrypt, verify every signature)`,
      baseline: 'floor: the same primitives in node:crypto',
      bytesPerOp: size,
      cases: [
        { name: 'floor: the same primitives in node:crypto', fn: openFloor },
        { name: 'openMessage', fn: () => openMessage(crypto, signed, { actor: 'recipient', keys: localActorKeys(crypto, p.r.enc), signets: p.signets }) },
      ],
    });
  }
  return out;
}

registerBench({ name: 'message', groups });
