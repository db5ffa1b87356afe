/**
 * DMTP line codec: the command variants of the references read to one typed value, the canonical
 * (libdime resolver) form written, replies and their payloads, the line framing with its cap, and
 * injection. Property tests fuzz parsing, the round trips and chunking.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { base64EncodeNoPad } from '../src/dime/base64.js';
import {
  LineBuffer,
  MAX_COMMAND_LINE,
  ReplyDecoder,
  advertisedSize,
  checkBanner,
  checkModeReply,
  formatCommand,
  formatReply,
  parseCommand,
  parseDataAccepted,
  parseDataContinue,
  parseHistoryReply,
  parseReplies,
  parseSignetReply,
  parseVrfyReply,
  type DmtpCommand,
  type Reply,
} from '../src/dmtp/codec.js';
import { ERROR_REPLIES, LOCAL_ERROR, REPLIES, render } from '../src/dmtp/replies.js';
import { isDimeError } from '../src/errors.js';
import { attempt, expectCode } from './helpers/typed-errors.js';

const FP = base64EncodeNoPad(new Uint8Array(64).fill(7));
const FP2 = base64EncodeNoPad(new Uint8Array(64).fill(9));

describe('DMTP commands: every reference spelling reads to one value', () => {
  it('MAIL FROM in the resolver, prototype-server and formatter dialects', () => {
    const want = { verb: 'MAIL', domain: 'example.com', fingerprint: FP, size: 4096 };
    for (const line of [
      `MAIL FROM: <example.com> [${FP}] SIZE=4096`,
      `MAIL FROM <example.com> [${FP}] SIZE=4096`,
      `MAIL FROM:<Example.COM> [${FP}] SIZE=4096`,
      `mail from=<example.com> FINGERPRINT=[${FP}] size=4096`,
      `MAIL\tFROM:\t<example.com>\t\t[${FP}]  SIZE=4096  `,
    ]) {
      assert.deepEqual(parseCommand(line), want, line);
    }
    assert.deepEqual(parseCommand(`MAIL FROM: <example.com> [${FP}] SIZE=1 RETURN=display DATA=8bit`), { ...want, size: 1, ret: 'DISPLAY', data: '8BIT' });
  });

  it('RCPT TO, SGNT, HIST, VRFY, STARTTLS, EHLO, DATA', () => {
    const rcpt = { verb: 'RCPT', domain: 'example.org', fingerprint: FP };
    for (const l of [`RCPT TO: <example.org> [${FP}]`, `RCPT TO <example.org> [${FP}]`, `RCPT TO=<example.org> FINGERPRINT=[${FP}]`]) assert.deepEqual(parseCommand(l), rcpt, l);
    for (const l of ['SGNT <example.org>', 'SGNT example.org', 'sgnt DOMAIN=<example.org>']) assert.deepEqual(parseCommand(l), { verb: 'SGNT', name: 'example.org' }, l);
    for (const l of [`SGNT <bob@Example.org> [${FP}]`, `SGNT USER=<bob@example.org> FINGERPRINT=[${FP}]`]) assert.deepEqual(parseCommand(l), { verb: 'SGNT', name: 'bob@example.org', fingerprint: FP }, l);
    assert.deepEqual(parseCommand(`HIST <bob@example.org> [${FP}] [${FP2}]`), { verb: 'HIST', name: 'bob@example.org', start: FP, stop: FP2 });
    assert.deepEqual(parseCommand(`HIST USER=<bob@example.org> START=[${FP}] STOP=[${FP2}]`), { verb: 'HIST', name: 'bob@example.org', start: FP, stop: FP2 });
    assert.deepEqual(parseCommand('HIST <bob@example.org>'), { verb: 'HIST', name: 'bob@example.org' });
    assert.deepEqual(parseCommand(`VRFY USER=<bob@example.org> FINGERPRINT=[${FP}]`), { verb: 'VRFY', name: 'bob@example.org', fingerprint: FP });
    for (const l of ['STARTTLS <dx.example.org> MODE=DMTPv1', 'STARTTLS <dx.example.org>', 'STARTTLS HOST=<dx.example.org> MODE=DMTP']) assert.deepEqual(parseCommand(l), { verb: 'STARTTLS', host: 'dx.example.org' }, l);
    assert.deepEqual(parseCommand('STARTTLS'), { verb: 'SMTP', what: 'STARTTLS' }, 'bare STARTTLS is SMTP');
    assert.deepEqual(parseCommand('EHLO <example.com>'), { verb: 'EHLO', domain: 'example.com' });
    assert.deepEqual(parseCommand('EHLO HOST=<example.com>'), { verb: 'EHLO', domain: 'example.com' });
    assert.deepEqual(parseCommand('EHLO mail.example.com'), { verb: 'SMTP', what: 'EHLO' }, 'no brackets: SMTP');
    assert.deepEqual(parseCommand('HELO <user@example.com>'), { verb: 'SMTP', what: 'HELO' }, 'an address: SMTP');
    assert.deepEqual(parseCommand('DATA [fingerprint]'), { verb: 'DATA', hash: 'fingerprint' }, "libdime's placeholder is accepted and ignored");
    assert.deepEqual(parseCommand('NOOP whatever'), { verb: 'NOOP' });
    assert.deepEqual(parseCommand('help mail'), { verb: 'HELP', topic: 'MAIL' });
  });

  it('refuses what cannot be read, with stable codes', () => {
    expectCode(() => parseCommand('FROB x'), 'DMTP_UNKNOWN_COMMAND', 'unknown verb');
    expectCode(() => parseCommand(''), 'DMTP_UNKNOWN_COMMAND', 'empty line');
    expectCode(() => parseCommand(`MAIL FROM: <example.com> [${FP}]`), 'DMTP_BAD_SYNTAX', 'SIZE is required');
    expectCode(() => parseCommand('MAIL FROM: <example.com> [fingerprint] SIZE=10'), 'DMTP_BAD_SYNTAX', "libdime's literal placeholder is no fingerprint");
    expectCode(() => parseCommand(`MAIL FROM: <example.com> [${FP}] SIZE=0`), 'DMTP_BAD_SYNTAX', 'SIZE=0');
    expectCode(() => parseCommand(`MAIL FROM: <example.com> [${FP}] SIZE=10 FOO=1`), 'DMTP_BAD_SYNTAX', 'unknown parameter');
    expectCode(() => parseCommand(`MAIL FROM: <example.com> [${FP}] SIZE=10 SIZE=11`), 'DMTP_BAD_SYNTAX', 'repeated parameter');
    expectCode(() => parseCommand(`MAIL FROM: <exa mple.com> [${FP}] SIZE=10`), 'DMTP_BAD_SYNTAX', 'blank in the domain');
    expectCode(() => parseCommand(`MAIL FROM: <user@example.com> [${FP}] SIZE=10`), 'DMTP_BAD_SYNTAX', 'an address in MAIL FROM');
    expectCode(() => parseCommand(`RCPT TO: <example.org> [${FP}] extra`), 'DMTP_BAD_SYNTAX', 'trailing data');
    expectCode(() => parseCommand('VRFY <bob@example.org>'), 'DMTP_BAD_SYNTAX', 'VRFY needs a fingerprint');
    expectCode(() => parseCommand('SGNT USER=<example.org>'), 'DMTP_BAD_SYNTAX', 'USER= with a domain');
    expectCode(() => parseCommand('QUIT now'), 'DMTP_BAD_SYNTAX', 'QUIT takes no argument');
    expectCode(() => parseCommand('STARTTLS <dx.example.org> MODE=SMTP'), 'DMTP_BAD_SYNTAX', 'another mode');
    expectCode(() => parseCommand('SGNT <example.org\0>'), 'DMTP_BAD_CHARACTER', 'NUL');
    expectCode(() => parseCommand('SGNT <example.org>\rRSET'), 'DMTP_BAD_CHARACTER', 'a CR inside the line');
    expectCode(() => parseCommand('SGNT <exämple.org>'), 'DMTP_BAD_CHARACTER', 'non-ASCII');
  });
});

describe('DMTP commands: the canonical form is libdime resolver dialect, CRLF', () => {
  it('writes exactly what libdime sends', () => {
    assert.equal(formatCommand({ verb: 'MAIL', domain: 'example.com', fingerprint: FP, size: 12 }), `MAIL FROM: <example.com> [${FP}] SIZE=12\r\n`);
    assert.equal(formatCommand({ verb: 'RCPT', domain: 'example.org', fingerprint: FP }), `RCPT TO: <example.org> [${FP}]\r\n`);
    assert.equal(formatCommand({ verb: 'SGNT', name: 'example.org' }), 'SGNT <example.org>\r\n');
    assert.equal(formatCommand({ verb: 'SGNT', name: 'bob@example.org', fingerprint: FP }), `SGNT <bob@example.org> [${FP}]\r\n`);
    assert.equal(formatCommand({ verb: 'VRFY', name: 'bob@example.org', fingerprint: FP }), `VRFY <bob@example.org> [${FP}]\r\n`);
    assert.equal(formatCommand({ verb: 'HIST', name: 'bob@example.org', start: FP }), `HIST <bob@example.org> [${FP}]\r\n`);
    assert.equal(formatCommand({ verb: 'STARTTLS', host: 'dx.example.org' }), 'STARTTLS <dx.example.org> MODE=DMTPv1\r\n');
    assert.equal(formatCommand({ verb: 'EHLO', domain: 'example.com' }), 'EHLO <example.com>\r\n');
    assert.equal(formatCommand({ verb: 'DATA' }), 'DATA\r\n');
  });

  it('refuses any value that could break the line (injection is impossible by construction)', () => {
    for (const bad of ['example.org\r\nRSET', 'example.org\n', 'exa mple.org', 'example.org>', '<x>', '']) {
      expectCode(() => formatCommand({ verb: 'SGNT', name: bad }), 'DMTP_BAD_ARGUMENT', JSON.stringify(bad));
      expectCode(() => formatCommand({ verb: 'RCPT', domain: bad, fingerprint: FP }), 'DMTP_BAD_ARGUMENT', JSON.stringify(bad));
    }
    expectCode(() => formatCommand({ verb: 'MAIL', domain: 'example.com', fingerprint: `${FP.slice(0, -2)}\r\n`, size: 1 }), 'DMTP_BAD_ARGUMENT', 'CRLF in a fingerprint');
    expectCode(() => formatCommand({ verb: 'DATA', hash: 'a]\r\nQUIT' }), 'DMTP_BAD_ARGUMENT', 'CRLF in the DATA token');
    expectCode(() => formatReply({ code: 250, lines: ['OK\r\n250 FORGED'] }), 'DMTP_BAD_ARGUMENT', 'CRLF in a reply');
    expectCode(() => render(REPLIES.accepted, { id: 'x]\r\n250 OK' }), 'DMTP_BAD_ARGUMENT', 'CRLF in a placeholder');
  });
});

describe('DMTP framing and replies', () => {
  it('reads CRLF and bare LF lines and caps a line before buffering more', () => {
    const b = new LineBuffer();
    b.push(Buffer.from('NOOP\r\nRSET\nQU'));
    assert.equal(b.readLine(MAX_COMMAND_LINE), 'NOOP');
    assert.equal(b.readLine(MAX_COMMAND_LINE), 'RSET');
    assert.equal(b.readLine(MAX_COMMAND_LINE), null);
    b.push(Buffer.from('IT\r\n'));
    assert.equal(b.readLine(MAX_COMMAND_LINE), 'QUIT');
    const long = new LineBuffer();
    long.push(Buffer.alloc(MAX_COMMAND_LINE - 1, 0x41));
    assert.equal(long.readLine(MAX_COMMAND_LINE), null, 'still below the cap');
    long.push(Buffer.from('A'));
    expectCode(() => long.readLine(MAX_COMMAND_LINE), 'DMTP_LINE_TOO_LONG', 'cap reached without a line end');
    const data = new LineBuffer();
    data.push(Buffer.from('\x00\r\n\x01binary\nDATA-END\r\n'));
    assert.deepEqual([...data.take(11)!], [...Buffer.from('\x00\r\n\x01binary\n')]);
    assert.equal(data.readLine(100), 'DATA-END');
  });

  it('formats and reads single and multi-line replies', () => {
    const r: Reply = { code: 250, lines: ['PIPELINING', 'SIZE 100', 'OK'] };
    assert.equal(formatReply(r), '250-PIPELINING\r\n250-SIZE 100\r\n250 OK\r\n');
    assert.deepEqual(parseReplies('250-PIPELINING\n250-SIZE 100\r\n250 OK\r\n220\r\n'), [r, { code: 220, lines: [''] }]);
    assert.equal(advertisedSize(r), 100);
    expectCode(() => parseReplies('250-A\r\n251 B\r\n'), 'DMTP_BAD_REPLY', 'codes differ within a reply');
    expectCode(() => parseReplies('25 OK\r\n'), 'DMTP_BAD_REPLY', 'two digits');
    expectCode(() => parseReplies('250 OK\x00\r\n'), 'DMTP_BAD_REPLY', 'NUL in a reply');
  });

  it('reads reply payloads the way libdime does', () => {
    assert.equal(parseSignetReply({ code: 250, lines: ['OK [QUJD]'] }), 'QUJD');
    assert.equal(parseSignetReply({ code: 250, lines: ['  OK\t[QUJD]'] }), 'QUJD', 'blanks before OK and [');
    expectCode(() => parseSignetReply({ code: 250, lines: ['OK [QUJD] trailing'] }), 'DMTP_BAD_REPLY', '] must end the line');
    assert.deepEqual(parseHistoryReply({ code: 250, lines: ['[QQ==]', '[Qg==]', 'OK'] }), ['QQ==', 'Qg==']);
    assert.deepEqual(parseVrfyReply({ code: 250, lines: ['CURRENT'] }), { current: true });
    assert.deepEqual(parseVrfyReply({ code: 250, lines: [`UPDATE [${FP}]`] }), { current: false, fingerprint: FP });
    assert.deepEqual(parseVrfyReply({ code: 250, lines: [`UPDATE ${FP}`] }), { current: false, fingerprint: FP }, 'bare, as libdime reads it');
    assert.equal(parseDataContinue({ code: 354, lines: ['CONTINUE [abc]'] }), 'abc');
    assert.equal(parseDataAccepted({ code: 250, lines: ['OK [tx1]'] }), 'tx1');
    checkBanner({ code: 220, lines: ['<dx.example.org> DMTPv1 dime-relay ready'] });
    checkBanner({ code: 220, lines: ['dx.example.org ESMTP DMTPv1 Magma'] });
    expectCode(() => checkBanner({ code: 220, lines: ['<example.com> DSMTP Magma'] }), 'DMTP_BAD_BANNER', "magma's stub banner lacks DMTPv1");
    expectCode(() => checkBanner({ code: 220, lines: ['DMTPv1 ready'] }), 'DMTP_BAD_BANNER', 'the first token is the host name');
    checkModeReply({ code: 250, lines: ['OK DMTPv1'] });
    expectCode(() => checkModeReply({ code: 250, lines: ['OK SMTP'] }), 'DMTP_BAD_BANNER', 'not DMTP after STARTTLS');
  });

  it('documents every reply of the table in docs/dmtp.md', () => {
    const docs = fs.readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs/dmtp.md'), 'utf8');
    const specs = [...Object.values(REPLIES), ...Object.values(ERROR_REPLIES), LOCAL_ERROR];
    for (const s of specs) assert.ok(docs.includes(`${s.code} ${s.text}`), `docs/dmtp.md lacks "${s.code} ${s.text}"`);
    for (const code of Object.keys(ERROR_REPLIES)) assert.ok(docs.includes(code), `docs/dmtp.md lacks ${code}`);
  });
});

// ------------------------------------------------------------------------------------ properties

const label = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?$/);
const domain = fc.array(label, { minLength: 1, maxLength: 4 }).map((ls) => ls.join('.'));
const local = fc.stringMatching(/^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}$/);
const address = fc.tuple(local, domain).map(([l, d]) => `${l}@${d}`);
const name = fc.oneof(domain, address);
const fingerprint = fc.uint8Array({ minLength: 64, maxLength: 64 }).map((b) => base64EncodeNoPad(b));

const command: fc.Arbitrary<DmtpCommand> = fc.oneof(
  domain.map((d) => ({ verb: 'EHLO' as const, domain: d })),
  domain.map((h) => ({ verb: 'STARTTLS' as const, host: h })),
  fc.record({ domain, fingerprint, size: fc.integer({ min: 1, max: 2 ** 40 }) }).map((r) => ({ verb: 'MAIL' as const, ...r })),
  fc.record({ domain, fingerprint, size: fc.integer({ min: 1, max: 1000 }), ret: fc.constantFrom('FULL' as const, 'DISPLAY' as const, 'HEADER' as const) }).map((r) => ({ verb: 'MAIL' as const, ...r })),
  fc.record({ domain, fingerprint }).map((r) => ({ verb: 'RCPT' as const, ...r })),
  fc.record({ name, fingerprint: fc.option(fingerprint, { nil: undefined }) }).map((r) => (r.fingerprint ? { verb: 'SGNT' as const, name: r.name, fingerprint: r.fingerprint } : { verb: 'SGNT' as const, name: r.name })),
  fc.record({ name, start: fingerprint, stop: fingerprint }).map((r) => ({ verb: 'HIST' as const, ...r })),
  fc.record({ name, fingerprint }).map((r) => ({ verb: 'VRFY' as const, ...r })),
  fc.constantFrom<DmtpCommand>({ verb: 'MODE' }, { verb: 'NOOP' }, { verb: 'RSET' }, { verb: 'QUIT' }, { verb: 'DATA' }, { verb: 'HELP' }),
);

describe('DMTP codec properties', () => {
  it('any line parses to a command or a DMTP error, never anything else', () => {
    const line = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 200 }),
      fc.tuple(fc.constantFrom('MAIL FROM', 'RCPT TO', 'SGNT', 'HIST', 'VRFY', 'EHLO', 'STARTTLS', 'DATA', 'mail from:', 'rcpt to='), fc.string({ unit: fc.constantFrom(...'<>[]=@. \t:aZ09-+/'), maxLength: 120 })).map(([v, r]) => `${v} ${r}`),
    );
    fc.assert(
      fc.property(line, (l) => {
        const r = attempt(() => parseCommand(l));
        if (!r.ok) assert.ok(['DMTP_BAD_CHARACTER', 'DMTP_UNKNOWN_COMMAND', 'DMTP_BAD_SYNTAX'].includes(r.code), r.code);
      }),
      { numRuns: 3000 },
    );
  });

  it('format → parse is the identity, and the canonical line has exactly one CRLF, at its end', () => {
    fc.assert(
      fc.property(command, (c) => {
        const line = formatCommand(c);
        assert.ok(line.endsWith('\r\n') && !/[\r\n]/.test(line.slice(0, -2)), JSON.stringify(line));
        assert.ok(line.length <= MAX_COMMAND_LINE);
        assert.deepEqual(parseCommand(line.slice(0, -2)), c);
      }),
      { numRuns: 2000 },
    );
  });

  it('the MAIL FROM spellings of the references all read to the canonical value', () => {
    const blank = fc.constantFrom(' ', '\t', '  ', ' \t');
    fc.assert(
      fc.property(domain, fingerprint, fc.integer({ min: 1, max: 1e9 }), fc.constantFrom(':', '', '=', ': '), fc.boolean(), blank, blank, fc.boolean(), (d, fp, size, sep, kvFp, b1, b2, lower) => {
        const fpText = kvFp ? `FINGERPRINT=[${fp}]` : `[${fp}]`;
        let line = `MAIL FROM${sep}${sep === '' ? b1 : ''}<${d}>${b2}${fpText}${b1}SIZE=${size}`;
        if (lower) line = line.replace('MAIL FROM', 'mail from').replace('SIZE', 'size');
        assert.deepEqual(parseCommand(line), { verb: 'MAIL', domain: d, fingerprint: fp, size });
      }),
      { numRuns: 1500 },
    );
  });

  it('lines come out the same however the stream is cut, CRLF or bare LF', () => {
    fc.assert(
      fc.property(fc.array(command, { minLength: 1, maxLength: 12 }), fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }), fc.array(fc.nat(), { maxLength: 10 }), (cmds, lfOnly, cutsRaw) => {
        const lines = cmds.map((c) => formatCommand(c).slice(0, -2));
        const stream = Buffer.from(lines.map((l, i) => `${l}${lfOnly[i] ? '\n' : '\r\n'}`).join(''), 'latin1');
        const cuts = [...new Set(cutsRaw.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
        const b = new LineBuffer();
        const got: string[] = [];
        let at = 0;
        for (const cut of [...cuts, stream.length]) {
          b.push(stream.subarray(at, cut));
          at = cut;
          for (let l = b.readLine(MAX_COMMAND_LINE); l !== null; l = b.readLine(MAX_COMMAND_LINE)) got.push(l);
        }
        assert.deepEqual(got, lines);
        assert.deepEqual(got.map((l) => parseCommand(l)), cmds);
      }),
      { numRuns: 800 },
    );
  });

  it('replies survive format → arbitrary cuts → decode', () => {
    const reply = fc.record({ code: fc.integer({ min: 200, max: 599 }), lines: fc.array(fc.string({ unit: fc.constantFrom(...'OK []-=+/aZ09 '), maxLength: 40 }), { minLength: 1, maxLength: 6 }) }).map((r): Reply => ({ code: r.code, lines: r.lines }));
    fc.assert(
      fc.property(fc.array(reply, { minLength: 1, maxLength: 5 }), fc.array(fc.nat(), { maxLength: 8 }), (replies, cutsRaw) => {
        const stream = Buffer.from(replies.map(formatReply).join(''), 'latin1');
        const cuts = [...new Set(cutsRaw.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
        const d = new ReplyDecoder();
        const got: Reply[] = [];
        let at = 0;
        for (const cut of [...cuts, stream.length]) {
          d.push(stream.subarray(at, cut));
          at = cut;
          for (let r = d.next(); r !== null; r = d.next()) got.push(r);
        }
        assert.deepEqual(got, replies);
      }),
      { numRuns: 800 },
    );
  });

  it('no argument value can add a line: formatCommand refuses or writes one line', () => {
    const hostile = fc.string({ unit: fc.constantFrom('a', '.', '@', '\r', '\n', '\0', ' ', '>', ']', 'x', '-'), maxLength: 30 });
    fc.assert(
      fc.property(hostile, hostile, (a, b) => {
        for (const c of [
          { verb: 'SGNT', name: a, fingerprint: FP } as const,
          { verb: 'RCPT', domain: a, fingerprint: FP } as const,
          { verb: 'MAIL', domain: 'example.com', fingerprint: `${FP.slice(0, 80)}${b.slice(0, 6)}`, size: 1 } as const,
          { verb: 'DATA', hash: b } as const,
          { verb: 'HELP', topic: b } as const,
        ]) {
          try {
            const line = formatCommand(c);
            assert.ok(!/[\r\n\0]/.test(line.slice(0, -2)), JSON.stringify(line));
          } catch (err) {
            assert.ok(isDimeError(err, 'DMTP_BAD_ARGUMENT'), String(err));
          }
        }
      }),
      { numRuns: 2000 },
    );
  });
});
