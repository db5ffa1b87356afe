/**
 * Our milter under a real Postfix 3.7 (a private instance from the rig in helpers/postfix.ts),
 * with swaks, a raw SMTP client and sendmail(1) as the mail sources. Every claim docs/milter.md
 * makes about Postfix is checked here against the mailbox, the queue, the SMTP replies and the
 * maillog:
 *
 *  - the command stream: after each message one ABORT, at the end of the SMTP session a second
 *    ABORT and QUIT; further messages of the session reuse the milter connection; our `abort`
 *    callback runs only for a message the client really abandoned (RSET), not for those ABORTs;
 *  - header edits without HDR_LEADSPC: INSHEADER 0 above Postfix's own Received:, 1 just below it,
 *    the rest exactly as applyHeaderModifications() predicts; with HDR_LEADSPC: values keep their
 *    leading whitespace and edits are written verbatim;
 *  - a 5 MiB body (spilled on our side) replaced by another 5 MiB body, byte for byte in the mailbox;
 *  - recipients added (with NOTIFY/ORCPT) and deleted; custom, reject and tempfail replies at RCPT
 *    and at end of message, exactly as the client sees them; quarantine → hold queue (`!` in
 *    `postqueue -p`), released by `postsuper -H`;
 *  - progress packets under milter_content_timeout=2s, and the 451 4.7.1 without them;
 *  - milter_default_action (tempfail) after we close a connection between messages, and while down;
 *  - a unix socket inside Postfix's chroot, named chroot-relative in smtpd_milters;
 *  - non_smtpd_milters with sendmail(1): addresses without <>, port 0, no ABORT.
 *
 * One Postfix serves every test: the rig's smtpd runs the main milter, and extra smtpd listeners
 * (each with its own `-o smtpd_milters=…`) run the milters whose negotiation or timeouts differ.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../src/log.js';
import { applyHeaderModifications, modify, verdict, type EomResult, type MilterContext, type MilterHandler, type MilterMessage, type Modification } from '../src/milter/handler.js';
import { postfixMilterSpec, startMilterServer, type MilterServer } from '../src/milter/server.js';
import { connectClient, freePort, startPostfix, waitFor, type Delivered, type Postfix, type SwaksResult } from './helpers/postfix.js';

const quiet = createLogger({ level: 'silent' });
const KIB = 1024;
const MIB = 1024 * KIB;
/** milter_content_timeout on the listeners of the timing tests. */
const CONTENT_TIMEOUT_S = 2;
/** How long the slow end-of-message handler works: twice the content timeout. */
const SLOW_EOM_MS = 2 * CONTENT_TIMEOUT_S * 1000;

type LogLine = Record<string, unknown> & { msg?: string; conn?: string; cmd?: string };

/** What the main handler saw of one message at end of message. */
interface SeenMessage {
  conn: string;
  headers: { name: string; value: string }[];
  sender: string | undefined;
  recipients: string[];
  queueId: string | undefined;
  bodySize: number;
  spilled: boolean;
}

/** What the main handler saw of one milter connection before the message content. */
interface SeenConnection {
  connect?: { hostname: string; family: string; port: number; address: string };
  mail?: { raw: string; address: string; queueIdMacro: string | undefined };
  rcpts: string[];
  aborts: number;
}

// ------------------------------------------------------------------------------- small helpers

function postfixTool(tool: 'postcat' | 'postsuper' | 'postqueue', pf: Postfix, args: string[]): string {
  const r = spawnSync(`/usr/sbin/${tool}`, ['-c', pf.configDir, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${tool} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return `${r.stdout}${r.stderr}`;
}

/** The reply to a client line in swaks's transcript, as `code text`. */
function reply(r: SwaksResult, command: string): string {
  const x = r.replies.find((y) => y.command === command);
  assert.ok(x, `no reply to ${JSON.stringify(command)} in:\n${r.output}`);
  return x.lines.join('\n');
}

/** The reply to the end of DATA (also with --suppress-data, where swaks prints a summary line instead of the dot). */
function endOfData(r: SwaksResult): string {
  const i = r.replies.findIndex((y) => y.code === 354);
  const x = r.replies[i + 1];
  assert.ok(i >= 0 && x, `no end-of-data reply in:\n${r.output}`);
  return `${x.code} ${x.text}`;
}

function queueIdOf(r: SwaksResult): string {
  const id = /queued as ([0-9A-F]+)/.exec(endOfData(r))?.[1];
  assert.ok(id, r.output);
  return id;
}

/** A delivered message split into header fields (name, raw value after the colon, folds kept) and body. */
function parseDelivered(m: Delivered): { fields: { name: string; raw: string }[]; body: string } {
  const split = m.content.indexOf('\n\n');
  assert.ok(split > 0, `no header/body separator in ${m.file}`);
  const fields: { name: string; raw: string }[] = [];
  for (const line of m.content.slice(0, split).split('\n')) {
    if (/^[ \t]/.test(line)) fields[fields.length - 1]!.raw += `\n${line}`;
    else {
      const colon = line.indexOf(':');
      fields.push({ name: line.slice(0, colon), raw: line.slice(colon + 1) });
    }
  }
  return { fields, body: m.content.slice(split + 2) };
}

/** Without HDR_LEADSPC, Postfix writes `Name: value`: the value proper starts after one space. */
const unspaced = (raw: string) => (raw.startsWith(' ') ? raw.slice(1) : raw);

/**
 * A minimal SMTP client on Postfix's port, one command at a time (for what swaks cannot do:
 * several messages and an RSET in one session). Returns each reply's lines.
 */
async function smtpSession(port: number) {
  const c = await connectClient(port);
  let consumed = 0;
  const next = async (): Promise<string> => {
    const complete = (b: Buffer) => /(?:^|\r\n)\d{3} [^\r\n]*\r\n$/.test(b.subarray(consumed).toString('latin1'));
    const all = await c.waitFor(complete, 20_000);
    const text = all.subarray(consumed).toString('latin1').trimEnd();
    consumed = all.length;
    return text;
  };
  const banner = await next();
  assert.match(banner, /^220 /);
  return {
    async send(line: string): Promise<string> {
      c.write(`${line}\r\n`);
      return next();
    },
    /** MAIL, RCPT…, DATA and the message: the reply to each step. */
    async message(from: string, to: string[], data: string): Promise<string[]> {
      const replies = [await this.send(`MAIL FROM:<${from}>`)];
      for (const r of to) replies.push(await this.send(`RCPT TO:<${r}>`));
      replies.push(await this.send('DATA'));
      if (replies.at(-1)!.startsWith('354')) replies.push(await this.send(`${data.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..')}\r\n.`));
      return replies;
    },
    close: () => c.destroy(),
  };
}

const sha256 = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');

/** 5 MiB of 64-byte CRLF lines, numbered, lower case (the replacement upper-cases them). */
function bigBody(): Buffer {
  const lines: string[] = [];
  for (let i = 0; i < (5 * MIB) / 64; i++) lines.push(`${String(i).padStart(8, '0')} the quick brown fox jumps over the lazy dog`.padEnd(62, '.') + '\r\n');
  const b = Buffer.from(lines.join(''), 'latin1');
  assert.equal(b.length, 5 * MIB);
  return b;
}

/** Upper-cases ASCII letters chunk by chunk: a streaming transformation from the spilled body to REPLBODY. */
async function* upperCased(chunks: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  for await (const chunk of chunks) {
    const out = Buffer.from(chunk);
    for (let i = 0; i < out.length; i++) if (out[i]! >= 0x61 && out[i]! <= 0x7a) out[i] = out[i]! - 0x20;
    yield out;
  }
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });

// ------------------------------------------------------------------------------- the tests

describe('our milter under a real Postfix 3.7: smtpd_milters, non_smtpd_milters, timeouts, chroot', () => {
  let pf: Postfix;
  const servers: Record<'main' | 'leadspc' | 'progress' | 'noProgress' | 'closing', MilterServer> = {} as never;
  let unixServer: MilterServer | undefined;
  /** Extra smtpd listeners, each with its own smtpd_milters. */
  const ports = { leadspc: 0, progress: 0, noProgress: 0, closing: 0, chroot: 0 };
  /** The main server's log at trace level: one `command` line per packet from Postfix. */
  const logs: LogLine[] = [];
  const seen = new Map<string, SeenMessage>();
  const connections = new Map<string, SeenConnection>();
  const leadspcSeen: { name: string; value: string }[][] = [];
  /** End-of-message behaviour per X-Dime-Case header value. */
  const cases = new Map<string, (ctx: MilterContext, m: MilterMessage) => EomResult | Promise<EomResult>>();

  const conn = (ctx: MilterContext): SeenConnection => {
    let c = connections.get(ctx.id);
    if (!c) connections.set(ctx.id, (c = { rcpts: [], aborts: 0 }));
    return c;
  };
  const caseOf = (m: MilterMessage) => m.headers.find((h) => h.name.toLowerCase() === 'x-dime-case')?.value.trim() ?? '';

  /** The main handler: records what Postfix sent, refuses some recipients, dispatches eom on X-Dime-Case. */
  const mainHandler: MilterHandler = {
    name: 'e2e',
    actions: ['addHeader', 'changeHeader', 'replaceBody', 'addRecipient', 'addRecipientWithArgs', 'deleteRecipient', 'quarantine'],
    connect(ctx, info) {
      conn(ctx).connect = { ...info };
    },
    mailFrom(ctx, sender) {
      conn(ctx).mail = { raw: sender.raw, address: sender.address, queueIdMacro: ctx.macros('M').get('i') };
    },
    rcptTo(ctx, rcpt) {
      conn(ctx).rcpts.push(rcpt.raw);
      switch (rcpt.address.split('@')[0]) {
        case 'nosuch':
          return verdict.reply('550', 'no such DIME user', '5.1.1');
        case 'pending':
          return verdict.reply('451', ['DIME signet lookup pending (100% of tries failed)', 'try again in a minute'], '4.7.1');
        case 'refused':
          return verdict.reject();
        case 'later':
          return verdict.tempfail();
        default:
          return undefined;
      }
    },
    abort(ctx) {
      conn(ctx).aborts++;
    },
    async eom(ctx, m) {
      const name = caseOf(m);
      seen.set(name, {
        conn: ctx.id,
        headers: m.headers.map((h) => ({ name: h.name, value: h.value })),
        sender: m.sender?.raw,
        recipients: m.recipients.map((r) => r.raw),
        queueId: m.queueId,
        bodySize: m.body.size,
        spilled: m.body.spilled,
      });
      const behaviour = cases.get(name);
      return behaviour ? behaviour(ctx, m) : { modifications: [modify.addHeader('X-Dime-Milter', `${ctx.id} saw ${name || 'no case'}`)] };
    },
  };

  const slowHandler: MilterHandler = {
    name: 'slow',
    actions: ['addHeader'],
    async eom(ctx) {
      await sleep(SLOW_EOM_MS, ctx.signal);
      return { modifications: [modify.addHeader('X-Dime-Slow', `worked ${SLOW_EOM_MS} ms`)] };
    },
  };

  before(async () => {
    const destination = new Writable({
      write(chunk, _enc, done) {
        for (const line of String(chunk).split('\n')) if (line) logs.push(JSON.parse(line) as LogLine);
        done();
      },
    });
    const inet = { listen: 'inet:127.0.0.1:0' as const, gracePeriod: 500 };
    servers.main = await startMilterServer({ ...inet, handler: mainHandler, logger: createLogger({ destination, level: 'trace' }) });
    servers.leadspc = await startMilterServer({
      ...inet,
      logger: quiet,
      handler: {
        name: 'leadspc',
        headerLeadingSpace: true,
        actions: ['addHeader', 'changeHeader'],
        eom(_ctx, m) {
          leadspcSeen.push(m.headers.map((h) => ({ name: h.name, value: h.value })));
          return { modifications: [modify.changeHeader('Subject', 1, ' [dime] leading space kept'), modify.addHeader('X-Dime-Tight', 'no space'), modify.addHeader('X-Dime-Spaced', '\tafter a tab')] };
        },
      },
    });
    servers.progress = await startMilterServer({ ...inet, logger: quiet, handler: slowHandler, progressInterval: 500 });
    servers.noProgress = await startMilterServer({ ...inet, logger: quiet, handler: slowHandler, progressInterval: 0 });
    servers.closing = await startMilterServer({
      ...inet,
      logger: quiet,
      handler: { name: 'closing', actions: ['addHeader'], eom: () => ({ modifications: [modify.addHeader('X-Dime-Closing', 'filtered')] }) },
    });
    const spec = (s: MilterServer) => postfixMilterSpec(s.address!.spec);
    for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
    const smtpd = (port: number, milters: string, chroot = 'n') => `127.0.0.1:${port} inet n - ${chroot} - - smtpd -o smtpd_milters=${milters}`;
    pf = await startPostfix({
      users: ['alice', 'bob', 'carol', 'dave', 'nosuch', 'pending', 'refused', 'later'],
      main: {
        smtpd_milters: spec(servers.main),
        non_smtpd_milters: spec(servers.main),
        // Per-milter timeouts (Postfix ≥ 3.0) for the timing tests only.
        dime_progress_milters: `{ ${spec(servers.progress)}, content_timeout=${CONTENT_TIMEOUT_S}s }`,
        dime_no_progress_milters: `{ ${spec(servers.noProgress)}, content_timeout=${CONTENT_TIMEOUT_S}s }`,
      },
      master: [
        smtpd(ports.leadspc, spec(servers.leadspc)),
        smtpd(ports.progress, '$dime_progress_milters'),
        smtpd(ports.noProgress, '$dime_no_progress_milters'),
        smtpd(ports.closing, spec(servers.closing)),
        // Chrooted like Debian's stock smtpd: the unix milter path is relative to the queue directory.
        smtpd(ports.chroot, 'unix:/dime/milter.sock', 'y'),
      ],
    });
  });

  after(async () => {
    await pf?.stop();
    await Promise.all([...Object.values(servers), ...(unixServer ? [unixServer] : [])].map((s) => s?.close(0)));
  });

  /** The packets Postfix sent on one milter connection, without the MACRO and HEADER packets. */
  function commands(connId: string): string[] {
    return logs.filter((l) => l.msg === 'command' && l.conn === connId && l.cmd !== 'macro' && l.cmd !== 'header').map((l) => l.cmd!);
  }
  /** Wait until Postfix has closed its side of a milter connection (QUIT arrives after the SMTP client's 221). */
  function closedCommands(connId: string): Promise<string[]> {
    return waitFor(() => (commands(connId).at(-1) === 'quit' ? commands(connId) : undefined), 5000, `QUIT on milter connection ${connId}`, () => JSON.stringify(commands(connId)));
  }
  function seenCase(name: string): SeenMessage {
    const s = seen.get(name);
    assert.ok(s, `the milter saw no message with X-Dime-Case: ${name}`);
    return s;
  }

  it('sends ABORT after each message, ABORT and QUIT at session end, reuses the connection, and our abort callback runs only for RSET', async () => {
    const smtp = await smtpSession(pf.smtpPort);
    try {
      assert.match(await smtp.send('EHLO client.example.test'), /^250 /m);
      const one = await smtp.message('sender@example.test', ['alice@example.test'], 'Subject: session 1\nX-Dime-Case: session-1\n\nfirst\n');
      assert.match(one.at(-1)!, /^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);
      // A transaction the client abandons: Postfix sends ABORT, our abort callback runs once.
      assert.equal(await smtp.send('MAIL FROM:<sender@example.test>'), '250 2.1.0 Ok');
      assert.equal(await smtp.send('RCPT TO:<bob@example.test>'), '250 2.1.5 Ok');
      assert.equal(await smtp.send('RSET'), '250 2.0.0 Ok');
      const two = await smtp.message('sender@example.test', ['alice@example.test'], 'Subject: session 2\nX-Dime-Case: session-2\n\nsecond\n');
      assert.match(two.at(-1)!, /^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);
      assert.equal(await smtp.send('QUIT'), '221 2.0.0 Bye');
    } finally {
      smtp.close();
    }
    const id = seenCase('session-1').conn;
    assert.equal(seenCase('session-2').conn, id, 'the second message came on the same milter connection');
    // connect/mailFrom/rcptTo callbacks: Postfix sends those events; no HELO or EOH callbacks: not
    // sent. DATA is sent and answered whenever the message is wanted (handlerOptionRequest).
    assert.deepEqual(await closedCommands(id), [
      'optneg', 'connect',
      'mail', 'rcpt', 'data', 'body', 'eom', 'abort',
      'mail', 'rcpt', 'abort',
      'mail', 'rcpt', 'data', 'body', 'eom', 'abort', 'abort', 'quit',
    ]);
    assert.equal(connections.get(id)!.aborts, 1, 'abort callback: once, for the RSET; not for the ABORTs after finished messages');
    for (const n of [1, 2]) {
      const m = await pf.waitForDelivery((d) => d.content.includes(`Subject: session ${n}\n`));
      assert.equal(m.mailbox, 'alice@example.test');
      assert.match(m.content, new RegExp(`^X-Dime-Milter: ${id} saw session-${n}$`, 'm'));
    }
    assert.equal(pf.messages('bob').length, 0);
  });

  it('header edits without HDR_LEADSPC: INSHEADER 0 lands above Postfix\'s Received:, 1 below it, the rest as applyHeaderModifications predicts', async () => {
    const mods: Modification[] = [
      modify.insertHeader(1, 'X-Dime-Below-Received', 'index 1'),
      modify.insertHeader(0, 'X-Dime-Top', 'index 0'),
      modify.changeHeader('Subject', 1, '[dime] changed subject'),
      modify.deleteHeader('X-Remove-Me'),
      modify.changeHeader('X-Dup', 2, 'second, changed'),
      modify.deleteHeader('X-Dup', 1),
      modify.changeHeader('X-Missing', 1, 'a change of a missing header appends it'),
      modify.deleteHeader('X-Never-There'),
      modify.addHeader('X-Dime-Added', 'appended'),
      modify.addHeader('X-Dime-Folded', 'line one\r\n\tline two'),
    ];
    cases.set('headers', () => ({ modifications: mods }));
    const data = [
      'Date: Sun, 22 Nov 2026 12:00:00 +0000',
      'Message-Id: <headers.e2e@example.test>',
      'From: sender@example.test',
      'To: alice@example.test',
      'Subject: original subject',
      'X-Remove-Me: please',
      'X-Dup: first',
      'X-Dup: second',
      'X-Two:  two spaces',
      'X-Tab:\ttab',
      'X-Folded: part1',
      '\tpart2',
      'X-Dime-Case: headers',
      '',
      'body line',
    ].join('\r\n'); // swaks ends DATA with CRLF . CRLF itself
    const file = path.join(pf.dir, 'headers.eml');
    fs.writeFileSync(file, data);
    const r = await pf.sendWithSwaks(['--to', 'alice@example.test', '--data', `@${file}`]);
    assert.equal(r.code, 0, r.output);
    const queueId = queueIdOf(r);
    const s = seenCase('headers');
    // What Postfix showed us: its own Received: hidden; one space after the colon stripped (not a tab), folds as bare LF.
    assert.deepEqual(s.headers, [
      { name: 'Date', value: 'Sun, 22 Nov 2026 12:00:00 +0000' },
      { name: 'Message-Id', value: '<headers.e2e@example.test>' },
      { name: 'From', value: 'sender@example.test' },
      { name: 'To', value: 'alice@example.test' },
      { name: 'Subject', value: 'original subject' },
      { name: 'X-Remove-Me', value: 'please' },
      { name: 'X-Dup', value: 'first' },
      { name: 'X-Dup', value: 'second' },
      { name: 'X-Two', value: ' two spaces' },
      { name: 'X-Tab', value: '\ttab' },
      { name: 'X-Folded', value: 'part1\n\tpart2' },
      { name: 'X-Dime-Case', value: 'headers' },
    ]);
    assert.equal(s.queueId, queueId);
    const { fields, body } = parseDelivered(await pf.waitForDelivery((d) => d.content.includes('<headers.e2e@example.test>')));
    assert.deepEqual(fields.slice(0, 3).map((f) => f.name), ['Return-Path', 'X-Original-To', 'Delivered-To'], 'added by virtual(8) at delivery');
    assert.deepEqual(fields[3], { name: 'X-Dime-Top', raw: ' index 0' });
    assert.equal(fields[4]!.name, 'Received');
    assert.match(fields[4]!.raw, new RegExp(`^ from client\\.example\\.test \\(localhost \\[127\\.0\\.0\\.1\\]\\)\n\tby mail\\.example\\.test \\(Postfix\\) with ESMTP id ${queueId}\n\tfor <alice@example\\.test>; `));
    assert.deepEqual(fields[5], { name: 'X-Dime-Below-Received', raw: ' index 1' });
    const predicted = applyHeaderModifications(s.headers, mods.filter((m) => m.kind !== 'insertHeader'));
    assert.deepEqual(
      fields.slice(6).map((f) => ({ name: f.name, value: unspaced(f.raw) })),
      predicted.map((h) => ({ name: h.name, value: h.value.replace(/\r\n/g, '\n') })),
    );
    // The same, spelled out: what a reader of the mailbox sees.
    const text = fields.slice(6).map((f) => `${f.name}:${f.raw}`).join('\n');
    assert.equal(
      text,
      [
        'Date: Sun, 22 Nov 2026 12:00:00 +0000',
        'Message-Id: <headers.e2e@example.test>',
        'From: sender@example.test',
        'To: alice@example.test',
        'Subject: [dime] changed subject',
        'X-Dup: second, changed',
        'X-Two:  two spaces',
        'X-Tab:\ttab',
        'X-Folded: part1\n\tpart2',
        'X-Dime-Case: headers',
        'X-Missing: a change of a missing header appends it',
        'X-Dime-Added: appended',
        'X-Dime-Folded: line one\n\tline two',
      ].join('\n'),
    );
    assert.equal(body, 'body line\n');
  });

  it('header edits with HDR_LEADSPC: values arrive with their leading whitespace, edits are written verbatim', async () => {
    const data = ['From: sender@example.test', 'To: alice@example.test', 'Subject: leadspc', 'X-Two:  two spaces', 'X-Tab:\ttab', 'X-None:tight', 'X-Folded: part1', '\tpart2', '', 'body'].join('\r\n');
    const file = path.join(pf.dir, 'leadspc.eml');
    fs.writeFileSync(file, data);
    const r = await pf.sendWithSwaks(['--server', `127.0.0.1:${ports.leadspc}`, '--to', 'alice@example.test', '--data', `@${file}`]);
    assert.equal(r.code, 0, r.output);
    const headers = leadspcSeen.at(-1)!;
    assert.deepEqual(
      headers.filter((h) => !['Message-Id', 'Date'].includes(h.name)),
      [
        { name: 'From', value: ' sender@example.test' },
        { name: 'To', value: ' alice@example.test' },
        { name: 'Subject', value: ' leadspc' },
        { name: 'X-Two', value: '  two spaces' },
        { name: 'X-Tab', value: '\ttab' },
        { name: 'X-None', value: 'tight' },
        { name: 'X-Folded', value: ' part1\n\tpart2' },
      ],
    );
    const m = await pf.waitForDelivery((d) => d.content.includes('X-Two:  two spaces') && d.content.includes('X-Dime-Tight'));
    const { fields } = parseDelivered(m);
    const by = (name: string) => fields.filter((f) => f.name === name).map((f) => `${f.name}:${f.raw}`);
    assert.deepEqual(by('Subject'), ['Subject: [dime] leading space kept'], 'the edit carried its own space');
    assert.deepEqual(by('X-Dime-Tight'), ['X-Dime-Tight:no space'], 'Postfix adds no space under HDR_LEADSPC');
    assert.deepEqual(by('X-Dime-Spaced'), ['X-Dime-Spaced:\tafter a tab']);
    assert.deepEqual(by('X-None'), ['X-None:tight']);
    assert.deepEqual(by('X-Two'), ['X-Two:  two spaces']);
  });

  it('replaces a 5 MiB body (spilled to disk on our side) with another 5 MiB body, streamed as REPLBODY: the mailbox holds it byte for byte', async () => {
    const original = bigBody();
    let readBack = '';
    cases.set('big-body', async (_ctx, m) => {
      readBack = sha256(await m.body.bytes());
      return { modifications: [modify.addHeader('X-Dime-Body', 'replaced'), modify.replaceBody(upperCased(m.body.chunks()))] };
    });
    const file = path.join(pf.dir, 'big.eml');
    fs.writeFileSync(file, Buffer.concat([Buffer.from('From: sender@example.test\r\nTo: alice@example.test\r\nSubject: five MiB\r\nX-Dime-Case: big-body\r\n\r\n'), original.subarray(0, -2)])); // swaks adds the last CRLF
    const r = await pf.sendWithSwaks(['--to', 'alice@example.test', '--data', `@${file}`, '--suppress-data'], { timeoutMs: 60_000 });
    assert.equal(r.code, 0, r.output);
    const s = seenCase('big-body');
    assert.equal(s.bodySize, original.length, 'the milter received the whole body');
    assert.equal(s.spilled, true, 'past the 1 MiB threshold the body was in a temporary file');
    assert.equal(readBack, sha256(original), 'and read back intact');
    const m = await pf.waitForDelivery((d) => d.content.includes('Subject: five MiB'), 30_000);
    const { fields, body } = parseDelivered(m);
    assert.ok(fields.some((f) => f.name === 'X-Dime-Body'));
    const expected = Buffer.from(original.toString('latin1').toUpperCase().replace(/\r\n/g, '\n'), 'latin1');
    assert.equal(body.length, expected.length, 'the mailbox body has the replacement\'s length (LF line ends)');
    assert.equal(sha256(body), sha256(expected), 'and its bytes');
    assert.ok(body.startsWith('00000000 THE QUICK BROWN FOX'));
  });

  it('adds and deletes recipients: the deleted one gets nothing, the added ones get the message', async () => {
    cases.set('recipients', () => ({
      modifications: [modify.deleteRecipient('<bob@example.test>'), modify.addRecipient('carol@example.test'), modify.addRecipient('<dave@example.test>')],
    }));
    const mark = pf.logMark();
    const r = await pf.sendWithSwaks(['--to', 'alice@example.test,bob@example.test', '--h-Subject', 'recipients e2e', '--add-header', 'X-Dime-Case: recipients']);
    assert.equal(r.code, 0, r.output);
    const queueId = queueIdOf(r);
    assert.deepEqual(seenCase('recipients').recipients, ['<alice@example.test>', '<bob@example.test>']);
    for (const who of ['alice', 'carol', 'dave']) {
      const m = await pf.waitForDelivery((d) => d.mailbox === `${who}@example.test` && d.content.includes('Subject: recipients e2e'));
      assert.match(m.content, new RegExp(`^X-Original-To: ${who}@example\\.test$`, 'm'));
    }
    await pf.waitForLog(new RegExp(`${queueId}: removed`), 10_000, mark);
    const log = Buffer.from(pf.log()).subarray(mark).toString();
    assert.deepEqual(
      [...log.matchAll(new RegExp(`${queueId}: to=<([^>]+)>.*status=sent`, 'g'))].map((x) => x[1]).sort(),
      ['alice@example.test', 'carol@example.test', 'dave@example.test'],
    );
    assert.match(log, new RegExp(`${queueId}: from=<sender@example\\.test>, size=\\d+, nrcpt=4 \\(queue active\\)`), 'bob is in the queue file as a cancelled recipient');
    assert.equal(pf.messages('bob').filter((m) => m.content.includes('recipients e2e')).length, 0, 'nothing for the deleted recipient');
  });

  it('replies at RCPT reach the SMTP client exactly (custom 5xx, multi-line 4xx with %, reject, tempfail); the other recipients go on', async () => {
    const r = await pf.sendWithSwaks(['--to', 'nosuch@example.test,pending@example.test,refused@example.test,later@example.test,alice@example.test', '--h-Subject', 'rcpt replies e2e']);
    assert.equal(r.code, 0, r.output);
    assert.equal(reply(r, 'RCPT TO:<nosuch@example.test>'), '550 5.1.1 no such DIME user');
    assert.equal(reply(r, 'RCPT TO:<pending@example.test>'), '451-4.7.1 DIME signet lookup pending (100% of tries failed)\n451 4.7.1 try again in a minute');
    assert.equal(reply(r, 'RCPT TO:<refused@example.test>'), '550 5.7.1 Command rejected');
    assert.equal(reply(r, 'RCPT TO:<later@example.test>'), '451 4.7.1 Service unavailable - try again later');
    assert.equal(reply(r, 'RCPT TO:<alice@example.test>'), '250 2.1.5 Ok');
    const m = await pf.waitForDelivery((d) => d.content.includes('Subject: rcpt replies e2e'));
    assert.equal(m.mailbox, 'alice@example.test');
    assert.match(m.content, /^To: nosuch@example\.test,pending@example\.test,refused@example\.test,later@example\.test,alice@example\.test$/m);
    await pf.waitForLog(/milter-reject: RCPT from localhost\[127\.0\.0\.1\]: 550 5\.1\.1 no such DIME user; from=<sender@example\.test> to=<nosuch@example\.test>/);
    for (const who of ['nosuch', 'pending', 'refused', 'later']) assert.equal(pf.messages(who).length, 0, who);
  });

  it('reject, tempfail and a custom reply at end of message reach the client exactly, logged as milter-reject, nothing queued', async () => {
    cases.set('reject', () => verdict.reject());
    cases.set('tempfail', () => verdict.tempfail());
    cases.set('custom', () => verdict.reply('554', 'DIME: message refused', '5.7.0'));
    const expected: Record<string, string> = {
      reject: '550 5.7.1 Command rejected',
      tempfail: '451 4.7.1 Service unavailable - try again later',
      custom: '554 5.7.0 DIME: message refused',
    };
    for (const [name, text] of Object.entries(expected)) {
      const mark = pf.logMark();
      const r = await pf.sendWithSwaks(['--to', 'alice@example.test', '--add-header', `X-Dime-Case: ${name}`]);
      assert.equal(r.code, 26, `swaks: the final dot refused (${name})`);
      assert.equal(endOfData(r), text);
      // The log line has the text without the reply code.
      const logged = text.slice(4).replace(/[.[\]()]/g, '\\$&');
      await pf.waitForLog(new RegExp(`: milter-reject: END-OF-MESSAGE from localhost\\[127\\.0\\.0\\.1\\]: ${logged}; from=<sender@example\\.test> to=<alice@example\\.test>`), 5000, mark);
    }
    assert.deepEqual(pf.queue(), []);
  });

  it('quarantine: the message waits in the hold queue (`!` in postqueue -p) until postsuper -H releases it; the queue file holds our edits', async () => {
    cases.set('quarantine', () => ({
      verdict: verdict.quarantine('DIME: held for review'),
      modifications: [
        modify.addHeader('X-Dime-Quarantined', 'yes'),
        modify.deleteRecipient('bob@example.test'),
        modify.addRecipient('dave@example.test', ['NOTIFY=SUCCESS', 'ORCPT=rfc822;orig-dave@example.test']),
      ],
    }));
    const mark = pf.logMark();
    const r = await pf.sendWithSwaks(['--to', 'alice@example.test,bob@example.test', '--h-Subject', 'quarantine e2e', '--add-header', 'X-Dime-Case: quarantine']);
    assert.equal(r.code, 0, 'accepted for the client');
    const queueId = queueIdOf(r);
    await pf.waitForLog(new RegExp(`${queueId}: milter-hold: END-OF-MESSAGE from localhost\\[127\\.0\\.0\\.1\\]: milter triggers HOLD action; from=<sender@example\\.test> to=<bob@example\\.test>`), 5000, mark);
    assert.deepEqual(pf.queue(), [{ queueName: 'hold', queueId, sender: 'sender@example.test', recipients: [{ address: 'alice@example.test' }, { address: 'dave@example.test' }] }]);
    assert.match(postfixTool('postqueue', pf, ['-p']), new RegExp(`^${queueId}!\\s+\\d+ .* sender@example\\.test$`, 'm'));
    // The envelope as cleanup wrote it: bob cancelled, dave added with the DSN arguments we sent.
    const envelope = postfixTool('postcat', pf, ['-e', '-q', queueId]);
    assert.match(envelope, /^original_recipient: bob@example\.test\ncanceled_recipient: bob@example\.test$/m);
    assert.match(envelope, /^named_attribute: notify_flags=2\nnamed_attribute: dsn_orig_rcpt=rfc822;orig-dave@example\.test\noriginal_recipient: dave@example\.test\nrecipient: dave@example\.test$/m);
    // Held means held: give qmgr a moment, nothing is delivered.
    await sleep(300);
    assert.equal(pf.messages('alice').filter((m) => m.content.includes('quarantine e2e')).length, 0);
    assert.match(postfixTool('postsuper', pf, ['-H', queueId]), /Released from hold: 1 message/);
    postfixTool('postqueue', pf, ['-i', queueId]);
    for (const who of ['alice', 'dave']) {
      const m = await pf.waitForDelivery((d) => d.mailbox === `${who}@example.test` && d.content.includes('Subject: quarantine e2e'));
      assert.match(m.content, /^X-Dime-Quarantined: yes$/m, 'the modifications sent with the quarantine were applied');
    }
    assert.match(pf.log(), new RegExp(`${queueId}: released from hold`));
    assert.equal(pf.messages('bob').filter((m) => m.content.includes('quarantine e2e')).length, 0);
  });

  it(`progress packets keep a ${SLOW_EOM_MS / 1000} s end of message alive under milter_content_timeout=${CONTENT_TIMEOUT_S}s; without them Postfix gives up with 451 4.7.1`, async () => {
    const mark = pf.logMark();
    const timed = async (port: number, subject: string) => {
      const t0 = Date.now();
      const r = await pf.sendWithSwaks(['--server', `127.0.0.1:${port}`, '--to', 'alice@example.test', '--h-Subject', subject]);
      return { r, ms: Date.now() - t0 };
    };
    // Both at once: the two listeners and milters are independent.
    const [withProgress, without] = await Promise.all([timed(ports.progress, 'progress e2e'), timed(ports.noProgress, 'no progress e2e')]);
    assert.equal(withProgress.r.code, 0, withProgress.r.output);
    assert.match(endOfData(withProgress.r), /^250 2\.0\.0 Ok: queued as /);
    assert.ok(withProgress.ms >= SLOW_EOM_MS, `the client waited for the whole end of message (${withProgress.ms} ms)`);
    const m = await pf.waitForDelivery((d) => d.content.includes('Subject: progress e2e'));
    assert.match(m.content, new RegExp(`^X-Dime-Slow: worked ${SLOW_EOM_MS} ms$`, 'm'));

    assert.equal(without.r.code, 26);
    assert.equal(endOfData(without.r), '451 4.7.1 Service unavailable - try again later');
    assert.ok(without.ms >= CONTENT_TIMEOUT_S * 1000 && without.ms < SLOW_EOM_MS, `Postfix gave up after its content timeout (${without.ms} ms)`);
    const port = servers.noProgress.address!.spec.kind === 'inet' ? servers.noProgress.address!.spec.port : 0;
    const log = Buffer.from(pf.log()).subarray(mark).toString();
    assert.match(log, new RegExp(`cleanup\\[\\d+\\]: warning: milter inet:127\\.0\\.0\\.1:${port}: can't read SMFIC_BODYEOB reply packet header: Connection timed out`));
    assert.match(log, /milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 4\.7\.1 Service unavailable - try again later; from=<sender@example\.test> to=<alice@example\.test>/);
    assert.equal(pf.messages('alice').filter((d) => d.content.includes('Subject: no progress e2e')).length, 0);
  });

  it('milter_default_action (tempfail) applies when we close the milter connection between messages, and while we are down', async () => {
    assert.equal(pf.postconf('milter_default_action'), 'tempfail');
    const port = servers.closing.address!.spec.kind === 'inet' ? servers.closing.address!.spec.port : 0;
    const mark = pf.logMark();
    const smtp = await smtpSession(ports.closing);
    try {
      assert.match(await smtp.send('EHLO client.example.test'), /^250 /m);
      const one = await smtp.message('sender@example.test', ['alice@example.test'], 'Subject: closing 1\n\nfiltered\n');
      assert.match(one.at(-1)!, /^250 2\.0\.0 Ok: queued as /);
      // Between messages our connection is idle: close() ends it at once.
      await servers.closing.close(0);
      const two = await smtp.message('sender@example.test', ['alice@example.test'], 'Subject: closing 2\n\nnot filtered\n');
      // MAIL and RCPT need no reply from this eom-only milter (NR_*); DATA does, so Postfix notices
      // there, before the client sends the content.
      assert.deepEqual(two, ['250 2.1.0 Ok', '250 2.1.5 Ok', '451 4.7.1 Service unavailable - try again later']);
      assert.equal(await smtp.send('QUIT'), '221 2.0.0 Bye');
    } finally {
      smtp.close();
    }
    // A new SMTP session while the milter is down: Postfix cannot connect and tempfails at MAIL.
    const r = await pf.sendWithSwaks(['--server', `127.0.0.1:${ports.closing}`, '--to', 'alice@example.test']);
    assert.equal(r.code, 23);
    assert.equal(reply(r, 'MAIL FROM:<sender@example.test>'), '451 4.7.1 Service unavailable - try again later');
    const first = await pf.waitForDelivery((d) => d.content.includes('Subject: closing 1'));
    assert.match(first.content, /^X-Dime-Closing: filtered$/m);
    const log = Buffer.from(pf.log()).subarray(mark).toString();
    assert.match(log, new RegExp(`warning: milter inet:127\\.0\\.0\\.1:${port}: can't read SMFIC_DATA reply packet header: `));
    assert.match(log, /milter-reject: DATA from localhost\[127\.0\.0\.1\]: 451 4\.7\.1 Service unavailable - try again later/);
    assert.match(log, new RegExp(`warning: connect to Milter service inet:127\\.0\\.0\\.1:${port}: Connection refused`));
    assert.match(log, /NOQUEUE: milter-reject: MAIL from localhost\[127\.0\.0\.1\]: 451 4\.7\.1 Service unavailable - try again later/);
    assert.equal(pf.messages('alice').filter((d) => d.content.includes('Subject: closing 2')).length, 0, 'never accepted unfiltered');
  });

  it('a unix socket inside Postfix\'s chroot: smtpd_milters = unix:/dime/milter.sock reaches <queue_directory>/dime/milter.sock', async () => {
    const postfixGid = Number(spawnSync('id', ['-g', 'postfix'], { encoding: 'utf8' }).stdout.trim());
    const dir = path.join(pf.queueDir, 'dime');
    // setgid directory of group postfix: the socket (mode 0660) inherits the group, so smtpd can connect.
    fs.mkdirSync(dir);
    fs.chownSync(dir, 0, postfixGid);
    fs.chmodSync(dir, 0o2750);
    const real = path.join(dir, 'milter.sock');
    unixServer = await startMilterServer({ listen: `unix:${real}`, handler: mainHandler, logger: quiet, gracePeriod: 500 });
    assert.equal(postfixMilterSpec(unixServer.address!.spec, pf.queueDir), 'unix:/dime/milter.sock');
    const st = fs.statSync(real);
    assert.equal(st.mode & 0o777, 0o660);
    assert.equal(st.gid, postfixGid);
    const r = await pf.sendWithSwaks(['--server', `127.0.0.1:${ports.chroot}`, '--to', 'alice@example.test', '--add-header', 'X-Dime-Case: chroot']);
    assert.equal(r.code, 0, r.output);
    const s = seenCase('chroot');
    const m = await pf.waitForDelivery((d) => d.content.includes('X-Dime-Case: chroot'));
    assert.match(m.content, new RegExp(`^X-Dime-Milter: ${s.conn} saw chroot$`, 'm'));
    // The name only makes sense inside the chroot: there is no /dime on the real file system.
    assert.equal(fs.existsSync('/dime/milter.sock'), false);
    await unixServer.close(0);
    assert.equal(fs.existsSync(real), false, 'close() removed the socket');
  });

  it('non_smtpd_milters with sendmail(1): Postfix fakes CONNECT (localhost, port 0) and sends addresses without <>, then QUIT without ABORT', async () => {
    const message = 'From: sender@example.test\nTo: alice@example.test\nSubject: sendmail e2e\nX-Dime-Case: sendmail\n\nvia pickup\n';
    cases.set('sendmail', (_ctx, m) => ({ modifications: [modify.addHeader('X-Dime-Envelope', `${m.sender?.raw} -> ${m.recipients.map((x) => x.raw).join(',')}`)] }));
    const r = await pf.sendmail(['-f', 'sender@example.test', 'alice@example.test'], message);
    assert.equal(r.code, 0, r.output);
    const m = await pf.waitForDelivery((d) => d.content.includes('Subject: sendmail e2e'));
    assert.equal(m.mailbox, 'alice@example.test');
    assert.match(m.content, /^X-Dime-Envelope: sender@example\.test -> alice@example\.test$/m);
    const s = seenCase('sendmail');
    const c = connections.get(s.conn)!;
    assert.deepEqual(c.connect, { hostname: 'localhost', family: 'inet', port: 0, address: '127.0.0.1' });
    assert.deepEqual(c.mail, { raw: 'sender@example.test', address: 'sender@example.test', queueIdMacro: s.queueId }, 'the queue id is known at MAIL already');
    assert.deepEqual(c.rcpts, ['alice@example.test']);
    assert.match(s.queueId ?? '', /^[0-9A-F]+$/);
    assert.deepEqual(await closedCommands(s.conn), ['optneg', 'connect', 'mail', 'rcpt', 'data', 'body', 'eom', 'quit']);
    assert.equal(c.aborts, 0);
  });
});
