/**
 * The policy delegation and socketmap codecs, the static dark-domain table, and the servers'
 * session behaviour on loopback: several and pipelined requests per connection, handler failures
 * and deadlines, bad input (no reply, connection closed, server goes on), idle timeout, close().
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { createLogger } from '../src/log.js';
import {
  DEFAULT_FAILURE_ACTION,
  MAX_ACTION_TEXT,
  MAX_POLICY_ATTRIBUTES,
  MAX_POLICY_LINE,
  MAX_POLICY_REQUEST,
  NetstringDecoder,
  PolicyRequestDecoder,
  SOCKETMAP_MAX_REPLY,
  SOCKETMAP_MAX_REQUEST,
  decodeNetstrings,
  decodePolicyReply,
  decodePolicyRequests,
  decodeSocketmapReply,
  decodeSocketmapRequest,
  domainOfKey,
  encodeNetstring,
  encodePolicyReply,
  encodePolicyRequest,
  encodeSocketmapReply,
  encodeSocketmapRequest,
  formatPolicyAction,
  parsePolicyAction,
  startPolicyServer,
  startSocketmapServer,
  staticDarkTable,
  type PolicyAction,
  type PolicyHandler,
  type PolicyRequest,
  type ServiceServer,
  type SocketmapHandler,
} from '../src/policy/index.js';
import { connectClient } from './helpers/postfix.js';
import { expectCode } from './helpers/typed-errors.js';
import { formatSocketSpec, parseSocketSpec } from '../src/net/socket.js';

const quiet = createLogger({ level: 'silent' });
const ctx = { signal: new AbortController().signal };

function capture() {
  const lines: any[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(JSON.parse(String(chunk)));
      done();
    },
  });
  return { lines, logger: createLogger({ destination, level: 'debug' }) };
}

const POSTFIX_REQUEST = [
  'request=smtpd_access_policy',
  'protocol_state=RCPT',
  'protocol_name=ESMTP',
  'client_address=127.0.0.1',
  'client_name=localhost',
  'helo_name=client.example.test',
  'sender=sender@example.test',
  'recipient=bob@example.org',
  'recipient_count=0',
  'queue_id=',
  'instance=6ecb.6b02cd8c.ac95f.0',
  'size=0',
  'policy_context=',
  '',
  '',
].join('\n');

function req(attrs: Record<string, string>): Buffer {
  return encodePolicyRequest(Object.entries(attrs));
}

describe('policy attribute codec', () => {
  it('decodes a Postfix request, keeping unknown attributes and empty values', () => {
    const [r, ...rest] = decodePolicyRequests(Buffer.from(POSTFIX_REQUEST));
    assert.equal(rest.length, 0);
    assert.equal(r!.request, 'smtpd_access_policy');
    assert.equal(r!.protocolState, 'RCPT');
    assert.equal(r!.recipient, 'bob@example.org');
    assert.equal(r!.sender, 'sender@example.test');
    assert.equal(r!.instance, '6ecb.6b02cd8c.ac95f.0');
    assert.equal(r!.queueId, '');
    assert.equal(r!.get('policy_context'), '');
    assert.equal(r!.get('helo_name'), 'client.example.test');
    assert.equal(r!.attributes.size, 13);
  });

  it('takes the value after the first "=", drops a CR before LF, decodes UTF-8', () => {
    const [r] = decodePolicyRequests(Buffer.from('ccert_subject=CN=a=b\r\nrecipient=j\u00f6rg@b\u00fccher.example\r\n\r\n', 'utf8'));
    assert.equal(r!.get('ccert_subject'), 'CN=a=b');
    assert.equal(r!.recipient, 'j\u00f6rg@b\u00fccher.example');
  });

  it('decodes several requests from one buffer and the same requests fed one byte at a time', () => {
    const bytes = Buffer.concat([Buffer.from(POSTFIX_REQUEST), req({ request: 'smtpd_access_policy', protocol_state: 'DATA' }), Buffer.from(POSTFIX_REQUEST)]);
    const whole = decodePolicyRequests(bytes).map((r) => [...r.attributes]);
    assert.equal(whole.length, 3);
    const d = new PolicyRequestDecoder();
    const bytewise: [string, string][][] = [];
    for (const b of bytes) {
      d.feed(Uint8Array.of(b));
      for (let r = d.next(); r; r = d.next()) bytewise.push([...r.attributes]);
    }
    assert.deepEqual(bytewise, whole);
    assert.equal(d.pendingBytes, 0);
  });

  it('finish() returns a request left without its empty line or final newline (Exim written by hand)', () => {
    for (const text of ['recipient=a@b\n', 'recipient=a@b', 'request=x\nrecipient=a@b']) {
      const d = new PolicyRequestDecoder();
      d.feed(Buffer.from(text));
      assert.equal(d.next(), null, text);
      const r = d.finish();
      assert.equal(r?.recipient, 'a@b', text);
      assert.equal(d.finish(), null);
    }
    const empty = new PolicyRequestDecoder();
    assert.equal(empty.finish(), null);
  });

  it('rejects malformed lines with typed errors', () => {
    const cases: [string, string][] = [
      ['no_equals_sign\n\n', 'POLICY_BAD_ATTRIBUTE'],
      ['=value\n\n', 'POLICY_BAD_ATTRIBUTE'],
      ['\n', 'POLICY_BAD_ATTRIBUTE'],
      ['bad name=x\n\n', 'POLICY_BAD_ATTRIBUTE'],
      ['a=1\0\n\n', 'POLICY_BAD_ATTRIBUTE'],
      ['a=1\na=2\n\n', 'POLICY_DUPLICATE_ATTRIBUTE'],
    ];
    for (const [text, code] of cases) expectCode(() => decodePolicyRequests(Buffer.from(text)), code as never, JSON.stringify(text));
  });

  it('enforces the line, attribute-count and request-size limits as bytes arrive', () => {
    const d = new PolicyRequestDecoder();
    d.feed(Buffer.from(`a=${'x'.repeat(MAX_POLICY_LINE)}`));
    expectCode(() => d.next(), 'POLICY_LINE_TOO_LONG', 'an endless line is refused before its newline');
    const exact = `a=${'x'.repeat(MAX_POLICY_LINE - 2)}\n\n`;
    assert.equal(decodePolicyRequests(Buffer.from(exact))[0]!.get('a')!.length, MAX_POLICY_LINE - 2);

    const many = Array.from({ length: MAX_POLICY_ATTRIBUTES + 1 }, (_, i) => `a${i}=v\n`).join('') + '\n';
    expectCode(() => decodePolicyRequests(Buffer.from(many)), 'POLICY_TOO_MANY_ATTRIBUTES', 'attribute count');
    const enough = Array.from({ length: MAX_POLICY_ATTRIBUTES }, (_, i) => `a${i}=v\n`).join('') + '\n';
    assert.equal(decodePolicyRequests(Buffer.from(enough))[0]!.attributes.size, MAX_POLICY_ATTRIBUTES);

    const line = `x=${'v'.repeat(1000)}\n`;
    const big = Array.from({ length: Math.ceil(MAX_POLICY_REQUEST / line.length) + 1 }, (_, i) => `a${i}${line.slice(1)}`).join('') + '\n';
    expectCode(() => decodePolicyRequests(Buffer.from(big)), 'POLICY_REQUEST_TOO_LARGE', 'request size');
  });

  it('encodes requests and refuses values that would break the framing', () => {
    assert.equal(req({ request: 'smtpd_access_policy', recipient: 'a@b' }).toString(), 'request=smtpd_access_policy\nrecipient=a@b\n\n');
    expectCode(() => req({ recipient: 'a@b\nrecipient=evil@x' }), 'POLICY_BAD_ATTRIBUTE', 'newline in a value');
    expectCode(() => encodePolicyRequest([]), 'POLICY_BAD_ATTRIBUTE', 'empty request');
  });
});

describe('policy actions', () => {
  const cases: [PolicyAction, string][] = [
    [{ action: 'DUNNO' }, 'DUNNO'],
    [{ action: 'OK' }, 'OK'],
    [{ action: 'REJECT' }, 'REJECT'],
    [{ action: 'REJECT', status: '5.7.1', text: 'DIME: no plaintext for this recipient' }, 'REJECT 5.7.1 DIME: no plaintext for this recipient'],
    [{ action: 'DEFER', text: 'later' }, 'DEFER later'],
    [DEFAULT_FAILURE_ACTION, 'DEFER_IF_PERMIT 4.7.1 DIME policy service failure, try again later'],
    [{ action: 'DEFER_IF_REJECT', status: '4.7.0' }, 'DEFER_IF_REJECT 4.7.0'],
    [{ action: 'REPLY', code: 550, status: '5.1.1', text: 'no such user' }, '550 5.1.1 no such user'],
    [{ action: 'REPLY', code: 421, text: 'closing' }, '421 closing'],
    [{ action: 'FILTER', transport: 'dmtp', nexthop: '[127.0.0.1]:10026' }, 'FILTER dmtp:[127.0.0.1]:10026'],
    [{ action: 'FILTER', transport: 'dmtp', nexthop: '' }, 'FILTER dmtp:'],
    [{ action: 'PREPEND', name: 'X-Dime-Capable-Rcpt', value: 'bob@example.org' }, 'PREPEND X-Dime-Capable-Rcpt: bob@example.org'],
    [{ action: 'HOLD', text: 'quarantined by DIME' }, 'HOLD quarantined by DIME'],
    [{ action: 'REDIRECT', address: 'quarantine@example.test' }, 'REDIRECT quarantine@example.test'],
  ];

  it('formats each action exactly and parses it back', () => {
    for (const [action, text] of cases) {
      assert.equal(formatPolicyAction(action), text);
      assert.deepEqual(parsePolicyAction(text), action, text);
      assert.equal(encodePolicyReply(action).toString(), `action=${text}\n\n`);
      assert.equal(decodePolicyReply(encodePolicyReply(action)), text);
    }
  });

  it('parses verbs case-insensitively, as Postfix does', () => {
    assert.deepEqual(parsePolicyAction('defer_if_permit 4.7.1 try later'), { action: 'DEFER_IF_PERMIT', status: '4.7.1', text: 'try later' });
    assert.deepEqual(parsePolicyAction('dunno'), { action: 'DUNNO' });
  });

  it('refuses anything that cannot be sent safely', () => {
    const bad: [PolicyAction | string, string][] = [
      [{ action: 'REJECT', text: 'line one\naction=OK' }, 'newline in text'],
      [{ action: 'REJECT', text: 'tab\there' }, 'control character'],
      [{ action: 'REJECT', text: 'caf\u00e9' }, 'non-ASCII text'],
      [{ action: 'REJECT', text: 'x'.repeat(MAX_ACTION_TEXT + 1) }, 'text too long'],
      [{ action: 'REJECT', status: '4.7.1' }, 'REJECT with a 4.x.x status'],
      [{ action: 'DEFER', status: '5.7.1' }, 'DEFER with a 5.x.x status'],
      [{ action: 'DEFER', text: '5.7.1 sneaky' }, 'a status hidden in the text'],
      [{ action: 'HOLD', status: '4.7.1' }, 'HOLD takes no status'],
      [{ action: 'REPLY', code: 250, text: 'fine' }, '2xx reply code'],
      [{ action: 'REPLY', code: 600, text: 'x' }, 'reply code out of range'],
      [{ action: 'REPLY', code: 450, status: '5.1.1', text: 'x' }, 'status class differs from the code'],
      [{ action: 'REPLY', code: 550, text: '' }, 'a numeric reply without text'],
      [{ action: 'FILTER', transport: 'dm tp', nexthop: 'x' }, 'space in the transport'],
      [{ action: 'FILTER', transport: 'dmtp', nexthop: 'a b' }, 'space in the nexthop'],
      [{ action: 'PREPEND', name: 'X-Bad:Name', value: 'v' }, 'colon in a header name'],
      [{ action: 'PREPEND', name: 'X-Ok', value: 'v\r\nBcc: evil@x' }, 'header injection'],
      [{ action: 'REDIRECT', address: 'not an address' }, 'REDIRECT without an address'],
      [{ action: 'NOPE' } as unknown as PolicyAction, 'unknown verb'],
      ['FOO bar', 'unknown verb (text)'],
      ['DUNNO now', 'DUNNO with an argument'],
      ['FILTER nocolon', 'FILTER without a colon'],
      ['', 'empty'],
    ];
    for (const [a, what] of bad) {
      expectCode(() => (typeof a === 'string' ? parsePolicyAction(a) : formatPolicyAction(a)), 'POLICY_BAD_ACTION', what);
    }
  });
});

describe('netstring and socketmap codecs', () => {
  it('encodes and decodes netstrings, whole and byte by byte', () => {
    assert.equal(encodeNetstring(Buffer.from('transport bob@example.org')).toString(), '25:transport bob@example.org,');
    assert.equal(encodeNetstring(Buffer.alloc(0)).toString(), '0:,');
    const bytes = Buffer.from('25:transport bob@example.org,0:,3:a,b,');
    assert.deepEqual(decodeNetstrings(bytes).map(String), ['transport bob@example.org', '', 'a,b']);
    const d = new NetstringDecoder(100);
    const got: string[] = [];
    for (const b of bytes) {
      d.feed(Uint8Array.of(b));
      for (let p = d.next(); p; p = d.next()) got.push(p.toString());
    }
    assert.deepEqual(got, ['transport bob@example.org', '', 'a,b']);
    assert.equal(d.finish(), null);
  });

  it('rejects malformed netstrings with typed errors, oversize ones before the payload arrives', () => {
    const cases: [string, string][] = [
      ['x:abc,', 'NETSTRING_BAD_LENGTH'],
      [':abc,', 'NETSTRING_BAD_LENGTH'],
      ['03:abc,', 'NETSTRING_BAD_LENGTH'],
      ['-1:,', 'NETSTRING_BAD_LENGTH'],
      ['3:abcd', 'NETSTRING_NO_COMMA'],
      ['1234567', 'NETSTRING_TOO_LARGE'],
      ['3:ab', 'NETSTRING_TRUNCATED'],
    ];
    for (const [text, code] of cases) expectCode(() => decodeNetstrings(Buffer.from(text), 1000), code as never, text);
    const d = new NetstringDecoder(SOCKETMAP_MAX_REQUEST);
    d.feed(Buffer.from(`${SOCKETMAP_MAX_REQUEST + 1}:`));
    expectCode(() => d.next(), 'NETSTRING_TOO_LARGE', 'length above the limit, no payload yet');
  });

  it('decodes socketmap requests (the key may contain spaces) and encodes them', () => {
    assert.deepEqual(decodeSocketmapRequest(Buffer.from('transport bob@example.org')), { map: 'transport', key: 'bob@example.org' });
    assert.deepEqual(decodeSocketmapRequest(Buffer.from('transport "john doe"@example.org')), { map: 'transport', key: '"john doe"@example.org' });
    assert.deepEqual(decodeSocketmapRequest(Buffer.from('transport ')), { map: 'transport', key: '' });
    assert.equal(encodeSocketmapRequest({ map: 'transport', key: '*' }).toString(), '11:transport *,');
    expectCode(() => decodeSocketmapRequest(Buffer.from('transport')), 'SOCKETMAP_BAD_REQUEST', 'no space');
    expectCode(() => decodeSocketmapRequest(Buffer.from(' key')), 'SOCKETMAP_BAD_REQUEST', 'empty map name');
    expectCode(() => decodeSocketmapRequest(Buffer.from('map a\0b')), 'SOCKETMAP_BAD_REQUEST', 'NUL');
  });

  it('encodes the five replies exactly as socketmap_table(5) specifies', () => {
    assert.equal(encodeSocketmapReply({ status: 'OK', value: 'dmtp:[127.0.0.1]:10026' }).toString(), '25:OK dmtp:[127.0.0.1]:10026,');
    assert.equal(encodeSocketmapReply({ status: 'NOTFOUND' }).toString(), '9:NOTFOUND ,');
    assert.equal(encodeSocketmapReply({ status: 'TEMP', reason: 'resolver down' }).toString(), '18:TEMP resolver down,');
    assert.equal(encodeSocketmapReply({ status: 'TIMEOUT', reason: '' }).toString(), '8:TIMEOUT ,');
    assert.equal(encodeSocketmapReply({ status: 'PERM', reason: 'no such map' }).toString(), '16:PERM no such map,');
    assert.deepEqual(decodeSocketmapReply(Buffer.from('OK dmtp:')), { status: 'OK', value: 'dmtp:' });
    assert.deepEqual(decodeSocketmapReply(Buffer.from('NOTFOUND')), { status: 'NOTFOUND' });
    expectCode(() => decodeSocketmapReply(Buffer.from('MAYBE x')), 'SOCKETMAP_BAD_REPLY', 'unknown status');
  });

  it('refuses replies Postfix would misread or reject', () => {
    expectCode(() => encodeSocketmapReply({ status: 'OK', value: 'a\0b' }), 'SOCKETMAP_BAD_REPLY', 'NUL in a value');
    expectCode(() => encodeSocketmapReply({ status: 'TEMP', reason: 'a\nb' }), 'SOCKETMAP_BAD_REPLY', 'newline in a reason');
    expectCode(() => encodeSocketmapReply({ status: 'OK', value: 'x'.repeat(SOCKETMAP_MAX_REPLY) }), 'SOCKETMAP_BAD_REPLY', 'too long');
    assert.equal(encodeSocketmapReply({ status: 'OK', value: 'x'.repeat(SOCKETMAP_MAX_REPLY - 3) }).length, SOCKETMAP_MAX_REPLY + 8);
    expectCode(() => encodeSocketmapReply({ status: 'MAYBE' } as never), 'SOCKETMAP_BAD_REPLY', 'unknown status');
  });
});

describe('static dark-domain table', () => {
  const table = staticDarkTable({ domains: ['Example.ORG.', 'dark.example'], route: 'dmtp:[127.0.0.1]:10026' });

  it('routes addresses and bare domains of the dark domains, case-insensitively', async () => {
    for (const key of ['bob@example.org', 'BOB@Example.Org', 'user+tag@example.org', '"john doe"@example.org', 'example.org', 'x@dark.example.']) {
      assert.deepEqual(await table('transport', key, ctx), { status: 'OK', value: 'dmtp:[127.0.0.1]:10026' }, key);
    }
  });

  it('answers NOTFOUND for everything else, including subdomains and Postfix\'s "*" probe', async () => {
    for (const key of ['alice@example.test', 'bob@sub.example.org', 'example.org.evil', '*', '', 'bob@example.org@evil.test']) {
      assert.deepEqual(await table('transport', key, ctx), { status: 'NOTFOUND' }, key);
    }
  });

  it('answers PERM for a map name it does not serve, so a main.cf typo is loud', async () => {
    assert.equal((await table('transports', 'bob@example.org', ctx)).status, 'PERM');
  });

  it('validates its configuration', () => {
    expectCode(() => staticDarkTable({ domains: ['not a domain'] }), 'USAGE', 'bad domain');
    expectCode(() => staticDarkTable({ domains: [], route: 'no-colon' }), 'USAGE', 'bad route');
    expectCode(() => staticDarkTable({ domains: [], route: 'dmtp:a b' }), 'USAGE', 'space in route');
    assert.equal(domainOfKey('A@B.Example.'), 'b.example');
  });
});

describe('listen specs', () => {
  it('parses and formats inet and unix endpoints', () => {
    assert.deepEqual(parseSocketSpec('inet:127.0.0.1:9998'), { kind: 'inet', host: '127.0.0.1', port: 9998 });
    assert.deepEqual(parseSocketSpec('inet:[::1]:9997'), { kind: 'inet', host: '::1', port: 9997 });
    assert.deepEqual(parseSocketSpec('inet:localhost:0'), { kind: 'inet', host: 'localhost', port: 0 });
    assert.deepEqual(parseSocketSpec('unix:/run/dime/policy.sock'), { kind: 'unix', path: '/run/dime/policy.sock' });
    assert.equal(formatSocketSpec({ kind: 'inet', host: '::1', port: 1 }), 'inet:[::1]:1');
    for (const bad of ['127.0.0.1:9998', 'inet:127.0.0.1', 'inet:127.0.0.1:70000', 'inet:::1:9998', 'inet:[nope]:1', 'unix:', 'tcp:x:1', `unix:/${'x'.repeat(200)}`]) {
      expectCode(() => parseSocketSpec(bad), 'SOCKET_BAD_SPEC', bad);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Live servers on loopback.

const servers: ServiceServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

async function policyServer(handler: PolicyHandler, extra: { deadlineMs?: number; idleMs?: number; logger?: ReturnType<typeof createLogger> } = {}) {
  const s = await startPolicyServer({ listen: 'inet:127.0.0.1:0', handler, logger: quiet, ...extra });
  servers.push(s);
  return s;
}

/** Count `action=...\n\n` replies in the bytes so far. */
function replies(received: Buffer): string[] {
  return [...received.toString('latin1').matchAll(/action=([^\n]*)\n\n/g)].map((m) => m[1]!);
}

describe('policy server sessions', () => {
  const echo: PolicyHandler = async (r: PolicyRequest) =>
    r.recipient === 'reject@example.test' ? { action: 'REJECT', status: '5.7.1', text: `no ${r.recipient}` } : { action: 'PREPEND', name: 'X-Seen', value: r.recipient ?? 'none' };

  it('answers several requests on one connection, one at a time and pipelined, in order', async () => {
    const s = await policyServer(echo);
    const c = await connectClient(s.port);
    c.write(req({ request: 'smtpd_access_policy', recipient: 'a@example.test' }));
    await c.waitFor((b) => replies(b).length === 1);
    c.write(req({ request: 'smtpd_access_policy', recipient: 'reject@example.test' }));
    await c.waitFor((b) => replies(b).length === 2);
    // Pipelined: three requests in one write, the last split across two writes.
    const three = Buffer.concat([req({ recipient: 'b@x' }), req({ recipient: 'c@x' }), req({ recipient: 'd@x' })]);
    c.write(three.subarray(0, three.length - 5));
    await new Promise((r) => setTimeout(r, 20));
    c.write(three.subarray(three.length - 5));
    const all = replies(await c.waitFor((b) => replies(b).length === 5));
    assert.deepEqual(all, ['PREPEND X-Seen: a@example.test', 'REJECT 5.7.1 no reject@example.test', 'PREPEND X-Seen: b@x', 'PREPEND X-Seen: c@x', 'PREPEND X-Seen: d@x']);
    assert.equal(c.state, 'open', 'Postfix connections stay open between requests');
    c.destroy();
  });

  it('answers the failure action when the handler throws, misses its deadline, or returns an unsendable action', async () => {
    const { lines, logger } = capture();
    let aborted = false;
    const s = await policyServer(
      async (r, { signal }) => {
        if (r.recipient === 'throw@x') throw new Error('resolver exploded');
        if (r.recipient === 'slow@x') {
          await new Promise((resolve) => signal.addEventListener('abort', resolve));
          aborted = true;
          return { action: 'OK' };
        }
        if (r.recipient === 'bad@x') return { action: 'REJECT', text: 'two\nlines' };
        return { action: 'DUNNO' };
      },
      { deadlineMs: 150, logger },
    );
    const c = await connectClient(s.port);
    c.write(Buffer.concat([req({ recipient: 'throw@x' }), req({ recipient: 'slow@x' }), req({ recipient: 'bad@x' }), req({ recipient: 'fine@x' })]));
    const got = replies(await c.waitFor((b) => replies(b).length === 4));
    const failure = formatPolicyAction(DEFAULT_FAILURE_ACTION);
    assert.deepEqual(got, [failure, failure, failure, 'DUNNO']);
    assert.ok(aborted, 'the handler saw its signal abort at the deadline');
    const warnings = lines.filter((l) => l.level === 40);
    assert.deepEqual(
      warnings.map((w) => w.code ?? null),
      [null, 'SERVICE_DEADLINE', 'POLICY_BAD_ACTION'],
    );
    c.destroy();
  });

  it('closes the connection without a reply on bad input, and goes on serving others', async () => {
    const s = await policyServer(echo);
    const inputs = ['garbage without equals\n\n', `a=${'x'.repeat(MAX_POLICY_LINE + 10)}`, 'a=1\na=2\n\n', '\n'];
    for (const bad of inputs) {
      const c = await connectClient(s.port);
      c.write(bad);
      const how = await c.waitClosed();
      assert.notEqual(how, 'open');
      assert.equal(replies(c.received).length, 0, `no reply to ${JSON.stringify(bad.slice(0, 30))}`);
    }
    // A good request before the garbage on the same connection is still answered.
    const c = await connectClient(s.port);
    c.write(Buffer.concat([req({ recipient: 'first@x' }), Buffer.from('junk\n\n')]));
    await c.waitClosed();
    assert.deepEqual(replies(c.received), ['PREPEND X-Seen: first@x']);
    const ok = await connectClient(s.port);
    ok.write(req({ recipient: 'after@x' }));
    assert.deepEqual(replies(await ok.waitFor((b) => replies(b).length === 1)), ['PREPEND X-Seen: after@x']);
    ok.destroy();
  });

  it('closes idle connections', async () => {
    const s = await policyServer(echo, { idleMs: 200, deadlineMs: 100 });
    const c = await connectClient(s.port);
    const t0 = Date.now();
    await c.waitClosed(3000);
    assert.ok(Date.now() - t0 >= 150, 'not before the idle timeout');
  });

  it('close() lets the request in progress finish, then ends every connection', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const s = await startPolicyServer({
      listen: 'inet:127.0.0.1:0',
      logger: quiet,
      handler: async () => {
        await gate;
        return { action: 'OK' };
      },
    });
    const busy = await connectClient(s.port);
    const idle = await connectClient(s.port);
    busy.write(req({ recipient: 'a@x' }));
    await new Promise((r) => setTimeout(r, 50));
    const closing = s.close();
    await idle.waitClosed();
    release();
    await closing;
    assert.deepEqual(replies(busy.received), ['OK']);
    assert.notEqual(busy.state, 'open');
    assert.equal(s.connections, 0);
  });

  it('refuses a deadline that is not shorter than the idle timeout, and an unsendable failure action', async () => {
    await assert.rejects(startPolicyServer({ listen: 'inet:127.0.0.1:0', deadlineMs: 5000, idleMs: 5000, logger: quiet }), { code: 'USAGE' });
    await assert.rejects(startPolicyServer({ listen: 'inet:127.0.0.1:0', failureAction: { action: 'DEFER', text: 'a\nb' }, logger: quiet }), { code: 'POLICY_BAD_ACTION' });
  });
});

describe('socketmap server sessions', () => {
  function netstrings(b: Buffer): string[] {
    try {
      return decodeNetstrings(b).map(String);
    } catch {
      return [];
    }
  }

  it('answers lookups in order on one connection, TEMP on failure or deadline, PERM for a malformed request', async () => {
    const dark = staticDarkTable({ domains: ['example.org'], route: 'dmtp:[127.0.0.1]:10026' });
    const handler: SocketmapHandler = async (map, key, c) => {
      if (key === 'throw@x') throw new Error('boom');
      if (key === 'slow@x') await new Promise((r) => setTimeout(r, 1000));
      return dark(map, key, c);
    };
    const s = await startSocketmapServer({ listen: 'inet:127.0.0.1:0', handler, deadlineMs: 150, logger: quiet });
    servers.push(s);
    const c = await connectClient(s.port);
    const lookups = ['bob@example.org', 'alice@example.test', 'throw@x', 'slow@x', '*'];
    c.write(Buffer.concat(lookups.map((key) => encodeSocketmapRequest({ map: 'transport', key }))));
    c.write(encodeNetstring(Buffer.from('no-space-here')));
    const got = netstrings(await c.waitFor((b) => netstrings(b).length === 6));
    assert.deepEqual(got, ['OK dmtp:[127.0.0.1]:10026', 'NOTFOUND ', 'TEMP lookup failed', 'TEMP lookup deadline passed', 'NOTFOUND ', 'PERM malformed request']);
    assert.equal(c.state, 'open');
    c.write('5:abc');
    c.write('defgh');
    await c.waitClosed();
    assert.equal(netstrings(c.received).length, 6, 'no reply to a broken netstring');
    const again = await connectClient(s.port);
    again.write(encodeSocketmapRequest({ map: 'transport', key: 'carol@example.org' }));
    assert.deepEqual(netstrings(await again.waitFor((b) => netstrings(b).length === 1)), ['OK dmtp:[127.0.0.1]:10026']);
    again.destroy();
  });
});
