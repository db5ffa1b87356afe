/**
 * Exim has no milter or policy client; it reaches the sidecar with `${readsocket}`, which connects,
 * writes the request, shuts down its write side (FIN) and reads until EOF (spec §3). These tests
 * play exactly that client against both services, over TCP and a unix socket, including a slow
 * (asynchronous) decision after the FIN, which a Node server without allowHalfOpen would lose.
 *
 * The requests are what docs/policy.md's Exim snippets expand to.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../src/log.js';
import { startPolicyServer, startSocketmapServer, staticDarkTable, type PolicyHandler, type ServiceServer } from '../src/policy/index.js';

const quiet = createLogger({ level: 'silent' });

/** Exim's ${readsocket} with shutdown=yes (the default): write, FIN, read to EOF, with a timeout. */
function readsocket(target: { port: number } | { path: string }, request: string, timeoutMs = 3000): Promise<{ reply: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const socket = 'port' in target ? net.connect({ port: target.port, host: '127.0.0.1', allowHalfOpen: true }) : net.connect({ path: target.path, allowHalfOpen: true });
    let reply = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`readsocket timed out after ${timeoutMs} ms (Exim would use its fail string); got ${JSON.stringify(reply)}`));
    }, timeoutMs);
    socket.setEncoding('latin1');
    socket.on('connect', () => {
      socket.write(request);
      socket.end(); // shutdown(fd, SHUT_WR)
    });
    socket.on('data', (d: string) => (reply += d));
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ reply, ms: Date.now() - started });
    });
  });
}

/** What the ACL snippet in docs/policy.md sends for one recipient, after Exim's expansion. */
function eximPolicyRequest(recipient: string, final = '\n'): string {
  return ['request=smtpd_access_policy', 'protocol_state=RCPT', 'protocol_name=ESMTP', 'client_address=192.0.2.1', 'sender=sender@example.test', `recipient=${recipient}`, ''].join('\n') + final;
}

describe('Exim ${readsocket} against the policy and socketmap services', () => {
  let policy: ServiceServer;
  let policyUnix: ServiceServer;
  let socketmap: ServiceServer;
  let dir: string;

  const handler: PolicyHandler = async (r) => {
    if (r.recipient === 'slow@example.org') {
      // Answer only well after the client's FIN has arrived.
      await new Promise((resolve) => setTimeout(resolve, 300));
      return { action: 'PREPEND', name: 'X-Dime-Capable-Rcpt', value: r.recipient };
    }
    if (r.recipient === 'reject@example.test') return { action: 'REJECT', status: '5.7.1', text: 'DIME says no' };
    return { action: 'DUNNO' };
  };

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dime-exim-'));
    policy = await startPolicyServer({ listen: 'inet:127.0.0.1:0', handler, logger: quiet });
    policyUnix = await startPolicyServer({ listen: `unix:${path.join(dir, 'policy.sock')}`, handler, logger: quiet });
    socketmap = await startSocketmapServer({
      listen: 'inet:127.0.0.1:0',
      handler: staticDarkTable({ domains: ['example.org'], route: 'dmtp:[127.0.0.1]:10026' }),
      logger: quiet,
    });
  });
  after(async () => {
    await Promise.all([policy.close(), policyUnix.close(), socketmap.close()]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('gets the policy answer and EOF for a complete request, without waiting for any timeout', async () => {
    const { reply, ms } = await readsocket(policy, eximPolicyRequest('alice@example.test'));
    assert.equal(reply, 'action=DUNNO\n\n');
    assert.ok(ms < 1000, `answered and closed in ${ms} ms`);
    assert.equal((await readsocket(policy, eximPolicyRequest('reject@example.test'))).reply, 'action=REJECT 5.7.1 DIME says no\n\n');
  });

  it('answers a hand-written request that lacks the final empty line or even the last newline', async () => {
    assert.equal((await readsocket(policy, eximPolicyRequest('reject@example.test', ''))).reply, 'action=REJECT 5.7.1 DIME says no\n\n');
    assert.equal((await readsocket(policy, 'recipient=reject@example.test')).reply, 'action=REJECT 5.7.1 DIME says no\n\n');
  });

  it('delivers an answer decided asynchronously after the client half-closed', async () => {
    const { reply, ms } = await readsocket(policy, eximPolicyRequest('slow@example.org'));
    assert.equal(reply, 'action=PREPEND X-Dime-Capable-Rcpt: slow@example.org\n\n');
    assert.ok(ms >= 300, `the answer came after the handler's delay (${ms} ms)`);
  });

  it('works the same over a unix socket (${readsocket{/path/policy.sock}…})', async () => {
    assert.equal((await readsocket({ path: path.join(dir, 'policy.sock') }, eximPolicyRequest('slow@example.org'))).reply, 'action=PREPEND X-Dime-Capable-Rcpt: slow@example.org\n\n');
  });

  it('answers netstring socketmap lookups (the router snippet) and closes', async () => {
    const lookup = (address: string) => {
      const payload = `transport ${address}`;
      return `${Buffer.byteLength(payload)}:${payload},`; // ${strlen:…}:…, in Exim
    };
    assert.equal((await readsocket(socketmap, lookup('bob@example.org'))).reply, '25:OK dmtp:[127.0.0.1]:10026,');
    assert.equal((await readsocket(socketmap, lookup('alice@example.test'))).reply, '9:NOTFOUND ,');
  });

  it('sends nothing for a malformed request and closes, so Exim falls back to its fail string', async () => {
    assert.equal((await readsocket(policy, 'this is not a policy request\n\n')).reply, '');
    assert.equal((await readsocket(socketmap, 'transport bob@example.org')).reply, '');
  });

  it('keeps the connection open when the client does not half-close (Postfix-style): Exim needs shutdown=yes', async () => {
    const socket = net.connect({ port: policy.port, host: '127.0.0.1', allowHalfOpen: true });
    let reply = '';
    let closed = false;
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => (reply += d));
    socket.on('close', () => (closed = true));
    socket.write(eximPolicyRequest('alice@example.test'));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(reply, 'action=DUNNO\n\n');
    assert.equal(closed, false);
    socket.destroy();
  });
});
