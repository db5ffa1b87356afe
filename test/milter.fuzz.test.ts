/**
 * Fuzzing the milter: the frame reader and decoders only ever throw DimeError; random, mutated and
 * poisoned packet streams against a live server never crash it, a bad connection is closed while a
 * concurrent good one completes its conversation, and no spill file stays open or on disk.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { createLogger } from '../src/log.js';
import {
  decodeCommand,
  decodeResponse,
  encodeCommand,
  encodeFrame,
  FrameReader,
  SMFIC,
  SMFIR,
  type MilterCommand,
} from '../src/milter/codec.js';
import { modify, verdict, type MilterHandler } from '../src/milter/handler.js';
import { startMilterServer, type MilterServer } from '../src/milter/server.js';
import { scratchDir } from './helpers/cli.js';
import { MilterClient, POSTFIX_OFFER } from './helpers/milter-client.js';
import { attempt } from './helpers/typed-errors.js';

const FRAME_MAX = 4096;

describe('frame reader and decoders', () => {
  it('never throw anything but DimeError, and account for every byte', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.array(fc.nat({ max: 600 }), { maxLength: 8 }), (bytes, cuts) => {
        const reader = new FrameReader(FRAME_MAX);
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        let consumed = 0;
        let at = 0;
        for (const end of [...points, bytes.length]) {
          const r = attempt(() => reader.push(bytes.subarray(at, end)));
          at = end;
          if (!r.ok) return;
          for (const f of r.value) {
            consumed += 5 + f.data.length;
            attempt(() => decodeCommand(f));
            attempt(() => decodeResponse(f));
          }
        }
        assert.equal(consumed + reader.buffered, bytes.length);
        attempt(() => reader.end());
      }),
      { numRuns: 500 },
    );
  });

  it('decode any payload under every command and response code with only DimeError', () => {
    const codes = [...Object.values(SMFIC), ...Object.values(SMFIR), 'Z', '\0', '\xff'];
    fc.assert(
      fc.property(fc.constantFrom(...codes), fc.uint8Array({ maxLength: 64 }), (code, data) => {
        attempt(() => decodeCommand({ code, data }));
        attempt(() => decodeResponse({ code, data }));
      }),
      { numRuns: 2000 },
    );
  });

  it('commands survive an encode/decode round trip', () => {
    fc.assert(
      fc.property(arbCommand(), (cmd) => {
        const [frame] = new FrameReader().push(encodeCommand(cmd));
        const back = decodeCommand(frame!);
        if (back.type === 'header') delete back.valueBytes;
        assert.deepEqual(back, { ...cmd });
      }),
      { numRuns: 500 },
    );
  });
});

/** Strings without NUL, in ASCII and beyond (UTF-8 on the wire). */
const text = (max = 20) => fc.string({ maxLength: max, unit: fc.constantFrom('a', 'b', 'Z', '0', ' ', '<', '>', '@', '.', '\n', '\t', 'é', '✉') });

function arbCommand(): fc.Arbitrary<MilterCommand> {
  const u32 = fc.nat({ max: 0xffffffff });
  return fc.oneof(
    fc.record({ type: fc.constant('optneg' as const), version: u32, actions: u32, protocol: u32 }),
    fc.record({ type: fc.constant('macro' as const), stage: fc.constantFrom(...Object.values(SMFIC)), macros: fc.array(fc.tuple(text(8), text()), { maxLength: 4 }) }),
    fc.record({ type: fc.constant('connect' as const), hostname: text(), family: fc.constantFrom('inet' as const, 'inet6' as const, 'unix' as const), port: fc.nat({ max: 65535 }), address: text() }).filter(
      (c) => !(c.family === 'inet6' && c.address.toLowerCase().startsWith('ipv6:')),
    ),
    fc.record({ type: fc.constant('connect' as const), hostname: text(), family: fc.constant('unknown' as const), port: fc.constant(0), address: fc.constant('') }),
    fc.record({ type: fc.constant('helo' as const), name: text() }),
    fc.record({ type: fc.constant('mail' as const), sender: text(), args: fc.array(text(10), { maxLength: 3 }) }),
    fc.record({ type: fc.constant('rcpt' as const), recipient: text(), args: fc.array(text(10), { maxLength: 3 }) }),
    fc.record({ type: fc.constant('header' as const), name: text(10), value: text(40) }),
    fc.record({ type: fc.constant('body' as const), chunk: fc.uint8Array({ maxLength: 100 }) }),
    fc.record({ type: fc.constant('eom' as const), chunk: fc.uint8Array({ maxLength: 10 }) }),
    fc.record({ type: fc.constant('unknown' as const), line: text() }),
    fc.constantFrom<MilterCommand>({ type: 'data' }, { type: 'eoh' }, { type: 'abort' }, { type: 'quit' }, { type: 'quitNc' }),
  );
}

// ---------------------------------------------------------------------------------------------
// Against a live server

/** A Postfix-like conversation as bytes: what the mutations start from. */
function conversation(bodySize: number, extraHeaders: number): Uint8Array {
  const cmds: MilterCommand[] = [
    { type: 'optneg', ...POSTFIX_OFFER },
    { type: 'macro', stage: 'C', macros: [['j', 'mx.example.test']] },
    { type: 'connect', hostname: '[127.0.0.1]', family: 'inet', port: 40000, address: '127.0.0.1' },
    { type: 'helo', name: 'client' },
    { type: 'macro', stage: 'M', macros: [['{mail_addr}', 'a@example.test']] },
    { type: 'mail', sender: '<a@example.test>', args: ['SIZE=10'] },
    { type: 'rcpt', recipient: '<b@example.test>', args: [] },
    { type: 'data' },
    { type: 'header', name: 'Subject', value: 'fuzz' },
    ...Array.from({ length: extraHeaders }, (_, i): MilterCommand => ({ type: 'header', name: `X-H${i}`, value: 'v'.repeat(i) })),
    { type: 'eoh' },
    { type: 'body', chunk: new Uint8Array(bodySize).fill(0x61) },
    { type: 'eom', chunk: new Uint8Array(0) },
    { type: 'abort' },
    { type: 'abort' },
    { type: 'mail', sender: '<c@example.test>', args: [] },
    { type: 'body', chunk: new Uint8Array(bodySize).fill(0x62) },
    { type: 'abort' },
    { type: 'quitNc' },
    { type: 'connect', hostname: 'x', family: 'unknown', port: 0, address: '' },
    { type: 'quit' },
  ];
  return Buffer.concat(cmds.map(encodeCommand));
}

type Mutation = { kind: 'flip'; at: number; value: number } | { kind: 'delete'; at: number; len: number } | { kind: 'insert'; at: number; bytes: Uint8Array } | { kind: 'duplicate'; at: number; len: number } | { kind: 'truncate'; at: number };

function mutate(input: Uint8Array, mutations: Mutation[]): Uint8Array {
  let b = Buffer.from(input);
  for (const m of mutations) {
    const at = b.length === 0 ? 0 : m.at % b.length;
    switch (m.kind) {
      case 'flip':
        if (b.length > 0) b[at] = m.value;
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.len)]);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
        break;
      case 'duplicate':
        b = Buffer.concat([b.subarray(0, at + m.len), b.subarray(at, at + m.len), b.subarray(at + m.len)]);
        break;
      case 'truncate':
        b = b.subarray(0, at);
        break;
    }
  }
  return b;
}

const arbMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), value: fc.nat({ max: 255 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 12 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 12 }) }),
  fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
);

/** Packets no valid conversation contains: each must make the server close the connection. */
const arbPoison: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.constant(Uint8Array.of(0, 0, 0, 0)), // length 0
  fc.integer({ min: FRAME_MAX + 1, max: 0xffffffff }).map((n) => Uint8Array.of(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff, 0x42)), // over the limit
  fc.tuple(fc.integer({ min: 0x21, max: 0x7e }).filter((c) => !Object.values(SMFIC).includes(String.fromCharCode(c) as never)), fc.uint8Array({ maxLength: 20 })).map(([c, d]) =>
    encodeFrame(String.fromCharCode(c), d),
  ), // unknown command
  fc.uint8Array({ maxLength: 20 }).map((d) => encodeFrame('H', Uint8Array.from([...d.filter((x) => x !== 0), 0x41]))), // unterminated HELO
  fc.constantFrom(encodeFrame('T', Uint8Array.of(1)), encodeFrame('C', Uint8Array.of(0x41, 0, 0x58)), encodeFrame('O', Uint8Array.of(0, 0, 0, 6))), // bad payloads
);

describe('live server under fuzzed streams', () => {
  const spillDir = scratchDir('dime-milter-fuzz-');
  const logs: Array<{ level: number; code?: string; msg: string }> = [];
  let server: MilterServer;
  let port = 0;
  const handler: MilterHandler = {
    actions: ['addHeader', 'replaceBody', 'changeHeader'],
    header: (_ctx, h) => (h.name === 'X-Reject' ? verdict.reject() : undefined),
    body: () => undefined,
    async eom(_ctx, m) {
      const body = await m.body.bytes();
      return { modifications: [modify.addHeader('X-Size', String(body.length)), modify.changeHeader('Subject', 1, 'seen'), modify.replaceBody(body.subarray(0, 10))] };
    },
  };

  before(async () => {
    const destination = new Writable({
      write(chunk, _enc, done) {
        for (const line of String(chunk).split('\n')) if (line) logs.push(JSON.parse(line));
        done();
      },
    });
    server = await startMilterServer({
      listen: 'inet:127.0.0.1:0',
      handler,
      logger: createLogger({ destination, level: 'warn' }),
      // Small limits so that fuzzed messages spill to disk and hit the packet limit.
      limits: { spillDir, spillThreshold: 256, maxPacketLength: FRAME_MAX, maxMessageBytes: 20_000 },
      deadlines: { connect: 2000, command: 2000, content: 2000 },
      gracePeriod: 200,
    });
    const a = server.address!.spec;
    port = a.kind === 'inet' ? a.port : 0;
  });

  after(async () => {
    await server.close(0);
  });

  /** A complete, correct conversation on its own connection; must succeed whatever else is going on. */
  async function goodConversation(): Promise<void> {
    const c = await MilterClient.connect({ port }, 5000);
    try {
      await c.negotiate();
      const { eom } = await c.sendMessage({ from: '<good@example.test>', rcpts: ['<r@example.test>'], headers: [['Subject', 'good']], body: 'x'.repeat(1000), chunkSize: 300 });
      assert.deepEqual(eom?.final, { type: 'continue' });
      assert.deepEqual(
        eom?.modifications.map((m) => m.type),
        ['addHeader', 'changeHeader', 'replaceBody'],
      );
      assert.deepEqual(eom?.modifications[0], { type: 'addHeader', name: 'X-Size', value: '1000' });
      c.quit();
      await c.closed;
    } finally {
      c.destroy();
    }
  }

  /** Send a bad stream in pieces, half-close, and require the server to close within 2 s. */
  async function badConnection(bytes: Uint8Array, pieces: number, mustCloseBeforeEnd: boolean): Promise<void> {
    const c = await MilterClient.connect({ port }, 2000);
    try {
      const size = Math.max(1, Math.ceil(bytes.length / pieces));
      for (let at = 0; at < bytes.length && c.isOpen; at += size) c.write(bytes.subarray(at, at + size));
      if (!mustCloseBeforeEnd) c.socket.end();
      const closed = await Promise.race([c.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2000))]);
      assert.equal(closed, true, 'the server closed the bad connection');
    } finally {
      c.destroy();
    }
  }

  it('random bytes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 1, max: 5 }), async (bytes, pieces) => {
        await Promise.all([badConnection(bytes, pieces, false), goodConversation()]);
      }),
      { numRuns: 200 },
    );
  });

  it('mutated Postfix conversations', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 1500 }), fc.integer({ min: 0, max: 4 }), fc.array(arbMutation, { minLength: 1, maxLength: 4 }), fc.integer({ min: 1, max: 7 }), async (bodySize, headers, mutations, pieces) => {
        await Promise.all([badConnection(mutate(conversation(bodySize, headers), mutations), pieces, false), goodConversation()]);
      }),
      { numRuns: 400 },
    );
  });

  it('a poisoned packet closes the connection by itself, mid-conversation', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 1200 }), fc.nat(), arbPoison, async (bodySize, cut, poison) => {
        // Cut a valid conversation at a packet boundary, before its QUIT, and append the poison.
        const packets: Uint8Array[] = [];
        const reader = new FrameReader();
        for (const f of reader.push(conversation(bodySize, 1))) packets.push(encodeFrame(f.code, f.data));
        const keep = cut % (packets.length - 1);
        const stream = Buffer.concat([...packets.slice(0, keep), poison]);
        await Promise.all([badConnection(stream, 3, true), goodConversation()]);
      }),
      { numRuns: 200 },
    );
  });

  it('left nothing behind: no connection, no open or visible spill file, no internal error', async () => {
    const deadline = Date.now() + 3000;
    while (server.connections > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(server.connections, 0);
    assert.deepEqual(fs.readdirSync(spillDir), []);
    if (fs.existsSync('/proc/self/fd')) {
      const open = fs.readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(spillDir + path.sep);
        } catch {
          return false;
        }
      });
      assert.deepEqual(open, [], 'spill files still open');
    }
    assert.deepEqual(
      logs.filter((l) => l.level >= 50),
      [],
      'no internal errors logged',
    );
    const codes = new Set(logs.map((l) => l.code).filter(Boolean));
    for (const code of ['MILTER_PACKET_TOO_LARGE', 'MILTER_UNKNOWN_COMMAND', 'MILTER_BAD_PACKET']) assert.ok(codes.has(code), `saw ${code}; saw ${[...codes].join(', ')}`);
  });
});
