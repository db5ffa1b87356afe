/**
 * The relay's outbound leg: the LMTP server Postfix's `dmtp` transport delivers bundles to, and the
 * handler that delivers each recipient's sealed message over DMTP.
 *
 *  1. Codec: commands, replies, the LHLO answer, dot-unstuffing (also cut at every position), the
 *     DeliveryResult → LMTP reply table.
 *  2. Properties: any string parses or fails with a registered LMTP code; stuffed data round-trips
 *     however it is cut; random and mutated command streams on a live server always get well-formed
 *     replies, one per recipient after DATA, and a close, and the server keeps serving.
 *  3. The session over real sockets (stub handler): pipelining, sequence errors, limits (line,
 *     size, memory budget, recipients), idle and DATA timeouts, drops mid-DATA, handler failures,
 *     shutdown, unix sockets, the loopback-only rule.
 *  4. Delivery to a real destination relay over TLS: one recipient delivered, one unknown at the
 *     destination (5xx with the DIME reason), one behind a stopped relay (451 4.4.1), one without
 *     a part and a non-bundle (554 5.6.0), a non-DMIME part (nothing sent), a foreign origin, the
 *     deadline; one DMTP connection per destination domain.
 *  5. Through a real Postfix: content_filter = dmtp:… on a submission port, delivery, bounce with
 *     the DIME reason, deferral while the destination is down, and exactly one delivery after it
 *     comes back and the queue is flushed.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { defaultCrypto } from '../src/crypto/index.js';
import { utf8 } from '../src/dime/bytes.js';
import { generateKeys } from '../src/dime/keys.js';
import { openMessage, sealMessage, signAsOrigin, type MessageContent } from '../src/dime/message/index.js';
import { certificateDer, signTlsPin, type DimeRecord } from '../src/dime/record.js';
import { createOrgSignet, createSigningRequest, fingerprint, fingerprints, signUserSignet, type Signet } from '../src/dime/signet/index.js';
import { DmtpClient, StaticPeerLocator, type DeliveryResult, type PeerCandidate, type SignetSource } from '../src/dmtp/client.js';
import {
  DEFAULT_LMTP_LIMITS,
  DotDecoder,
  MAX_LMTP_LINE,
  MAX_LMTP_REPLY_LINE,
  formatLhloReply,
  formatLmtpReply,
  parseLmtpCommand,
  startLmtpServer,
  type LmtpHandler,
  type LmtpLimits,
  type LmtpServer,
  type LmtpTransaction,
} from '../src/dmtp/lmtp.js';
import { lmtpReplyForDelivery, startLmtpRelay } from '../src/dmtp/outbound.js';
import { DmtpServer, extractDimeMessage, startRelay } from '../src/dmtp/server.js';
import { DotStuffer, parseMtaTarget } from '../src/dmtp/smtp-client.js';
import { DimeError, ERROR_CODES, isDimeError } from '../src/errors.js';
import { encodeBundleBytes, type BundlePart } from '../src/gateway/bundle.js';
import { FileSignetStore } from '../src/keystore/signets.js';
import { createLogger } from '../src/log.js';
import { parseConfig, renderConfig } from '../src/config/config.js';
import { openLmtpRelay } from '../src/cli/lmtp.js';
import { scratchDir } from './helpers/cli.js';
import { vectorParties } from './helpers/dime-parties.js';
import { connectClient, freePort, startMailSink, startPostfix, waitFor, type MailSink, type WireClient } from './helpers/postfix.js';

const crypto = defaultCrypto();
const log = createLogger({ level: process.env.LMTP_TEST_LOG ?? 'silent' });
const dir = scratchDir('dime-lmtp-');
const HOST = 'relay.example.com';

// ------------------------------------------------------------------------------------ helpers

/** Final reply lines (`NNN text`, not `NNN-text`) in what a client received. */
function finals(buf: Buffer): string[] {
  return buf
    .toString('latin1')
    .split('\r\n')
    .filter((l) => /^[2-5][0-9]{2}( |$)/.test(l));
}

function untilFinals(c: WireClient, n: number, timeoutMs = 5000): Promise<string[]> {
  return c.waitFor((b) => finals(b).length >= n, timeoutMs).then(finals);
}

/** Stub handler: answers 250 per recipient and records what it got. */
function stubHandler(opts: { delayMs?: number; fail?: boolean; short?: boolean } = {}) {
  const calls: { tx: LmtpTransaction; message: string }[] = [];
  const handler: LmtpHandler = {
    async data(tx, message) {
      calls.push({ tx, message: message.toString('latin1') });
      if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
      if (opts.fail) throw new Error('handler exploded');
      const replies = tx.recipients.map((r) => ({ code: 250, status: '2.0.0', text: `<${r}> stub-ok` }));
      return opts.short ? replies.slice(1) : replies;
    },
  };
  return { handler, calls };
}

const FAST: Partial<LmtpLimits> = { idleMs: 3_000, dataIdleMs: 3_000, deliveryMs: 3_000 };

async function withServer<T>(handler: LmtpHandler, fn: (s: LmtpServer) => Promise<T>, opts: { limits?: Partial<LmtpLimits>; memoryBudget?: number; listen?: string } = {}): Promise<T> {
  const server = await startLmtpServer({
    listen: opts.listen ?? 'inet:127.0.0.1:0',
    hostname: HOST,
    handler,
    limits: { ...FAST, ...opts.limits },
    ...(opts.memoryBudget !== undefined ? { memoryBudget: opts.memoryBudget } : {}),
    log,
  });
  try {
    return await fn(server);
  } finally {
    await server.close(500);
  }
}

function portOf(s: LmtpServer): number {
  assert.equal(s.endpoint.kind, 'inet');
  return (s.endpoint as { port: number }).port;
}

const ENVELOPE = 'LHLO postfix.example.com\r\nMAIL FROM:<alice@example.com> SIZE=100\r\n';

// ------------------------------------------------------------------------------------ 1. codec

describe('LMTP codec', () => {
  it('parses the commands Postfix sends, case-insensitively, with their parameters', () => {
    assert.deepEqual(parseLmtpCommand('LHLO mail.example.com'), { verb: 'LHLO', host: 'mail.example.com' });
    assert.deepEqual(parseLmtpCommand('lhlo [127.0.0.1]'), { verb: 'LHLO', host: '[127.0.0.1]' });
    assert.deepEqual(parseLmtpCommand('MAIL FROM:<alice@example.com> SIZE=1234 BODY=8BITMIME'), { verb: 'MAIL', from: 'alice@example.com', size: 1234, body: '8BITMIME' });
    assert.deepEqual(parseLmtpCommand('mail from: <>'), { verb: 'MAIL', from: '' });
    assert.deepEqual(parseLmtpCommand('MAIL FROM:<a@b> body=7bit'), { verb: 'MAIL', from: 'a@b', body: '7BIT' });
    assert.deepEqual(parseLmtpCommand('RCPT TO:<bob@example.org>'), { verb: 'RCPT', to: 'bob@example.org' });
    assert.deepEqual(parseLmtpCommand('RCPT TO:<Postmaster>  '), { verb: 'RCPT', to: 'Postmaster' });
    for (const v of ['DATA', 'RSET', 'QUIT', 'data']) assert.deepEqual(parseLmtpCommand(v), { verb: v.toUpperCase() });
    assert.deepEqual(parseLmtpCommand('NOOP anything at all'), { verb: 'NOOP' });
    assert.deepEqual(parseLmtpCommand('EHLO x'), { verb: 'EHLO' });
    assert.deepEqual(parseLmtpCommand('HELO x'), { verb: 'HELO' });
    assert.deepEqual(parseLmtpCommand('VRFY bob'), { verb: 'UNSUPPORTED', what: 'VRFY' });
    assert.deepEqual(parseLmtpCommand('STARTTLS'), { verb: 'UNSUPPORTED', what: 'STARTTLS' });
  });

  it('refuses malformed commands with the right code', () => {
    const code = (line: string) => {
      try {
        parseLmtpCommand(line);
        return 'parsed';
      } catch (err) {
        assert.ok(err instanceof DimeError);
        return err.code;
      }
    };
    assert.equal(code(''), 'LMTP_UNKNOWN_COMMAND');
    assert.equal(code('FROB x'), 'LMTP_UNKNOWN_COMMAND');
    assert.equal(code('123'), 'LMTP_UNKNOWN_COMMAND');
    assert.equal(code('MAIL FROM:<a\u00e9@b>'), 'LMTP_BAD_CHARACTER');
    assert.equal(code('RCPT TO:<a@b>\0'), 'LMTP_BAD_CHARACTER');
    assert.equal(code('RCPT TO:<a@b>\r'), 'LMTP_BAD_CHARACTER');
    assert.equal(code('LHLO'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('LHLO two words'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('MAIL FROM:alice@example.com'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('MAIL TO:<a@b>'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('MAIL FROM:<a@b> SIZE=x'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('MAIL FROM:<a@b> SIZE=1 SIZE=2'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('MAIL FROM:<a@b> SIZE=1234567890123456'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('MAIL FROM:<a@b> BODY=BINARYMIME'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('MAIL FROM:<a@b> =x'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('MAIL FROM:<a@b> RET=FULL'), 'LMTP_BAD_PARAMETER');
    assert.equal(code('MAIL FROM:<a@b> SMTPUTF8'), 'LMTP_BAD_PARAMETER');
    assert.equal(code('RCPT TO:<a@b> NOTIFY=NEVER'), 'LMTP_BAD_PARAMETER');
    assert.equal(code('RCPT TO:<>'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('RCPT TO:<a b@c>'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('RCPT TO:<a<b@c>'), 'LMTP_BAD_SYNTAX');
    assert.equal(code(`RCPT TO:<${'a'.repeat(320)}@b>`), 'LMTP_BAD_SYNTAX');
    assert.equal(code('DATA now'), 'LMTP_BAD_SYNTAX');
    assert.equal(code('QUIT please'), 'LMTP_BAD_SYNTAX');
  });

  it('formats replies: enhanced status of the same class, printable text, one line of at most 512 octets', () => {
    assert.equal(formatLmtpReply({ code: 250, status: '2.0.0', text: 'OK' }), '250 2.0.0 OK\r\n');
    assert.equal(formatLmtpReply({ code: 220, text: 'hi' }), '220 hi\r\n');
    assert.equal(formatLmtpReply({ code: 550, status: '5.1.1', text: 'evil\r\n250 2.0.0 injected\0' }), '550 5.1.1 evil??250 2.0.0 injected?\r\n');
    const long = formatLmtpReply({ code: 554, status: '5.6.0', text: 'x'.repeat(2000) });
    assert.equal(long.length, MAX_LMTP_REPLY_LINE);
    assert.ok(long.endsWith('...\r\n'));
    assert.throws(() => formatLmtpReply({ code: 451, status: '5.0.0', text: 'x' }), (e: unknown) => isDimeError(e, 'LMTP_BAD_REPLY'));
    assert.throws(() => formatLmtpReply({ code: 199, text: 'x' }), (e: unknown) => isDimeError(e, 'LMTP_BAD_REPLY'));
    assert.throws(() => formatLmtpReply({ code: 250, status: '2.0', text: 'x' }), (e: unknown) => isDimeError(e, 'LMTP_BAD_REPLY'));
    assert.equal(formatLhloReply('relay.example.com', 1000), '250-relay.example.com\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE 1000\r\n');
  });

  it('removes dot-stuffing and stops at the end mark, leaving what follows', () => {
    const decode = (text: string) => {
      const out: Buffer[] = [];
      const d = new DotDecoder();
      const r = d.push(Buffer.from(text, 'latin1'), (b) => out.push(Buffer.from(b)));
      return { data: Buffer.concat(out).toString('latin1'), rest: text.slice(r.consumed), done: r.done };
    };
    assert.deepEqual(decode('a\r\n..b\r\n.\r\nQUIT\r\n'), { data: 'a\r\n.b\r\n', rest: 'QUIT\r\n', done: true });
    assert.deepEqual(decode('.\r\n'), { data: '', rest: '', done: true });
    assert.deepEqual(decode('...\r\n.\r\n'), { data: '..\r\n', rest: '', done: true });
    assert.deepEqual(decode('.x\r\n.\n'), { data: 'x\r\n', rest: '', done: true }, 'bare LF after the dot also ends');
    assert.deepEqual(decode('.\rx\r\n.\r\n'), { data: '\rx\r\n', rest: '', done: true }, "'.' CR then not LF: the dot was stuffing");
    assert.deepEqual(decode('a.\r\n b\r\n'), { data: 'a.\r\n b\r\n', rest: '', done: false }, 'a dot not at the line start is data');
    // Cut at every position: the same result.
    const text = 'one\r\n..two\r\n..\r\n\r\n...\r\nx\r\n.\r\nNEXT';
    for (let cut = 0; cut <= text.length; cut++) {
      for (const cut2 of [cut, Math.min(text.length, cut + 1), Math.min(text.length, cut + 3)]) {
        const d = new DotDecoder();
        const out: Buffer[] = [];
        let rest = '';
        for (const piece of [text.slice(0, cut), text.slice(cut, cut2), text.slice(cut2)]) {
          if (d.done) {
            rest += piece;
            continue;
          }
          const r = d.push(Buffer.from(piece, 'latin1'), (b) => out.push(Buffer.from(b)));
          if (r.done) rest += piece.slice(r.consumed);
        }
        assert.equal(Buffer.concat(out).toString('latin1'), 'one\r\n.two\r\n.\r\n\r\n..\r\nx\r\n', `cut at ${cut}/${cut2}`);
        assert.equal(rest, 'NEXT');
      }
    }
  });

  it('maps DMTP delivery results to LMTP replies that carry the DIME reason', () => {
    const reply = (r: DeliveryResult) => lmtpReplyForDelivery('bob@example.org', 'example.org', r);
    const fmt = (r: DeliveryResult) => formatLmtpReply(reply(r));
    assert.equal(fmt({ outcome: 'delivered', id: 'abc_1', detail: '250 OK [abc_1]' }), '250 2.0.0 <bob@example.org> delivered to example.org over DMTP (id abc_1)\r\n');
    let r = reply({ outcome: 'retry', code: 'DMTP_CONNECT_FAILED', detail: 'no DMTP host of the domain could be reached: example.org: dx:26: connect ECONNREFUSED' });
    assert.deepEqual([r.code, r.status], [451, '4.4.1']);
    assert.match(r.text, /^<bob@example\.org>: DIME delivery to example\.org deferred: DMTP_CONNECT_FAILED: .*ECONNREFUSED/);
    assert.deepEqual(Object.values(pick(reply({ outcome: 'retry', code: 'DMTP_CERTIFICATE_REJECTED', detail: 'x' }))), [451, '4.7.5']);
    assert.deepEqual(Object.values(pick(reply({ outcome: 'retry', code: 'DMTP_RECORD_BOGUS', detail: 'x' }))), [451, '4.7.5']);
    assert.deepEqual(Object.values(pick(reply({ outcome: 'retry', code: 'DMTP_CONNECTION_LOST', detail: 'x' }))), [451, '4.4.2']);
    assert.deepEqual(Object.values(pick(reply({ outcome: 'retry', code: 'DNS_SERVFAIL', detail: 'x' }))), [451, '4.4.3']);
    assert.deepEqual(Object.values(pick(reply({ outcome: 'retry', code: 'DEADLINE_EXCEEDED', detail: 'x' }))), [451, '4.4.7']);
    assert.deepEqual(Object.values(pick(reply({ outcome: 'retry', detail: 'something odd' }))), [451, '4.4.0']);
    assert.deepEqual(Object.values(pick(reply({ outcome: 'fail', code: 'DMTP_NO_RECORD', detail: '_dx.example.org: NXDOMAIN' }))), [554, '5.4.4']);
    assert.deepEqual(Object.values(pick(reply({ outcome: 'fail', code: 'DMTP_SIZE_EXCEEDED', detail: 'too big' }))), [552, '5.3.4']);
    // The peer's own answers: class from the outcome, detail from the text.
    const peer = (code: number, text: string, outcome: DeliveryResult['outcome']) => reply({ outcome, reply: { code, lines: [text] }, detail: `data: ${code} ${text}` });
    r = peer(550, 'RECIPIENT UNKNOWN', 'fail');
    assert.deepEqual([r.code, r.status], [550, '5.1.1']);
    assert.equal(r.text, '<bob@example.org>: DIME delivery to example.org failed: DMTP_REFUSED: example.org answered data: 550 RECIPIENT UNKNOWN');
    assert.deepEqual(Object.values(pick(peer(554, 'INVALID ORIGIN SIGNATURE', 'fail'))), [554, '5.7.7']);
    assert.deepEqual(Object.values(pick(peer(554, 'MESSAGE IS NOT ENCRYPTED FOR THIS DESTINATION', 'fail'))), [554, '5.7.5']);
    assert.deepEqual(Object.values(pick(peer(521, 'GO AWAY', 'fail'))), [554, '5.0.0']);
    assert.deepEqual(Object.values(pick(peer(451, 'LOCAL MTA UNAVAILABLE, TRY AGAIN LATER', 'retry'))), [451, '4.3.0']);
    assert.deepEqual(Object.values(pick(peer(452, 'INSUFFICIENT SYSTEM STORAGE, TRY AGAIN LATER', 'retry'))), [452, '4.3.1']);
    // Whatever the peer or an error says, the reply is one clean line.
    const evil = fmt({ outcome: 'fail', reply: { code: 554, lines: ['A', 'B\tC'] }, detail: 'x\r\n250 2.0.0 forged' });
    assert.equal(evil.split('\r\n').length, 2);
  });

  it('adds [relay] lmtp_listen to the configuration: default, parsed, checked, rendered', () => {
    const c = parseConfig('', 'test');
    assert.equal(c.relay.lmtpListen, 'inet:127.0.0.1:10026');
    assert.equal(parseConfig('[relay]\nlmtp_listen = "unix:/run/dime/lmtp"\n', 'test').relay.lmtpListen, 'unix:/run/dime/lmtp');
    assert.throws(() => parseConfig('[relay]\nlmtp_listen = "127.0.0.1:10026"\n', 'test'), (e: unknown) => isDimeError(e, 'CONFIG_INVALID') && /relay\.lmtp_listen/.test((e as Error).message));
    assert.throws(() => parseConfig('[relay]\nlmtp_listen = 10026\n', 'test'), (e: unknown) => isDimeError(e, 'CONFIG_INVALID') && /dmtp \(LMTP\) transport/.test((e as Error).message));
    const rendered = renderConfig({ ...c, relay: { ...c.relay, lmtpListen: 'inet:127.0.0.1:10099' } });
    assert.match(rendered, /^lmtp_listen = "inet:127\.0\.0\.1:10099"/m);
    assert.equal(parseConfig(rendered, 'rendered').relay.lmtpListen, 'inet:127.0.0.1:10099');
  });
});

function pick(r: { code: number; status?: string }): { code: number; status: string | undefined } {
  return { code: r.code, status: r.status };
}

// ------------------------------------------------------------------------------------ 2. properties

const LMTP_CODES = Object.keys(ERROR_CODES).filter((c) => c.startsWith('LMTP_'));

describe('LMTP properties', () => {
  it('any line parses, or fails with a registered LMTP_ code', () => {
    const line = fc.oneof(
      fc.string({ maxLength: 80 }),
      fc.string({ unit: 'binary', maxLength: 80 }),
      fc
        .tuple(fc.constantFrom('LHLO ', 'MAIL FROM:', 'RCPT TO:', 'DATA', 'RSET', 'NOOP', 'QUIT', 'mail from: ', 'VRFY '), fc.string({ maxLength: 60 }))
        .map(([a, b]) => a + b),
    );
    fc.assert(
      fc.property(line, (l) => {
        try {
          parseLmtpCommand(l);
        } catch (err) {
          assert.ok(err instanceof DimeError && LMTP_CODES.includes(err.code), `unexpected error for ${JSON.stringify(l)}: ${String(err)}`);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('dot-stuffed data (smtp-client.ts DotStuffer) decodes back exactly, however it is cut', () => {
    const lineText = fc.stringMatching(/^[.\rab \u00e9]{0,12}$/).map((s) => s.replace(/\r$/, 'x'));
    fc.assert(
      fc.property(fc.array(lineText, { minLength: 1, maxLength: 12 }), fc.array(fc.nat(400), { maxLength: 6 }), (lines, cuts) => {
        const content = Buffer.from(lines.map((l) => `${l}\r\n`).join(''), 'utf8');
        const stuffer = new DotStuffer();
        const wire = Buffer.concat([...stuffer.stuff(content), stuffer.end(), Buffer.from('NEXT')]);
        const points = [...new Set(cuts.map((c) => c % (wire.length + 1)))].sort((a, b) => a - b);
        const d = new DotDecoder();
        const out: Buffer[] = [];
        let rest = Buffer.alloc(0);
        let prev = 0;
        for (const p of [...points, wire.length]) {
          const piece = wire.subarray(prev, p);
          prev = p;
          if (d.done) {
            rest = Buffer.concat([rest, piece]);
            continue;
          }
          const r = d.push(piece, (b) => out.push(Buffer.from(b)));
          if (r.done) rest = Buffer.concat([rest, piece.subarray(r.consumed)]);
        }
        assert.ok(d.done);
        assert.deepEqual(Buffer.concat(out), content);
        assert.equal(rest.toString(), 'NEXT');
      }),
      { numRuns: 1000 },
    );
  });

  describe('live server under random and mutated command streams', () => {
    const stub = stubHandler();
    let server: LmtpServer;
    before(async () => {
      server = await startLmtpServer({
        listen: 'inet:127.0.0.1:0',
        hostname: HOST,
        handler: stub.handler,
        limits: { idleMs: 4_000, dataIdleMs: 4_000, deliveryMs: 2_000, maxMessageSize: 4_000, maxRecipients: 5, maxInvalidCommands: 6 },
        log,
      });
    });
    after(() => server?.close(500));

    const token = fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom('LHLO pf', 'MAIL FROM:<a@b> SIZE=20', 'MAIL FROM:<>', 'RCPT TO:<r1@x>', 'RCPT TO:<r2@y>', 'DATA', 'RSET', 'NOOP', 'body line', '..dotted', '.') },
      { weight: 2, arbitrary: fc.constantFrom('QUIT', 'HELO x', 'VRFY x', 'RCPT TO:<a@b> NOTIFY=NEVER', 'MAIL FROM:<a@b> SIZE=99999', 'LHLO', '', 'x'.repeat(MAX_LMTP_LINE + 10)) },
      { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 30 }) },
    );
    const session = fc.tuple(fc.array(token, { maxLength: 30 }), fc.constantFrom('\r\n', '\n')).map(([ts, eol]) => Buffer.from(ts.map((t) => t + eol).join(''), 'latin1'));
    const valid = Buffer.from(`${ENVELOPE}RCPT TO:<r1@x>\r\nRCPT TO:<r2@y>\r\nDATA\r\nhello\r\n..x\r\n.\r\nQUIT\r\n`, 'latin1');
    const mutated = fc
      .array(fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 }), fc.constantFrom('flip', 'drop', 'insert')), { minLength: 1, maxLength: 6 })
      .map((muts) => {
        const bytes = [...valid];
        for (const [at, v, how] of muts) {
          const i = at % Math.max(1, bytes.length);
          if (how === 'flip') bytes[i] = v;
          else if (how === 'drop') bytes.splice(i, 1);
          else bytes.splice(i, 0, v);
        }
        return Buffer.from(bytes);
      });
    const stream = fc.oneof(session, mutated, fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)));

    it('always answers with well-formed lines, one reply per recipient after DATA, then closes; the server keeps serving', async () => {
      await fc.assert(
        fc.asyncProperty(stream, fc.array(fc.nat(), { maxLength: 5 }), async (bytes, cuts) => {
          const callsBefore = stub.calls.length;
          const c = await connectClient(portOf(server));
          try {
            const points = [...new Set(cuts.map((p) => p % (bytes.length + 1)))].sort((a, b) => a - b);
            let prev = 0;
            for (const p of [...points, bytes.length]) {
              c.write(bytes.subarray(prev, p));
              prev = p;
              await new Promise((r) => setImmediate(r));
            }
            c.end();
            await c.waitClosed(8_000);
            const text = c.received.toString('latin1');
            assert.ok(text.length === 0 || text.endsWith('\r\n'), `a partial reply line: ${JSON.stringify(text.slice(-80))}`);
            const lines = text.split('\r\n').slice(0, -1);
            for (const l of lines) assert.match(l, /^[2-5][0-9]{2}[ -][\x20-\x7e]*$/, `malformed reply line ${JSON.stringify(l)}`);
            assert.match(lines[0] ?? '', /^220 /, 'the greeting comes first');
            const closing = lines.findIndex((l) => /^(421 |500 5\.5\.2 line too long|221 |552 5\.3\.4 message far beyond)/.test(l));
            if (closing >= 0) assert.equal(closing, lines.length - 1, `nothing may follow a closing reply: ${JSON.stringify(lines.slice(closing))}`);
            // Every handler call's replies were written: one line per recipient.
            const calls = stub.calls.slice(callsBefore);
            const expected = calls.reduce((n, call) => n + call.tx.recipients.length, 0);
            assert.equal(lines.filter((l) => l.includes('stub-ok')).length, expected);
          } finally {
            c.destroy();
          }
        }),
        { numRuns: 150 },
      );
      const c = await connectClient(portOf(server));
      c.write(`${ENVELOPE}RCPT TO:<z@z>\r\nDATA\r\n`);
      await untilFinals(c, 5);
      c.write('still alive\r\n.\r\n');
      assert.match((await untilFinals(c, 6)).at(-1)!, /^250 2\.0\.0 <z@z> stub-ok/);
      c.destroy();
      assert.equal(server.budget.inFlight, 0, 'every reservation released');
    });
  });
});

// ------------------------------------------------------------------------------------ 3. session

describe('LMTP session over real sockets', () => {
  it('answers a pipelined transaction with one reply per recipient, in RCPT order, then serves the next', async () => {
    const stub = stubHandler();
    await withServer(stub.handler, async (s) => {
      const c = await connectClient(portOf(s));
      // What Postfix sends with PIPELINING: the envelope and DATA in one write.
      c.write(`LHLO postfix.example.com\r\nMAIL FROM:<alice@example.com> SIZE=60 BODY=8BITMIME\r\nRCPT TO:<b1@example.org>\r\nRCPT TO:<b2@example.net>\r\nRCPT TO:<b3@example.org>\r\nDATA\r\n`);
      let got = await untilFinals(c, 7);
      assert.match(c.received.toString('latin1'), /^220 relay\.example\.com LMTP dime-relay ready\r\n250-relay\.example\.com\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE \d+\r\n/);
      assert.deepEqual(got.slice(2), ['250 2.1.0 sender OK', '250 2.1.5 recipient OK', '250 2.1.5 recipient OK', '250 2.1.5 recipient OK', '354 end data with <CR><LF>.<CR><LF>']);
      // The message, with stuffed dots, cut mid-line, the end mark and the next command in one write.
      c.write('Subject: x\r\n\r\n..hidden dot\r\n.');
      await new Promise((r) => setTimeout(r, 50));
      c.write('.\r\nend\r\n.\r\nRSET\r\n');
      got = await untilFinals(c, 11);
      assert.deepEqual(got.slice(7), ['250 2.0.0 <b1@example.org> stub-ok', '250 2.0.0 <b2@example.net> stub-ok', '250 2.0.0 <b3@example.org> stub-ok', '250 2.0.0 OK']);
      assert.equal(stub.calls.length, 1);
      assert.equal(stub.calls[0]!.message, 'Subject: x\r\n\r\n.hidden dot\r\n.\r\nend\r\n');
      assert.deepEqual(stub.calls[0]!.tx.recipients, ['b1@example.org', 'b2@example.net', 'b3@example.org']);
      assert.equal(stub.calls[0]!.tx.from, 'alice@example.com');
      assert.equal(stub.calls[0]!.tx.body, '8BITMIME');
      assert.equal(stub.calls[0]!.tx.lhlo, 'postfix.example.com');
      // A second transaction on the same connection, null sender.
      c.write('MAIL FROM:<>\r\nRCPT TO:<x@y>\r\nDATA\r\n.\r\nQUIT\r\n');
      got = await untilFinals(c, 16);
      assert.deepEqual(got.slice(11), ['250 2.1.0 sender OK', '250 2.1.5 recipient OK', '354 end data with <CR><LF>.<CR><LF>', '250 2.0.0 <x@y> stub-ok', '221 2.0.0 relay.example.com closing connection']);
      assert.equal(stub.calls[1]!.message, '');
      assert.equal(stub.calls[1]!.tx.from, '');
      assert.notEqual(await c.waitClosed(), 'error');
      c.destroy();
    });
  });

  it('refuses commands out of order, SMTP greetings, unknown verbs and parameters, and cuts off a client that keeps erring', async () => {
    const stub = stubHandler();
    await withServer(
      stub.handler,
      async (s) => {
        const c = await connectClient(portOf(s));
        c.write('MAIL FROM:<a@b>\r\nEHLO x\r\nLHLO x\r\nRCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nDATA\r\nMAIL FROM:<c@d>\r\nRCPT TO:<a@b> NOTIFY=NEVER\r\nVRFY a\r\nFROB\r\n');
        const got = await untilFinals(c, 12);
        assert.deepEqual(got.slice(1), [
          '503 5.5.1 send LHLO first',
          '500 5.5.1 this is LMTP (RFC 2033): use LHLO',
          '250 SIZE 134217728',
          '503 5.5.1 send MAIL FROM first',
          '503 5.5.1 send MAIL FROM first',
          '250 2.1.0 sender OK',
          '503 5.5.1 no valid recipients',
          '503 5.5.1 MAIL FROM already given; RSET first',
          '555 5.5.4 MAIL FROM/RCPT TO parameter not recognized or not implemented',
          '502 5.5.1 command not implemented',
          '421 4.7.0 relay.example.com too many invalid commands, closing connection',
        ]);
        await c.waitClosed();
        assert.equal(stub.calls.length, 0);
      },
      { limits: { maxInvalidCommands: 8 } },
    );
  });

  it('closes on an overlong line, and refuses too many recipients', async () => {
    const stub = stubHandler();
    await withServer(
      stub.handler,
      async (s) => {
        let c = await connectClient(portOf(s));
        c.write(`LHLO ${'x'.repeat(MAX_LMTP_LINE * 2)}`);
        assert.deepEqual((await untilFinals(c, 2)).slice(1), ['500 5.5.2 line too long']);
        await c.waitClosed();
        c = await connectClient(portOf(s));
        c.write(`${ENVELOPE}RCPT TO:<1@x>\r\nRCPT TO:<2@x>\r\nRCPT TO:<3@x>\r\nDATA\r\n.\r\n`);
        const got = await untilFinals(c, 9);
        assert.deepEqual(got.slice(3), ['250 2.1.5 recipient OK', '250 2.1.5 recipient OK', '452 4.5.3 too many recipients', '354 end data with <CR><LF>.<CR><LF>', '250 2.0.0 <1@x> stub-ok', '250 2.0.0 <2@x> stub-ok']);
        c.destroy();
      },
      { limits: { maxRecipients: 2 } },
    );
  });

  it('refuses an oversize message: at MAIL by SIZE, or read to its end and 552 per recipient; the session goes on', async () => {
    const stub = stubHandler();
    await withServer(
      stub.handler,
      async (s) => {
        const c = await connectClient(portOf(s));
        c.write('LHLO x\r\nMAIL FROM:<a@b> SIZE=1001\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r1@x>\r\nRCPT TO:<r2@x>\r\nDATA\r\n');
        let got = await untilFinals(c, 7);
        assert.equal(got[2], '552 5.3.4 message size exceeds the limit of 1000 octets');
        c.write(`${'y'.repeat(70)}\r\n`.repeat(25)); // 1800 octets: over the limit, not twice over
        c.write('.\r\nNOOP\r\n');
        got = await untilFinals(c, 10);
        assert.deepEqual(got.slice(7), ['552 5.3.4 <r1@x> message size exceeds the limit of 1000 octets', '552 5.3.4 <r2@x> message size exceeds the limit of 1000 octets', '250 2.0.0 OK']);
        assert.equal(stub.calls.length, 0);
        assert.equal(s.budget.inFlight, 0);
        // Far beyond the limit without an end: cut off.
        c.write('MAIL FROM:<a@b>\r\nRCPT TO:<r1@x>\r\nDATA\r\n');
        await untilFinals(c, 13);
        c.write('z'.repeat(3000));
        assert.match((await untilFinals(c, 14)).at(-1)!, /^552 5\.3\.4 message far beyond the size limit/);
        await c.waitClosed();
      },
      { limits: { maxMessageSize: 1000 } },
    );
  });

  it('refuses with 452 per recipient when the shared memory budget is spent, and releases it', async () => {
    const stub = stubHandler();
    await withServer(
      stub.handler,
      async (s) => {
        const a = await connectClient(portOf(s));
        const b = await connectClient(portOf(s));
        for (const c of [a, b]) c.write(`${ENVELOPE}RCPT TO:<r@x>\r\nDATA\r\n`);
        await untilFinals(a, 5);
        await untilFinals(b, 5);
        // a holds 1.5 MiB (2 MiB reserved in 1 MiB slices); b needs more than the 1 MiB left.
        a.write(`${'a'.repeat(1022)}\r\n`.repeat(1536));
        await waitFor(() => s.budget.inFlight >= 2 * 1024 * 1024, 5000, 'a to reserve');
        b.write(`${'b'.repeat(1022)}\r\n`.repeat(1200));
        b.write('.\r\n');
        assert.equal((await untilFinals(b, 6)).at(-1), '452 4.3.1 <r@x> insufficient system storage, try again later');
        a.write('.\r\n');
        assert.equal((await untilFinals(a, 6)).at(-1), '250 2.0.0 <r@x> stub-ok');
        assert.equal(stub.calls.length, 1);
        assert.equal(stub.calls[0]!.message.length, 1024 * 1536);
        await waitFor(() => s.budget.inFlight === 0, 2000, 'the budget to be released');
        a.destroy();
        b.destroy();
      },
      { memoryBudget: 3 * 1024 * 1024, limits: { maxMessageSize: 8 * 1024 * 1024 } },
    );
  });

  it('times out an idle client and a client that stalls mid-DATA (nothing delivered); a drop mid-DATA delivers nothing', async () => {
    const stub = stubHandler();
    await withServer(
      stub.handler,
      async (s) => {
        let c = await connectClient(portOf(s));
        c.write('LHLO x\r\nMAIL FR');
        assert.equal((await untilFinals(c, 3, 3000)).at(-1), '421 4.4.2 relay.example.com idle timeout, closing connection');
        await c.waitClosed();
        c.destroy();
        c = await connectClient(portOf(s));
        c.write(`${ENVELOPE}RCPT TO:<r@x>\r\nDATA\r\npart of the message\r\n`);
        assert.equal((await untilFinals(c, 6, 3000)).at(-1), '421 4.4.2 relay.example.com timeout during DATA, nothing delivered; closing connection');
        await c.waitClosed();
        c.destroy();
        c = await connectClient(portOf(s));
        c.write(`${ENVELOPE}RCPT TO:<r@x>\r\nDATA\r\npart of the message\r\n`);
        await untilFinals(c, 5);
        c.destroy();
        await waitFor(() => s.connections === 0, 2000, 'the session to end');
        // Half-close mid-DATA: the commands before are answered, the partial message is dropped.
        c = await connectClient(portOf(s));
        c.write(`${ENVELOPE}RCPT TO:<r@x>\r\nDATA\r\nhalf\r\n`);
        c.end();
        await c.waitClosed();
        assert.equal(finals(c.received).at(-1), '354 end data with <CR><LF>.<CR><LF>');
        assert.equal(stub.calls.length, 0);
        assert.equal(s.budget.inFlight, 0);
      },
      { limits: { idleMs: 300, dataIdleMs: 300 } },
    );
  });

  it('answers 451 per recipient when the handler throws or omits a reply', async () => {
    for (const opts of [{ fail: true }, { short: true }]) {
      const stub = stubHandler(opts);
      await withServer(stub.handler, async (s) => {
        const c = await connectClient(portOf(s));
        c.write(`${ENVELOPE}RCPT TO:<r1@x>\r\nRCPT TO:<r2@x>\r\nDATA\r\nm\r\n.\r\n`);
        const got = (await untilFinals(c, 8)).slice(6);
        if (opts.fail) assert.deepEqual(got, ['451 4.3.0 <r1@x> local error in processing, try again later', '451 4.3.0 <r2@x> local error in processing, try again later']);
        else assert.deepEqual(got, ['250 2.0.0 <r2@x> stub-ok', '451 4.3.0 <r2@x> local error in processing, try again later']);
        c.destroy();
      });
    }
  });

  it('shuts down gracefully: idle sessions get 421 at once, a delivery in progress finishes first', async () => {
    const stub = stubHandler({ delayMs: 300 });
    const s = await startLmtpServer({ listen: 'inet:127.0.0.1:0', hostname: HOST, handler: stub.handler, limits: FAST, log });
    const idle = await connectClient(portOf(s));
    const busy = await connectClient(portOf(s));
    await untilFinals(idle, 1);
    busy.write(`${ENVELOPE}RCPT TO:<r@x>\r\nDATA\r\nm\r\n.\r\n`);
    await waitFor(() => stub.calls.length === 1, 2000, 'the handler to start');
    const closed = s.close(2_000);
    assert.equal((await untilFinals(idle, 2)).at(-1), '421 4.3.2 relay.example.com service shutting down, closing connection');
    assert.deepEqual((await untilFinals(busy, 7)).slice(5), ['250 2.0.0 <r@x> stub-ok', '421 4.3.2 relay.example.com service shutting down, closing connection']);
    idle.destroy();
    busy.destroy();
    await closed;
    await assert.rejects(connectClient(portOf(s)));
  });

  it('does not cut off a delivery that takes longer than the idle and DATA timeouts', async () => {
    const stub = stubHandler({ delayMs: 700 });
    await withServer(
      stub.handler,
      async (s) => {
        const c = await connectClient(portOf(s));
        c.write(`${ENVELOPE}RCPT TO:<r@x>\r\nDATA\r\nm\r\n.\r\n`);
        assert.equal((await untilFinals(c, 6, 3000)).at(-1), '250 2.0.0 <r@x> stub-ok');
        assert.equal(s.budget.inFlight, 0);
        c.destroy();
      },
      { limits: { idleMs: 250, dataIdleMs: 250 } },
    );
  });

  it('listens on a unix socket, and refuses a non-loopback address unless explicitly allowed', async () => {
    const stub = stubHandler();
    const sock = path.join(dir, 'lmtp.sock');
    await withServer(
      stub.handler,
      async (s) => {
        assert.equal(s.address, `unix:${sock}`);
        assert.equal(fs.statSync(sock).mode & 0o777, 0o660);
        const c = net.connect(sock);
        let got = '';
        c.setEncoding('latin1');
        c.on('data', (d: string) => (got += d));
        c.write('LHLO x\r\nQUIT\r\n');
        await new Promise((r) => c.once('close', r));
        assert.match(got, /^220 .*\r\n250-.*221 2\.0\.0 /s);
      },
      { listen: `unix:${sock}` },
    );
    assert.equal(fs.existsSync(sock), false, 'the socket file is removed on close');
    await assert.rejects(startLmtpServer({ listen: 'inet:0.0.0.0:0', hostname: HOST, handler: stub.handler, log }), (e: unknown) => isDimeError(e, 'LMTP_NOT_LOOPBACK'));
    await assert.rejects(startLmtpServer({ listen: 'inet:[::]:0', hostname: HOST, handler: stub.handler, log }), (e: unknown) => isDimeError(e, 'LMTP_NOT_LOOPBACK'));
    const open = await startLmtpServer({ listen: 'inet:0.0.0.0:0', hostname: HOST, handler: stub.handler, allowNonLoopback: true, log });
    assert.match(open.address, /^inet:0\.0\.0\.0:\d+$/);
    await open.close();
    assert.equal(DEFAULT_LMTP_LIMITS.maxMessageSize, 128 * 1024 * 1024);
  });
});

describe('openLmtpRelay (for dime start)', () => {
  it('listens on [relay] lmtp_listen, refuses plaintext, closes; a non-loopback address is refused', async () => {
    const config = parseConfig('domain = "example.com"\n[relay]\nlmtp_listen = "inet:127.0.0.1:0"\nhostname = "mx.example.com"\n[resolver]\nservers = ["127.0.0.1:1"]\n', 'test');
    const opened = await openLmtpRelay(config, log);
    try {
      const port = Number(/^inet:127\.0\.0\.1:(\d+)$/.exec(opened.address)?.[1]);
      assert.ok(port > 0, opened.address);
      const c = await connectClient(port);
      c.write('LHLO pf\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: plain\r\n\r\nhello\r\n.\r\n');
      const got = await untilFinals(c, 6);
      assert.match(got[0]!, /^220 mx\.example\.com LMTP/);
      assert.equal(got[5], '554 5.6.0 <b@example.org>: not a DIME bundle (the relay carries only messages the dime milter sealed)');
      c.destroy();
    } finally {
      await opened.close();
    }
    const exposed = parseConfig('[relay]\nlmtp_listen = "inet:0.0.0.0:0"\n', 'test');
    await assert.rejects(openLmtpRelay(exposed, log), (e: unknown) => isDimeError(e, 'LMTP_NOT_LOOPBACK'));
  });
});

// ------------------------------------------------------------------------------------ 4. real DMTP

const p = vectorParties(crypto);
const full = (s: Signet) => fingerprint(crypto, s, 'full')!;
const te = (s: string) => utf8.encode(s);

function selfSigned(name: string, host: string): { cert: string; key: string; der: Uint8Array } {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '30', '-subj', `/CN=${host}`, '-addext', `subjectAltName=DNS:${host}`], { cwd: dir, stdio: 'pipe' });
  const cert = fs.readFileSync(path.join(dir, `${name}.pem`), 'latin1');
  return { cert, key: fs.readFileSync(path.join(dir, `${name}.key`), 'latin1'), der: certificateDer(cert) };
}

function record(orgSeed: Uint8Array, pins: Uint8Array[]): DimeRecord {
  return { version: 1, poks: [crypto.ed25519PublicKey(orgSeed)], tls: pins.map((der) => signTlsPin(orgSeed, der, crypto)), policy: 'experimental', subdomain: 'strict', dx: [] };
}

/** A user of a domain whose organisational signing key we hold (carol at example.org, dave at example.net). */
async function newUser(orgSeed: Uint8Array, address: string) {
  const keys = generateKeys('user', crypto);
  const ssr = await createSigningRequest({ signer: crypto.ed25519Signer(keys.signingKey), encryptionKey: crypto.secp256k1PublicKey(keys.encryptionKey) });
  return { keys, signet: await signUserSignet(crypto, ssr, { orgSigner: crypto.ed25519Signer(orgSeed), address }) };
}

const CONTENT = (to: string): MessageContent => ({
  commonHeaders: { Date: te('Sun, 22 Nov 2026 10:00:00 +0000'), To: te(`<${to}>`), From: te('Alice <alice@example.com>'), Subject: te('LMTP leg') },
  otherHeaders: te('Message-ID: <lmtp-1@example.com>\r\n'),
  display: [te(`Hello ${to}.\r\n.\r\n..dots\r\n`)],
});

/** Sealed by alice, origin-signed by example.com: what the milter puts in a bundle. */
async function sealed(destination: { domain: string; signet: Signet }, recipient: { address: string; signet: Signet }): Promise<Uint8Array> {
  const m = await sealMessage(crypto, { ...p.seal, destination, recipient }, CONTENT(recipient.address));
  const signets = { author: p.signets.author, origin: p.signets.origin, destination: destination.signet, recipient: recipient.signet };
  return (await signAsOrigin(crypto, m, { keys: p.actorKeys('origin'), signer: crypto.ed25519Signer(p.keys.origin.signingKey), signets, bounce: { meta: true } })).message;
}

function part(recipient: string, destination: string, destinationSignet: Signet, message: Uint8Array): BundlePart {
  return { recipient, origin: { domain: 'example.com', fingerprint: full(p.signets.origin) }, destination: { domain: destination, fingerprint: full(destinationSignet) }, message };
}

/** The destination's view of origin signets: example.com's, by fingerprint (the resolver's job in production). */
const originSignets: SignetSource = {
  async org(domain, fp) {
    if (domain === 'example.com' && (fp === undefined || Object.values(fingerprints(crypto, p.signets.origin)).includes(fp))) return p.signets.origin;
    throw new DimeError('SIGNET_NOT_FOUND', domain);
  },
  async user(address) {
    throw new DimeError('SIGNET_NOT_FOUND', address);
  },
};

describe('LMTP relay → DMTP to a real destination relay over TLS', () => {
  const certOrg = selfSigned('dx.example.org', 'dx.example.org');
  const certNet = selfSigned('dx.example.net', 'dx.example.net');
  const netOrgKeys = generateKeys('org', crypto);
  const locator = new StaticPeerLocator();
  const connects: string[] = [];
  let sink: MailSink;
  let relayOrg: DmtpServer;
  let orgPort: number;
  let lmtp: LmtpServer;
  let netOrg: Signet;
  let carol: Awaited<ReturnType<typeof newUser>>;
  let dave: Awaited<ReturnType<typeof newUser>>;
  const store = new FileSignetStore(path.join(dir, 'signets-org'), crypto);
  const candidate = (host: string, port: number): PeerCandidate => ({ host, address: '127.0.0.1', port, mode: 'implicit' });

  const startOrg = (port = 0) =>
    startRelay({
      crypto,
      mta: parseMtaTarget(`inet:127.0.0.1:${sink.port}`),
      listen: `inet:127.0.0.1:${port}`,
      limits: { violationDelayMs: 0, idleMs: 10_000 },
      log,
      domain: 'example.org',
      hostname: 'dx.example.org',
      store,
      keys: p.actorKeys('destination'),
      signets: originSignets,
      tls: certOrg,
    });

  before(async () => {
    await store.put(p.signets.destination);
    await store.put(p.signets.recipient); // bob; carol is NOT published at the destination
    carol = await newUser(p.keys.destination.signingKey, 'carol@example.org');
    netOrg = await createOrgSignet({ signer: crypto.ed25519Signer(netOrgKeys.signingKey), encryptionKey: crypto.secp256k1PublicKey(netOrgKeys.encryptionKey), domain: 'example.net' });
    dave = await newUser(netOrgKeys.signingKey, 'dave@example.net');
    sink = await startMailSink();
    relayOrg = await startOrg();
    orgPort = relayOrg.endpoints.implicit!.port;
    locator.set('example.org', { record: record(p.keys.destination.signingKey, [certOrg.der]), dnssec: 'validated', candidates: [candidate('dx.example.org', orgPort)] });
    // example.net's relay ran once and is now stopped: its port refuses connections.
    const stopped = await DmtpServer.start({ hostname: 'dx.example.net', handler: { signet: noSignet, history: noSignet, verify: noSignet, mailFrom: noSignet, rcptTo: noSignet, data: noSignet }, tls: certNet, listen: 'inet:127.0.0.1:0', log });
    const netPort = stopped.endpoints.implicit!.port;
    await stopped.close(100);
    locator.set('example.net', { record: record(netOrgKeys.signingKey, [certNet.der]), dnssec: 'validated', candidates: [candidate('dx.example.net', netPort)] });
    const client = new DmtpClient({ crypto, locator, log, timeouts: { connectMs: 5_000, commandMs: 10_000 } });
    lmtp = await startLmtpRelay({
      listen: 'inet:127.0.0.1:0',
      hostname: 'mx.example.com',
      client: { connect: (d: string) => (connects.push(d), client.connect(d)) },
      originDomain: 'example.com',
      limits: { idleMs: 10_000, dataIdleMs: 10_000, deliveryMs: 20_000 },
      log,
    });
  });

  after(async () => {
    await Promise.all([lmtp?.close(500), relayOrg?.close(500), sink?.close()]);
  });

  /** One LMTP transaction: the replies after the final dot. */
  async function transact(rcpts: string[], data: Buffer | string, server = lmtp): Promise<string[]> {
    const c = await connectClient(portOf(server));
    try {
      c.write(`LHLO mx.example.com\r\nMAIL FROM:<alice@example.com>\r\n${rcpts.map((r) => `RCPT TO:<${r}>\r\n`).join('')}DATA\r\n`);
      const before = 4 + rcpts.length;
      await untilFinals(c, before);
      const stuffer = new DotStuffer();
      for (const piece of stuffer.stuff(typeof data === 'string' ? Buffer.from(data) : data)) c.write(piece);
      c.write(stuffer.end());
      return (await untilFinals(c, before + rcpts.length, 30_000)).slice(before);
    } finally {
      c.destroy();
    }
  }

  it('answers each recipient: delivered, unknown at the destination, destination down, no part — over one connection per domain', async () => {
    const bobMsg = await sealed({ domain: 'example.org', signet: p.signets.destination }, { address: 'bob@example.org', signet: p.signets.recipient });
    const carolMsg = await sealed({ domain: 'example.org', signet: p.signets.destination }, { address: 'carol@example.org', signet: carol.signet });
    const daveMsg = await sealed({ domain: 'example.net', signet: netOrg }, { address: 'dave@example.net', signet: dave.signet });
    const bundle = encodeBundleBytes({ sender: 'alice@example.com', hostname: 'mx.example.com' }, [
      part('bob@example.org', 'example.org', p.signets.destination, bobMsg),
      part('carol@example.org', 'example.org', p.signets.destination, carolMsg),
      part('dave@example.net', 'example.net', netOrg, daveMsg),
    ]);
    const sinkBefore = sink.messages.length;
    connects.length = 0;
    const replies = await transact(['bob@example.org', 'carol@example.org', 'dave@example.net', 'erin@example.org'], bundle);
    assert.match(replies[0]!, /^250 2\.0\.0 <bob@example\.org> delivered to example\.org over DMTP \(id [A-Za-z0-9_-]+\)$/);
    assert.equal(replies[1], '550 5.1.1 <carol@example.org>: DIME delivery to example.org failed: DMTP_REFUSED: example.org answered data: 550 RECIPIENT UNKNOWN');
    assert.match(replies[2]!, /^451 4\.4\.1 <dave@example\.net>: DIME delivery to example\.net deferred: DMTP_CONNECT_FAILED: no DMTP host of the domain could be reached: .*ECONNREFUSED/);
    assert.equal(replies[3], '554 5.6.0 <erin@example.org>: the bundle holds no DIME message for this recipient; not a DIME bundle (the relay carries only messages the dime milter sealed)');
    assert.deepEqual(connects.sort(), ['example.net', 'example.org'], 'bob and carol shared one DMTP connection');
    // Exactly bob's sealed message reached the destination's MTA, and bob can open it.
    assert.equal(sink.messages.length, sinkBefore + 1);
    const got = sink.messages.at(-1)!;
    assert.deepEqual(got.recipients, ['bob@example.org']);
    const inner = extractDimeMessage(got.data);
    assert.deepEqual(inner, bobMsg);
    const view = await openMessage(crypto, inner, { actor: 'recipient', keys: p.actorKeys('recipient'), signets: p.signets });
    assert.equal(utf8.decode(view.display![0]!), 'Hello bob@example.org.\r\n.\r\n..dots\r\n');
  });

  it('sends nothing that is not a sealed DMIME message: a plain message, a damaged part, a foreign origin get 5xx and no DMTP connection', async () => {
    connects.length = 0;
    const sinkBefore = sink.messages.length;
    const plain = 'From: <alice@example.com>\r\nTo: <bob@example.org>\r\nSubject: secret\r\n\r\nplaintext must never go over DMTP\r\n';
    assert.deepEqual(await transact(['bob@example.org', 'carol@example.org'], plain), [
      '554 5.6.0 <bob@example.org>: not a DIME bundle (the relay carries only messages the dime milter sealed)',
      '554 5.6.0 <carol@example.org>: not a DIME bundle (the relay carries only messages the dime milter sealed)',
    ]);
    // A well-formed bundle whose part is not a DMIME object (plaintext in disguise).
    const disguised = encodeBundleBytes({ sender: 'alice@example.com', hostname: 'mx.example.com' }, [part('bob@example.org', 'example.org', p.signets.destination, Buffer.from(plain))]);
    const [r1] = await transact(['bob@example.org'], disguised);
    assert.match(r1!, /^554 5\.6\.0 <bob@example\.org>: the bundle part is not a DMIME message, nothing sent over DMTP: OBJECT_BAD_MAGIC: /);
    // A damaged bundle (the marker, but not the structure).
    const [r2] = await transact(['bob@example.org'], 'X-DIME-Bundle: 1\r\nContent-Type: text/plain\r\n\r\nhello\r\n');
    assert.match(r2!, /^554 5\.6\.0 <bob@example\.org>: damaged DIME bundle, nothing sent: GATEWAY_BAD_BUNDLE: /);
    // A sealed message whose origin is not our domain.
    const bobMsg = await sealed({ domain: 'example.org', signet: p.signets.destination }, { address: 'bob@example.org', signet: p.signets.recipient });
    const foreign = encodeBundleBytes({ sender: 'alice@example.com', hostname: 'mx.example.com' }, [{ ...part('bob@example.org', 'example.org', p.signets.destination, bobMsg), origin: { domain: 'example.net', fingerprint: full(netOrg) } }]);
    const [r3] = await transact(['bob@example.org'], foreign);
    assert.match(r3!, /^554 5\.7\.1 <bob@example\.org>: LMTP_ORIGIN_MISMATCH: the bundle part's origin is example\.net, not example\.com/);
    assert.deepEqual(connects, [], 'no DMTP connection was even opened');
    assert.equal(sink.messages.length, sinkBefore);
  });

  it('answers 451 4.4.7 by the deadline when the destination never answers', async () => {
    // A DX that accepts TCP and then says nothing (no TLS handshake, no banner).
    const sockets: net.Socket[] = [];
    const silent = net.createServer((s) => sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const silentLocator = new StaticPeerLocator({ 'example.org': { record: record(p.keys.destination.signingKey, [certOrg.der]), dnssec: 'validated', candidates: [candidate('dx.example.org', (silent.address() as net.AddressInfo).port)] } });
    const client = new DmtpClient({ crypto, locator: silentLocator, log, timeouts: { connectMs: 20_000 } });
    const quick = await startLmtpRelay({ listen: 'inet:127.0.0.1:0', hostname: 'mx.example.com', client, limits: { deliveryMs: 600 }, log });
    try {
      const bobMsg = await sealed({ domain: 'example.org', signet: p.signets.destination }, { address: 'bob@example.org', signet: p.signets.recipient });
      const started = Date.now();
      const [r] = await transact(['bob@example.org'], encodeBundleBytes({ sender: 'a@example.com', hostname: 'mx.example.com' }, [part('bob@example.org', 'example.org', p.signets.destination, bobMsg)]), quick);
      assert.match(r!, /^451 4\.4\.7 <bob@example\.org>: DIME delivery to example\.org deferred: DEADLINE_EXCEEDED: /);
      assert.ok(Date.now() - started < 5_000, 'answered by the deadline, not the client timeouts');
    } finally {
      await quick.close(200);
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  // ---------------------------------------------------------------------------------- 5. Postfix

  it('through a real Postfix: delivery, a bounce with the DIME reason, deferral while the destination is down, one delivery after the flush (skipped without root or Postfix)', async (t) => {
    if (process.getuid?.() !== 0 || !fs.existsSync('/usr/sbin/postfix')) return t.skip('needs root and Postfix');
    const bundlePort = await freePort();
    const lmtpPort = portOf(lmtp);
    const pf = await startPostfix({
      users: ['sender'],
      // smtpd refuses recipients that resolve to the rig's error(8) transport; example.org resolves
      // to a dead port instead, so only the content_filter can bring a message to the relay.
      main: { transport_maps: 'inline:{ example.org=dmtp:inet:127.0.0.1:1 }' },
      master: ['dmtp unix - - n - - lmtp', `127.0.0.1:${bundlePort} inet n - n - - smtpd`, `  -o content_filter=dmtp:inet:127.0.0.1:${lmtpPort}`],
    });
    const file = (name: string, bytes: Buffer) => {
      const f = path.join(dir, name);
      fs.writeFileSync(f, bytes);
      return `@${f}`;
    };
    const submit = (rcpts: string[], data: string) => pf.sendWithSwaks(['--server', `127.0.0.1:${bundlePort}`, '--from', 'sender@example.test', '--to', rcpts.join(','), '--data', data]);
    try {
      const bobMsg = await sealed({ domain: 'example.org', signet: p.signets.destination }, { address: 'bob@example.org', signet: p.signets.recipient });
      const carolMsg = await sealed({ domain: 'example.org', signet: p.signets.destination }, { address: 'carol@example.org', signet: carol.signet });
      const bundle = encodeBundleBytes({ sender: 'sender@example.test', hostname: 'mail.example.test' }, [
        part('bob@example.org', 'example.org', p.signets.destination, bobMsg),
        part('carol@example.org', 'example.org', p.signets.destination, carolMsg),
      ]);
      let sinkBefore = sink.messages.length;
      let r = await submit(['bob@example.org', 'carol@example.org'], file('bundle1.eml', bundle));
      assert.equal(r.code, 0, r.output);
      await pf.waitForLog(/to=<bob@example\.org>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+.*status=sent \(250 2\.0\.0 <bob@example\.org> delivered to example\.org over DMTP \(id [A-Za-z0-9_-]+\)\)/, 20_000);
      await waitFor(() => sink.messages.length === sinkBefore + 1, 5_000, "bob's message at the destination's MTA");
      assert.deepEqual(extractDimeMessage(sink.messages.at(-1)!.data), bobMsg);
      const bounce = await pf.waitForDelivery('sender', 20_000);
      const report = bounce.content.replace(/\s+/g, ' '); // Postfix folds the diagnostic
      assert.match(report, /<carol@example\.org>: host 127\.0\.0\.1\[127\.0\.0\.1\] said: 550 5\.1\.1 <carol@example\.org>: DIME delivery to example\.org failed: DMTP_REFUSED: example\.org answered data: 550 RECIPIENT UNKNOWN \(in reply to end of DATA command\)/);
      assert.match(bounce.content, /Status: 5\.1\.1/);
      assert.doesNotMatch(bounce.content, /bob@example\.org>: host/, 'only carol bounced');

      // The destination goes down: Postfix defers the bundle and keeps it.
      await relayOrg.close(500);
      const bundle2 = encodeBundleBytes({ sender: 'sender@example.test', hostname: 'mail.example.test' }, [part('bob@example.org', 'example.org', p.signets.destination, bobMsg)]);
      sinkBefore = sink.messages.length;
      r = await submit(['bob@example.org'], file('bundle2.eml', bundle2));
      assert.equal(r.code, 0, r.output);
      const deferred = await waitFor(
        () => pf.queue().find((q) => q.queueName === 'deferred' && q.recipients.some((x) => x.address === 'bob@example.org' && /451 4\.4\.1/.test(x.delayReason ?? ''))),
        20_000,
        'the bundle to be deferred',
      );
      assert.match(deferred.recipients[0]!.delayReason!, /DMTP_CONNECT_FAILED/);
      const listing = execFileSync('/usr/sbin/postqueue', ['-c', pf.configDir, '-p'], { encoding: 'utf8' });
      assert.match(listing, new RegExp(`${deferred.queueId}[\\s\\S]*451 4\\.4\\.1[\\s\\S]*bob@example\\.org`));
      assert.equal(sink.messages.length, sinkBefore);

      // Back up on the same port; flush: delivered exactly once.
      relayOrg = await startOrg(orgPort);
      await new Promise<void>((resolve, reject) => execFile('/usr/sbin/postqueue', ['-c', pf.configDir, '-f'], (err) => (err ? reject(err) : resolve())));
      await waitFor(() => sink.messages.length === sinkBefore + 1, 30_000, 'the deferred bundle after the flush', () => pf.log().split('\n').slice(-20).join('\n'));
      await waitFor(() => pf.queue().length === 0, 10_000, 'an empty queue');
      await new Promise((r2) => setTimeout(r2, 1_000));
      assert.equal(sink.messages.length, sinkBefore + 1, 'exactly once');
      assert.deepEqual(extractDimeMessage(sink.messages.at(-1)!.data), bobMsg);
      assert.equal(pf.messages('sender').length, 1, 'no bounce for the deferred one');
    } finally {
      await pf.stop();
    }
  });
});

async function noSignet(): Promise<{ ok: false; code: 'SIGNET_NOT_FOUND' }> {
  return { ok: false, code: 'SIGNET_NOT_FOUND' };
}
