/**
 * The milter session and server, driven by an MTA-side client that behaves like Postfix
 * (test/helpers/milter-client.ts) against a real server on a loopback port.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { describe, it, type TestContext } from 'node:test';
import { DimeError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { SMFIF, SMFIP, type MilterResponse } from '../src/milter/codec.js';
import { modify, verdict, type MilterHandler, type MilterMessage } from '../src/milter/handler.js';
import { MilterServer, parseSocketSpec, postfixMilterSpec, startMilterServer, type MilterServerOptions } from '../src/milter/server.js';
import { DIME_BIN, scratchDir } from './helpers/cli.js';
import { MilterClient, type EventReply } from './helpers/milter-client.js';
import { expectCode } from './helpers/typed-errors.js';

type LogLine = Record<string, unknown> & { msg?: string; level?: number };

interface Served {
  server: MilterServer;
  port: number;
  logs: LogLine[];
  client(): Promise<MilterClient>;
}

/** A server on 127.0.0.1:0 torn down (with its clients) when the test ends. */
async function serve(t: TestContext, handler: MilterHandler | undefined, options: Partial<MilterServerOptions> = {}): Promise<Served> {
  const logs: LogLine[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split('\n')) if (line) logs.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  const logger = createLogger({ destination, level: 'debug' });
  const server = await startMilterServer({ listen: 'inet:127.0.0.1:0', logger, gracePeriod: 500, ...(handler ? { handler } : {}), ...options });
  const clients: MilterClient[] = [];
  t.after(async () => {
    for (const c of clients) c.destroy();
    await server.close(0);
  });
  const address = server.address!.spec;
  assert.equal(address.kind, 'inet');
  const port = address.kind === 'inet' ? address.port : 0;
  return {
    server,
    port,
    logs,
    async client() {
      const c = await MilterClient.connect({ port });
      clients.push(c);
      return c;
    },
  };
}

/** A connection through OPTNEG and CONNECT (with Postfix's connect macros) and HELO. */
async function open(s: Served, offer?: { version: number; actions: number; protocol: number }): Promise<MilterClient> {
  const c = await s.client();
  await c.negotiate(offer);
  c.macro('C', { j: 'mail.example.test', '{daemon_name}': 'dime-test', v: 'Postfix 3.7.11' });
  await c.connectEvent();
  c.macro('H', {});
  await c.helo('client.example.test');
  return c;
}

const type = (r: EventReply | undefined): string => (r === undefined ? 'none' : typeof r === 'string' ? r : r.type);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const enc = (s: string) => new TextEncoder().encode(s);

function message(n: number, extra: Partial<Parameters<MilterClient['sendMessage']>[0]> = {}): Parameters<MilterClient['sendMessage']>[0] {
  return {
    from: `<sender${n}@example.test>`,
    rcpts: [`<alice${n}@example.test>`],
    headers: [
      ['From', `sender${n}@example.test`],
      ['Subject', `message ${n}`],
    ],
    body: `body of message ${n}\r\n`,
    queueId: `Q${n}`,
    ...extra,
  };
}

/** Links in /proc/self/fd that point into dir: our open (unlinked) spill files. */
function openFilesIn(dir: string): Array<{ fd: string; target: string }> {
  const out: Array<{ fd: string; target: string }> = [];
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      const target = fs.readlinkSync(`/proc/self/fd/${fd}`);
      if (target.startsWith(dir + path.sep)) out.push({ fd, target });
    } catch {
      // closed while we looked
    }
  }
  return out;
}
const HAVE_PROC = fs.existsSync('/proc/self/fd');

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await sleep(10);
  }
}

describe('messages on one connection', () => {
  it('serves several messages per connection, each with only its own envelope, headers, body and macros', async (t) => {
    const seen: Array<{ from: string | undefined; rcpts: string[]; subjects: string[]; body: string; queueId: string | undefined; mailMacro: string | undefined }> = [];
    const s = await serve(t, {
      actions: ['addHeader'],
      async eom(ctx, m) {
        seen.push({
          from: m.sender?.address,
          rcpts: m.recipients.map((r) => r.address),
          subjects: m.headers.filter((h) => h.name === 'Subject').map((h) => h.value),
          body: new TextDecoder().decode(await m.body.bytes()),
          queueId: m.queueId,
          mailMacro: ctx.macro('{mail_addr}'),
        });
        return { modifications: [modify.addHeader('X-Count', String(seen.length))] };
      },
    });
    const c = await open(s);
    for (let n = 1; n <= 3; n++) {
      const { eom } = await c.sendMessage(message(n, n === 2 ? { rcpts: ['<a@example.test>', '<b@example.test>'] } : {}));
      assert.equal(eom?.final.type, 'continue');
      assert.deepEqual(eom?.modifications, [{ type: 'addHeader', name: 'X-Count', value: String(n) }]);
    }
    assert.deepEqual(seen, [
      { from: 'sender1@example.test', rcpts: ['alice1@example.test'], subjects: ['message 1'], body: 'body of message 1\r\n', queueId: 'Q1', mailMacro: 'sender1@example.test' },
      { from: 'sender2@example.test', rcpts: ['a@example.test', 'b@example.test'], subjects: ['message 2'], body: 'body of message 2\r\n', queueId: 'Q2', mailMacro: 'sender2@example.test' },
      { from: 'sender3@example.test', rcpts: ['alice3@example.test'], subjects: ['message 3'], body: 'body of message 3\r\n', queueId: 'Q3', mailMacro: 'sender3@example.test' },
    ]);
    c.quit();
    await c.closed;
  });

  it('never answers ABORT; an aborted message calls abort once and leaves nothing behind for the next', async (t) => {
    const events: string[] = [];
    const bodies: string[] = [];
    const s = await serve(t, {
      abort: () => void events.push('abort'),
      async eom(_ctx, m) {
        events.push('eom');
        bodies.push(`${m.headers.map((h) => h.name).join(',')}|${new TextDecoder().decode(await m.body.bytes())}`);
      },
    });
    const c = await open(s);
    c.abort(); // an ABORT with no message: harmless
    assert.equal(await c.mail('<x@example.test>'), 'no-reply');
    await c.rcpt('<y@example.test>');
    await c.header('X-Aborted', '1');
    await c.body(enc('half a body'));
    c.abort();
    c.abort();
    c.abort();
    assert.equal(await c.silentFor(150), true, 'no reply to ABORT');
    const { eom } = await c.sendMessage(message(2));
    assert.equal(eom?.final.type, 'continue');
    assert.deepEqual(events, ['abort', 'eom'], 'abort once; the ABORTs after EOM are not a second abort');
    assert.deepEqual(bodies, ['From,Subject|body of message 2\r\n']);
    // MAIL without the MTA's ABORT in between: the old message is dropped the same way.
    await c.mail('<z@example.test>');
    await c.header('X-Dropped', '1');
    const second = await c.sendMessage(message(3));
    assert.equal(second.eom?.final.type, 'continue');
    assert.deepEqual(events, ['abort', 'eom', 'abort', 'eom']);
    assert.equal(bodies[1], 'From,Subject|body of message 3\r\n');
  });

  it('QUIT_NC ends the SMTP connection state and keeps the milter connection for a new CONNECT', async (t) => {
    const log: string[] = [];
    const s = await serve(t, {
      connect: (ctx, info) => void log.push(`connect ${info.hostname} ${info.address} j=${ctx.macro('j') ?? '-'}`),
      helo: (ctx, name) => void log.push(`helo ${name} conn=${ctx.connection?.hostname}`),
      close: () => void log.push('close'),
      eom: (ctx, m) => void log.push(`eom ${m.sender?.address} helo=${ctx.helo}`),
    });
    const c = await open(s);
    await c.sendMessage(message(1));
    c.quitNc();
    assert.equal(await c.silentFor(100), true, 'no reply to QUIT_NC');
    assert.equal(c.isOpen, true);
    const r = await c.connectEvent('second.example.test', 'inet6', 2525, '::1');
    assert.equal(type(r), 'continue');
    await c.helo('second-helo');
    await c.sendMessage(message(2));
    c.quit();
    await c.closed;
    await until(() => log.at(-1) === 'close');
    assert.deepEqual(log, [
      'connect [127.0.0.1] 127.0.0.1 j=mail.example.test',
      'helo client.example.test conn=[127.0.0.1]',
      'eom sender1@example.test helo=client.example.test',
      'close',
      'connect second.example.test ::1 j=-',
      'helo second-helo conn=second.example.test',
      'eom sender2@example.test helo=second-helo',
      'close',
    ]);
  });

  it('reject, tempfail and custom replies at RCPT refuse only that recipient', async (t) => {
    let recipients: string[] = [];
    const s = await serve(t, {
      rcptTo: (_ctx, r) => (r.address.startsWith('bob') ? verdict.reply('550', `<${r.address}>: rejected by dime`, '5.7.1') : r.address.startsWith('tmp') ? verdict.tempfail() : undefined),
      eom: (_ctx, m) => void (recipients = m.recipients.map((r) => r.raw)),
    });
    const c = await open(s);
    const { replies, eom } = await c.sendMessage(message(1, { rcpts: ['<alice@example.test>', '<bob@example.test>', '<tmp@example.test>', 'carol@example.test'] }));
    assert.deepEqual(replies.rcpt!.map(type), ['continue', 'replycode', 'tempfail', 'continue']);
    assert.deepEqual(replies.rcpt![1], { type: 'replycode', reply: '550 5.7.1 <bob@example.test>: rejected by dime' });
    assert.equal(eom?.final.type, 'continue');
    assert.deepEqual(recipients, ['<alice@example.test>', 'carol@example.test']);
  });

  it('a message-level decision holds for the rest of the message without calling the handler again', async (t) => {
    const calls: string[] = [];
    const s = await serve(t, {
      mailFrom: (_ctx, m) => (m.address === 'spam@example.test' ? verdict.reject() : undefined),
      header: (_ctx, h) => {
        calls.push(h.name);
        return h.name === 'X-Discard' ? verdict.discard() : undefined;
      },
      eom: () => void calls.push('eom'),
    });
    const c = await open(s);
    const spam = await c.sendMessage(message(1, { from: '<spam@example.test>' }));
    assert.deepEqual(spam.replies.mail!.map(type), ['reject']);
    assert.equal(spam.eom, undefined);
    c.abort();
    const { replies, eom } = await c.sendMessage(message(2, { headers: [['X-Discard', '1'], ['Subject', 'x']] }));
    assert.deepEqual(replies.header!.map(type), ['discard', 'discard']);
    assert.equal(eom?.final.type, 'discard');
    assert.deepEqual(calls, ['X-Discard'], 'neither the second header nor eom reached the handler');
  });
});

describe('negotiation and no-reply flags', () => {
  it('an eom-only handler gets MAIL, RCPT, headers and body without replying to any of them, and answers DATA', async (t) => {
    const s = await serve(t, { eom: () => verdict.accept() });
    const c = await s.client();
    const n = await c.negotiate();
    assert.equal(n.protocol, SMFIP.NOCONNECT | SMFIP.NOHELO | SMFIP.NOEOH | SMFIP.NOUNKNOWN | SMFIP.NR_MAIL | SMFIP.NR_RCPT | SMFIP.NR_HDR | SMFIP.NR_BODY);
    assert.equal(n.actions, 0);
    assert.equal(await c.connectEvent(), 'skipped');
    assert.equal(await c.mail('<a@example.test>'), 'no-reply');
    assert.equal(await c.rcpt('<b@example.test>'), 'no-reply');
    // The one reply before the content: it acknowledges MAIL and RCPT (Nagle and delayed ACK, handler.ts).
    assert.deepEqual(await c.data(), { type: 'continue' });
    assert.equal(await c.header('Subject', 'x'), 'no-reply');
    assert.equal(await c.eoh(), 'skipped');
    for (let i = 0; i < 5; i++) assert.equal(await c.body(new Uint8Array(65535).fill(0x41)), 'no-reply');
    assert.equal(await c.silentFor(150), true, 'nothing sent before EOM');
    const eom = await c.eom();
    assert.deepEqual(eom.final, { type: 'accept' });
    assert.deepEqual(c.pending(), []);
  });

  it('a v2 MTA (no NR_* flags) gets a reply to every event, and no v6-only bits', async (t) => {
    const s = await serve(t, { eom: () => undefined, actions: ['addHeader', 'changeSender'], macros: { eom: ['i'] } });
    const c = await s.client();
    const n = await c.negotiate({ version: 2, actions: 0x3f, protocol: 0x7f });
    assert.deepEqual([n.version, n.actions, n.protocol, n.macros], [2, SMFIF.ADDHDRS, SMFIP.NOCONNECT | SMFIP.NOHELO | SMFIP.NOEOH, undefined]);
    const { replies, eom } = await c.sendMessage(message(1));
    assert.deepEqual(
      [replies.mail, replies.rcpt, replies.data, replies.header, replies.eoh, replies.body].map((list) => list!.map(type).join(',')),
      ['continue', 'continue', 'continue', 'continue,continue', 'skipped', 'continue'],
    );
    assert.equal(eom?.final.type, 'continue');
  });

  it('an MTA that ignores NO* flags still gets CONTINUE for events nobody asked for', async (t) => {
    const s = await serve(t, undefined);
    const c = await s.client();
    await c.negotiate({ version: 6, actions: 0x1ff, protocol: 0 });
    assert.equal(type(await c.connectEvent()), 'accept');
    // The pass-through accepted the connection; whatever the MTA still sends gets that decision.
    assert.equal(type(await c.mail('<a@b>')), 'accept');
    const eom = await c.eom();
    assert.equal(eom.final.type, 'accept');
  });

  it('requests macros per stage on the OPTNEG reply and exposes them per stage', async (t) => {
    const got: Record<string, unknown> = {};
    const s = await serve(t, {
      macros: { envfrom: ['{auth_authen}', '{mail_addr}'], eom: ['i', '{client_addr}'] },
      mailFrom: (ctx) => {
        got.mail = [ctx.macro('auth_authen'), ctx.macro('{mail_addr}'), ctx.macro('j'), [...ctx.macros('M').keys()].join(' ')];
      },
      eom: (ctx) => {
        got.eom = [ctx.macro('i'), ctx.macro('{auth_authen}'), ctx.macros('R').size];
      },
    });
    const c = await s.client();
    const n = await c.negotiate();
    assert.deepEqual(n.macros, [
      { stage: 'envfrom', names: ['{auth_authen}', '{mail_addr}'] },
      { stage: 'eom', names: ['i', '{client_addr}'] },
    ]);
    assert.equal(n.actions & SMFIF.SETSYMLIST, SMFIF.SETSYMLIST);
    c.macro('C', { j: 'mx.example.test' });
    assert.equal(await c.connectEvent(), 'skipped');
    c.macro('M', { '{auth_authen}': 'alice@example.test', '{mail_addr}': 'alice@example.test' });
    assert.equal(type(await c.mail('<alice@example.test>')), 'continue');
    c.macro('R', { '{rcpt_addr}': 'bob@example.test' });
    await c.rcpt('<bob@example.test>');
    c.macro('E', { i: 'QID9' });
    await c.eom();
    assert.deepEqual(got, {
      mail: ['alice@example.test', 'alice@example.test', 'mx.example.test', '{auth_authen} {mail_addr}'],
      eom: ['QID9', 'alice@example.test', 1],
    });
  });

  it('SMFIR_SKIP after the first body chunk when nobody needs the rest; CONTINUE when eom does', async (t) => {
    const chunks: number[] = [];
    const s = await serve(t, { body: (_ctx, chunk) => (chunks.push(chunk.length), verdict.skip()) });
    const c = await s.client();
    const n = await c.negotiate();
    assert.equal(n.protocol & SMFIP.SKIP, SMFIP.SKIP);
    const { replies, eom } = await c.sendMessage(message(1, { body: new Uint8Array(200_000), chunkSize: 65535 }));
    assert.deepEqual(replies.body!.map(type), ['skip']);
    assert.equal(eom?.final.type, 'continue');
    assert.deepEqual(chunks, [65535]);

    const sizes: number[] = [];
    const s2 = await serve(t, { body: () => verdict.skip(), eom: async (_ctx, m) => void sizes.push(m.body.size) });
    const c2 = await s2.client();
    await c2.negotiate();
    const second = await c2.sendMessage(message(2, { body: new Uint8Array(200_000), chunkSize: 65535 }));
    assert.deepEqual(second.replies.body!.map(type), ['continue', 'continue', 'continue', 'continue']);
    assert.deepEqual(sizes, [200_000], 'the eom handler still sees the whole body');
  });

  it('header values keep their leading space with HDR_LEADSPC, and edits are sent as given', async (t) => {
    const values: string[] = [];
    const s = await serve(t, {
      headerLeadingSpace: true,
      actions: ['changeHeader'],
      header: (ctx, h) => void values.push(`${ctx.headerLeadingSpace}:${JSON.stringify(h.value)}`),
      eom: () => ({ modifications: [modify.changeHeader('Subject', 1, ' [dime] replaced\r\n\tfolded')] }),
    });
    const c = await s.client();
    await c.negotiate();
    const { eom } = await c.sendMessage(message(1, { headers: [['Subject', ' hello']] }));
    assert.deepEqual(values, ['true:" hello"']);
    assert.deepEqual(eom?.modifications, [{ type: 'changeHeader', index: 1, name: 'Subject', value: ' [dime] replaced\n\tfolded' }], 'CRLF inside a value goes out as LF');
  });
});

describe('end-of-message modifications', () => {
  it('sends every modification kind, then the REPLBODY chunks contiguously, then one decision', async (t) => {
    const newBody = new Uint8Array(200 * 1024);
    for (let i = 0; i < newBody.length; i++) newBody[i] = 0x41 + (i % 26);
    async function* pieces(): AsyncIterable<Uint8Array> {
      // Odd sizes: the session re-chunks to full 65535-byte packets.
      for (let at = 0; at < newBody.length; at += 10_007) yield newBody.subarray(at, at + 10_007);
    }
    const s = await serve(t, {
      actions: ['addHeader', 'changeHeader', 'replaceBody', 'addRecipient', 'addRecipientWithArgs', 'deleteRecipient', 'changeSender', 'quarantine'],
      eom: () => ({
        verdict: verdict.continue(),
        modifications: [
          modify.replaceBody(pieces()),
          modify.addHeader('X-Dime', 'added'),
          modify.insertHeader(0, 'X-Dime-Top', 'inserted'),
          modify.changeHeader('Subject', 1, '[dime] replaced subject'),
          modify.deleteHeader('X-Remove-Me', 1),
          modify.addRecipient('<carol@example.test>'),
          modify.addRecipient('<dave@example.test>', ['NOTIFY=NEVER', 'ORCPT=rfc822;dave@example.test']),
          modify.deleteRecipient('<alice1@example.test>'),
          modify.changeSender('<bounce@example.test>', ['SIZE=1000']),
          modify.quarantine('held by dime test'),
        ],
      }),
    });
    const c = await s.client();
    const n = await c.negotiate();
    assert.equal(n.actions, 0xff);
    const { eom } = await c.sendMessage(message(1, { headers: [['Subject', 'hello'], ['X-Remove-Me', 'please']] }));
    const mods = eom!.modifications;
    assert.deepEqual(mods.slice(0, 9), [
      { type: 'addHeader', name: 'X-Dime', value: 'added' },
      { type: 'insertHeader', index: 0, name: 'X-Dime-Top', value: 'inserted' },
      { type: 'changeHeader', index: 1, name: 'Subject', value: '[dime] replaced subject' },
      { type: 'changeHeader', index: 1, name: 'X-Remove-Me', value: '' },
      { type: 'addRecipient', recipient: '<carol@example.test>' },
      { type: 'addRecipientPar', recipient: '<dave@example.test>', args: 'NOTIFY=NEVER ORCPT=rfc822;dave@example.test' },
      { type: 'deleteRecipient', recipient: '<alice1@example.test>' },
      { type: 'changeFrom', sender: '<bounce@example.test>', args: 'SIZE=1000' },
      { type: 'quarantine', reason: 'held by dime test' },
    ]);
    const body = mods.slice(9) as Array<Extract<MilterResponse, { type: 'replaceBody' }>>;
    assert.deepEqual(
      body.map((m) => [m.type, m.chunk.length]),
      [
        ['replaceBody', 65535],
        ['replaceBody', 65535],
        ['replaceBody', 65535],
        ['replaceBody', 204800 - 3 * 65535],
      ],
    );
    assert.equal(Buffer.compare(Buffer.concat(body.map((m) => m.chunk)), newBody), 0);
    assert.deepEqual(eom!.final, { type: 'continue' });
  });

  it('a quarantine verdict is QUARANTINE then CONTINUE; a reject verdict sends no modifications', async (t) => {
    const s = await serve(t, {
      actions: ['quarantine', 'addHeader'],
      eom: (_ctx, m) =>
        m.headers.some((h) => h.value === 'hold')
          ? verdict.quarantine('suspicious')
          : { verdict: verdict.reply('554', ['policy says no', 'really'], '5.7.0'), modifications: [modify.addHeader('X-Never', 'sent')] },
    });
    const c = await s.client();
    await c.negotiate();
    const held = await c.sendMessage(message(1, { headers: [['Subject', 'hold']] }));
    assert.deepEqual(held.eom?.modifications, [{ type: 'quarantine', reason: 'suspicious' }]);
    assert.deepEqual(held.eom?.final, { type: 'continue' });
    const refused = await c.sendMessage(message(2));
    assert.deepEqual(refused.eom?.modifications, []);
    assert.deepEqual(refused.eom?.final, { type: 'replycode', reply: '554-5.7.0 policy says no\r\n554 5.7.0 really' });
  });

  it('a modification the MTA did not grant fails the message (tempfail) and nothing is sent', async (t) => {
    const s = await serve(t, { actions: ['addHeader', 'replaceBody'], eom: () => ({ modifications: [modify.addHeader('X-A', '1'), modify.replaceBody(enc('x'))] }) });
    const c = await s.client();
    const n = await c.negotiate({ version: 6, actions: SMFIF.ADDHDRS, protocol: 0x1fffff });
    assert.equal(n.actions, SMFIF.ADDHDRS);
    const { eom } = await c.sendMessage(message(1));
    assert.deepEqual(eom, { final: { type: 'tempfail' }, modifications: [], progress: 0 });
    assert.ok(s.logs.some((l) => l.code === 'MILTER_BAD_MODIFICATION' && l.class === 'internal' && l.action === 'tempfail'));
    // Undeclared: the handler never listed changeSender.
    const s2 = await serve(t, { eom: () => ({ modifications: [modify.changeSender('<x@y>')] }) });
    const c2 = await s2.client();
    await c2.negotiate();
    assert.deepEqual((await c2.sendMessage(message(2))).eom?.final, { type: 'tempfail' });
  });

  it('a replacement body that fails halfway is answered with TEMPFAIL even under an accept policy', async (t) => {
    async function* broken(): AsyncIterable<Uint8Array> {
      yield new Uint8Array(70_000);
      throw new DimeError('HSM_UNAVAILABLE', 'token removed');
    }
    const s = await serve(t, { actions: ['replaceBody'], eom: () => ({ modifications: [modify.replaceBody(broken())] }) }, { failurePolicy: { hsm: 'accept', internal: 'accept' } });
    const c = await s.client();
    await c.negotiate();
    const { eom } = await c.sendMessage(message(1));
    assert.deepEqual(
      eom?.modifications.map((m) => m.type),
      ['replaceBody'],
    );
    assert.deepEqual(eom?.final, { type: 'tempfail' });
  });
});

describe('failures, deadlines and the failure policy', () => {
  it('a handler that misses its deadline gives the policy verdict, and its signal is aborted', async (t) => {
    let signal: AbortSignal | undefined;
    const s = await serve(
      t,
      {
        rcptTo: (ctx, r) => {
          if (r.address.startsWith('slow')) {
            signal = ctx.signal;
            return new Promise(() => undefined);
          }
          return undefined;
        },
        eom: (_ctx, m) => (m.headers.some((h) => h.value === 'hang') ? new Promise(() => undefined) : undefined),
      },
      { deadlines: { command: 150, content: 200 } },
    );
    const c = await open(s);
    const started = Date.now();
    const { replies } = await c.sendMessage(message(1, { rcpts: ['<slow@example.test>', '<fast@example.test>'] }));
    assert.deepEqual(replies.rcpt!.map(type), ['tempfail', 'continue']);
    assert.ok(Date.now() - started >= 140);
    assert.equal(signal?.aborted, true);
    assert.ok(s.logs.some((l) => l.code === 'DEADLINE_EXCEEDED' && l.class === 'deadline' && l.stage === 'rcptTo'));
    const hung = await c.sendMessage(message(2, { headers: [['Subject', 'hang']] }));
    assert.deepEqual(hung.eom?.final, { type: 'tempfail' });
  });

  it('per-class actions: reject, accept, quarantine (QUARANTINE then CONTINUE at end of message)', async (t) => {
    const s = await serve(
      t,
      {
        mailFrom: (_ctx, m) => {
          if (m.address === 'dns@example.test') throw new DimeError('DNS_TIMEOUT', 'resolver');
          if (m.address === 'hsm@example.test') throw new DimeError('HSM_UNAVAILABLE');
          return undefined;
        },
        eom: (_ctx, m) => {
          if (m.sender?.address === 'late@example.test') return new Promise(() => undefined);
          throw new DimeError('SIGNET_NOT_FOUND', 'bob@example.test');
        },
      },
      { deadlines: { content: 150 }, failurePolicy: { dns: 'accept', hsm: 'reject', deadline: 'quarantine' } },
    );
    const c = await open(s);
    assert.deepEqual((await c.sendMessage(message(1, { from: '<dns@example.test>' }))).replies.mail!.map(type), ['accept']);
    c.abort();
    assert.deepEqual((await c.sendMessage(message(2, { from: '<hsm@example.test>' }))).replies.mail!.map(type), ['reject']);
    c.abort();
    const notFound = await c.sendMessage(message(3));
    assert.deepEqual(notFound.eom?.final, { type: 'tempfail' }, 'signet-not-found keeps the default');
    const late = await c.sendMessage(message(4, { from: '<late@example.test>' }));
    assert.deepEqual(late.eom?.modifications, [{ type: 'quarantine', reason: 'dime milter failure (deadline)' }]);
    assert.deepEqual(late.eom?.final, { type: 'continue' });
    assert.equal(c.negotiated!.actions & SMFIF.QUARANTINE, SMFIF.QUARANTINE, 'negotiated because the policy may quarantine');
  });

  it('a thrown non-DimeError, a bad verdict and an oversized message are internal failures', async (t) => {
    const s = await serve(
      t,
      {
        header: (_ctx, h) => {
          if (h.name === 'X-Throw') throw new TypeError('bug');
          if (h.name === 'X-Bad') return { kind: 'maybe' } as never;
          return h.name === 'X-Skip' ? verdict.skip() : undefined;
        },
        body: () => undefined,
        eom: () => undefined,
      },
      { limits: { maxMessageBytes: 10_000 } },
    );
    const c = await open(s);
    for (const name of ['X-Throw', 'X-Bad', 'X-Skip']) {
      const { replies, eom } = await c.sendMessage(message(1, { headers: [[name, '1'], ['Subject', 'after']] }));
      assert.deepEqual(replies.header!.map(type), ['tempfail', 'tempfail'], name);
      assert.deepEqual(eom?.final, { type: 'tempfail' }, name);
    }
    assert.ok(s.logs.some((l) => l.code === 'MILTER_BAD_VERDICT'));
    const big = await c.sendMessage(message(2, { body: new Uint8Array(20_000), chunkSize: 4096 }));
    assert.deepEqual(big.replies.body!.map(type), ['continue', 'continue', 'tempfail', 'tempfail', 'tempfail']);
    assert.deepEqual(big.eom?.final, { type: 'tempfail' });
    assert.ok(s.logs.some((l) => l.code === 'MILTER_MESSAGE_TOO_LARGE'));
  });

  it('sends SMFIR_PROGRESS while a slow eom handler runs', async (t) => {
    const s = await serve(t, { eom: () => sleep(650).then(() => verdict.accept()) }, { progressInterval: 100 });
    const c = await s.client();
    await c.negotiate();
    const started = Date.now();
    const { eom } = await c.sendMessage(message(1));
    assert.deepEqual(eom?.final, { type: 'accept' });
    // 650 ms at one packet per 100 ms: about 6 (a loaded machine may delay a timer or two).
    assert.ok(eom!.progress >= 3 && eom!.progress <= 7, `expected about 6 progress packets, got ${eom!.progress}`);
    assert.ok(c.progressTimes[0]! - started >= 80, 'the first progress packet comes after one interval');
    // No progress for a quick handler.
    const s2 = await serve(t, { eom: () => undefined }, { progressInterval: 100 });
    const c2 = await s2.client();
    await c2.negotiate();
    assert.equal((await c2.sendMessage(message(2))).eom?.progress, 0);
  });
});

describe('buffering and spill files', { skip: HAVE_PROC ? false : 'needs /proc/self/fd to watch descriptors' }, () => {
  it('spills a 5 MiB body to an unlinked 0600 file in the spill dir and closes it after the message', async (t) => {
    const dir = scratchDir('dime-milter-spill-');
    const body = new Uint8Array(5 * 1024 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7) & 0xff;
    const observed: Record<string, unknown> = {};
    const s = await serve(
      t,
      {
        async eom(_ctx, m: MilterMessage) {
          const files = openFilesIn(dir);
          observed.spilled = m.body.spilled;
          observed.size = m.body.size;
          observed.visible = fs.readdirSync(dir);
          observed.open = files.map((f) => f.target.endsWith(' (deleted)'));
          observed.mode = files.length === 1 ? (fs.statSync(`/proc/self/fd/${files[0]!.fd}`).mode & 0o777).toString(8) : undefined;
          let count = 0;
          const hash = createHash('sha256');
          for await (const chunk of m.body.chunks()) {
            count += chunk.length;
            hash.update(chunk);
          }
          observed.hash = hash.digest('hex');
          observed.count = count;
        },
      },
      { limits: { spillDir: dir, spillThreshold: 1024 * 1024 } },
    );
    const c = await s.client();
    await c.negotiate();
    const { eom } = await c.sendMessage(message(1, { body }));
    assert.equal(eom?.final.type, 'continue');
    assert.deepEqual(observed, {
      spilled: true,
      size: body.length,
      visible: [],
      open: [true],
      mode: '600',
      hash: createHash('sha256').update(body).digest('hex'),
      count: body.length,
    });
    await until(() => openFilesIn(dir).length === 0);

    // A small body stays in memory.
    let small: boolean | undefined;
    const s2 = await serve(t, { eom: (_ctx, m) => void (small = m.body.spilled) }, { limits: { spillDir: dir } });
    const c2 = await s2.client();
    await c2.negotiate();
    await c2.sendMessage(message(2));
    assert.equal(small, false);
  });

  it('releases the spill file on ABORT and when the connection drops mid-body', async (t) => {
    const dir = scratchDir('dime-milter-spill-');
    const s = await serve(t, { eom: () => undefined }, { limits: { spillDir: dir, spillThreshold: 1000 } });
    const c = await s.client();
    await c.negotiate();
    await c.mail('<a@example.test>');
    await c.rcpt('<b@example.test>');
    await c.body(new Uint8Array(50_000));
    await until(() => openFilesIn(dir).length === 1);
    c.abort();
    await until(() => openFilesIn(dir).length === 0);

    const d = await s.client();
    await d.negotiate();
    await d.mail('<a@example.test>');
    await d.body(new Uint8Array(50_000));
    await until(() => openFilesIn(dir).length === 1);
    d.destroy();
    await until(() => openFilesIn(dir).length === 0 && s.server.connections === 1);
    assert.deepEqual(fs.readdirSync(dir), []);
  });
});

describe('protocol errors', () => {
  it('answers an out-of-order command with TEMPFAIL and goes on; closes on garbage or commands before OPTNEG', async (t) => {
    const s = await serve(t, { rcptTo: () => undefined, header: () => undefined, eom: () => undefined });
    const c = await open(s);
    assert.equal(type(await c.rcpt('<no-mail@example.test>')), 'tempfail', 'RCPT outside a message');
    await c.mail('<a@example.test>');
    await c.header('Subject', 'x');
    assert.equal(type(await c.rcpt('<late@example.test>')), 'tempfail', 'RCPT after the headers');
    assert.deepEqual((await c.eom()).final, { type: 'tempfail' }, 'the message stays failed');
    c.abort();
    const { eom } = await c.sendMessage(message(2));
    assert.equal(eom?.final.type, 'continue', 'the next message is fine');

    const early = await s.client();
    early.send({ type: 'mail', sender: '<x@y>', args: [] });
    await early.closed;
    const garbage = await s.client();
    await garbage.negotiate();
    garbage.raw('Z', enc('junk'));
    await garbage.closed;
    const malformed = await s.client();
    await malformed.negotiate();
    malformed.raw('H', enc('no terminator'));
    await malformed.closed;
    assert.ok(s.logs.some((l) => l.code === 'MILTER_UNKNOWN_COMMAND'));
    assert.ok(s.logs.some((l) => l.code === 'MILTER_PROTOCOL'));
    // The first connection is still usable.
    assert.equal((await c.sendMessage(message(3))).eom?.final.type, 'continue');
  });

  it('refuses an OPTNEG below version 2 and a packet above the configured size', async (t) => {
    const s = await serve(t, undefined, { limits: { maxPacketLength: 1000 } });
    const old = await s.client();
    old.send({ type: 'optneg', version: 1, actions: 0xf, protocol: 0x3f });
    await old.closed;
    const big = await s.client();
    await big.negotiate();
    big.raw('U', new Uint8Array(1000));
    await big.closed;
    assert.ok(s.logs.some((l) => l.code === 'MILTER_PACKET_TOO_LARGE'));
  });
});

describe('server', () => {
  it('parses Postfix socket specs and gives the chroot-relative form for main.cf', () => {
    assert.deepEqual(parseSocketSpec('inet:127.0.0.1:8899'), { kind: 'inet', host: '127.0.0.1', port: 8899 });
    assert.deepEqual(parseSocketSpec('inet:[::1]:8899'), { kind: 'inet', host: '::1', port: 8899 });
    assert.deepEqual(parseSocketSpec('inet:localhost:0'), { kind: 'inet', host: 'localhost', port: 0 });
    assert.deepEqual(parseSocketSpec('unix:/var/spool/postfix/dime/milter.sock'), { kind: 'unix', path: '/var/spool/postfix/dime/milter.sock' });
    assert.deepEqual(parseSocketSpec('local:/run/dime.sock'), { kind: 'unix', path: '/run/dime.sock' });
    for (const bad of ['inet:8899@127.0.0.1', 'inet:127.0.0.1', 'inet:127.0.0.1:65536', 'inet:::1:25', 'inet:[nothex]:25', 'unix:relative.sock', 'tcp:1.2.3.4:5', '', `unix:/${'x'.repeat(107)}`]) {
      expectCode(() => parseSocketSpec(bad), 'SOCKET_BAD_SPEC', bad);
    }
    assert.equal(postfixMilterSpec(parseSocketSpec('unix:/var/spool/postfix/dime/milter.sock')), 'unix:/dime/milter.sock');
    assert.equal(postfixMilterSpec(parseSocketSpec('unix:/run/dime.sock')), 'unix:/run/dime.sock');
    assert.equal(postfixMilterSpec(parseSocketSpec('inet:[::1]:8899')), 'inet:[::1]:8899');
  });

  it('listens on a unix socket (mode 0660), replaces a stale one, refuses a live one or a file, removes it on close', async () => {
    const dir = scratchDir('dime-milter-sock-');
    const sock = path.join(dir, 'milter.sock');
    // A stale socket: bound by a server that is gone.
    const stale = net.createServer();
    await new Promise<void>((r) => stale.listen(sock, r));
    // Close without unlinking (libuv unlinks on close), so copy the inode out of the way first.
    fs.renameSync(sock, `${sock}.keep`);
    await new Promise<void>((r) => stale.close(() => r()));
    fs.renameSync(`${sock}.keep`, sock);
    assert.ok(fs.lstatSync(sock).isSocket());

    const server = await startMilterServer({ listen: `unix:${sock}`, logger: createLogger({ level: 'silent' }) });
    try {
      assert.equal(fs.statSync(sock).mode & 0o777, 0o660);
      const c = await MilterClient.connect({ path: sock });
      await c.negotiate();
      assert.equal(type(await c.connectEvent()), 'accept', 'pass-through over the unix socket');
      c.destroy();
      await assert.rejects(startMilterServer({ listen: `unix:${sock}`, logger: createLogger({ level: 'silent' }) }), (e: unknown) => e instanceof DimeError && e.code === 'SOCKET_IN_USE');
    } finally {
      await server.close(0);
    }
    assert.equal(fs.existsSync(sock), false);
    fs.writeFileSync(sock, 'not a socket');
    await assert.rejects(startMilterServer({ listen: `unix:${sock}`, logger: createLogger({ level: 'silent' }) }), (e: unknown) => e instanceof DimeError && e.code === 'FILE_EXISTS');
    assert.equal(fs.readFileSync(sock, 'utf8'), 'not a socket');
  });

  it('refuses a port that is already taken', async (t) => {
    const s = await serve(t, undefined);
    await assert.rejects(
      startMilterServer({ listen: `inet:127.0.0.1:${s.port}`, logger: createLogger({ level: 'silent' }) }),
      (e: unknown) => e instanceof DimeError && e.code === 'USAGE' && /EADDRINUSE/.test(e.message),
    );
  });

  it('graceful close lets a message in progress finish, then a hung handler gets TEMPFAIL after the grace period', async (t) => {
    let release: () => void = () => undefined;
    const s = await serve(t, { eom: (_ctx, m) => (m.sender?.address === 'hang@example.test' ? new Promise(() => undefined) : new Promise<void>((r) => (release = r))) }, { gracePeriod: 300 });
    const busy = await s.client();
    await busy.negotiate();
    const idle = await s.client();
    await idle.negotiate();
    await busy.mail('<a@example.test>');
    const eomReply = busy.eom();
    await sleep(50);
    const closing = s.server.close();
    await idle.closed; // idle connections close at once
    assert.equal(busy.isOpen, true);
    await assert.rejects(MilterClient.connect({ port: s.port }), 'no new connections');
    release();
    assert.deepEqual((await eomReply).final, { type: 'continue' }, 'the in-flight message finished');
    await busy.closed;
    await closing;

    const s2 = await serve(t, { eom: () => new Promise(() => undefined) }, { gracePeriod: 200 });
    const hung = await s2.client();
    await hung.negotiate();
    await hung.mail('<hang@example.test>');
    const hungReply = hung.eom(5000);
    await sleep(50);
    const started = Date.now();
    await s2.server.close();
    assert.deepEqual((await hungReply).final, { type: 'tempfail' });
    assert.ok(Date.now() - started >= 150 && Date.now() - started < 3000);
    await hung.closed;
  });

  it('`dime milter` starts, logs JSON, passes mail through and stops on SIGTERM', async () => {
    const child = spawn(process.execPath, [DIME_BIN, 'milter', '--listen', 'inet:127.0.0.1:0', '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await until(() => stderr.includes('milter.start'), 10_000);
      const start = JSON.parse(stderr.split('\n').find((l) => l.includes('milter.start'))!) as { listen: string; handler: string };
      assert.equal(start.handler, 'pass-through');
      const spec = parseSocketSpec(start.listen);
      assert.ok(spec.kind === 'inet' && spec.port > 0);
      const c = await MilterClient.connect({ port: spec.kind === 'inet' ? spec.port : 0 });
      await c.negotiate();
      assert.equal(type(await c.connectEvent()), 'accept');
      c.destroy();
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
      const events = stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => (JSON.parse(l) as { event?: string }).event)
        .filter(Boolean);
      assert.deepEqual(events, ['milter.start', 'milter.stopping', 'milter.stop']);
    } finally {
      child.kill('SIGKILL');
    }
    const bad = spawn(process.execPath, [DIME_BIN, 'milter', '--listen', 'inet:8899@127.0.0.1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let badErr = '';
    bad.stderr.on('data', (d: Buffer) => (badErr += d.toString()));
    assert.equal(await new Promise((r) => bad.once('exit', r)), 2);
    assert.match(badErr, /Sendmail's inet:PORT@HOST/);
  });
});
