/**
 * `dime demo`: a newcomer's first look at DIME. Two dark domains in one process on embedded defaults
 * (fresh keys in memory, no Postfix, no Redis, no HSM): alice@a.test writes to bob@b.test, and each
 * hop prints what it can see — the author, the author's server (origin), the wire, the recipient's
 * server (destination), the recipient — ending with the original message back, byte for byte.
 */
import type { Command } from 'commander';
import { defaultCrypto, type CryptoBackend } from '../crypto/index.js';
import { utf8 } from '../dime/bytes.js';
import { generateKeys } from '../dime/keys.js';
import { decodeMessage, localActorKeys, openMessage, sealMessage, signAsOrigin, type ActorSignets, type MessageView } from '../dime/message/index.js';
import { createOrgSignet, createSigningRequest, signUserSignet } from '../dime/signet/index.js';
import { mimeToParts, partsToMime } from '../gateway/mime.js';
import { EXIT, ExitStatus } from './exit.js';
import { readInputFile } from './io.js';

export const DEMO_MESSAGE = [
  'Date: Sun, 22 Nov 2026 10:00:00 +0000',
  'From: Alice <alice@a.test>',
  'To: Bob <bob@b.test>',
  'Subject: Our secret plan',
  'Message-ID: <demo@a.test>',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Transfer-Encoding: 8bit',
  '',
  'Hi Bob,',
  '',
  'The meeting moves to Thursday. Only you and I can read this line.',
  '— Alice',
  '',
].join('\r\n');

export interface DemoHop {
  who: string;
  sees: string[];
}

export interface DemoResult {
  hops: DemoHop[];
  /** The recipient's reconstruction equals the original byte for byte. */
  faithful: boolean;
  /** The wire bytes contain neither the Subject nor the body text. */
  wireHidesContent: boolean;
}

async function domain(crypto: CryptoBackend, name: string, user: string) {
  const orgKeys = generateKeys('org', crypto);
  const orgSigner = crypto.ed25519Signer(orgKeys.signingKey);
  const org = await createOrgSignet({ signer: orgSigner, encryptionKey: crypto.secp256k1PublicKey(orgKeys.encryptionKey), domain: name });
  const userKeys = generateKeys('user', crypto);
  const userSigner = crypto.ed25519Signer(userKeys.signingKey);
  const ssr = await createSigningRequest({ signer: userSigner, encryptionKey: crypto.secp256k1PublicKey(userKeys.encryptionKey) });
  const signet = await signUserSignet(crypto, ssr, { orgSigner, address: `${user}@${name}` });
  return { name, address: `${user}@${name}`, orgKeys, orgSigner, org, userKeys, userSigner, signet };
}

function envelopeLines(v: MessageView): string[] {
  return Object.entries(v.envelope).map(([k, val]) => `${k}: ${k.endsWith('Signet') ? `${String(val).slice(0, 24)}…` : val}`);
}

/** Run the whole flow; pure apart from the random keys, so tests can check every hop. */
export async function runDemo(crypto: CryptoBackend, raw: Uint8Array = utf8.encode(DEMO_MESSAGE)): Promise<DemoResult> {
  const a = await domain(crypto, 'a.test', 'alice');
  const b = await domain(crypto, 'b.test', 'bob');
  const signets: ActorSignets = { author: a.signet, origin: a.org, destination: b.org, recipient: b.signet };
  const parts = mimeToParts(raw);
  const hops: DemoHop[] = [];

  const sealed = await sealMessage(
    crypto,
    {
      author: { address: a.address, signet: a.signet, signer: a.userSigner },
      origin: { domain: a.name, signet: a.org },
      destination: { domain: b.name, signet: b.org },
      recipient: { address: b.address, signet: b.signet },
    },
    { commonHeaders: parts.common, otherHeaders: parts.otherHeaders, display: parts.display, attachments: parts.attachments },
  );
  hops.push({
    who: `author (${a.address}, through a.test's sidecar for a trustful account)`,
    sees: [`the whole message; sealed it as ${sealed.length} bytes, one DMIME object for ${b.address}`],
  });

  const originView = await openMessage(crypto, sealed, { actor: 'origin', keys: localActorKeys(crypto, a.orgKeys.encryptionKey), signets });
  const { message } = await signAsOrigin(crypto, sealed, { keys: localActorKeys(crypto, a.orgKeys.encryptionKey), signer: a.orgSigner, signets, bounce: { meta: true } });
  hops.push({ who: 'origin (a.test, the author\'s server)', sees: [...envelopeLines(originView), 'no recipient, no headers, no body: it holds no key for them', 'verified the author\'s signatures and added its own'] });

  const wire = Buffer.from(message).toString('latin1');
  // What must not show on the wire: both addresses, the subject, and a stretch of each body part.
  const secrets = [a.address, b.address, utf8.decode(parts.common.Subject!), ...parts.display.map((d) => Buffer.from(d).toString('latin1').replace(/\s+/g, ' ').trim().slice(0, 32))].filter(
    (t) => t.trim().length >= 6,
  );
  const leaked = secrets.filter((s) => wire.includes(s));
  const chunks = decodeMessage(message).chunks.map((c) => c.type).join(' ');
  hops.push({ who: 'the wire (DMTP, a.test → b.test)', sees: [`${message.length} bytes, chunk types ${chunks}`, leaked.length === 0 ? 'no address, subject or body text appears in the bytes' : `LEAKED: ${leaked.join(', ')}`] });

  const destView = await openMessage(crypto, message, { actor: 'destination', keys: localActorKeys(crypto, b.orgKeys.encryptionKey), signets });
  hops.push({ who: 'destination (b.test, the recipient\'s server)', sees: [...envelopeLines(destView), 'no author, no headers, no body', 'verified the origin\'s signatures'] });

  const recipientView = await openMessage(crypto, message, { actor: 'recipient', keys: localActorKeys(crypto, b.userKeys.encryptionKey), signets });
  const back = partsToMime({ common: recipientView.common!, otherHeaders: recipientView.otherHeaders!, display: recipientView.display!, attachments: recipientView.attachments! });
  const faithful = Buffer.from(back).equals(Buffer.from(raw));
  hops.push({
    who: `recipient (${b.address})`,
    sees: [
      `From ${utf8.decode(recipientView.common!.From!)}, Subject ${utf8.decode(recipientView.common!.Subject!)}`,
      'every signature checked: author, origin, each chunk',
      faithful ? 'the original message, byte for byte' : 'the message differs from the original',
    ],
  });
  return { hops, faithful, wireHidesContent: leaked.length === 0 };
}

export function registerDemoCommands(program: Command): void {
  program
    .command('demo')
    .description('two dark domains in one process: what the author, each server, the wire and the recipient see')
    .option('--eml <file>', 'send this RFC 5322 message instead of the built-in one')
    .option('--json', 'print one JSON object')
    .action(async (opts: { eml?: string; json?: boolean }) => {
      const raw = opts.eml ? new Uint8Array(readInputFile(opts.eml)) : undefined;
      const result = await runDemo(defaultCrypto(), raw);
      if (opts.json) {
        process.stdout.write(JSON.stringify(result) + '\n');
      } else {
        for (const hop of result.hops) process.stdout.write(`\n${hop.who}\n${hop.sees.map((l) => `  ${l}`).join('\n')}\n`);
        process.stdout.write('\n');
      }
      if (!result.faithful || !result.wireHidesContent) {
        process.stderr.write('dime: the demo did not come out as DIME promises (see above)\n');
        throw new ExitStatus(EXIT.negative);
      }
    });
}
