/**
 * A private Dovecot used only as Postfix's SASL authentication server (smtpd_sasl_type = dovecot):
 * a passwd-file of test users, an auth socket in a scratch directory, no mail protocols. Debian's
 * Cyrus SASL did not honour cyrus_sasl_config_path in our trials (it kept opening /etc/sasldb2), so
 * submission tests authenticate through Dovecot, the other server Postfix documents for SASL.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { waitFor } from './postfix.js';

const DOVECOT = '/usr/sbin/dovecot';

export function dovecotAvailable(): boolean {
  return fs.existsSync(DOVECOT);
}

export interface DovecotAuth {
  /** For main.cf: smtpd_sasl_path (with smtpd_sasl_type = dovecot). */
  socket: string;
  stop(): Promise<void>;
}

/** users: login (as the client sends it, e.g. alice@a.test) → password. */
export async function startDovecotAuth(users: Record<string, string>): Promise<DovecotAuth> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dime-dovecot-'));
  fs.chmodSync(dir, 0o755);
  for (const d of ['run', 'state']) fs.mkdirSync(path.join(dir, d));
  fs.writeFileSync(path.join(dir, 'users'), Object.entries(users).map(([u, p]) => `${u}:{PLAIN}${p}\n`).join(''), { mode: 0o644 });
  const socket = path.join(dir, 'auth');
  fs.writeFileSync(
    path.join(dir, 'dovecot.conf'),
    [
      'protocols =',
      `base_dir = ${dir}/run`,
      `state_dir = ${dir}/state`,
      `log_path = ${dir}/dovecot.log`,
      'ssl = no',
      'auth_mechanisms = plain login',
      'disable_plaintext_auth = no',
      'passdb {',
      '  driver = passwd-file',
      `  args = scheme=PLAIN username_format=%u ${dir}/users`,
      '}',
      'userdb {',
      '  driver = static',
      '  args = uid=nobody gid=nogroup home=/nonexistent',
      '}',
      'service auth {',
      `  unix_listener ${socket} {`,
      '    mode = 0666',
      '  }',
      '}',
      'default_login_user = nobody',
      'default_internal_user = nobody',
      '',
    ].join('\n'),
  );
  // Its own process group, so stop() and the exit hook take the auth and log children too.
  const child: ChildProcess = spawn(DOVECOT, ['-F', '-c', path.join(dir, 'dovecot.conf')], { detached: true, stdio: 'ignore' });
  const kill = (signal: NodeJS.Signals) => {
    try {
      if (child.pid) process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  };
  const onExit = () => kill('SIGKILL');
  process.on('exit', onExit);
  await waitFor(() => fs.existsSync(socket), 10_000, 'the Dovecot auth socket', () => {
    try {
      return fs.readFileSync(path.join(dir, 'dovecot.log'), 'utf8');
    } catch {
      return spawnSync(DOVECOT, ['-n', '-c', path.join(dir, 'dovecot.conf')], { encoding: 'utf8' }).stderr;
    }
  });
  return {
    socket,
    async stop() {
      process.off('exit', onExit);
      const exited = child.exitCode !== null ? Promise.resolve() : new Promise<void>((r) => child.once('exit', () => r()));
      kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
