/**
 * The policy and socketmap services answering a real Postfix (a private instance from the rig
 * in helpers/postfix.ts), with swaks as the SMTP client:
 *
 *  - check_policy_service: DUNNO delivers; REJECT, a numeric 5NN and DEFER reach the SMTP client
 *    as the exact replies; a failing or slow handler tempfails (the failure action), never accepts.
 *  - transport_maps = socketmap:…:transport: a dark-domain recipient goes to the `dmtp` transport
 *    (LMTP to a Node sink), a legacy recipient of the same message is delivered locally.
 *  - a socketmap answering TEMP or missing its deadline after the message was accepted leaves it
 *    deferred in the queue: not bounced, not delivered anywhere in plaintext.
 *  - `dime policy` itself (the CLI process) serving a Postfix, and stopping cleanly on SIGTERM.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../src/log.js';
import {
  startPolicyServer,
  startSocketmapServer,
  staticDarkTable,
  type PolicyHandler,
  type PolicyRequest,
  type ServiceServer,
  type SocketmapHandler,
} from '../src/policy/index.js';
import { DIME_BIN, dime } from './helpers/cli.js';
import { startMailSink, startPostfix, waitFor, type MailSink, type Postfix, type SwaksResult } from './helpers/postfix.js';

const quiet = createLogger({ level: 'silent' });
/** The services' request deadline here: short, so the slow-handler cases take half a second. */
const DEADLINE_MS = 500;

function rcptReply(r: SwaksResult, rcpt: string) {
  const reply = r.replies.find((x) => x.command === `RCPT TO:<${rcpt}>`);
  assert.ok(reply, `no RCPT reply for ${rcpt} in:\n${r.output}`);
  return `${reply.code} ${reply.text}`;
}

function dataReply(r: SwaksResult) {
  const reply = r.replies.find((x) => x.command === '.');
  return reply ? `${reply.code} ${reply.text}` : undefined;
}

let counter = 0;
/** A subject unique to one test, to find its deliveries. */
function subject(what: string): string {
  return `dime-policy-e2e ${++counter} ${what}`;
}

describe('Postfix check_policy_service and socketmap transport_maps answered by our servers', () => {
  let pf: Postfix;
  let sink: MailSink;
  let policy: ServiceServer;
  let socketmap: ServiceServer;
  const seen: PolicyRequest[] = [];
  /** Dark recipients whose lookups fail once their message has been accepted. */
  const OUTAGE_RECIPIENTS = ['outage@example.org', 'slowmap@example.org'];
  const outage = new Set<string>();
  /** Policy `instance` values of messages to them (the same for all requests about one message). */
  const outageMessages = new Set<string>();

  const policyHandler: PolicyHandler = async (r, { signal }) => {
    seen.push(r);
    if (r.protocolState === 'RCPT' && OUTAGE_RECIPIENTS.includes(r.recipient ?? '')) outageMessages.add(r.instance ?? '');
    if (r.protocolState === 'END-OF-MESSAGE' && outageMessages.has(r.instance ?? '')) {
      // The message is accepted as soon as we answer: from now on the routing lookups for its
      // recipients fail (what a resolver outage right after acceptance looks like to qmgr).
      for (const rcpt of OUTAGE_RECIPIENTS) outage.add(rcpt);
      return { action: 'DUNNO' };
    }
    switch (r.recipient) {
      case 'reject@example.test':
        return { action: 'REJECT', status: '5.7.1', text: 'DIME test: rejected' };
      case 'code@example.test':
        return { action: 'REPLY', code: 550, status: '5.1.1', text: 'no such DIME user' };
      case 'defer@example.test':
        return { action: 'DEFER', status: '4.7.1', text: 'DIME test: try later' };
      case 'throw@example.test':
        throw new Error('decision engine exploded');
      case 'slow@example.test':
        await new Promise((resolve) => signal.addEventListener('abort', resolve));
        return { action: 'OK' };
      default:
        return { action: 'DUNNO' };
    }
  };

  before(async () => {
    sink = await startMailSink();
    const table = staticDarkTable({ domains: ['example.org'], route: `dmtp:[127.0.0.1]:${sink.port}` });
    const socketmapHandler: SocketmapHandler = async (map, key, c) => {
      if (key === 'rcpttemp@example.org') return { status: 'TEMP', reason: 'resolver down' };
      if (outage.has(key)) {
        if (key === 'slowmap@example.org') await new Promise((resolve) => setTimeout(resolve, DEADLINE_MS * 3));
        return { status: 'TEMP', reason: 'resolver down' };
      }
      return table(map, key, c);
    };
    policy = await startPolicyServer({ listen: 'inet:127.0.0.1:0', handler: policyHandler, deadlineMs: DEADLINE_MS, logger: quiet });
    socketmap = await startSocketmapServer({ listen: 'inet:127.0.0.1:0', handler: socketmapHandler, deadlineMs: DEADLINE_MS, logger: quiet });
    pf = await startPostfix({
      users: ['alice', 'bob', 'reject', 'code', 'defer', 'throw', 'slow'],
      main: {
        // The policy check first: permit_mynetworks before it would skip it for 127.0.0.1 (spec §2.2).
        smtpd_recipient_restrictions: `check_policy_service inet:${policy.address.slice('inet:'.length)}, permit_mynetworks, reject_unauth_destination`,
        smtpd_end_of_data_restrictions: `check_policy_service inet:${policy.address.slice('inet:'.length)}`,
        transport_maps: `socketmap:${socketmap.address}:transport`,
      },
      master: ['dmtp      unix  -       -       n       -       -       lmtp'],
    });
  });

  after(async () => {
    // Postfix first, so it closes its policy and socketmap connections before the servers stop.
    await pf?.stop();
    await Promise.all([policy?.close(), socketmap?.close(), sink?.close()]);
  });

  it('DUNNO: the message is accepted and delivered, and the request carried what Postfix 3.7 sends', async () => {
    const s = subject('dunno');
    const r = await pf.sendWithSwaks(['--to', 'alice@example.test', '--h-Subject', s]);
    assert.equal(r.code, 0, r.output);
    assert.equal(rcptReply(r, 'alice@example.test'), '250 2.1.5 Ok');
    const m = await pf.waitForDelivery('alice');
    assert.match(m.content, new RegExp(`^Subject: ${s}$`, 'm'));
    const req = seen.find((x) => x.recipient === 'alice@example.test' && x.protocolState === 'RCPT');
    assert.ok(req, 'the policy server saw the RCPT request');
    assert.equal(req.request, 'smtpd_access_policy');
    assert.equal(req.sender, 'sender@example.test');
    assert.equal(req.clientAddress, '127.0.0.1');
    assert.equal(req.get('helo_name'), 'client.example.test');
    assert.equal(req.get('protocol_name'), 'ESMTP');
    assert.match(req.instance ?? '', /^[0-9a-f]+\.[0-9a-f]+\.[0-9a-f]+\.\d+$/);
    // The attributes Postfix 3.7.11 sends at RCPT (spec §2.1); later versions add more.
    const attrs =
      'request protocol_state protocol_name client_address client_name client_port reverse_client_name server_address server_port helo_name sender recipient recipient_count queue_id instance size etrn_domain stress sasl_method sasl_username sasl_sender ccert_subject ccert_issuer ccert_fingerprint ccert_pubkey_fingerprint encryption_protocol encryption_cipher encryption_keysize policy_context';
    for (const name of attrs.split(' ')) assert.ok(req.attributes.has(name), `Postfix sent ${name}`);
  });

  it('REJECT, a numeric 5NN and DEFER reach the SMTP client as exactly those replies', async () => {
    const r = await pf.sendWithSwaks(['--to', 'reject@example.test,code@example.test,defer@example.test,alice@example.test', '--h-Subject', subject('rejects')]);
    assert.equal(rcptReply(r, 'reject@example.test'), '554 5.7.1 <reject@example.test>: Recipient address rejected: DIME test: rejected');
    assert.equal(rcptReply(r, 'code@example.test'), '550 5.1.1 <code@example.test>: Recipient address rejected: no such DIME user');
    assert.equal(rcptReply(r, 'defer@example.test'), '450 4.7.1 <defer@example.test>: Recipient address rejected: DIME test: try later');
    assert.equal(rcptReply(r, 'alice@example.test'), '250 2.1.5 Ok');
    for (const who of ['reject', 'code', 'defer']) assert.equal(pf.messages(who).length, 0, `nothing delivered to ${who}`);

    const only = await pf.sendWithSwaks(['--to', 'reject@example.test']);
    assert.equal(only.code, 24, 'swaks: every recipient refused');
  });

  it('a handler that throws or misses its deadline tempfails the recipient (DEFER_IF_PERMIT 4.7.1), never accepts it', async () => {
    const started = Date.now();
    const r = await pf.sendWithSwaks(['--to', 'throw@example.test,slow@example.test']);
    const failure = 'Recipient address rejected: DIME policy service failure, try again later';
    assert.equal(rcptReply(r, 'throw@example.test'), `450 4.7.1 <throw@example.test>: ${failure}`);
    assert.equal(rcptReply(r, 'slow@example.test'), `450 4.7.1 <slow@example.test>: ${failure}`);
    assert.equal(r.code, 24);
    assert.ok(Date.now() - started >= DEADLINE_MS, 'the slow handler was given its deadline');
    assert.equal(pf.messages('throw').length + pf.messages('slow').length, 0);
  });

  it('routes a dark-domain recipient to the dmtp transport and a legacy one of the same message locally', async () => {
    const s = subject('routing');
    const before = sink.messages.length;
    const r = await pf.sendWithSwaks(['--to', 'bob@example.org,alice@example.test', '--h-Subject', s]);
    assert.equal(r.code, 0, r.output);
    assert.match(dataReply(r) ?? '', /^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);
    const [m] = (await sink.waitForMessages(before + 1)).slice(before);
    assert.equal(m!.greeting, 'LHLO');
    assert.deepEqual(m!.recipients, ['bob@example.org'], 'the sink got exactly the dark recipient');
    assert.equal(m!.from, 'sender@example.test');
    assert.match(m!.data, new RegExp(`^Subject: ${s}\r$`, 'm'));
    const local = await pf.waitForDelivery((d) => d.content.includes(s));
    assert.equal(local.mailbox, 'alice@example.test');
    await pf.waitForLog(new RegExp(`to=<bob@example\\.org>, relay=127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${sink.port},.*status=sent`));
    await pf.waitForLog(/to=<alice@example\.test>, relay=virtual,.*status=sent/);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(sink.messages.length, before + 1, 'one delivery to the sink, no copy for alice');
  });

  it('a socketmap TEMP at RCPT time refuses the recipient with 451 4.3.0 (the mail stays with the sender)', async () => {
    const r = await pf.sendWithSwaks(['--to', 'rcpttemp@example.org']);
    assert.equal(rcptReply(r, 'rcpttemp@example.org'), '451 4.3.0 <rcpttemp@example.org>: Temporary lookup failure');
  });

  it('a socketmap TEMP or deadline after acceptance leaves the message deferred: not bounced, not delivered', async () => {
    const s = subject('outage');
    const sinkBefore = sink.messages.length;
    const mark = pf.logMark();
    const r = await pf.sendWithSwaks(['--to', 'outage@example.org,slowmap@example.org', '--h-Subject', s]);
    assert.equal(r.code, 0, `accepted: ${r.output}`);
    const queueId = /queued as ([0-9A-F]+)/.exec(dataReply(r) ?? '')?.[1];
    assert.ok(queueId, r.output);
    const entry = await waitFor(
      () => pf.queue().find((e) => e.queueId === queueId && e.queueName === 'deferred' && e.recipients.length === 2),
      15_000,
      `${queueId} in the deferred queue with both recipients`,
      () => `${pf.log().split('\n').slice(-20).join('\n')}\n${JSON.stringify(pf.queue())}`,
    );
    assert.deepEqual(entry.recipients.map((x) => x.address).sort(), ['outage@example.org', 'slowmap@example.org']);
    for (const rcpt of entry.recipients) assert.match(rcpt.delayReason ?? '', /address resolver failure/);
    const log = Buffer.from(pf.log()).subarray(mark).toString();
    assert.match(log, new RegExp(`${queueId}: to=<outage@example\\.org>.*status=deferred \\(address resolver failure\\)`));
    assert.doesNotMatch(log, new RegExp(`${queueId}: .*status=(bounced|sent)`));
    assert.equal(sink.messages.length, sinkBefore, 'nothing reached the dmtp sink');
    assert.equal(
      pf.messages('sender').filter((m) => m.content.includes(s)).length,
      0,
      'no bounce to the sender',
    );
  });
});

describe('`dime policy` (the CLI) serving a real Postfix', () => {
  let pf: Postfix | undefined;
  let sink: MailSink;
  let child: ChildProcess;
  const logLines: any[] = [];

  before(async () => {
    sink = await startMailSink();
    child = spawn(
      process.execPath,
      [DIME_BIN, 'policy', '--listen', 'inet:127.0.0.1:0', '--socketmap', 'inet:127.0.0.1:0', '--dark-domain', 'example.net', '--dark-route', `dmtp:[127.0.0.1]:${sink.port}`, '--log-level', 'debug'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let buffered = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      buffered += d;
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      for (const l of lines) if (l.trim()) logLines.push(JSON.parse(l));
    });
    const ready = await waitFor(() => logLines.find((l) => l.msg === 'ready'), 10_000, '`dime policy` to log "ready"', () => JSON.stringify(logLines));
    pf = await startPostfix({
      main: {
        smtpd_recipient_restrictions: `check_policy_service ${ready.policy}, permit_mynetworks, reject_unauth_destination`,
        transport_maps: `socketmap:${ready.socketmap}:transport`,
      },
      master: ['dmtp      unix  -       -       n       -       -       lmtp'],
    });
  });

  after(async () => {
    await pf?.stop();
    if (child.exitCode === null) child.kill('SIGKILL');
    await sink?.close();
  });

  it('routes --dark-domain recipients to the dmtp transport, answers DUNNO, and stops cleanly on SIGTERM', async () => {
    const s = subject('cli');
    const r = await pf!.sendWithSwaks(['--to', 'dan@example.net,alice@example.test', '--h-Subject', s]);
    assert.equal(r.code, 0, r.output);
    const [m] = await sink.waitForMessages(1);
    assert.deepEqual(m!.recipients, ['dan@example.net']);
    assert.match((await pf!.waitForDelivery('alice')).content, new RegExp(`^Subject: ${s}$`, 'm'));
    assert.ok(logLines.some((l) => l.msg === 'policy answer' && l.action === 'DUNNO' && l.state === 'RCPT'), 'the policy service answered Postfix');
    assert.ok(logLines.some((l) => l.msg === 'socketmap answer' && l.key === 'dan@example.net' && l.status === 'OK'), 'the socketmap routed dan');

    await pf!.stop();
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.deepEqual(
      logLines.filter((l) => ['stopping', 'stopped'].includes(l.msg)).map((l) => l.msg),
      ['stopping', 'stopped', 'stopped', 'stopped'],
    );
  });
});

describe('`dime policy` usage errors', () => {
  it('exits 2 with the error code, before listening, on bad options', () => {
    const cases: [string[], RegExp][] = [
      [['--listen', 'tcp:127.0.0.1:1'], /expected inet:HOST:PORT or unix:\/PATH \[SOCKET_BAD_SPEC\]/],
      [['--socketmap', 'inet:127.0.0.1:99999'], /with a port from 0 to 65535 .*\[SOCKET_BAD_SPEC\]/],
      [['--dark-domain', 'not a domain'], /not a domain name \[USAGE\]/],
      [['--dark-route', 'dmtp'], /is not transport:nexthop .*\[USAGE\]/],
      [['--failure-action', 'DUNNO please'], /--failure-action: .*takes no argument \[USAGE\]/],
      [['--failure-action', 'DEFER 5.7.1 no'], /needs a 4\.x\.x status code.*\[USAGE\]/],
      [['--deadline', '0'], /--deadline must be a positive number of seconds, not "0" \[USAGE\]/],
      [['--log-level', 'loud'], /--log-level must be one of/],
    ];
    for (const [args, message] of cases) {
      const r = dime(['policy', ...args]);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message, args.join(' '));
    }
  });
});
