/**
 * Property and fuzz tests for the policy and socketmap services.
 *
 *  1. Codecs: valid requests, netstrings and actions survive encode → decode unchanged, however
 *     the bytes are cut into chunks; arbitrary bytes either decode or fail with a registered
 *     DimeError code, never anything else.
 *  2. Live servers on loopback (fast-check drives real connections): for any byte stream, the
 *     server answers exactly the requests the codec decodes before the first error, in order,
 *     closes the connection without a reply at that error (or after answering, when the client
 *     half-closes), and keeps serving new connections afterwards.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { createLogger } from '../src/log.js';
import {
  MAX_ACTION_TEXT,
  MAX_POLICY_LINE,
  NetstringDecoder,
  PolicyRequestDecoder,
  SOCKETMAP_MAX_REQUEST,
  decodeSocketmapRequest,
  encodeNetstring,
  encodePolicyRequest,
  encodeSocketmapReply,
  encodeSocketmapRequest,
  formatPolicyAction,
  parsePolicyAction,
  startPolicyServer,
  startSocketmapServer,
  type PolicyAction,
  type PolicyHandler,
  type PolicyRequest,
  type ServiceServer,
  type SocketmapHandler,
} from '../src/policy/index.js';
import { connectClient } from './helpers/postfix.js';
import { attempt } from './helpers/typed-errors.js';

const quiet = createLogger({ level: 'silent' });

// ---------------------------------------------------------------------------------------------
// Generators

const attrName = fc.stringMatching(/^[a-z_][a-z0-9_.-]{0,20}$/);
/** Any text without the framing characters, including non-ASCII (SMTPUTF8). */
const attrValue = fc
  .oneof(fc.string({ unit: 'binary', maxLength: 40 }), fc.stringMatching(/^[a-z@=. \u00e9\u4e2d]{0,30}$/))
  .filter((v) => !/[\n\r\0]/.test(v));
const requestAttrs = fc.uniqueArray(fc.tuple(attrName, attrValue), { minLength: 1, maxLength: 12, selector: ([n]) => n });

/** Cut `bytes` at the given fractions. */
function chunks(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(bytes.subarray(prev, p));
    prev = p;
  }
  out.push(bytes.subarray(prev));
  return out;
}
const cutPoints = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 });

/** Bytes that are sometimes valid, sometimes garbage, sometimes oversize. */
const policyBytes = fc.oneof(
  { weight: 3, arbitrary: fc.array(requestAttrs, { maxLength: 4 }).map((rs) => Buffer.concat(rs.map((r) => encodePolicyRequest(r)))) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)) },
  {
    weight: 2,
    arbitrary: fc
      .array(fc.oneof(fc.constantFrom('a=1\n', 'b=2\n', '\n', 'junk\n', '=x\n', 'a=1\na=1\n', 'c=\0\n', 'd=e\r\n', 'x'), attrValue), { maxLength: 12 })
      .map((parts) => Buffer.from(parts.join(''), 'utf8')),
  },
  { weight: 1, arbitrary: fc.constantFrom(Buffer.from(`a=${'x'.repeat(MAX_POLICY_LINE + 5)}\n\n`), Buffer.from(`request=x\nb=${'y'.repeat(MAX_POLICY_LINE * 2)}`)) },
);

const netstringBytes = fc.oneof(
  {
    weight: 3,
    arbitrary: fc
      .array(fc.tuple(fc.stringMatching(/^[a-z]{1,10}$/), attrValue), { maxLength: 4 })
      .map((ls) => Buffer.concat(ls.map(([map, key]) => encodeSocketmapRequest({ map, key })))),
  },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 100 }).map((b) => Buffer.from(b)) },
  {
    weight: 2,
    arbitrary: fc
      .array(fc.constantFrom('3:a b,', '0:,', '4:nospace,', '03:a b,', '3:a b;', '9999999:', 'x', ':', ','), { maxLength: 6 })
      .map((parts) => Buffer.from(parts.join(''))),
  },
  { weight: 1, arbitrary: fc.constant(Buffer.from(`${SOCKETMAP_MAX_REQUEST + 1}:${'x'.repeat(100)}`)) },
);

const printable = fc.stringMatching(/^[\x20-\x7e]{1,60}$/).filter((t) => !/^[0-9]\./.test(t) && t.length <= MAX_ACTION_TEXT);
const statusDigits = fc.tuple(fc.integer({ min: 0, max: 999 }), fc.integer({ min: 0, max: 999 }));
const policyAction: fc.Arbitrary<PolicyAction> = fc.oneof(
  fc.constant<PolicyAction>({ action: 'DUNNO' }),
  fc.constant<PolicyAction>({ action: 'OK' }),
  fc
    .tuple(fc.constantFrom('REJECT' as const, 'DEFER' as const, 'DEFER_IF_PERMIT' as const, 'DEFER_IF_REJECT' as const), fc.option(statusDigits, { nil: undefined }), fc.option(printable, { nil: undefined }))
    .map(([verb, st, text]) => {
      const a: PolicyAction = { action: verb };
      if (st) a.status = `${verb === 'REJECT' ? 5 : 4}.${st[0]}.${st[1]}`;
      if (text) a.text = text;
      return a;
    }),
  fc.tuple(fc.integer({ min: 400, max: 599 }), fc.option(statusDigits, { nil: undefined }), printable).map(([code, st, text]) => {
    const a: PolicyAction = { action: 'REPLY', code, text };
    if (st) a.status = `${String(code)[0]}.${st[0]}.${st[1]}`;
    return a;
  }),
  fc.tuple(fc.stringMatching(/^[a-z][a-z0-9_-]{0,10}$/), fc.stringMatching(/^[\x21-\x7e]{0,30}$/)).map(([transport, nexthop]) => ({ action: 'FILTER', transport, nexthop }) as PolicyAction),
  fc.tuple(fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,20}$/), fc.stringMatching(/^[\x20-\x7e]{0,60}$/)).map(([name, value]) => ({ action: 'PREPEND', name, value }) as PolicyAction),
  fc.option(printable, { nil: undefined }).map((text) => (text ? { action: 'HOLD', text } : { action: 'HOLD' }) as PolicyAction),
  fc.tuple(fc.stringMatching(/^[a-z0-9.+-]{1,20}$/), fc.stringMatching(/^[a-z0-9.-]{1,20}$/)).map(([l, d]) => ({ action: 'REDIRECT', address: `${l}@${d}` }) as PolicyAction),
);

// ---------------------------------------------------------------------------------------------
// Oracles: what the codec says about a byte stream, when the client then half-closes.

interface Expectation<T> {
  items: T[];
  /** The stream hits a decode error: the server must close without answering it. */
  error: boolean;
}

function expectPolicy(bytes: Buffer): Expectation<PolicyRequest> {
  const d = new PolicyRequestDecoder();
  const items: PolicyRequest[] = [];
  const r = attempt(() => {
    d.feed(bytes);
    for (let q = d.next(); q; q = d.next()) items.push(q);
    const last = d.finish();
    if (last) items.push(last);
  });
  return { items, error: !r.ok };
}

function expectNetstrings(bytes: Buffer): Expectation<Buffer> {
  const d = new NetstringDecoder(SOCKETMAP_MAX_REQUEST);
  const items: Buffer[] = [];
  const r = attempt(() => {
    d.feed(bytes);
    for (let q = d.next(); q; q = d.next()) items.push(q);
    d.finish();
  });
  return { items, error: !r.ok };
}

// ---------------------------------------------------------------------------------------------

describe('codec properties', () => {
  it('policy requests survive encode → decode in any chunking', () => {
    fc.assert(
      fc.property(fc.array(requestAttrs, { minLength: 1, maxLength: 5 }), cutPoints, (requests, cuts) => {
        const bytes = Buffer.concat(requests.map((r) => encodePolicyRequest(r)));
        const d = new PolicyRequestDecoder();
        const got: [string, string][][] = [];
        for (const c of chunks(bytes, cuts)) {
          d.feed(c);
          for (let q = d.next(); q; q = d.next()) got.push([...q.attributes]);
        }
        assert.deepEqual(got, requests);
        assert.equal(d.pendingBytes, 0);
      }),
      { numRuns: 300 },
    );
  });

  it('arbitrary bytes decode or fail with a registered code, the same in any chunking', () => {
    fc.assert(
      fc.property(policyBytes, cutPoints, (bytes, cuts) => {
        const whole = expectPolicy(bytes);
        const d = new PolicyRequestDecoder();
        const items: PolicyRequest[] = [];
        const r = attempt(() => {
          for (const c of chunks(bytes, cuts)) {
            d.feed(c);
            for (let q = d.next(); q; q = d.next()) items.push(q);
          }
          const last = d.finish();
          if (last) items.push(last);
        });
        assert.equal(!r.ok, whole.error);
        assert.deepEqual(
          items.map((q) => [...q.attributes]),
          whole.items.map((q) => [...q.attributes]),
        );
      }),
      { numRuns: 400 },
    );
  });

  it('netstrings and socketmap requests survive encode → decode; arbitrary bytes fail typed', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.stringMatching(/^[\x21-\x7e]{1,12}$/), attrValue), { maxLength: 5 }), cutPoints, (lookups, cuts) => {
        const bytes = Buffer.concat(lookups.map(([map, key]) => encodeSocketmapRequest({ map, key })));
        const d = new NetstringDecoder(SOCKETMAP_MAX_REQUEST);
        const got: [string, string][] = [];
        for (const c of chunks(bytes, cuts)) {
          d.feed(c);
          for (let p = d.next(); p; p = d.next()) {
            const { map, key } = decodeSocketmapRequest(p);
            got.push([map, key]);
          }
        }
        assert.deepEqual(got, lookups);
      }),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(netstringBytes, (bytes) => {
        const e = expectNetstrings(bytes);
        for (const p of e.items) attempt(() => decodeSocketmapRequest(p));
      }),
      { numRuns: 400 },
    );
  });

  it('valid actions survive format → parse; arbitrary text parses to a sendable action or POLICY_BAD_ACTION', () => {
    fc.assert(
      fc.property(policyAction, (a) => {
        assert.deepEqual(parsePolicyAction(formatPolicyAction(a)), a);
      }),
      { numRuns: 500 },
    );
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 80 }), policyAction.map(formatPolicyAction).map((t) => t.replace(/ /, '\n'))), (text) => {
        const r = attempt(() => parsePolicyAction(text));
        if (r.ok) assert.equal(formatPolicyAction(parsePolicyAction(formatPolicyAction(r.value))), formatPolicyAction(r.value));
        else assert.equal(r.code, 'POLICY_BAD_ACTION');
      }),
      { numRuns: 500 },
    );
  });
});

// ---------------------------------------------------------------------------------------------

/** The fuzz handler's answer: deterministic, and it names the request so order is checked. */
function answerFor(r: PolicyRequest): PolicyAction {
  return { action: 'PREPEND', name: 'X-Fuzz', value: `${r.attributes.size} ${[...r.attributes.keys()].join(',').slice(0, 200)}` };
}

function policyReplies(received: Buffer): string[] {
  return [...received.toString('latin1').matchAll(/action=([^\n]*)\n\n/g)].map((m) => m[1]!);
}

function netstringReplies(received: Buffer): string[] {
  const e = expectNetstrings(received);
  assert.equal(e.error, false, `the server sent a broken netstring: ${JSON.stringify(received.toString('latin1'))}`);
  return e.items.map(String);
}

describe('live servers under fuzzed input', () => {
  let policy: ServiceServer;
  let socketmap: ServiceServer;
  const policyHandler: PolicyHandler = async (r) => answerFor(r);
  const socketmapHandler: SocketmapHandler = async (map, key) => (key.length % 2 === 0 ? { status: 'OK', value: `${map}:${key.length}` } : { status: 'NOTFOUND' });

  before(async () => {
    policy = await startPolicyServer({ listen: 'inet:127.0.0.1:0', handler: policyHandler, logger: quiet });
    socketmap = await startSocketmapServer({ listen: 'inet:127.0.0.1:0', handler: socketmapHandler, logger: quiet });
  });
  after(async () => {
    await Promise.all([policy.close(), socketmap.close()]);
  });

  async function exchange(port: number, bytes: Buffer, cuts: number[]): Promise<{ received: Buffer; how: string }> {
    const c = await connectClient(port);
    for (const part of chunks(bytes, cuts)) {
      c.write(part);
      await new Promise((r) => setImmediate(r));
    }
    // Half-close as Exim does: the server answers what it decoded, then closes (or closes at the error).
    c.end();
    const how = await c.waitClosed(5000);
    return { received: c.received, how };
  }

  it('policy: answers exactly what the codec decodes, in order, and closes at the first error', async () => {
    await fc.assert(
      fc.asyncProperty(policyBytes, cutPoints, async (bytes, cuts) => {
        const expected = expectPolicy(bytes);
        const { received } = await exchange(policy.port, bytes, cuts);
        assert.deepEqual(policyReplies(received), expected.items.map((r) => formatPolicyAction(answerFor(r))));
        assert.equal(received.toString('latin1'), expected.items.map((r) => `action=${formatPolicyAction(answerFor(r))}\n\n`).join(''), 'nothing but replies');
      }),
      { numRuns: 300 },
    );
    const c = await connectClient(policy.port);
    c.write(encodePolicyRequest([['request', 'smtpd_access_policy']]));
    await c.waitFor((b) => policyReplies(b).length === 1);
    assert.equal(c.state, 'open', 'the server still serves new connections');
    c.destroy();
  });

  it('socketmap: answers exactly the netstrings the codec decodes, and closes at the first error', async () => {
    await fc.assert(
      fc.asyncProperty(netstringBytes, cutPoints, async (bytes, cuts) => {
        const expected = expectNetstrings(bytes);
        const { received } = await exchange(socketmap.port, bytes, cuts);
        const want = await Promise.all(
          expected.items.map(async (p) => {
            const r = attempt(() => decodeSocketmapRequest(p));
            if (!r.ok) return 'PERM malformed request';
            return String(encodeSocketmapReply(await socketmapHandler(r.value.map, r.value.key, { signal: new AbortController().signal }))).replace(/^\d+:|,$/g, '');
          }),
        );
        assert.deepEqual(netstringReplies(received), want);
      }),
      { numRuns: 300 },
    );
    const c = await connectClient(socketmap.port);
    c.write(encodeNetstring(Buffer.from('transport x@y')));
    await c.waitFor((b) => netstringReplies(b).length === 1);
    c.destroy();
  });
});
