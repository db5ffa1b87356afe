/** The four libdime vector parties (alice@example.com → bob@example.org) with keys, signets and openers. */
import type { CryptoBackend } from '../../src/crypto/index.js';
import { dearmorKeys, type DimeKeys } from '../../src/dime/keys.js';
import { localActorKeys, type Actor, type ActorSignets, type SealParties } from '../../src/dime/message/index.js';
import { dearmorSignet, type Signet } from '../../src/dime/signet/index.js';
import { vectorText } from './vectors.js';

export interface VectorParties {
  signets: Required<ActorSignets>;
  keys: Record<Actor, DimeKeys>;
  seal: SealParties;
  actorKeys(actor: Actor): ReturnType<typeof localActorKeys>;
}

export function vectorParties(crypto: CryptoBackend): VectorParties {
  const signet = (f: string): Signet => dearmorSignet(vectorText('libdime/signets', f));
  const keys = (f: string): DimeKeys => dearmorKeys(vectorText('libdime/keys', f));
  const signets = {
    author: signet('alice@example.com.signet'),
    origin: signet('example.com.signet'),
    destination: signet('example.org.signet'),
    recipient: signet('bob@example.org.signet'),
  };
  const k: Record<Actor, DimeKeys> = {
    author: keys('alice-example.com.keys'),
    origin: keys('example.com.keys'),
    destination: keys('example.org.keys'),
    recipient: keys('bob-example.org.keys'),
  };
  return {
    signets,
    keys: k,
    seal: {
      author: { address: 'alice@example.com', signet: signets.author, signer: crypto.ed25519Signer(k.author.signingKey) },
      origin: { domain: 'example.com', signet: signets.origin },
      destination: { domain: 'example.org', signet: signets.destination },
      recipient: { address: 'bob@example.org', signet: signets.recipient },
    },
    actorKeys: (actor) => localActorKeys(crypto, k[actor].encryptionKey),
  };
}
