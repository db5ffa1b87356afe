/**
 * sendMail's optional SMTP AUTH PLAIN (src/dmtp/smtp-client.ts), against a real Postfix submission
 * service with Dovecot SASL (the two-domain end-to-end test's setup), plus a recording fake server
 * for what must never go on the wire: credentials to a server that does not offer PLAIN.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { sendMail, type SmtpMessage } from '../src/dmtp/smtp-client.js';
import { dovecotAvailable, startDovecotAuth, type DovecotAuth } from './helpers/dovecot.js';
import { freePort, startPostfix, type Postfix } from './helpers/postfix.js';

const USER = 'alice@example.test';
const PASSWORD = 'pl41n-s3cret-Zq';
/** What a careless client would leak: the password itself, or the whole PLAIN token. */
const SECRETS = [PASSWORD, Buffer.from(`\0${USER}\0${PASSWORD}`).toString('base64')];

function body(subject: string): Buffer[] {
  return [Buffer.from(`From: <${USER}>\r\nTo: <${USER}>\r\nSubject: ${subject}\r\n\r\nhello\r\n`)];
}

/** A fake SMTP server that records every byte it receives and answers from `ehloLines`. */
async function recordingServer(ehloLines: string[], authReply = '235 2.7.0 ok'): Promise<{ port: number; received: () => string; close: () => Promise<void> }> {
  let received = '';
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.setEncoding('latin1');
    s.write('220 fake ESMTP\r\n');
    let buf = '';
    let inData = false;
    s.on('data', (d: string) => {
      received += d;
      buf += d;
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          buf = buf.slice(end + 5);
          inData = false;
          s.write('250 2.0.0 queued\r\n');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const verb = buf.slice(0, nl).split(' ')[0]!.toUpperCase();
        buf = buf.slice(nl + 2);
        if (verb === 'EHLO') s.write(ehloLines.map((l, i) => `250${i === ehloLines.length - 1 ? ' ' : '-'}${l}\r\n`).join(''));
        else if (verb === 'HELO') s.write('250 fake\r\n');
        else if (verb === 'AUTH') s.write(`${authReply}\r\n`);
        else if (verb === 'DATA') {
          inData = true;
          s.write('354 go on\r\n');
        } else if (verb === 'QUIT') s.end('221 bye\r\n');
        else s.write('250 ok\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    received: () => received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

function message(port: number, extra: Partial<SmtpMessage> = {}): SmtpMessage {
  return { target: { kind: 'inet', host: '127.0.0.1', port }, helo: 'client.example.test', from: USER, to: [USER], body: body('auth test'), timeouts: { commandMs: 20_000 }, ...extra };
}

describe('sendMail: AUTH PLAIN, wire behaviour (fake server)', () => {
  it('sends the RFC 4954 initial response when EHLO offers PLAIN, then the message', async () => {
    const srv = await recordingServer(['fake', 'PIPELINING', 'AUTH LOGIN PLAIN']);
    try {
      const r = await sendMail(message(srv.port, { auth: { user: USER, password: PASSWORD } }));
      assert.equal(r.accepted, true, JSON.stringify(r));
      const lines = srv.received().split('\r\n');
      assert.equal(lines[1], `AUTH PLAIN ${SECRETS[1]}`);
      assert.equal(lines[2], `MAIL FROM:<${USER}>`);
    } finally {
      await srv.close();
    }
  });

  it('accepts the pre-RFC "AUTH=PLAIN" form too', async () => {
    const srv = await recordingServer(['fake', 'AUTH=LOGIN PLAIN']);
    try {
      assert.equal((await sendMail(message(srv.port, { auth: { user: USER, password: PASSWORD } }))).accepted, true);
    } finally {
      await srv.close();
    }
  });

  it('never sends the credentials to a server that does not offer PLAIN: refused at stage auth, permanent', async () => {
    for (const ehlo of [['fake', 'PIPELINING'], ['fake', 'AUTH LOGIN CRAM-MD5'], ['fake', 'X-PLAIN-AUTH']]) {
      const srv = await recordingServer(ehlo);
      try {
        const r = await sendMail(message(srv.port, { auth: { user: USER, password: PASSWORD } }));
        assert.deepEqual(r, { accepted: false, temporary: false, stage: 'auth', reason: 'the server does not offer AUTH PLAIN' });
        await new Promise((res) => setTimeout(res, 50));
        for (const secret of SECRETS) assert.ok(!srv.received().includes(secret), `${ehlo.join(',')}: the wire shows a secret`);
        assert.ok(!/^(AUTH|MAIL)/m.test(srv.received()), srv.received());
      } finally {
        await srv.close();
      }
    }
  });

  it('a refused AUTH is the server\'s verdict (535 permanent, 454 temporary), without the secret in the reason', async () => {
    for (const [reply, temporary] of [['535 5.7.8 authentication failed', false], ['454 4.7.0 try later', true]] as const) {
      const srv = await recordingServer(['fake', 'AUTH PLAIN'], reply);
      try {
        const r = await sendMail(message(srv.port, { auth: { user: USER, password: PASSWORD } }));
        assert.equal(r.accepted, false);
        assert.ok(!r.accepted && r.stage === 'auth' && r.temporary === temporary && r.reply?.code === Number(reply.slice(0, 3)), JSON.stringify(r));
        for (const secret of SECRETS) assert.ok(!JSON.stringify(r).includes(secret));
      } finally {
        await srv.close();
      }
    }
  });

  it('a NUL in the credentials is a bad argument, and the error does not echo the password', async () => {
    await assert.rejects(
      sendMail(message(1, { auth: { user: USER, password: `${PASSWORD}\0x` } })),
      (err: Error) => /DMTP_BAD_ARGUMENT|AUTH PLAIN/.test(`${(err as { code?: string }).code} ${err.message}`) && !err.message.includes(PASSWORD),
    );
    await assert.rejects(sendMail(message(1, { auth: { user: '', password: PASSWORD } })));
  });

  it('without auth, nothing changes: no AUTH command even when offered', async () => {
    const srv = await recordingServer(['fake', 'AUTH PLAIN']);
    try {
      assert.equal((await sendMail(message(srv.port))).accepted, true);
      assert.ok(!/^AUTH/m.test(srv.received()));
    } finally {
      await srv.close();
    }
  });
});

const skip = process.getuid?.() !== 0 ? 'needs root (the Postfix rig)' : !fs.existsSync('/usr/sbin/postfix') ? 'postfix is not installed' : !dovecotAvailable() ? 'dovecot-core is not installed' : false;

describe('sendMail: AUTH PLAIN against Postfix submission with Dovecot SASL', { skip, timeout: 120_000 }, () => {
  let pf: Postfix;
  let sasl: DovecotAuth;
  let submission: number;

  before(async () => {
    sasl = await startDovecotAuth({ [USER]: PASSWORD });
    submission = await freePort();
    pf = await startPostfix({
      users: ['alice'],
      main: { smtpd_sasl_type: 'dovecot', smtpd_sasl_path: sasl.socket },
      // The submission service of postfix-examples/master.cf, minus the milter.
      master: [
        `127.0.0.1:${submission} inet n - n - - smtpd`,
        '  -o syslog_name=postfix/submission',
        '  -o smtpd_sasl_auth_enable=yes',
        '  -o smtpd_client_restrictions=permit_sasl_authenticated,reject',
        '  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject',
      ],
    });
  });

  after(async () => {
    await Promise.all([pf?.stop(), sasl?.stop()]);
  });

  it('the right password: accepted, delivered, and Postfix logs the SASL user', async () => {
    const r = await sendMail(message(submission, { auth: { user: USER, password: PASSWORD }, body: body('authenticated 1') }));
    assert.equal(r.accepted, true, JSON.stringify(r));
    const m = await pf.waitForDelivery('alice', 20_000);
    assert.match(m.content, /^Subject: authenticated 1$/m);
    await pf.waitForLog(/sasl_method=PLAIN, sasl_username=alice@example\.test/);
  });

  it('no auth: the submission service refuses the client (5xx), as it should', async () => {
    const r = await sendMail(message(submission));
    assert.ok(!r.accepted && !r.temporary && r.reply && r.reply.code >= 500, JSON.stringify(r));
  });

  it('a wrong password: 535 at stage auth, permanent, and no secret in the outcome or the maillog', async () => {
    const wrong = `${PASSWORD}-wrong`;
    const r = await sendMail(message(submission, { auth: { user: USER, password: wrong } }));
    assert.ok(!r.accepted && r.stage === 'auth' && !r.temporary && r.reply?.code === 535, JSON.stringify(r));
    for (const secret of [...SECRETS, wrong]) assert.ok(!JSON.stringify(r).includes(secret));
    await pf.waitForLog(/authentication failed/);
    for (const secret of [...SECRETS, wrong]) assert.ok(!pf.log().includes(secret), 'the maillog shows a secret');
  });

  it("the rig's own smtpd does not offer AUTH: refused before any credential is sent", async () => {
    const r = await sendMail(message(pf.smtpPort, { auth: { user: USER, password: PASSWORD } }));
    assert.deepEqual(r, { accepted: false, temporary: false, stage: 'auth', reason: 'the server does not offer AUTH PLAIN' });
  });
});
