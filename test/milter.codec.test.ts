/**
 * The milter codec against bytes built by hand from the wire layout in
 * shared/spec/milter-and-postfix.md §1.2–1.8: every command decoded, every response encoded,
 * option negotiation, header index semantics, REPLBODY chunking and reply-code validation.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  decodeCommand,
  decodeResponse,
  encodeCommand,
  encodeReplaceBody,
  encodeResponse,
  formatReply,
  FrameReader,
  MAX_DATA_CHUNK,
  MAX_PACKET_LENGTH,
  negotiate,
  optnegResponse,
  SMFIF,
  SMFIP,
  type MilterResponse,
} from '../src/milter/codec.js';
import {
  applyHeaderModifications,
  DEFAULT_FAILURE_POLICY,
  deleteAllHeaders,
  failureClass,
  handlerOptionRequest,
  headerIndexAt,
  modify,
  passThroughHandler,
  resolveFailurePolicy,
  verdict,
} from '../src/milter/handler.js';
import { DimeError } from '../src/errors.js';
import { expectCode } from './helpers/typed-errors.js';

/** Build bytes from a mix of strings (latin1), numbers (single bytes) and byte arrays. */
function b(...parts: Array<string | number | number[] | Uint8Array>): Uint8Array {
  const out: number[] = [];
  for (const p of parts) {
    if (typeof p === 'string') for (const ch of p) out.push(ch.charCodeAt(0));
    else if (typeof p === 'number') out.push(p);
    else out.push(...p);
  }
  return Uint8Array.from(out);
}
const be32 = (n: number): number[] => [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
/** A whole packet: u32 length (command byte + data), command byte, data. */
const packet = (code: string, data: Uint8Array = new Uint8Array(0)): Uint8Array => b(be32(data.length + 1), code, data);
const frame = (code: string, data: Uint8Array = new Uint8Array(0)) => ({ code, data });
const hex = (u: Uint8Array): string => Buffer.from(u).toString('hex');

describe('framing', () => {
  it('reads several packets from one chunk and one packet split byte by byte', () => {
    const stream = b(packet('O', b(be32(6), be32(0x1ff), be32(0x1fffff))), packet('D', b('C', 'j\0mx\0')), packet('A'));
    const whole = new FrameReader().push(stream);
    assert.deepEqual(
      whole.map((f) => f.code),
      ['O', 'D', 'A'],
    );
    const reader = new FrameReader();
    const trickled = [];
    for (const byte of stream) trickled.push(...reader.push(Uint8Array.of(byte)));
    assert.equal(trickled.length, 3);
    assert.equal(hex(trickled[1]!.data), hex(b('C', 'j\0mx\0')));
    assert.equal(reader.buffered, 0);
    reader.end();
  });

  it('refuses a zero length, an oversized length (before the data arrives) and a truncated stream', () => {
    expectCode(() => new FrameReader().push(b(be32(0))), 'MILTER_BAD_PACKET', 'length 0');
    const small = new FrameReader(100);
    expectCode(() => small.push(b(be32(101), 'B')), 'MILTER_PACKET_TOO_LARGE', 'length over the limit, data not yet sent');
    expectCode(() => small.push(packet('A')), 'MILTER_PACKET_TOO_LARGE', 'a failed reader stays failed');
    expectCode(() => new FrameReader().push(b(be32(MAX_PACKET_LENGTH + 1))), 'MILTER_PACKET_TOO_LARGE', 'default limit');
    assert.equal(new FrameReader().push(b(be32(MAX_PACKET_LENGTH), 'B')).length, 0, 'exactly the limit is accepted (waits for data)');
    const partial = new FrameReader();
    partial.push(b(be32(5), 'H', 'ab'));
    expectCode(() => partial.end(), 'MILTER_BAD_PACKET', 'stream ends inside a packet');
    expectCode(() => new FrameReader(0), 'MILTER_BAD_PACKET', 'limit 0');
  });
});

describe('commands (MTA → milter) from hand-built bytes', () => {
  it('OPTNEG', () => {
    const [f] = new FrameReader().push(b(0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff));
    assert.deepEqual(decodeCommand(f!), { type: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff });
    expectCode(() => decodeCommand(frame('O', b(be32(6), be32(1)))), 'MILTER_BAD_PACKET', 'short OPTNEG');
  });

  it('MACRO with its command code', () => {
    const cmd = decodeCommand(frame('D', b('C', 'j\0mail.example.test\0{daemon_name}\0dime-trial-smtpd\0_\0unknown [127.0.0.1]\0')));
    assert.deepEqual(cmd, {
      type: 'macro',
      stage: 'C',
      macros: [
        ['j', 'mail.example.test'],
        ['{daemon_name}', 'dime-trial-smtpd'],
        ['_', 'unknown [127.0.0.1]'],
      ],
    });
    assert.deepEqual(decodeCommand(frame('D', b('E'))), { type: 'macro', stage: 'E', macros: [] });
    expectCode(() => decodeCommand(frame('D')), 'MILTER_BAD_PACKET', 'no command code');
    expectCode(() => decodeCommand(frame('D', b('Z', 'i\0x\0'))), 'MILTER_BAD_PACKET', 'unknown stage');
    expectCode(() => decodeCommand(frame('D', b('M', 'i\0'))), 'MILTER_BAD_PACKET', 'name without value');
    expectCode(() => decodeCommand(frame('D', b('M', 'i\0ABC'))), 'MILTER_BAD_PACKET', 'value not terminated');
  });

  it('CONNECT for each family', () => {
    assert.deepEqual(decodeCommand(frame('C', b('[127.0.0.1]\0', '4', 0xc3, 0x50, '127.0.0.1\0'))), {
      type: 'connect',
      hostname: '[127.0.0.1]',
      family: 'inet',
      port: 50000,
      address: '127.0.0.1',
    });
    assert.deepEqual(decodeCommand(frame('C', b('localhost\0', '6', 0x00, 0x19, 'IPv6:::1\0'))), {
      type: 'connect',
      hostname: 'localhost',
      family: 'inet6',
      port: 25,
      address: '::1',
    });
    assert.deepEqual(decodeCommand(frame('C', b('localhost\0', 'L', 0, 0, '/run/smtp.sock\0'))), {
      type: 'connect',
      hostname: 'localhost',
      family: 'unix',
      port: 0,
      address: '/run/smtp.sock',
    });
    assert.deepEqual(decodeCommand(frame('C', b('localhost\0', 'U'))), { type: 'connect', hostname: 'localhost', family: 'unknown', port: 0, address: '' });
    expectCode(() => decodeCommand(frame('C', b('h\0', 'X', 0, 0, 'a\0'))), 'MILTER_BAD_PACKET', 'unknown family');
    expectCode(() => decodeCommand(frame('C', b('h\0', '4', 0))), 'MILTER_BAD_PACKET', 'truncated port');
    expectCode(() => decodeCommand(frame('C', b('h\0', '4', 0, 25, 'a'))), 'MILTER_BAD_PACKET', 'address not terminated');
    expectCode(() => decodeCommand(frame('C', b('h'))), 'MILTER_BAD_PACKET', 'host not terminated');
    expectCode(() => decodeCommand(frame('C', b('h\0', 'U', 'x'))), 'MILTER_BAD_PACKET', 'bytes after family U');
  });

  it('HELO, MAIL and RCPT with ESMTP arguments, UNKNOWN', () => {
    assert.deepEqual(decodeCommand(frame('H', b('client.example.test\0'))), { type: 'helo', name: 'client.example.test' });
    assert.deepEqual(decodeCommand(frame('M', b('<sender@example.test>\0SIZE=1234\0BODY=8BITMIME\0'))), {
      type: 'mail',
      sender: '<sender@example.test>',
      args: ['SIZE=1234', 'BODY=8BITMIME'],
    });
    assert.deepEqual(decodeCommand(frame('M', b('<>\0'))), { type: 'mail', sender: '<>', args: [] });
    assert.deepEqual(decodeCommand(frame('R', b('<alice@example.test>\0NOTIFY=NEVER\0'))), { type: 'rcpt', recipient: '<alice@example.test>', args: ['NOTIFY=NEVER'] });
    assert.deepEqual(decodeCommand(frame('U', b('XFOO bar\0'))), { type: 'unknown', line: 'XFOO bar' });
    expectCode(() => decodeCommand(frame('H', b('x'))), 'MILTER_BAD_PACKET', 'HELO not terminated');
    expectCode(() => decodeCommand(frame('H', b('a\0b\0'))), 'MILTER_BAD_PACKET', 'two HELO strings');
    expectCode(() => decodeCommand(frame('M')), 'MILTER_BAD_PACKET', 'MAIL without address');
    expectCode(() => decodeCommand(frame('U')), 'MILTER_BAD_PACKET', 'UNKNOWN without line');
  });

  it('HEADER (folded with bare LF, empty value), BODY and EOM', () => {
    const h = decodeCommand(frame('L', b('Subject\0part1\n\tpart2\n  part3\0')));
    assert.equal(h.type, 'header');
    if (h.type === 'header') {
      assert.equal(h.name, 'Subject');
      assert.equal(h.value, 'part1\n\tpart2\n  part3');
      assert.equal(hex(h.valueBytes!), hex(b('part1\n\tpart2\n  part3')));
    }
    const empty = decodeCommand(frame('L', b('X-Empty\0\0')));
    assert.equal(empty.type === 'header' && empty.value, '');
    const latin1 = decodeCommand(frame('L', b('X-Old\0caf', 0xe9, '\0')));
    assert.equal(latin1.type === 'header' && hex(latin1.valueBytes!), hex(b('caf', 0xe9)), 'exact bytes survive a lossy UTF-8 decode');
    expectCode(() => decodeCommand(frame('L', b('Subject\0'))), 'MILTER_BAD_PACKET', 'header without value');
    const body = decodeCommand(frame('B', b('Line one\r\nLine two\r\n')));
    assert.equal(body.type === 'body' && hex(body.chunk), hex(b('Line one\r\nLine two\r\n')));
    assert.deepEqual(decodeCommand(frame('E')), { type: 'eom', chunk: new Uint8Array(0) });
    const eomData = decodeCommand(frame('E', b('tail')));
    assert.equal(eomData.type === 'eom' && hex(eomData.chunk), hex(b('tail')));
  });

  it('DATA, EOH, ABORT, QUIT, QUIT_NC carry nothing; an unknown code is refused', () => {
    assert.deepEqual(decodeCommand(frame('T')), { type: 'data' });
    assert.deepEqual(decodeCommand(frame('N')), { type: 'eoh' });
    assert.deepEqual(decodeCommand(frame('A')), { type: 'abort' });
    assert.deepEqual(decodeCommand(frame('Q')), { type: 'quit' });
    assert.deepEqual(decodeCommand(frame('K')), { type: 'quitNc' });
    for (const code of ['T', 'N', 'A', 'Q', 'K']) expectCode(() => decodeCommand(frame(code, b('x'))), 'MILTER_BAD_PACKET', `${code} with data`);
    expectCode(() => decodeCommand(frame('Z')), 'MILTER_UNKNOWN_COMMAND', 'Z');
    expectCode(() => decodeCommand(frame('c')), 'MILTER_UNKNOWN_COMMAND', 'a response code sent as a command');
  });

  it('encodeCommand writes the same bytes the decoder reads', () => {
    assert.equal(hex(encodeCommand({ type: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff })), hex(packet('O', b(be32(6), be32(0x1ff), be32(0x1fffff)))));
    assert.equal(hex(encodeCommand({ type: 'connect', hostname: 'h', family: 'inet', port: 25, address: '1.2.3.4' })), hex(packet('C', b('h\0', '4', 0, 25, '1.2.3.4\0'))));
    assert.equal(hex(encodeCommand({ type: 'macro', stage: 'M', macros: [['i', 'Q1']] })), hex(packet('D', b('M', 'i\0Q1\0'))));
    assert.equal(hex(encodeCommand({ type: 'mail', sender: '<a@b>', args: ['SIZE=1'] })), hex(packet('M', b('<a@b>\0SIZE=1\0'))));
    assert.equal(hex(encodeCommand({ type: 'header', name: 'To', value: 'x' })), hex(packet('L', b('To\0x\0'))));
    assert.equal(hex(encodeCommand({ type: 'quitNc' })), hex(packet('K')));
  });
});

describe('responses (milter → MTA) against hand-built bytes', () => {
  const cases: Array<[string, MilterResponse, Uint8Array]> = [
    ['continue', { type: 'continue' }, packet('c')],
    ['accept', { type: 'accept' }, packet('a')],
    ['reject', { type: 'reject' }, packet('r')],
    ['tempfail', { type: 'tempfail' }, packet('t')],
    ['discard', { type: 'discard' }, packet('d')],
    ['shutdown', { type: 'shutdown' }, packet('4')],
    ['connfail', { type: 'connfail' }, packet('f')],
    ['progress', { type: 'progress' }, packet('p')],
    ['skip', { type: 'skip' }, packet('s')],
    ['replycode', { type: 'replycode', reply: '550 5.7.1 no' }, packet('y', b('550 5.7.1 no\0'))],
    ['addHeader', { type: 'addHeader', name: 'X-Dime', value: 'yes' }, packet('h', b('X-Dime\0yes\0'))],
    ['insertHeader', { type: 'insertHeader', index: 0, name: 'X-Top', value: 'v' }, packet('i', b(be32(0), 'X-Top\0v\0'))],
    ['changeHeader', { type: 'changeHeader', index: 1, name: 'Subject', value: 'new' }, packet('m', b(be32(1), 'Subject\0new\0'))],
    ['changeHeader (delete)', { type: 'changeHeader', index: 2, name: 'X-Remove-Me', value: '' }, packet('m', b(be32(2), 'X-Remove-Me\0\0'))],
    ['replaceBody', { type: 'replaceBody', chunk: b('new body\r\n') }, packet('b', b('new body\r\n'))],
    ['addRecipient', { type: 'addRecipient', recipient: '<bob@example.test>' }, packet('+', b('<bob@example.test>\0'))],
    ['addRecipientPar', { type: 'addRecipientPar', recipient: '<bob@example.test>', args: 'NOTIFY=NEVER' }, packet('2', b('<bob@example.test>\0NOTIFY=NEVER\0'))],
    ['deleteRecipient', { type: 'deleteRecipient', recipient: '<alice@example.test>' }, packet('-', b('<alice@example.test>\0'))],
    ['changeFrom', { type: 'changeFrom', sender: '<new@example.test>' }, packet('e', b('<new@example.test>\0'))],
    ['changeFrom with args', { type: 'changeFrom', sender: '<new@example.test>', args: 'SIZE=10' }, packet('e', b('<new@example.test>\0SIZE=10\0'))],
    ['quarantine', { type: 'quarantine', reason: 'suspicious' }, packet('q', b('suspicious\0'))],
    ['setSymList', { type: 'setSymList', list: { stage: 'eom', names: ['i', '{auth_authen}'] } }, packet('l', b(be32(5), 'i {auth_authen}\0'))],
    ['optneg', { type: 'optneg', version: 6, actions: 0x13, protocol: 0x1d0480 }, packet('O', b(be32(6), be32(0x13), be32(0x1d0480)))],
    [
      'optneg with macro lists',
      { type: 'optneg', version: 6, actions: 0x101, protocol: 0, macros: [{ stage: 'envfrom', names: ['{auth_authen}'] }, { stage: 'eom', names: ['i', 'j'] }] },
      packet('O', b(be32(6), be32(0x101), be32(0), be32(2), '{auth_authen}\0', be32(5), 'i j\0')),
    ],
  ];
  for (const [name, resp, bytes] of cases) {
    it(`${name}: encoded, and decoded back`, () => {
      assert.equal(hex(encodeResponse(resp)), hex(bytes));
      const [f] = new FrameReader().push(bytes);
      assert.deepEqual(decodeResponse(f!), resp);
    });
  }

  it('refuses what would break the framing or Postfix', () => {
    expectCode(() => encodeResponse({ type: 'addHeader', name: 'Bad:Name', value: 'v' }), 'MILTER_BAD_MODIFICATION', 'colon in header name');
    expectCode(() => encodeResponse({ type: 'addHeader', name: 'Bad Name', value: 'v' }), 'MILTER_BAD_MODIFICATION', 'space in header name');
    expectCode(() => encodeResponse({ type: 'addHeader', name: 'X', value: 'a\0b' }), 'MILTER_BAD_PACKET', 'NUL inside a string');
    expectCode(() => encodeResponse({ type: 'changeHeader', name: 'X', value: 'v', index: -1 }), 'MILTER_BAD_MODIFICATION', 'negative index');
    expectCode(() => encodeResponse({ type: 'quarantine', reason: '' }), 'MILTER_BAD_MODIFICATION', 'empty reason');
    expectCode(() => encodeResponse({ type: 'replaceBody', chunk: new Uint8Array(MAX_DATA_CHUNK + 1) }), 'MILTER_PACKET_TOO_LARGE', 'body chunk over 65535');
    assert.equal(encodeResponse({ type: 'replaceBody', chunk: new Uint8Array(MAX_DATA_CHUNK) }).length, 4 + 1 + MAX_DATA_CHUNK);
    expectCode(() => decodeResponse(frame('c', b('x'))), 'MILTER_BAD_PACKET', 'continue with data (Postfix: protocol error)');
    expectCode(() => decodeResponse(frame('Z')), 'MILTER_UNKNOWN_COMMAND', 'unknown response');
  });
});

describe('REPLBODY chunking', () => {
  it('splits a 200 KiB body into packets of at most 65535 bytes that reassemble exactly', () => {
    const body = new Uint8Array(200 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 31 + 7) & 0xff;
    const packets = encodeReplaceBody(body);
    assert.deepEqual(
      packets.map((p) => p.length - 5),
      [65535, 65535, 65535, 204800 - 3 * 65535],
    );
    const reader = new FrameReader();
    const frames = packets.flatMap((p) => reader.push(p));
    assert.ok(frames.every((f) => f.code === 'b'));
    assert.equal(hex(Buffer.concat(frames.map((f) => f.data))), hex(body));
    assert.deepEqual(
      encodeReplaceBody(new Uint8Array(0)).map(hex),
      [hex(packet('b'))],
      'an empty replacement is one empty packet',
    );
    assert.equal(encodeReplaceBody(new Uint8Array(65535)).length, 1);
    assert.equal(encodeReplaceBody(new Uint8Array(65536)).length, 2);
    expectCode(() => encodeReplaceBody(body, 65536), 'MILTER_BAD_MODIFICATION', 'chunk size over the limit');
  });
});

describe('SMTP reply codes', () => {
  it('formats single and multi-line replies, escaping %', () => {
    assert.equal(formatReply({ code: '550', xcode: '5.7.1', text: 'rejected by dime' }), '550 5.7.1 rejected by dime');
    assert.equal(formatReply({ code: '451', text: 'try later' }), '451 try later');
    assert.equal(formatReply({ code: '550', xcode: '5.7.1', text: ['first', 'second', 'last'] }), '550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 last');
    assert.equal(formatReply({ code: '452', xcode: '4.3.1', text: '100% full' }), '452 4.3.1 100%% full');
    assert.equal(formatReply({ code: '554', xcode: '5.123.999', text: 'x' }), '554 5.123.999 x');
  });

  it('refuses codes that are not 4xx/5xx, mismatched enhanced codes and unsafe text', () => {
    for (const code of ['250', '354', '650', '55', '5500', 'abc', '']) {
      expectCode(() => formatReply({ code, text: 'x' }), 'MILTER_BAD_REPLY_CODE', `code ${code}`);
    }
    expectCode(() => formatReply({ code: '550', xcode: '4.7.1', text: 'x' }), 'MILTER_BAD_REPLY_CODE', 'class 4 with code 5xx');
    expectCode(() => formatReply({ code: '550', xcode: '2.0.0', text: 'x' }), 'MILTER_BAD_REPLY_CODE', 'success class');
    expectCode(() => formatReply({ code: '550', xcode: '5.7', text: 'x' }), 'MILTER_BAD_REPLY_CODE', 'short xcode');
    expectCode(() => formatReply({ code: '550', xcode: '5.1000.1', text: 'x' }), 'MILTER_BAD_REPLY_CODE', 'four-digit subject');
    expectCode(() => formatReply({ code: '550', text: 'a\r\nb' }), 'MILTER_BAD_REPLY_CODE', 'CRLF inside a line');
    expectCode(() => formatReply({ code: '550', text: 'a\0' }), 'MILTER_BAD_REPLY_CODE', 'NUL');
    expectCode(() => formatReply({ code: '550', text: [] }), 'MILTER_BAD_REPLY_CODE', 'no lines');
    expectCode(() => formatReply({ code: '550', text: Array(33).fill('x') }), 'MILTER_BAD_REPLY_CODE', '33 lines');
    assert.equal(formatReply({ code: '550', text: Array(32).fill('x') }).split('\r\n').length, 32);
    expectCode(() => formatReply({ code: '550', text: 'x'.repeat(507) }), 'MILTER_BAD_REPLY_CODE', 'line over 510 bytes');
    assert.equal(formatReply({ code: '550', text: 'x'.repeat(506) }).length, 510);
    expectCode(() => verdict.reply('250', 'ok'), 'MILTER_BAD_REPLY_CODE', 'verdict.reply validates too');
    assert.deepEqual(verdict.reply('550', 'no such user', '5.1.1'), { kind: 'reply', reply: { code: '550', xcode: '5.1.1', text: 'no such user' } });
  });
});

describe('option negotiation', () => {
  const ALL_NR = SMFIP.NR_CONN | SMFIP.NR_HELO | SMFIP.NR_MAIL | SMFIP.NR_RCPT | SMFIP.NR_DATA | SMFIP.NR_UNKN | SMFIP.NR_EOH | SMFIP.NR_BODY | SMFIP.NR_HDR;

  it('v6 with every flag offered: we get exactly what we asked for', () => {
    const n = negotiate({ version: 6, actions: 0x1ff, protocol: 0x1fffff }, { actions: 0xff, protocol: 0x1fffff });
    assert.deepEqual(n, { version: 6, actions: 0xff, protocol: 0x1fffff, macros: [] });
    const nr = negotiate({ version: 6, actions: 0x1ff, protocol: 0x1fffff }, { actions: SMFIF.ADDHDRS, protocol: ALL_NR | SMFIP.SKIP });
    assert.equal(nr.protocol, ALL_NR | SMFIP.SKIP);
  });

  it('a newer MTA version is answered with 6; version 1 is refused', () => {
    assert.equal(negotiate({ version: 7, actions: 0x1ff, protocol: 0x1fffff }, { actions: 0, protocol: 0 }).version, 6);
    expectCode(() => negotiate({ version: 1, actions: 0xf, protocol: 0x3f }, { actions: 0, protocol: 0 }), 'MILTER_PROTOCOL', 'version 1');
  });

  it('v2: only the v2 actions and protocol bits, no macro lists', () => {
    const n = negotiate(
      { version: 2, actions: 0x3f, protocol: 0x7f },
      { actions: 0x1ff, protocol: 0x1fffff, macros: { eom: ['i'] } },
    );
    assert.deepEqual(n, { version: 2, actions: 0x3f, protocol: 0x7f, macros: [] });
    // A v2 MTA that (wrongly) offers newer bits still never gets them back.
    const greedy = negotiate({ version: 2, actions: 0x1ff, protocol: 0x1fffff }, { actions: 0x1ff, protocol: ALL_NR | SMFIP.NOBODY });
    assert.deepEqual([greedy.actions, greedy.protocol], [0x3f, SMFIP.NOBODY]);
    const v4 = negotiate({ version: 4, actions: 0x1ff, protocol: 0x1fffff }, { actions: 0, protocol: SMFIP.NODATA | SMFIP.NR_HDR | SMFIP.NR_BODY | SMFIP.SKIP });
    assert.equal(v4.protocol, SMFIP.NODATA | SMFIP.NR_HDR);
  });

  it('NR flags and actions the MTA does not offer are dropped; MDS size bits are never taken', () => {
    const n = negotiate(
      { version: 6, actions: SMFIF.ADDHDRS | SMFIF.CHGBODY, protocol: SMFIP.NR_HDR | SMFIP.NOCONNECT | SMFIP.MDS_1M | SMFIP.MDS_256K },
      { actions: SMFIF.ADDHDRS | SMFIF.QUARANTINE, protocol: SMFIP.NR_HDR | SMFIP.NR_BODY | SMFIP.MDS_1M },
    );
    assert.deepEqual([n.actions, n.protocol], [SMFIF.ADDHDRS, SMFIP.NR_HDR]);
  });

  it('macro lists ride on the v6 OPTNEG reply with SMFIF_SETSYMLIST set', () => {
    const n = negotiate({ version: 6, actions: 0x1ff, protocol: 0x1fffff }, { actions: SMFIF.ADDHDRS, protocol: 0, macros: { envfrom: ['{auth_authen}'], eom: ['i', '{client_addr}'] } });
    assert.equal(n.actions, SMFIF.ADDHDRS | SMFIF.SETSYMLIST);
    assert.equal(
      hex(encodeResponse(optnegResponse(n))),
      hex(packet('O', b(be32(6), be32(0x101), be32(0), be32(2), '{auth_authen}\0', be32(5), 'i {client_addr}\0'))),
    );
    const without = negotiate({ version: 6, actions: 0xff, protocol: 0x1fffff }, { actions: 0, protocol: 0, macros: { eom: ['i'] } });
    assert.deepEqual([without.actions, without.macros], [0, []], 'no SETSYMLIST from the MTA: no lists');
  });

  it('a handler is negotiated from its callbacks: NO* for unused stages, NR_* for stages only buffered', () => {
    const pass = handlerOptionRequest(passThroughHandler, DEFAULT_FAILURE_POLICY);
    assert.equal(pass.actions, 0);
    assert.equal(
      pass.protocol,
      SMFIP.NOHELO | SMFIP.NOMAIL | SMFIP.NORCPT | SMFIP.NODATA | SMFIP.NOHDRS | SMFIP.NOEOH | SMFIP.NOBODY | SMFIP.NOUNKNOWN,
    );
    const eomOnly = handlerOptionRequest({ eom: () => undefined, actions: ['addHeader', 'replaceBody'] }, resolveFailurePolicy({ dns: 'quarantine' }));
    assert.equal(eomOnly.actions, SMFIF.ADDHDRS | SMFIF.CHGBODY | SMFIF.QUARANTINE, 'quarantine added for the failure policy');
    assert.equal(
      eomOnly.protocol,
      SMFIP.NOCONNECT | SMFIP.NOHELO | SMFIP.NOEOH | SMFIP.NOUNKNOWN | SMFIP.NR_MAIL | SMFIP.NR_RCPT | SMFIP.NR_HDR | SMFIP.NR_BODY,
      'DATA is answered: the reply acknowledges the unanswered MAIL and RCPT before cleanup(8) writes the content',
    );
    const body = handlerOptionRequest({ body: () => verdict.skip(), headerLeadingSpace: true, rejectedRecipients: true }, DEFAULT_FAILURE_POLICY);
    assert.equal(body.protocol & (SMFIP.SKIP | SMFIP.HDR_LEADSPC | SMFIP.RCPT_REJ | SMFIP.NOBODY | SMFIP.NR_BODY), SMFIP.SKIP | SMFIP.HDR_LEADSPC | SMFIP.RCPT_REJ);
    expectCode(() => handlerOptionRequest({ actions: ['teleport' as never] }, DEFAULT_FAILURE_POLICY), 'MILTER_BAD_MODIFICATION', 'unknown action name');
  });
});

describe('header edits: libmilter index semantics', () => {
  const headers = [
    { name: 'Received', value: 'from a' },
    { name: 'Subject', value: 'hello' },
    { name: 'received', value: 'from b' },
    { name: 'X-Remove-Me', value: 'please' },
    { name: 'RECEIVED', value: 'from c' },
  ];

  it('index is the n-th occurrence of the name, 1-based and case-insensitive', () => {
    assert.deepEqual(
      [0, 2, 4, 1].map((p) => headerIndexAt(headers, p)),
      [1, 2, 3, 1],
    );
    const out = applyHeaderModifications(headers, [modify.changeHeader('Received', 2, 'from B!')]);
    assert.equal(out[2]!.value, 'from B!');
    assert.equal(out[2]!.name, 'received', 'the name keeps its original spelling');
    assert.equal(applyHeaderModifications(headers, [{ kind: 'changeHeader', name: 'Subject', index: 0, value: 'zero' }])[1]!.value, 'zero', 'index 0 counts as 1');
    expectCode(() => modify.changeHeader('Subject', 0, 'x'), 'MILTER_BAD_MODIFICATION', 'our API is 1-based');
    expectCode(() => headerIndexAt(headers, 5), 'MILTER_BAD_MODIFICATION', 'position out of range');
  });

  it('a change to an empty value deletes; a change of a missing occurrence appends; insert and add', () => {
    const del = applyHeaderModifications(headers, [modify.changeHeader('X-Remove-Me', 1, '')]);
    assert.deepEqual(
      del.map((h) => h.name),
      ['Received', 'Subject', 'received', 'RECEIVED'],
    );
    assert.deepEqual(applyHeaderModifications(headers, [modify.deleteHeader('X-Remove-Me', 1)]), del);
    assert.deepEqual(applyHeaderModifications(headers, [modify.deleteHeader('X-Absent', 1)]), headers, 'deleting a missing header does nothing');
    const appended = applyHeaderModifications(headers, [modify.changeHeader('Subject', 2, 'second')]);
    assert.deepEqual(appended.at(-1), { name: 'Subject', value: 'second' });
    const ins = applyHeaderModifications(headers, [modify.insertHeader(0, 'X-Top', '0'), modify.insertHeader(2, 'X-Third', '2'), modify.addHeader('X-End', 'e')]);
    assert.deepEqual(
      ins.map((h) => h.name),
      ['X-Top', 'Received', 'X-Third', 'Subject', 'received', 'X-Remove-Me', 'RECEIVED', 'X-End'],
    );
  });

  it('deleting every occurrence must go from the highest index down', () => {
    const mods = deleteAllHeaders(headers, 'Received');
    assert.deepEqual(
      mods.map((m) => (m.kind === 'deleteHeader' ? m.index : -1)),
      [3, 2, 1],
    );
    assert.deepEqual(
      applyHeaderModifications(headers, mods).map((h) => h.name),
      ['Subject', 'X-Remove-Me'],
    );
    // Lowest first, the later indexes shift and one Received survives: why the order matters.
    const naive = [1, 2, 3].map((i) => modify.deleteHeader('Received', i));
    assert.equal(applyHeaderModifications(headers, naive).filter((h) => h.name.toLowerCase() === 'received').length, 1);
  });
});

describe('failure classes', () => {
  it('maps error codes to classes; anything unknown is internal', () => {
    assert.equal(failureClass(new DimeError('DNS_SERVFAIL')), 'dns');
    assert.equal(failureClass(new DimeError('DNS_TIMEOUT')), 'dns');
    assert.equal(failureClass(new DimeError('SIGNET_NOT_FOUND')), 'signet-not-found');
    assert.equal(failureClass(new DimeError('HSM_UNAVAILABLE')), 'hsm');
    assert.equal(failureClass(new DimeError('DEADLINE_EXCEEDED')), 'deadline');
    // The resolver's outcomes land in the classes the operator configures, never in "internal".
    assert.equal(failureClass(new DimeError('RESOLVE_DEADLINE')), 'deadline');
    assert.equal(failureClass(new DimeError('DNS_BOGUS')), 'dns');
    assert.equal(failureClass(new DimeError('RECORD_NOT_DIME')), 'dns');
    assert.equal(failureClass(new DimeError('RESOLVE_CUSTODY_BROKEN')), 'signet-not-found');
    assert.equal(failureClass(new DimeError('HSM_BAD_PIN')), 'hsm');
    assert.equal(failureClass(new DimeError('SIGNET_INVALID_SIGNATURE')), 'internal');
    assert.equal(failureClass(new Error('boom')), 'internal');
    assert.equal(failureClass('a string'), 'internal');
  });

  it('the default policy tempfails every class; overrides are checked', () => {
    assert.deepEqual(Object.values(DEFAULT_FAILURE_POLICY), ['tempfail', 'tempfail', 'tempfail', 'tempfail', 'tempfail']);
    assert.equal(resolveFailurePolicy({ dns: 'accept' }).dns, 'accept');
    assert.equal(resolveFailurePolicy({ dns: 'accept' }).internal, 'tempfail');
    expectCode(() => resolveFailurePolicy({ network: 'accept' }), 'USAGE', 'unknown class');
    expectCode(() => resolveFailurePolicy({ dns: 'ignore' }), 'USAGE', 'unknown action');
  });
});
