/**
 * The pol=strict rule of the policy service (src/policy/dime-policy.ts): unit cases for every branch,
 * then a real Postfix (check_policy_service → our policy server) with swaks as the client: legacy
 * mail for our domain is refused at RCPT under pol=strict with exactly our text, accepted and
 * delivered under pol=mixed or without a record, deferred (450, nothing delivered) when our own
 * policy cannot be determined; other domains are never asked about.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { RecordPolicy } from '../src/dime/record.js';
import { DimeError } from '../src/errors.js';
import { createLogger } from '../src/log.js';
import { createStrictInboundPolicy } from '../src/policy/dime-policy.js';
import { PolicyRequest, startPolicyServer, type ServiceServer } from '../src/policy/index.js';
import { startPostfix, type Postfix, type SwaksResult } from './helpers/postfix.js';

const quiet = createLogger({ level: 'silent' });
const DOMAIN = 'example.test';

function request(attrs: Record<string, string>): PolicyRequest {
  return new PolicyRequest(new Map(Object.entries({ request: 'smtpd_access_policy', protocol_state: 'RCPT', sender: 'someone@legacy.example', client_address: '192.0.2.9', ...attrs })));
}

/** A localPolicy that answers `answer` (or throws it) and counts its calls. */
function policySource(answer: RecordPolicy | undefined | Error) {
  const source = {
    calls: 0,
    answer,
    localPolicy: async () => {
      source.calls++;
      if (source.answer instanceof Error) throw source.answer;
      return source.answer;
    },
  };
  return source;
}

const signal = new AbortController().signal;

describe('createStrictInboundPolicy', () => {
  it('pol=strict: REJECT 5.7.1 for a recipient of our domain, whatever the case or a trailing dot', async () => {
    const src = policySource('strict');
    const h = createStrictInboundPolicy({ domain: 'Example.Test.', localPolicy: src.localPolicy });
    assert.deepEqual(await h(request({ recipient: 'bob@example.test' }), { signal }), {
      action: 'REJECT',
      status: '5.7.1',
      text: '<bob@example.test>: example.test accepts only DIME mail (pol=strict)',
    });
    assert.equal((await h(request({ recipient: 'Bob@EXAMPLE.TEST' }), { signal })).action, 'REJECT');
    assert.equal(src.calls, 2);
  });

  it('DUNNO for mixed, experimental, no record, other domains and stages, authenticated clients, and refuse=false', async () => {
    for (const answer of ['mixed', 'experimental', undefined] as const) {
      const h = createStrictInboundPolicy({ domain: DOMAIN, localPolicy: policySource(answer).localPolicy });
      assert.deepEqual(await h(request({ recipient: 'bob@example.test' }), { signal }), { action: 'DUNNO' }, String(answer));
    }
    const src = policySource('strict');
    const h = createStrictInboundPolicy({ domain: DOMAIN, localPolicy: src.localPolicy });
    for (const attrs of <Record<string, string>[]>[
      { recipient: 'bob@other.test' },
      { recipient: 'bob@sub.example.test' },
      { recipient: 'example.test' },
      { recipient: '' },
      { protocol_state: 'END-OF-MESSAGE', recipient: 'bob@example.test' },
      { protocol_state: 'MAIL', recipient: '' },
    ]) {
      assert.deepEqual(await h(request(attrs), { signal }), { action: 'DUNNO' }, JSON.stringify(attrs));
    }
    assert.equal(src.calls, 0, 'our policy is looked up only for our recipients at RCPT');
    assert.deepEqual(await h(request({ recipient: 'bob@example.test', sasl_username: 'alice' }), { signal }), { action: 'DUNNO' });
    const off = createStrictInboundPolicy({ domain: DOMAIN, localPolicy: src.localPolicy, refuse: false });
    assert.deepEqual(await off(request({ recipient: 'bob@example.test' }), { signal }), { action: 'DUNNO' });
  });

  it('a failing lookup of our own policy defers (DEFER_IF_PERMIT 4.7.0), never DUNNO', async () => {
    const h = createStrictInboundPolicy({ domain: DOMAIN, localPolicy: policySource(new DimeError('DNS_SERVFAIL', '_dx.example.test')).localPolicy });
    assert.deepEqual(await h(request({ recipient: 'bob@example.test' }), { signal }), {
      action: 'DEFER_IF_PERMIT',
      status: '4.7.0',
      text: 'cannot determine the DIME policy of example.test; try again later',
    });
  });

  it('an address that cannot go into a reply is left out of the text', async () => {
    const h = createStrictInboundPolicy({ domain: DOMAIN, localPolicy: policySource('strict').localPolicy });
    for (const rcpt of ['jürgen@example.test', `${'x'.repeat(240)}@example.test`]) {
      assert.deepEqual(await h(request({ recipient: rcpt }), { signal }), { action: 'REJECT', status: '5.7.1', text: 'example.test accepts only DIME mail (pol=strict)' });
    }
  });
});

function rcptReply(r: SwaksResult, rcpt: string): string {
  const reply = r.replies.find((x) => x.command === `RCPT TO:<${rcpt}>`);
  assert.ok(reply, `no RCPT reply for ${rcpt} in:\n${r.output}`);
  return `${reply.code} ${reply.text}`;
}

describe('pol=strict through a real Postfix (check_policy_service)', () => {
  let pf: Postfix;
  let policy: ServiceServer;
  const src = policySource('strict');

  before(async () => {
    policy = await startPolicyServer({ listen: 'inet:127.0.0.1:0', handler: createStrictInboundPolicy({ domain: DOMAIN, localPolicy: src.localPolicy, log: quiet }), deadlineMs: 2000, logger: quiet });
    pf = await startPostfix({
      main: {
        // The policy check first: permit_mynetworks before it would skip it for 127.0.0.1.
        smtpd_recipient_restrictions: `check_policy_service ${policy.address}, permit_mynetworks, reject_unauth_destination`,
      },
    });
  });

  after(async () => {
    await pf?.stop();
    await policy?.close();
  });

  it('pol=strict: legacy mail for bob is refused at RCPT with our text; nothing is delivered', async () => {
    src.answer = 'strict';
    const r = await pf.sendWithSwaks(['--to', 'bob@example.test', '--h-Subject', 'legacy under strict']);
    assert.equal(r.code, 24, 'swaks: every recipient refused');
    assert.equal(rcptReply(r, 'bob@example.test'), '554 5.7.1 <bob@example.test>: Recipient address rejected: <bob@example.test>: example.test accepts only DIME mail (pol=strict)');
    assert.equal(pf.messages('bob').length, 0);
  });

  it('pol=mixed: the same mail is accepted and delivered', async () => {
    src.answer = 'mixed';
    const r = await pf.sendWithSwaks(['--to', 'bob@example.test', '--h-Subject', 'legacy under mixed']);
    assert.equal(r.code, 0, r.output);
    assert.match((await pf.waitForDelivery('bob')).content, /^Subject: legacy under mixed$/m);
  });

  it('our policy unknown: 450 4.7.0 to the client, the mail is not delivered', async () => {
    src.answer = new DimeError('DNS_TIMEOUT', '_dx.example.test');
    const before = pf.messages('alice').length;
    const r = await pf.sendWithSwaks(['--to', 'alice@example.test', '--h-Subject', 'legacy while our record is unknown']);
    assert.equal(rcptReply(r, 'alice@example.test'), '450 4.7.0 <alice@example.test>: Recipient address rejected: cannot determine the DIME policy of example.test; try again later');
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(pf.messages('alice').length, before);
  });
});
