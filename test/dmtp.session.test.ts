/**
 * The DMTP server session over real TLS on loopback, with a stub handler: command order, the
 * before-TLS rules and STARTTLS, libdime's SGNT right after the banner, binary-exact DATA, SIZE
 * mismatches, oversize and memory-budget refusals, the invalid-command cut-off, idle and DATA
 * timeouts against a trickling client, injection attempts, dropped connections, TLS versions,
 * junk and abandoned handshakes (the server carries on), half-close, shutdown.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { defaultCrypto } from '../src/crypto/index.js';
import { base64DecodeStrict } from '../src/dime/base64.js';
import { decodeSignet } from '../src/dime/signet/index.js';
import { ReplyDecoder, type Reply } from '../src/dmtp/codec.js';
import { DmtpServer } from '../src/dmtp/server.js';
import { ok, refuse, type DmtpHandler, type SessionLimits, type Transaction } from '../src/dmtp/session.js';
import { createLogger } from '../src/log.js';
import { scratchDir } from './helpers/cli.js';
import { vectorParties } from './helpers/dime-parties.js';

const crypto = defaultCrypto();
const parties = vectorParties(crypto);
const HOST = 'dx.example.org';
const FP = 'A'.repeat(86);
const log = createLogger({ level: process.env.DMTP_TEST_LOG ?? 'silent' });

function selfSignedCert(dir: string, name: string): { cert: string; key: string } {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '30', '-subj', `/CN=${name}`, '-addext', `subjectAltName=DNS:${name}`], { stdio: 'pipe' });
  return { cert: fs.readFileSync(cert, 'latin1'), key: fs.readFileSync(key, 'latin1') };
}

interface Delivered {
  tx: Transaction;
  message: Buffer;
}

function stubHandler(delivered: Delivered[], opts: { slowDataMs?: number } = {}): DmtpHandler {
  return {
    signet: async (name, fp) => (name === 'example.org' && fp === undefined ? ok(parties.signets.destination) : refuse('SIGNET_NOT_FOUND')),
    history: async (name) => (name === 'bob@example.org' ? ok([parties.signets.recipient]) : refuse('SIGNET_NOT_FOUND')),
    verify: async (name, fp) => (name === 'example.org' ? ok(fp === FP ? { current: true as const } : { current: false as const, fingerprint: FP }) : refuse('SIGNET_NOT_FOUND')),
    mailFrom: async (tx) => (tx.from.domain === 'refused.example' ? refuse('DMTP_FINGERPRINT_MISMATCH') : ok(undefined)),
    rcptTo: async (tx) => (tx.to!.domain === 'example.org' ? ok(undefined) : refuse('DMTP_NOT_OUR_DOMAIN')),
    data: async (tx, message) => {
      if (opts.slowDataMs) await new Promise((r) => setTimeout(r, opts.slowDataMs));
      delivered.push({ tx, message: Buffer.from(message) });
      return ok(undefined);
    },
  };
}

const LIMITS: Partial<SessionLimits> = {
  idleMs: 3_000,
  dataTimeoutMs: 1_000,
  minDataRate: 1e12,
  handshakeMs: 1_000,
  handlerMs: 2_000,
  violationDelayMs: 0,
  maxInvalidCommands: 12,
  maxMessageSize: 1024 * 1024,
};

/** A test peer: raw bytes out, parsed replies in. */
class Peer {
  private readonly decoder = new ReplyDecoder();
  private readonly replies: Reply[] = [];
  raw = Buffer.alloc(0);
  ended = false;
  readonly closed: Promise<void>;

  constructor(public socket: net.Socket) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.listen(socket);
  }

  listen(socket: net.Socket): void {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.raw = Buffer.concat([this.raw, d]);
      this.decoder.push(d);
      for (let r = this.decoder.next(); r; r = this.decoder.next()) this.replies.push(r);
    });
    socket.on('end', () => (this.ended = true));
    socket.on('error', () => undefined);
  }

  async reply(timeoutMs = 5_000): Promise<Reply> {
    const until = Date.now() + timeoutMs;
    while (this.replies.length === 0) {
      if (Date.now() > until) throw new Error(`no reply; received ${JSON.stringify(this.raw.toString('latin1').slice(-200))}`);
      if (this.socket.destroyed && this.replies.length === 0) throw new Error(`closed without a reply; received ${JSON.stringify(this.raw.toString('latin1').slice(-200))}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    return this.replies.shift()!;
  }

  async command(line: string): Promise<Reply> {
    this.socket.write(`${line}\r\n`);
    return this.reply();
  }

  async expectClosed(timeoutMs = 5_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([this.closed, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('the server did not close the connection')), timeoutMs)))]);
    } finally {
      clearTimeout(timer);
    }
  }
}

async function tlsPeer(port: number, options: tls.ConnectionOptions = {}): Promise<Peer> {
  const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  return new Peer(socket);
}

async function plainPeer(port: number): Promise<Peer> {
  const socket = net.connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return new Peer(socket);
}

async function startTls(peer: Peer): Promise<void> {
  const r = await peer.command(`STARTTLS <${HOST}> MODE=DMTPv1`);
  assert.equal(r.code, 220);
  peer.socket.removeAllListeners('data');
  const secure = tls.connect({ socket: peer.socket, rejectUnauthorized: false });
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('error', reject);
  });
  peer.listen(secure);
  const done = await peer.reply();
  assert.deepEqual(done, { code: 250, lines: ['OK DMTPv1'] });
}

async function waitUntil(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('DMTP session', () => {
  const delivered: Delivered[] = [];
  let server: DmtpServer;
  let implicitPort: number;
  let dualPort: number;
  let tlsFiles: { cert: string; key: string };

  before(async () => {
    tlsFiles = selfSignedCert(scratchDir('dime-dmtp-session-'), HOST);
    server = await DmtpServer.start({
      hostname: HOST,
      handler: stubHandler(delivered),
      tls: tlsFiles,
      listen: 'inet:127.0.0.1:0',
      dualListen: 'inet:127.0.0.1:0',
      limits: LIMITS,
      memoryBudget: 3 * 1024 * 1024,
      log,
    });
    implicitPort = server.endpoints.implicit!.port;
    dualPort = server.endpoints.dual!.port;
  });

  after(async () => {
    await server.close(1_000);
  });

  it("answers libdime's resolver: SGNT right after the banner, one CRLF line OK [<signet>], no EHLO, no QUIT", async () => {
    const peer = await tlsPeer(implicitPort);
    const banner = await peer.reply();
    assert.deepEqual(banner, { code: 220, lines: [`<${HOST}> DMTPv1 dime-relay ready`] });
    peer.socket.write('SGNT <example.org>\r\n');
    const r = await peer.reply();
    const line = peer.raw.toString('latin1').split('\r\n')[1]!;
    assert.match(line, /^250 OK \[[A-Za-z0-9+/]+=*\]$/, 'one line, 2xx OK [base64], ] last');
    const signet = decodeSignet(base64DecodeStrict(/\[(.*)\]/.exec(r.lines[0]!)![1]!));
    assert.deepEqual(signet.bytes, parties.signets.destination.bytes);
    assert.equal((await peer.command('SGNT <nobody@example.org>')).code, 450);
    peer.socket.destroy(); // libdime just closes
    await waitUntil(() => server.connections === 0, 'the session to end');
  });

  it('enforces EHLO → MAIL FROM → RCPT TO → DATA, one recipient, RSET and a second MAIL FROM', async () => {
    const peer = await tlsPeer(implicitPort);
    await peer.reply();
    assert.equal((await peer.command(`MAIL FROM: <example.com> [${FP}] SIZE=10`)).code, 503, 'MAIL before EHLO');
    const ehlo = await peer.command('EHLO <example.com>');
    assert.deepEqual(ehlo, { code: 250, lines: ['PIPELINING', '8BITDIME', `SIZE ${1024 * 1024}`, 'OK'] });
    assert.equal((await peer.command(`RCPT TO: <example.org> [${FP}]`)).code, 503, 'RCPT before MAIL');
    assert.equal((await peer.command('DATA')).code, 503, 'DATA before MAIL');
    assert.equal((await peer.command(`MAIL FROM: <example.com> [${FP}] SIZE=10`)).code, 250);
    assert.equal((await peer.command('DATA')).code, 503, 'DATA before RCPT');
    assert.equal((await peer.command(`RCPT TO: <example.net> [${FP}]`)).code, 550, 'the handler refuses a domain it does not serve');
    assert.equal((await peer.command(`RCPT TO: <example.org> [${FP}]`)).code, 250);
    assert.equal((await peer.command(`RCPT TO: <example.org> [${FP}]`)).code, 503, 'one RCPT per message');
    assert.equal((await peer.command('RSET')).code, 250);
    assert.equal((await peer.command('DATA')).code, 503, 'RSET dropped the transaction');
    assert.equal((await peer.command(`MAIL FROM: <refused.example> [${FP}] SIZE=10`)).code, 554, 'handler verdict: fingerprint mismatch');
    assert.equal((await peer.command(`MAIL FROM: <example.com> [${FP}] SIZE=10`)).code, 250);
    assert.equal((await peer.command(`MAIL FROM: <example.com> [${FP}] SIZE=10`)).code, 250, 'a second MAIL FROM starts over');
    assert.deepEqual(await peer.command('MODE'), { code: 200, lines: ['OK DMTPv1'] });
    assert.equal((await peer.command('NOOP')).code, 250);
    assert.equal((await peer.command('VERB')).code, 502);
    assert.equal((await peer.command('HELP')).code, 214);
    assert.deepEqual(await peer.command(`VRFY <example.org> [${FP}]`), { code: 250, lines: ['CURRENT'] });
    assert.deepEqual(await peer.command(`VRFY <example.org> [${'B'.repeat(86)}]`), { code: 250, lines: [`UPDATE [${FP}]`] });
    assert.deepEqual(await peer.command('QUIT'), { code: 221, lines: ['BYE'] });
    await peer.expectClosed();
  });

  it('before TLS accepts only QUIT, MODE and STARTTLS; after a DMTP STARTTLS refuses SMTP fallback', async () => {
    const peer = await plainPeer(dualPort);
    assert.equal((await peer.reply()).code, 220);
    assert.deepEqual(await peer.command('SGNT <example.org>'), { code: 503, lines: ['DMTP COMMAND REQUIRES STARTTLS FIRST'] });
    assert.equal((await peer.command('EHLO <example.com>')).code, 503);
    assert.equal((await peer.command('NOOP')).code, 503);
    assert.deepEqual(await peer.command('EHLO mail.example.com'), { code: 554, lines: [`<${HOST}> SMTP SERVICE NOT AVAILABLE`] });
    assert.deepEqual(await peer.command('MODE'), { code: 200, lines: ['OK DMTPv1'] });
    await startTls(peer);
    const r = await peer.command('SGNT <example.org>');
    assert.equal(r.code, 250);
    assert.equal((await peer.command(`STARTTLS <${HOST}> MODE=DMTPv1`)).code, 454);
    assert.deepEqual(await peer.command('EHLO mail.example.com'), { code: 554, lines: ['DMTP SESSION CANNOT FALLBACK AFTER ESTABLISHMENT'] });
    assert.equal((await peer.command('QUIT')).code, 221);
  });

  it('refuses bytes pipelined after STARTTLS (they would pass as TLS-protected)', async () => {
    const peer = await plainPeer(dualPort);
    await peer.reply();
    peer.socket.write(`STARTTLS <${HOST}> MODE=DMTPv1\r\nSGNT <example.org>\r\n`);
    assert.equal((await peer.reply()).code, 503);
    await peer.expectClosed();
  });

  it('reads exactly SIZE octets, binary-safe, and answers 250 OK [id] with the id of 354', async () => {
    const before = delivered.length;
    const peer = await tlsPeer(implicitPort);
    await peer.reply();
    await peer.command('EHLO <example.com>');
    const message = Buffer.concat([Buffer.from('\r\n.\r\nQUIT\r\n\0\xff', 'latin1'), crypto.randomBytes(5000), Buffer.from('\r\n.\r\n')]);
    assert.equal((await peer.command(`MAIL FROM: <example.com> [${FP}] SIZE=${message.length}`)).code, 250);
    assert.equal((await peer.command(`RCPT TO: <example.org> [${FP}]`)).code, 250);
    const go = await peer.command('DATA');
    assert.equal(go.code, 354);
    const id = /^CONTINUE \[([^\]]+)\]$/.exec(go.lines[0]!)![1]!;
    // Cut into awkward pieces: the session must not care.
    peer.socket.write(message.subarray(0, 1));
    peer.socket.write(message.subarray(1, 3000));
    await new Promise((r) => setTimeout(r, 20));
    peer.socket.write(Buffer.concat([message.subarray(3000), Buffer.from('\r\n')]));
    assert.deepEqual(await peer.reply(), { code: 250, lines: [`OK [${id}]`] });
    assert.equal(delivered.length, before + 1);
    assert.deepEqual(delivered.at(-1)!.message, message);
    assert.equal(delivered.at(-1)!.tx.from.domain, 'example.com');
    assert.equal(delivered.at(-1)!.tx.to!.domain, 'example.org');
    // Pipelined: a whole transaction in one write.
    const small = Buffer.from('0123456789');
    peer.socket.write(`MAIL FROM: <example.com> [${FP}] SIZE=10\r\nRCPT TO: <example.org> [${FP}]\r\nDATA\r\n${small.toString()}\r\nNOOP\r\n`);
    assert.deepEqual((await Promise.all([peer.reply(), peer.reply(), peer.reply(), peer.reply(), peer.reply()])).map((r) => r.code), [250, 250, 354, 250, 250]);
    assert.deepEqual(delivered.at(-1)!.message, small);
    await peer.command('QUIT');
  });

  it('refuses data longer than SIZE (554, closed) and times out data shorter than SIZE (421); nothing delivered', async () => {
    const before = delivered.length;
    let peer = await tlsPeer(implicitPort);
    await peer.reply();
    peer.socket.write(`EHLO <example.com>\r\nMAIL FROM: <example.com> [${FP}] SIZE=10\r\nRCPT TO: <example.org> [${FP}]\r\nDATA\r\n`);
    for (const code of [250, 250, 250, 354]) assert.equal((await peer.reply()).code, code);
    peer.socket.write('0123456789ABCDEFGHIJ\r\n');
    assert.deepEqual(await peer.reply(), { code: 554, lines: ['DATA DID NOT END AFTER SIZE OCTETS'] });
    await peer.expectClosed();

    peer = await tlsPeer(implicitPort);
    await peer.reply();
    peer.socket.write(`EHLO <example.com>\r\nMAIL FROM: <example.com> [${FP}] SIZE=100\r\nRCPT TO: <example.org> [${FP}]\r\nDATA\r\n`);
    for (const code of [250, 250, 250, 354]) assert.equal((await peer.reply()).code, code);
    peer.socket.write('only fifty octets, then silence...................\r\n');
    assert.deepEqual(await peer.reply(3_000), { code: 421, lines: ['DATA FAILED - TIMED OUT WAITING FOR DATA'] });
    await peer.expectClosed();
    assert.equal(delivered.length, before);
  });

  it('refuses oversize messages (552) and more than the memory budget in flight (452)', async () => {
    const peer = await tlsPeer(implicitPort);
    await peer.reply();
    await peer.command('EHLO <example.com>');
    const r = await peer.command(`MAIL FROM: <example.com> [${FP}] SIZE=${1024 * 1024 + 1}`);
    assert.deepEqual(r, { code: 552, lines: [`MESSAGE SIZE LIMIT EXCEEDED - THIS RELAY ACCEPTS MESSAGES UP TO ${1024 * 1024} BYTES`] });
    // The budget is 3 MiB: three 1 MiB transactions fit, the fourth waits for one to end.
    const others = await Promise.all([0, 1, 2].map(async () => {
      const p = await tlsPeer(implicitPort);
      await p.reply();
      await p.command('EHLO <example.com>');
      assert.equal((await p.command(`MAIL FROM: <example.com> [${FP}] SIZE=${1024 * 1024}`)).code, 250);
      return p;
    }));
    assert.deepEqual(await peer.command(`MAIL FROM: <example.com> [${FP}] SIZE=${1024 * 1024}`), { code: 452, lines: ['INSUFFICIENT SYSTEM STORAGE, TRY AGAIN LATER'] });
    assert.equal((await others[0]!.command('RSET')).code, 250);
    assert.equal((await peer.command(`MAIL FROM: <example.com> [${FP}] SIZE=${1024 * 1024}`)).code, 250, 'room again after RSET');
    for (const p of [peer, ...others]) p.socket.destroy();
    await waitUntil(() => server.budget.inFlight === 0, 'reservations released on disconnect');
  });

  it('delivers nothing when the connection drops mid-DATA, and releases the reservation', async () => {
    const before = delivered.length;
    const peer = await tlsPeer(implicitPort);
    await peer.reply();
    peer.socket.write(`EHLO <example.com>\r\nMAIL FROM: <example.com> [${FP}] SIZE=5000\r\nRCPT TO: <example.org> [${FP}]\r\nDATA\r\n`);
    for (const code of [250, 250, 250, 354]) assert.equal((await peer.reply()).code, code);
    peer.socket.write(crypto.randomBytes(4999));
    await new Promise((r) => setTimeout(r, 50));
    peer.socket.destroy();
    await waitUntil(() => server.connections === 0 && server.budget.inFlight === 0, 'the session to end');
    assert.equal(delivered.length, before);
  });

  it('cuts a session off after too many invalid commands', async () => {
    const peer = await tlsPeer(implicitPort);
    await peer.reply();
    const codes: number[] = [];
    for (const bad of ['FROB', 'MAIL FROM: <example.com>', `RCPT TO: <x> [${FP}]`, `SGNT <exa mple.org>`]) codes.push((await peer.command(bad)).code);
    assert.deepEqual(codes, [500, 501, 503, 501]);
    for (let i = 4; i < 11; i++) assert.equal((await peer.command('FROB')).code, 500);
    assert.deepEqual(await peer.command('BOGUS'), { code: 421, lines: ['TOO MANY INVALID COMMANDS, CLOSING CONNECTION'] });
    await peer.expectClosed();
  });

  it('refuses CR, NUL and 8-bit octets inside a command line, and overlong lines', async () => {
    let peer = await tlsPeer(implicitPort);
    await peer.reply();
    peer.socket.write('SGNT <example.org>\rRSET\r\n');
    assert.deepEqual(await peer.reply(), { code: 501, lines: ['INVALID CHARACTERS IN COMMAND'] });
    peer.socket.write('SGNT <example.org\0.evil>\r\n');
    assert.equal((await peer.reply()).code, 501);
    peer.socket.write(Buffer.from('SGNT <ex\xe4mple.org>\r\n', 'latin1'));
    assert.equal((await peer.reply()).code, 501);
    assert.equal((await peer.command('SGNT <example.org>')).code, 250, 'the session goes on');
    peer.socket.write(Buffer.alloc(5000, 0x41));
    assert.deepEqual(await peer.reply(), { code: 500, lines: ['LINE TOO LONG'] });
    await peer.expectClosed();
    // Binary junk before TLS on the dual port.
    peer = await plainPeer(dualPort);
    await peer.reply();
    peer.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x0a, 0xff, 0x00, 0x0a, 0x0d, 0x0a]));
    assert.ok([500, 501].includes((await peer.reply()).code));
    peer.socket.destroy();
  });

  it('cuts off a client that trickles a command byte by byte (idle timer ignores partial lines)', async () => {
    const slow = await DmtpServer.start({ hostname: HOST, handler: stubHandler([]), tls: tlsFiles, listen: 'inet:127.0.0.1:0', limits: { ...LIMITS, idleMs: 400 }, log });
    try {
      const peer = await tlsPeer(slow.endpoints.implicit!.port);
      await peer.reply();
      const started = Date.now();
      const text = 'SGNT <example.org>\r\n';
      let i = 0;
      const trickle = setInterval(() => {
        if (peer.socket.destroyed || i >= text.length) return clearInterval(trickle);
        peer.socket.write(text[i++]!);
      }, 60);
      const r = await peer.reply(3_000);
      clearInterval(trickle);
      assert.deepEqual(r, { code: 421, lines: [`<${HOST}> IDLE TIMEOUT, CLOSING CONNECTION`] });
      assert.ok(Date.now() - started < 1_000, 'cut off at the idle time, not after the line');
      await peer.expectClosed();
    } finally {
      await slow.close(500);
    }
  });

  it('offers TLS 1.2 with ECDHE-RSA-AES256-GCM-SHA384 (libdime, no SNI) and TLS 1.3, never TLS 1.1', async () => {
    const libdime = await tlsPeer(implicitPort, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-RSA-AES256-GCM-SHA384' });
    const s = libdime.socket as tls.TLSSocket;
    assert.equal(s.getProtocol(), 'TLSv1.2');
    assert.equal(s.getCipher().standardName, 'TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384');
    assert.equal((await libdime.reply()).code, 220);
    libdime.socket.destroy();
    const modern = await tlsPeer(implicitPort, { servername: HOST });
    assert.equal((modern.socket as tls.TLSSocket).getProtocol(), 'TLSv1.3');
    modern.socket.destroy();
    await assert.rejects(tlsPeer(implicitPort, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }));
    await assert.rejects(tlsPeer(implicitPort, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-RSA-AES128-GCM-SHA256' }), 'other TLS 1.2 suites are not offered');
  });

  it('drops junk and abandoned handshakes on the TLS port and carries on', async () => {
    const junk = await plainPeer(implicitPort);
    junk.socket.write('EHLO <example.com>\r\n\0\0\0garbage\r\n');
    await junk.expectClosed();
    const silent = await plainPeer(implicitPort);
    const t0 = Date.now();
    await silent.expectClosed(5_000);
    assert.ok(Date.now() - t0 >= 800, 'closed by the handshake timeout');
    const stalled = await plainPeer(dualPort);
    await stalled.reply();
    stalled.socket.write(`STARTTLS <${HOST}> MODE=DMTPv1\r\n`);
    assert.equal((await stalled.reply()).code, 220);
    await stalled.expectClosed(5_000); // no ClientHello ever comes
    const fine = await tlsPeer(implicitPort);
    assert.equal((await fine.reply()).code, 220);
    fine.socket.destroy();
  });

  it('answers what a half-closed peer asked, then closes', async () => {
    const peer = await tlsPeer(implicitPort);
    await peer.reply();
    peer.socket.end('SGNT <example.org>\r\nNOOP\r\n');
    assert.equal((await peer.reply()).code, 250);
    assert.equal((await peer.reply()).code, 250);
    await peer.expectClosed();
  });

  it('answers 451 when the handler misses its deadline, and 421 to idle sessions on shutdown', async () => {
    const slow = await DmtpServer.start({ hostname: HOST, handler: stubHandler([], { slowDataMs: 1_500 }), tls: tlsFiles, listen: 'inet:127.0.0.1:0', limits: { ...LIMITS, handlerMs: 300 }, log });
    const peer = await tlsPeer(slow.endpoints.implicit!.port);
    await peer.reply();
    peer.socket.write(`EHLO <example.com>\r\nMAIL FROM: <example.com> [${FP}] SIZE=3\r\nRCPT TO: <example.org> [${FP}]\r\nDATA\r\nabc\r\n`);
    for (const code of [250, 250, 250, 354]) assert.equal((await peer.reply()).code, code);
    assert.deepEqual(await peer.reply(), { code: 451, lines: ['LOCAL PROCESSING TIMED OUT, TRY AGAIN LATER'] });
    const idle = await tlsPeer(slow.endpoints.implicit!.port);
    await idle.reply();
    const closing = slow.close(2_000);
    assert.deepEqual(await idle.reply(), { code: 421, lines: [`<${HOST}> SERVICE SHUTTING DOWN`] });
    await closing;
    await idle.expectClosed();
  });
});
