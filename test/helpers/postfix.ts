/**
 * A private, throwaway Postfix for end-to-end tests (shared/spec/milter-and-postfix.md §4).
 *
 *   const pf = await startPostfix({ main: { smtpd_milters: 'inet:127.0.0.1:8899' }, master: ['dmtp unix - - n - - lmtp'] });
 *   const r = await pf.sendWithSwaks(['--to', 'alice@example.test']);   // r.code, r.output, r.replies
 *   const msg = await pf.waitForDelivery('alice');                       // the delivered message text
 *   await pf.stop();                                                     // in after(); also runs on exit
 *
 * Every instance is private, so test files can run in parallel: its own config, queue and data
 * directories and maillog under one scratch directory, an SMTP port chosen at run time on
 * 127.0.0.1, and mailboxes delivered by virtual(8) into Maildirs under the scratch directory.
 * Nothing is delivered off the machine: default_transport and relay_transport are error(8), and
 * only transports a test defines in `master` (pointing at 127.0.0.1) go anywhere.
 *
 * Needs root (master(8) starts as root and drops to the postfix user) and the Debian packages
 * postfix and swaks (.ci/run installs them).
 *
 * Pitfalls met while building this (each is handled below):
 *  - postfix(1) prints its errors to stderr only when stderr is a terminal; otherwise they go to
 *    syslog (absent here) or, once the config is good enough, to maillog_file. A failed start is
 *    therefore silent: we report the maillog, and `postfix check` run under script(1) if needed.
 *  - maillog_file must lie under one of maillog_file_prefixes (default /var, /dev/stdout), or
 *    postfix refuses to start ("does not match any prefix").
 *  - data_directory must be owned by the postfix user (master.lock is created there after the
 *    privilege drop: "cannot create file exclusively: Permission denied").
 *  - The scratch directory must be traversable by the mailbox uid (mkdtemp makes it 0700):
 *    virtual(8) writes the Maildir as that uid through the absolute path.
 *  - No chroot: Debian's master.cf chroots most services into the queue directory, which then
 *    needs copies of /etc/hosts, resolv.conf, nsswitch.conf and libraries (configure-instance.sh
 *    syncs them for system instances only). A private instance gains nothing from the chroot, and
 *    without it unix-socket paths (milters, policy) are plain paths.
 *  - Debian's default alias_maps includes nis:mail.aliases (a warning on every smtpd start);
 *    local delivery and aliases are switched off, virtual(8) does all deliveries.
 *  - smtpd sleeps smtpd_error_sleep_time (1 s) after each rejected command; set to 0.
 *  - `postfix stop` returns once master has exited, but the children it signalled may still be
 *    finishing; the exit hook therefore signals master's whole process group.
 *  - The host's init does not reap orphans at once: stopped processes can linger as zombies
 *    for a moment. They hold no ports or files.
 *  - sendmail -C / postqueue -c with a private config work because we are root; for anyone else
 *    the set-gid postdrop/postqueue would insist (not tried) that the directory be listed in
 *    alternate_config_directories of /etc/postfix/main.cf, which does not exist here.
 *  - Start-up takes about 1.5–2 s, nearly all of it `post-install create-missing` building the
 *    fresh queue directory (dozens of postconf/mkdir/chown runs); a reused queue starts in 0.2 s.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

const POSTFIX = '/usr/sbin/postfix';
const POSTCONF = '/usr/sbin/postconf';
const POSTQUEUE = '/usr/sbin/postqueue';
const SENDMAIL = '/usr/sbin/sendmail';
const SWAKS = '/usr/bin/swaks';

export const RIG_DOMAIN = 'example.test';
/** The envelope sender sendWithSwaks() uses unless told otherwise; it has a mailbox, so bounces are readable. */
export const RIG_SENDER = `sender@${RIG_DOMAIN}`;
/** Mailboxes every instance has besides `users`: bounces and DSNs land somewhere a test can read. */
const ALWAYS_USERS = ['postmaster', 'sender'];
/** How often the wait helpers look again. */
const POLL_MS = 50;

export interface PostfixOptions {
  /** main.cf settings added after (and overriding) the rig's own. */
  main?: Record<string, string | number>;
  /** master.cf lines appended (service definitions and their `-o` continuation lines). */
  master?: string[];
  /** Local parts (or full addresses in the rig's domain) that get a Maildir. Default alice, bob. */
  users?: string[];
  /** Keep the scratch directory after stop() (also: DIME_KEEP_POSTFIX=1). */
  keep?: boolean;
  /** The virtual mailbox domain the instance delivers for (default RIG_DOMAIN); two instances can be two domains. */
  domain?: string;
  /** Where the scratch directory is created (default os.tmpdir()); benchmarks put it on a tmpfs. */
  scratchParent?: string;
}

export interface Delivered {
  /** user@domain */
  mailbox: string;
  file: string;
  /** The message as stored (LF line ends, Postfix's Delivered-To and Return-Path on top). */
  content: string;
}

export interface SmtpReply {
  /** The client line that drew this reply (`RCPT TO:<bob@example.test>`), or `` for the banner. */
  command: string;
  code: number;
  /** The last line's text after the code. */
  text: string;
  /** Every line of a multi-line reply, as received. */
  lines: string[];
}

export interface SwaksResult {
  /** swaks's exit status: 0 all accepted; 23 MAIL, 24 every RCPT, 25 DATA, 26 the final dot refused; 2 no connection. */
  code: number | null;
  output: string;
  replies: SmtpReply[];
}

export interface QueueEntry {
  queueName: string;
  queueId: string;
  sender: string;
  recipients: { address: string; delayReason?: string }[];
}

export interface Postfix {
  readonly smtpPort: number;
  readonly domain: string;
  readonly dir: string;
  readonly configDir: string;
  readonly queueDir: string;
  readonly dataDir: string;
  readonly mailDir: string;
  readonly logFile: string;
  /** The whole maillog so far. */
  log(): string;
  /** A position in the maillog, for waitForLog(…, since). */
  logMark(): number;
  waitForLog(pattern: RegExp, timeoutMs?: number, since?: number): Promise<RegExpMatchArray>;
  /** Messages delivered to a mailbox (`alice` or `alice@example.test`), oldest first. */
  messages(mailbox: string): Delivered[];
  /**
   * The next delivery to `mailbox`, or matching `predicate` in any mailbox, that no earlier call
   * returned. Throws with the maillog's tail after `timeoutMs`.
   */
  waitForDelivery(target: string | ((m: Delivered) => boolean), timeoutMs?: number): Promise<Delivered>;
  /** `postqueue -j`: what is still queued (active, deferred, hold, incoming). */
  queue(): QueueEntry[];
  sendWithSwaks(args: string[], options?: { timeoutMs?: number }): Promise<SwaksResult>;
  /** sendmail(1) (`-C configDir`): the non_smtpd path (pickup, non_smtpd_milters). */
  sendmail(args: string[], message: string): Promise<{ code: number | null; output: string }>;
  /** postconf -h for this instance. */
  postconf(name: string): string;
  /** Change main.cf settings and `postfix reload`; long-running daemons pick them up when they restart. */
  reload(main: Record<string, string | number>): Promise<void>;
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (bound and released; startPostfix retries if another process takes it first). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Poll `check` until it returns a value other than undefined/false. */
export async function waitFor<T>(check: () => T | undefined | false, timeoutMs: number, what: string, explain?: () => string): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${explain ? `\n${explain()}` : ''}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function run(file: string, args: string[], input?: string, timeoutMs = 30_000): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: unknown }).code as number | null) : 0;
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') reject(err);
      else resolve({ code: typeof code === 'number' ? code : null, output: `${stdout}${stderr}` });
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

function idOf(user: string): { uid: number; gid: number } {
  const r = spawnSync('id', [user], { encoding: 'utf8' });
  const m = /uid=(\d+).*gid=(\d+)/.exec(r.stdout ?? '');
  if (!m) throw new Error(`the rig needs the system user ${user} (is the postfix package installed?)`);
  return { uid: Number(m[1]), gid: Number(m[2]) };
}

/** Postfix's stock services (Debian master.cf) without chroot, and only what a private instance uses. */
const MASTER_SERVICES = [
  'pickup    unix  n       -       n       60      1       pickup',
  'cleanup   unix  n       -       n       -       0       cleanup',
  'qmgr      unix  n       -       n       300     1       qmgr',
  'tlsmgr    unix  -       -       n       1000?   1       tlsmgr',
  'rewrite   unix  -       -       n       -       -       trivial-rewrite',
  'bounce    unix  -       -       n       -       0       bounce',
  'defer     unix  -       -       n       -       0       bounce',
  'trace     unix  -       -       n       -       0       bounce',
  'verify    unix  -       -       n       -       1       verify',
  'flush     unix  n       -       n       1000?   0       flush',
  'proxymap  unix  -       -       n       -       -       proxymap',
  'proxywrite unix -       -       n       -       1       proxymap',
  'smtp      unix  -       -       n       -       -       smtp',
  'relay     unix  -       -       n       -       -       smtp',
  'showq     unix  n       -       n       -       -       showq',
  'error     unix  -       -       n       -       -       error',
  'retry     unix  -       -       n       -       -       error',
  'discard   unix  -       -       n       -       -       discard',
  'virtual   unix  -       n       n       -       -       virtual',
  'lmtp      unix  -       -       n       -       -       lmtp',
  'anvil     unix  -       -       n       -       1       anvil',
  'scache    unix  -       -       n       -       1       scache',
  'postlog   unix-dgram n  -       n       -       1       postlogd',
];

// ---------------------------------------------------------------------------------------------
// Nothing may outlive the test process: stop() in after(), plus these hooks for crashes and
// signals, plus a watchdog shell per instance for a SIGKILLed test process.

const live = new Set<Instance>();
let hooksInstalled = false;

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const pf of live) pf.abortSync();
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      for (const pf of live) pf.abortSync();
      process.exit(128 + (os.constants.signals[signal] ?? 0));
    });
  }
}

class Instance implements Postfix {
  readonly configDir: string;
  readonly queueDir: string;
  readonly dataDir: string;
  readonly mailDir: string;
  readonly logFile: string;
  readonly domain: string;
  smtpPort = 0;
  watchdog: number | undefined;
  private stopped = false;
  private readonly seen = new Set<string>();
  private readonly mailboxes: string[];

  constructor(
    readonly dir: string,
    users: string[],
    private readonly keep: boolean,
    domain: string = RIG_DOMAIN,
  ) {
    this.domain = domain.toLowerCase();
    this.configDir = path.join(dir, 'config');
    this.queueDir = path.join(dir, 'queue');
    this.dataDir = path.join(dir, 'data');
    this.mailDir = path.join(dir, 'mail');
    this.logFile = path.join(dir, 'maillog');
    this.mailboxes = [...new Set([...users, ...ALWAYS_USERS].map((u) => this.address(u)))];
  }

  private address(user: string): string {
    return user.includes('@') ? user.toLowerCase() : `${user.toLowerCase()}@${this.domain}`;
  }

  writeConfig(port: number, main: Record<string, string | number>, master: string[]): void {
    const nobody = idOf('nobody');
    const settings: Record<string, string | number> = {
      compatibility_level: '3.6',
      // Everything private, under the scratch directory.
      queue_directory: this.queueDir,
      data_directory: this.dataDir,
      maillog_file: this.logFile,
      maillog_file_prefixes: this.dir,
      syslog_name: `postfix-rig-${path.basename(this.dir).slice(-6)}`,
      // Identity; the rig's domain is a virtual mailbox domain, nothing is local(8).
      myhostname: `mail.${this.domain}`,
      mydomain: this.domain,
      myorigin: '$mydomain',
      mydestination: '',
      local_recipient_maps: '',
      alias_maps: '',
      alias_database: '',
      inet_interfaces: '127.0.0.1',
      inet_protocols: 'ipv4',
      mynetworks: '127.0.0.0/8',
      smtpd_banner: '$myhostname ESMTP dime test rig',
      biff: 'no',
      append_dot_mydomain: 'no',
      readme_directory: 'no',
      // Nothing leaves the machine unless a test routes it to 127.0.0.1 itself.
      default_transport: 'error:5.7.0 the test rig delivers nowhere outside',
      relay_transport: 'error:5.7.0 the test rig delivers nowhere outside',
      smtp_dns_support_level: 'disabled',
      lmtp_dns_support_level: 'disabled',
      // Deliveries: Maildirs under mail/<domain>/<user>/, written as nobody.
      virtual_mailbox_domains: this.domain,
      virtual_mailbox_base: this.mailDir,
      virtual_mailbox_maps: `texthash:${path.join(this.configDir, 'vmailbox')}`,
      virtual_alias_maps: `texthash:${path.join(this.configDir, 'valias')}`,
      virtual_uid_maps: `static:${nobody.uid}`,
      virtual_gid_maps: `static:${nobody.gid}`,
      // Fast tests: no penalty sleeps, short connect timeouts.
      smtpd_error_sleep_time: '0',
      smtpd_soft_error_limit: '100',
      smtpd_hard_error_limit: '100',
      in_flow_delay: '0',
      smtp_connect_timeout: '5s',
      lmtp_connect_timeout: '5s',
      ...main,
    };
    fs.writeFileSync(path.join(this.configDir, 'main.cf'), Object.entries(settings).map(([k, v]) => `${k} = ${v}\n`).join(''));
    const smtpd = `127.0.0.1:${port} inet n - n - - smtpd`;
    fs.writeFileSync(path.join(this.configDir, 'master.cf'), [smtpd, ...MASTER_SERVICES, ...master].map((l) => `${l}\n`).join(''));
    fs.writeFileSync(path.join(this.configDir, 'vmailbox'), this.mailboxes.map((a) => `${a} ${this.domain}/${a.split('@')[0]}/\n`).join(''));
    fs.writeFileSync(
      path.join(this.configDir, 'valias'),
      ['root', 'MAILER-DAEMON', 'abuse'].map((u) => `${u}@${this.domain} postmaster@${this.domain}\n`).join(''),
    );
    this.smtpPort = port;
  }

  log(): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  logMark(): number {
    return Buffer.byteLength(this.log());
  }

  logTail(lines = 40): string {
    return `--- last maillog lines (${this.logFile}) ---\n${this.log().split('\n').slice(-lines).join('\n')}`;
  }

  waitForLog(pattern: RegExp, timeoutMs = 10_000, since = 0): Promise<RegExpMatchArray> {
    return waitFor(
      () => Buffer.from(this.log()).subarray(since).toString('utf8').match(pattern) ?? undefined,
      timeoutMs,
      `maillog to match ${pattern}`,
      () => this.logTail(),
    );
  }

  messages(mailbox: string): Delivered[] {
    const address = this.address(mailbox);
    const base = path.join(this.mailDir, this.domain, address.split('@')[0]!);
    const out: Delivered[] = [];
    for (const sub of ['new', 'cur']) {
      let names: string[];
      try {
        names = fs.readdirSync(path.join(base, sub));
      } catch {
        continue;
      }
      for (const name of names) {
        const file = path.join(base, sub, name);
        out.push({ mailbox: address, file, content: fs.readFileSync(file, 'utf8') });
      }
    }
    // Maildir names start with the delivery time in seconds, then a sequence within it.
    return out.sort((a, b) => fs.statSync(a.file).mtimeMs - fs.statSync(b.file).mtimeMs || a.file.localeCompare(b.file));
  }

  waitForDelivery(target: string | ((m: Delivered) => boolean), timeoutMs = 10_000): Promise<Delivered> {
    const boxes = typeof target === 'string' ? [this.address(target)] : this.mailboxes;
    const accept = typeof target === 'string' ? () => true : target;
    return waitFor(
      () => {
        for (const box of boxes) {
          for (const m of this.messages(box)) {
            if (this.seen.has(m.file) || !accept(m)) continue;
            this.seen.add(m.file);
            return m;
          }
        }
        return undefined;
      },
      timeoutMs,
      typeof target === 'string' ? `a delivery to ${boxes[0]}` : 'a matching delivery',
      () => `${this.logTail()}\n--- queue ---\n${JSON.stringify(this.queue(), null, 1)}`,
    );
  }

  queue(): QueueEntry[] {
    const r = spawnSync(POSTQUEUE, ['-c', this.configDir, '-j'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`postqueue -j failed: ${r.stderr}`);
    return r.stdout
      .split('\n')
      .filter((l) => l.trim().length > 0)
      .map((l) => {
        const j = JSON.parse(l) as { queue_name: string; queue_id: string; sender: string; recipients: { address: string; delay_reason?: string }[] };
        return {
          queueName: j.queue_name,
          queueId: j.queue_id,
          sender: j.sender,
          recipients: j.recipients.map((r) => (r.delay_reason === undefined ? { address: r.address } : { address: r.address, delayReason: r.delay_reason })),
        };
      });
  }

  async sendWithSwaks(args: string[], options: { timeoutMs?: number } = {}): Promise<SwaksResult> {
    const has = (...names: string[]) => args.some((a) => names.includes(a));
    const full = [...args];
    if (!has('--server', '-s')) full.push('--server', `127.0.0.1:${this.smtpPort}`);
    if (!has('--from', '-f')) full.push('--from', RIG_SENDER);
    if (!has('--helo', '--ehlo', '--lhlo')) full.push('--helo', 'client.example.test');
    if (!has('--timeout', '-to')) full.push('--timeout', '30');
    const r = await run(SWAKS, full, undefined, options.timeoutMs ?? 60_000);
    return { code: r.code, output: r.output, replies: parseSwaks(r.output) };
  }

  sendmail(args: string[], message: string): Promise<{ code: number | null; output: string }> {
    return run(SENDMAIL, ['-C', this.configDir, ...args], message);
  }

  postconf(name: string): string {
    const r = spawnSync(POSTCONF, ['-c', this.configDir, '-h', name], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`postconf ${name}: ${r.stderr}`);
    return r.stdout.trim();
  }

  async reload(main: Record<string, string | number>): Promise<void> {
    const settings = Object.entries(main).map(([k, v]) => `${k} = ${v}`);
    if (settings.length > 0) {
      const r = spawnSync(POSTCONF, ['-c', this.configDir, '-e', ...settings], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`postconf -e failed: ${r.stderr}`);
    }
    const mark = this.logMark();
    const r = await run(POSTFIX, ['-c', this.configDir, 'reload']);
    if (r.code !== 0) throw new Error(`postfix reload failed (${r.code}): ${r.output}\n${this.logTail()}`);
    await this.waitForLog(/reload -- version/, 10_000, mark);
  }

  masterPid(): number | undefined {
    try {
      const pid = Number(fs.readFileSync(path.join(this.queueDir, 'pid', 'master.pid'), 'utf8').trim());
      return Number.isInteger(pid) && pid > 1 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  startWatchdog(): void {
    // If this process dies without running its exit hooks (SIGKILL), stop Postfix and clean up.
    const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const script = [
      `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done`,
      `${POSTFIX} -c ${q(this.configDir)} abort >/dev/null 2>&1`,
      this.keep ? 'true' : `rm -rf ${q(this.dir)}`,
    ].join('; ');
    const child = spawn('/bin/sh', ['-c', script], { detached: true, stdio: 'ignore' });
    child.unref();
    this.watchdog = child.pid;
  }

  /** Synchronous last resort (exit hooks): signal master's process group, remove the scratch dir. */
  abortSync(): void {
    if (this.stopped) return;
    this.stopped = true;
    live.delete(this);
    const pid = this.masterPid();
    if (pid !== undefined) {
      // master is a session leader (setsid); its group holds every Postfix process of this instance.
      for (const target of [pid, -pid]) {
        try {
          process.kill(target, 'SIGTERM');
        } catch {
          // already gone
        }
      }
    }
    this.killWatchdog();
    if (!this.keep) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private killWatchdog(): void {
    if (this.watchdog === undefined) return;
    try {
      process.kill(this.watchdog, 'SIGTERM');
    } catch {
      // gone
    }
    this.watchdog = undefined;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    const pid = this.masterPid();
    // `postfix stop` waits (up to 5 s) for master to exit, then kills the group itself.
    await run(POSTFIX, ['-c', this.configDir, 'stop']).catch(() => undefined);
    if (pid !== undefined) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // the whole group is gone, as it should be
      }
    }
    this.stopped = true;
    live.delete(this);
    this.killWatchdog();
    if (this.keep) process.stderr.write(`postfix rig kept: ${this.dir}\n`);
    else fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Pair each server reply in swaks output with the client line that drew it. */
export function parseSwaks(output: string): SmtpReply[] {
  const replies: SmtpReply[] = [];
  let command = '';
  let awaitingCommand = true;
  let current: SmtpReply | undefined;
  for (const line of output.split('\n')) {
    const client = /^ -> (.*)$/.exec(line);
    if (client) {
      current = undefined;
      // The end-of-data dot draws the reply to the message; name it, not the first data line.
      if (awaitingCommand || client[1] === '.') {
        command = client[1]!;
        awaitingCommand = false;
      }
      continue;
    }
    const server = /^(?:<-|<\*\*) +(\d{3})([ -])(.*)$/.exec(line);
    if (server) {
      if (!current) {
        current = { command, code: Number(server[1]), text: '', lines: [] };
        replies.push(current);
      }
      current.lines.push(`${server[1]}${server[2]}${server[3]}`);
      current.text = server[3]!;
      if (server[2] === ' ') {
        current = undefined;
        awaitingCommand = true;
      }
    }
  }
  return replies;
}

export async function startPostfix(options: PostfixOptions = {}): Promise<Postfix> {
  if (process.getuid?.() !== 0) throw new Error('the Postfix rig needs root: master(8) starts as root and drops privileges');
  for (const bin of [POSTFIX, POSTCONF, POSTQUEUE, SWAKS]) {
    if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: install the Debian packages postfix and swaks (see .ci/run)`);
  }
  const postfixUser = idOf('postfix');
  const nobody = idOf('nobody');
  const keep = options.keep ?? process.env.DIME_KEEP_POSTFIX === '1';
  const dir = fs.mkdtempSync(path.join(options.scratchParent ?? os.tmpdir(), 'dime-postfix-'));
  fs.chmodSync(dir, 0o755);
  const pf = new Instance(dir, options.users ?? ['alice', 'bob'], keep, options.domain);
  for (const d of [pf.configDir, pf.queueDir, pf.dataDir, pf.mailDir]) fs.mkdirSync(d, { mode: 0o755 });
  fs.chownSync(pf.dataDir, postfixUser.uid, postfixUser.gid);
  fs.chownSync(pf.mailDir, nobody.uid, nobody.gid);
  installHooks();
  live.add(pf);
  pf.startWatchdog();

  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    pf.writeConfig(await freePort(), options.main ?? {}, options.master ?? []);
    const mark = pf.logMark();
    const r = await run(POSTFIX, ['-c', pf.configDir, 'start']);
    if (r.code === 0) {
      await waitForPort(pf.smtpPort, 5000, () => pf.logTail()).catch(async (err: unknown) => {
        await pf.stop();
        throw err;
      });
      return pf;
    }
    const log = Buffer.from(pf.log()).subarray(mark).toString('utf8');
    lastError = `postfix start exited ${r.code}: ${r.output}\n${log || explainStartFailure(pf.configDir)}`;
    // Another process took the port between freePort() and master's bind: try another one.
    if (!/Address already in use/.test(log)) break;
  }
  await pf.stop();
  throw new Error(lastError);
}

/** Resolve once something accepts connections on 127.0.0.1:port. */
async function waitForPort(port: number, timeoutMs: number, explain: () => string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`Postfix is not listening on 127.0.0.1:${port} after ${timeoutMs} ms\n${explain()}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** postfix(1) only prints to a terminal; run `postfix check` under script(1) to see why it failed. */
function explainStartFailure(configDir: string): string {
  const r = spawnSync('script', ['-qec', `${POSTFIX} -c ${configDir} check`, '/dev/null'], { encoding: 'utf8' });
  return `postfix check: ${(r.stdout ?? '').trim() || '(no output)'}`;
}

// ---------------------------------------------------------------------------------------------
// A mail sink on 127.0.0.1 speaking LMTP (LHLO: one reply per recipient after DATA) or SMTP
// (EHLO/HELO: one reply): the far end of a test transport such as `dmtp`.

export interface SinkMessage {
  /** LHLO, EHLO or HELO */
  greeting: string;
  from: string;
  recipients: string[];
  /** The message with dot-stuffing removed, CRLF line ends as received. */
  data: string;
}

export interface MailSink {
  readonly port: number;
  readonly messages: SinkMessage[];
  /** What to answer after the final dot: accept (and record), or refuse with 451 or 550 (nothing recorded). */
  mode: 'accept' | '451' | '550';
  waitForMessages(count: number, timeoutMs?: number): Promise<SinkMessage[]>;
  close(): Promise<void>;
}

/** Biggest message the sink buffers; tests send small ones. */
const SINK_MAX_MESSAGE = 10 * 1024 * 1024;

export async function startMailSink(): Promise<MailSink> {
  const messages: SinkMessage[] = [];
  const sockets = new Set<net.Socket>();
  const sink: MailSink & { port: number } = {
    port: 0,
    messages,
    mode: 'accept',
    waitForMessages: (count, timeoutMs = 10_000) =>
      waitFor(() => (messages.length >= count ? messages.slice(0, count) : undefined), timeoutMs, `${count} message(s) at the sink`),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = '';
    let greeting = '';
    let from = '';
    let rcpts: string[] = [];
    let inData = false;
    const reply = (line: string) => socket.write(`${line}\r\n`);
    reply('220 sink.example.test ESMTP/LMTP test sink');
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > SINK_MAX_MESSAGE) {
        reply('552 5.3.4 too big for the test sink');
        socket.destroy();
        return;
      }
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          const startEnd = buf.startsWith('.\r\n') ? 0 : -1;
          if (end < 0 && startEnd < 0) return;
          const raw = startEnd === 0 ? '' : buf.slice(0, end + 2);
          buf = startEnd === 0 ? buf.slice(3) : buf.slice(end + 5);
          inData = false;
          const data = raw.replace(/^\./gm, '');
          const answer =
            sink.mode === '451' ? '451 4.3.0 test sink: queue file write error' : sink.mode === '550' ? '550 5.7.1 test sink: rejected by local policy' : '250 2.0.0 delivered to the test sink';
          if (sink.mode === 'accept') messages.push({ greeting, from, recipients: rcpts, data });
          if (greeting === 'LHLO') for (const r of rcpts) reply(answer.replace(/^(\d{3} \S+ )/, `$1<${r}> `));
          else reply(answer);
          rcpts = [];
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'LHLO' || verb === 'EHLO') {
          greeting = verb;
          reply('250-sink.example.test');
          reply('250-PIPELINING');
          reply('250-8BITMIME');
          reply('250 ENHANCEDSTATUSCODES');
        } else if (verb === 'HELO') {
          greeting = verb;
          reply('250 sink.example.test');
        } else if (verb === 'MAIL') {
          from = /<([^>]*)>/.exec(line)?.[1] ?? '';
          rcpts = [];
          reply('250 2.1.0 Ok');
        } else if (verb === 'RCPT') {
          rcpts.push(/<([^>]*)>/.exec(line)?.[1] ?? '');
          reply('250 2.1.5 Ok');
        } else if (verb === 'DATA') {
          inData = true;
          reply('354 End data with <CR><LF>.<CR><LF>');
        } else if (verb === 'RSET') {
          rcpts = [];
          reply('250 2.0.0 Ok');
        } else if (verb === 'NOOP') {
          reply('250 2.0.0 Ok');
        } else if (verb === 'QUIT') {
          reply('221 2.0.0 Bye');
          socket.end();
          return;
        } else {
          reply('502 5.5.2 not implemented by the test sink');
        }
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  sink.port = (server.address() as net.AddressInfo).port;
  return sink;
}

// ---------------------------------------------------------------------------------------------
// A raw TCP client for the services Postfix talks to (policy, socketmap, milter): write bytes,
// read what comes back, see how the connection ended.

export interface WireClient {
  /** Everything received so far. */
  readonly received: Buffer;
  /** 'open', 'end' (server FIN), 'closed' (both sides) or 'error' (reset). */
  readonly state: 'open' | 'end' | 'closed' | 'error';
  write(bytes: Uint8Array | string): void;
  /** Half-close: shut down our write side (what Exim's ${readsocket} does). */
  end(): void;
  /** Wait until `received` satisfies `done` (e.g. holds two replies). */
  waitFor(done: (received: Buffer) => boolean, timeoutMs?: number): Promise<Buffer>;
  /** Wait until the server has closed (FIN or reset). */
  waitClosed(timeoutMs?: number): Promise<'end' | 'closed' | 'error'>;
  destroy(): void;
}

export async function connectClient(port: number, host = '127.0.0.1'): Promise<WireClient> {
  const socket = net.connect({ port, host, allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let received = Buffer.alloc(0);
  let state: WireClient['state'] = 'open';
  // Waiters are re-checked on every event, so waits end as soon as the condition holds.
  const waiters = new Set<() => void>();
  const changed = () => {
    for (const w of [...waiters]) w();
  };
  socket.on('data', (d: Buffer) => {
    received = Buffer.concat([received, d]);
    changed();
  });
  socket.on('end', () => {
    if (state === 'open') state = 'end';
    changed();
  });
  socket.on('error', () => {
    state = 'error';
    changed();
  });
  socket.on('close', () => {
    if (state !== 'error') state = 'closed';
    changed();
  });
  function until<T>(check: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const test = () => {
        const v = check();
        if (v === undefined) return;
        waiters.delete(test);
        clearTimeout(timer);
        resolve(v);
      };
      const timer = setTimeout(() => {
        waiters.delete(test);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; received so far: ${JSON.stringify(received.toString('latin1').slice(0, 2000))} (${state})`));
      }, timeoutMs);
      waiters.add(test);
      test();
    });
  }
  return {
    get received() {
      return received;
    },
    get state() {
      return state;
    },
    write: (bytes) => void socket.write(bytes),
    end: () => void socket.end(),
    waitFor: (done, timeoutMs = 5000) => until(() => (done(received) ? received : undefined), timeoutMs, 'a reply'),
    waitClosed: (timeoutMs = 5000) => until(() => (state === 'open' ? undefined : state), timeoutMs, 'the server to close the connection'),
    destroy: () => socket.destroy(),
  };
}
