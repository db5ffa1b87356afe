/** `dime message …`: seal as author, sign as origin, open as any actor. Messages are raw binary files. */
import type { Command } from 'commander';
import { defaultCrypto } from '../crypto/index.js';
import { base64Encode } from '../dime/base64.js';
import { utf8 } from '../dime/bytes.js';
import {
  decodeCommonHeaders,
  localActorKeys,
  openMessage,
  sealMessage,
  signAsOrigin,
  type Actor,
  type ActorSignets,
  type MessageView,
} from '../dime/message/index.js';
import { identifierOf, type Signet } from '../dime/signet/index.js';
import { DimeError, isDimeError } from '../errors.js';
import { ExitStatus, exitStatusFor } from './exit.js';
import { readInputFile, writeOutputFile } from './io.js';
import { loadKeysFile } from './keys.js';
import { loadSignetFile } from './signet.js';
import { mimeToParts, partsToMime } from '../gateway/mime.js';

interface SignetOptions {
  authorSignet?: string;
  originSignet?: string;
  destinationSignet?: string;
  recipientSignet?: string;
}

function addSignetOptions(cmd: Command): Command {
  return cmd
    .option('--author-signet <file>', "the author's user signet")
    .option('--origin-signet <file>', "the origin's organisational signet")
    .option('--destination-signet <file>', "the destination's organisational signet")
    .option('--recipient-signet <file>', "the recipient's user signet");
}

function loadSignets(o: SignetOptions): ActorSignets {
  const load = (f: string | undefined): Signet | undefined => (f ? loadSignetFile(f) : undefined);
  const s: ActorSignets = {};
  const author = load(o.authorSignet);
  const origin = load(o.originSignet);
  const destination = load(o.destinationSignet);
  const recipient = load(o.recipientSignet);
  if (author) s.author = author;
  if (origin) s.origin = origin;
  if (destination) s.destination = destination;
  if (recipient) s.recipient = recipient;
  return s;
}

function required(s: ActorSignets, role: keyof ActorSignets, flag: string): Signet {
  const v = s[role];
  if (!v) throw new DimeError('USAGE', `${flag} is required here`);
  return v;
}

function identity(signet: Signet, flag: string): string {
  const id = identifierOf(signet);
  if (!id) throw new DimeError('USAGE', `${flag} has no identifier (field 254): give a full signet with its ID`);
  return id;
}

/** Common headers from a file: libdime's `Label: value` lines; bare LF line ends are accepted. */
function readCommonHeaders(file: string): Uint8Array {
  const text = readInputFile(file).toString('latin1').replace(/\r?\n/g, '\r\n');
  const bytes = new Uint8Array(Buffer.from(text, 'latin1'));
  decodeCommonHeaders(bytes); // validate now, with the file named in the error
  return bytes;
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

const ACTOR_NAMES: readonly Actor[] = ['author', 'origin', 'destination', 'recipient'];

function viewJson(view: MessageView): object {
  const out: Record<string, unknown> = { ok: true, actor: view.actor, envelope: view.envelope };
  if (view.commonHeaders) out.commonHeaders = base64Encode(view.commonHeaders);
  if (view.otherHeaders) out.otherHeaders = base64Encode(view.otherHeaders);
  if (view.display) out.display = view.display.map(base64Encode);
  if (view.attachments) out.attachments = view.attachments.map(base64Encode);
  return out;
}

function viewText(view: MessageView): string {
  const lines = [`opened as ${view.actor}: every signature the ${view.actor} can check verifies`];
  for (const [k, v] of Object.entries(view.envelope)) lines.push(`  ${k.padEnd(18)}${v}`);
  if (view.originSignatures) {
    const o = view.originSignatures;
    lines.push(`  origin signatures  full${o.metaBounce ? ', meta bounce' : ''}${o.displayBounce ? ', display bounce' : ''}`);
  }
  if (view.commonHeaders) lines.push('common headers:', utf8.decode(view.commonHeaders).trimEnd());
  if (view.otherHeaders) lines.push('other headers:', utf8.decode(view.otherHeaders).trimEnd());
  view.display?.forEach((d, i) => lines.push(`display ${i + 1} (${d.length} bytes)`));
  view.attachments?.forEach((a, i) => lines.push(`attachment ${i + 1} (${a.length} bytes)`));
  return lines.join('\n') + '\n';
}

export function registerMessageCommands(program: Command): void {
  const message = program.command('message').description('DMIME messages: seal, sign as origin, open');

  addSignetOptions(
    message
      .command('seal')
      .description('seal a message from the author to the recipient (the author signs; the origin signs next)')
      .requiredOption('--author-keys <file>', "the author's user keys file")
      .option('--eml <file>', 'an RFC 5322 message to seal (mapped to chunks as docs/mime-mapping.md says)')
      .option('--common-headers <file>', 'chunk 33: Date, To, [CC], From, [Organization], Subject lines')
      .option('--other-headers <file>', 'chunk 34: every other header, verbatim')
      .option('--display <file>', 'a display part (repeatable)', collect)
      .option('--attachment <file>', 'an attachment part (repeatable)', collect),
  )
    .requiredOption('--out <file>', 'sealed message file')
    .option('--force', 'replace an existing file')
    .action(async (opts: SignetOptions & { authorKeys: string; eml?: string; commonHeaders?: string; otherHeaders?: string; display?: string[]; attachment?: string[]; out: string; force?: boolean }) => {
      const crypto = defaultCrypto();
      const signets = loadSignets(opts);
      const author = required(signets, 'author', '--author-signet');
      const origin = required(signets, 'origin', '--origin-signet');
      const destination = required(signets, 'destination', '--destination-signet');
      const recipient = required(signets, 'recipient', '--recipient-signet');
      const keys = loadKeysFile(opts.authorKeys);
      if (keys.type !== 'user') throw new DimeError('USAGE', '--author-keys must be a user keys file');
      if (!!opts.eml === !!opts.commonHeaders) throw new DimeError('USAGE', 'give either --eml or --common-headers (with --other-headers, --display, --attachment)');
      const parts = opts.eml ? mimeToParts(new Uint8Array(readInputFile(opts.eml))) : undefined;
      const content = parts
        ? { commonHeaders: parts.common, otherHeaders: parts.otherHeaders, display: parts.display, attachments: parts.attachments }
        : {
            commonHeaders: readCommonHeaders(opts.commonHeaders!),
            otherHeaders: opts.otherHeaders ? new Uint8Array(readInputFile(opts.otherHeaders)) : new Uint8Array(0),
            display: (opts.display ?? []).map((f) => new Uint8Array(readInputFile(f))),
            attachments: (opts.attachment ?? []).map((f) => new Uint8Array(readInputFile(f))),
          };
      if (content.display.length === 0) throw new DimeError('USAGE', 'a message needs at least one --display part');
      const sealed = await sealMessage(
        crypto,
        {
          author: { address: identity(author, '--author-signet'), signet: author, signer: crypto.ed25519Signer(keys.signingKey) },
          origin: { domain: identity(origin, '--origin-signet'), signet: origin },
          destination: { domain: identity(destination, '--destination-signet'), signet: destination },
          recipient: { address: identity(recipient, '--recipient-signet'), signet: recipient },
        },
        content,
      );
      writeOutputFile(opts.out, sealed, { mode: 0o600, force: opts.force });
      process.stdout.write(`${opts.out}: ${sealed.length} bytes sealed for ${identity(recipient, '--recipient-signet')}; the origin signs next\n`);
    });

  addSignetOptions(
    message
      .command('sign-origin')
      .description("check the author's signatures and add the origin's (run by the author's server)")
      .argument('<file>', 'message sealed by the author')
      .requiredOption('--org-keys <file>', "the origin organisation's keys file")
      .option('--bounce <kinds>', 'bounce signatures to add: meta, display, or meta,display', ''),
  )
    .requiredOption('--out <file>', 'signed message file')
    .option('--force', 'replace an existing file')
    .action(async (file: string, opts: SignetOptions & { orgKeys: string; bounce: string; out: string; force?: boolean }) => {
      const crypto = defaultCrypto();
      const kinds = opts.bounce.split(',').filter((k) => k.length > 0);
      for (const k of kinds) if (k !== 'meta' && k !== 'display') throw new DimeError('USAGE', `--bounce takes meta and/or display, not ${JSON.stringify(k)}`);
      const keys = loadKeysFile(opts.orgKeys);
      if (keys.type !== 'org') throw new DimeError('USAGE', '--org-keys must be an organisational keys file');
      const signets = loadSignets(opts);
      required(signets, 'author', '--author-signet');
      required(signets, 'origin', '--origin-signet');
      const { message: signed, envelope } = await signAsOrigin(crypto, new Uint8Array(readInputFile(file)), {
        keys: localActorKeys(crypto, keys.encryptionKey),
        signer: crypto.ed25519Signer(keys.signingKey),
        signets,
        bounce: { meta: kinds.includes('meta'), display: kinds.includes('display') },
      });
      writeOutputFile(opts.out, signed, { mode: 0o600, force: opts.force });
      process.stdout.write(`${opts.out}: signed as origin for ${envelope.author} → ${envelope.destination}\n`);
    });

  addSignetOptions(
    message
      .command('open')
      .description('open a message as one actor, verifying every signature that actor can check')
      .argument('<file>', 'DMIME message')
      .requiredOption('--as <actor>', 'author, origin, destination or recipient')
      .requiredOption('--keys <file>', "that actor's keys file (user keys for author and recipient, org keys for origin and destination)")
      .option('--eml <file>', 'author and recipient: also write the message back as RFC 5322')
      .option('--json', 'print exactly one JSON object'),
  ).action(async (file: string, opts: SignetOptions & { as: string; keys: string; eml?: string; json?: boolean }) => {
    const actor = opts.as as Actor;
    if (!ACTOR_NAMES.includes(actor)) throw new DimeError('USAGE', `--as must be one of ${ACTOR_NAMES.join(', ')}`);
    if (opts.eml && actor !== 'author' && actor !== 'recipient') throw new DimeError('USAGE', 'only the author and the recipient can read the message itself (--eml)');
    const crypto = defaultCrypto();
    const keys = loadKeysFile(opts.keys);
    const wantType = actor === 'author' || actor === 'recipient' ? 'user' : 'org';
    if (keys.type !== wantType) throw new DimeError('USAGE', `--keys for the ${actor} must be ${wantType} keys`);
    const signets = loadSignets(opts);
    const bytes = new Uint8Array(readInputFile(file));
    let view: MessageView;
    try {
      view = await openMessage(crypto, bytes, { actor, keys: localActorKeys(crypto, keys.encryptionKey), signets });
    } catch (err) {
      if (!isDimeError(err)) throw err;
      // Nothing the actor may not read is shown on failure, not even the envelope.
      if (opts.json) process.stdout.write(JSON.stringify({ ok: false, actor, error: { code: err.code, message: err.message }, envelope: {} }) + '\n');
      process.stderr.write(`dime: ${err.message} [${err.code}]\n`);
      throw new ExitStatus(exitStatusFor(err));
    }
    if (opts.eml) {
      const eml = partsToMime({ common: view.common!, otherHeaders: view.otherHeaders!, display: view.display!, attachments: view.attachments! });
      writeOutputFile(opts.eml, eml, { mode: 0o600 });
    }
    process.stdout.write(opts.json ? JSON.stringify(viewJson(view)) + '\n' : viewText(view));
  });
}
