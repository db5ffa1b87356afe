/**
 * The signets a dark domain publishes (its organisational signet and its users' signets), with every
 * earlier version kept: DMTP's SGNT with a fingerprint and HIST answer from the history, and the
 * chain of custody is checked along it. Public data, but written atomically so a crash never leaves
 * a half-written signet.
 *
 * Layout under the store's directory (one file per version, numbered from 1, newest = current):
 *   <domain>/org/<n>.signet
 *   <domain>/users/<local part>/<n>.signet
 * Names are lower-cased; anything that could escape the directory is refused.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { CryptoBackend } from '../crypto/backend.js';
import { DimeError } from '../errors.js';
import { armorSignet, dearmorSignet, fingerprints, identifierOf, type Signet } from '../dime/signet/index.js';

export interface SignetStore {
  /** The current organisational signet of `domain`. */
  org(domain: string): Promise<Signet | undefined>;
  /** Every organisational signet of `domain`, oldest first. */
  orgHistory(domain: string): Promise<Signet[]>;
  /** The current signet of `address`. */
  user(address: string): Promise<Signet | undefined>;
  /** Every signet of `address`, oldest first. */
  userHistory(address: string): Promise<Signet[]>;
  /** The version of a domain's or a user's signet whose ssr, crypto, full or ID fingerprint is `fp`. */
  byFingerprint(id: string, fp: string): Promise<Signet | undefined>;
  /** Publish a new current version (its identifier, field 254, says whose it is). */
  put(signet: Signet): Promise<void>;
  /** Users of `domain` with a current signet. */
  users(domain: string): Promise<string[]>;
  /** Withdraw a user: no current signet, history kept for verifying old mail. */
  removeUser(address: string): Promise<void>;
}

/** A DNS label or an address local part as one path component: no separators, no dot-only names. */
function component(value: string, what: string): string {
  const v = value.toLowerCase();
  if (v.length === 0 || v.length > 255 || v === '.' || v === '..' || /[/\\\0]/.test(v)) throw new DimeError('SIGNET_BAD_ARGUMENT', `${what} ${JSON.stringify(value)} cannot name a store entry`);
  return v;
}

function splitAddress(address: string): [string, string] {
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) throw new DimeError('SIGNET_BAD_ARGUMENT', `${JSON.stringify(address)} is not an address`);
  return [component(address.slice(0, at), 'local part'), component(address.slice(at + 1), 'domain')];
}

const VERSION_FILE = /^(\d+)\.signet$/;
const WITHDRAWN = 'withdrawn';

export class FileSignetStore implements SignetStore {
  constructor(
    readonly dir: string,
    private readonly crypto: CryptoBackend,
  ) {}

  private orgDir(domain: string): string {
    return path.join(this.dir, component(domain, 'domain'), 'org');
  }

  private userDir(address: string): string {
    const [local, domain] = splitAddress(address);
    return path.join(this.dir, domain, 'users', local);
  }

  private async versions(dir: string): Promise<Signet[]> {
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const numbered = names.map((n) => VERSION_FILE.exec(n)).filter((m): m is RegExpExecArray => m !== null).map((m) => Number(m[1]));
    numbered.sort((a, b) => a - b);
    const out: Signet[] = [];
    for (const n of numbered) out.push(dearmorSignet(await fs.readFile(path.join(dir, `${n}.signet`), 'latin1')));
    return out;
  }

  private async withdrawn(dir: string): Promise<boolean> {
    return fs.access(path.join(dir, WITHDRAWN)).then(
      () => true,
      () => false,
    );
  }

  async org(domain: string): Promise<Signet | undefined> {
    return (await this.orgHistory(domain)).at(-1);
  }

  orgHistory(domain: string): Promise<Signet[]> {
    return this.versions(this.orgDir(domain));
  }

  async user(address: string): Promise<Signet | undefined> {
    const dir = this.userDir(address);
    return (await this.withdrawn(dir)) ? undefined : (await this.versions(dir)).at(-1);
  }

  userHistory(address: string): Promise<Signet[]> {
    return this.versions(this.userDir(address));
  }

  async byFingerprint(id: string, fp: string): Promise<Signet | undefined> {
    const history = id.includes('@') ? await this.userHistory(id) : await this.orgHistory(id);
    return history.find((s) => Object.values(fingerprints(this.crypto, s)).includes(fp));
  }

  async put(signet: Signet): Promise<void> {
    const id = identifierOf(signet);
    if (!id) throw new DimeError('SIGNET_BAD_ARGUMENT', 'only signets with an identifier (field 254) can be published');
    if (signet.type === 'ssr') throw new DimeError('SIGNET_BAD_ARGUMENT', 'a signing request is not published');
    if ((signet.type === 'user') !== id.includes('@')) throw new DimeError('SIGNET_BAD_ARGUMENT', `a ${signet.type} signet cannot belong to ${id}`);
    const dir = signet.type === 'org' ? this.orgDir(id) : this.userDir(id);
    await fs.mkdir(dir, { recursive: true });
    const next = (await this.versions(dir)).length + 1;
    const file = path.join(dir, `${next}.signet`);
    const tmp = path.join(dir, `.${next}.signet.${process.pid}.tmp`);
    await fs.writeFile(tmp, armorSignet(signet), { mode: 0o644, flag: 'wx' });
    try {
      // link() fails if the version exists: two writers can never both publish version n.
      await fs.link(tmp, file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new DimeError('FILE_EXISTS', `${file}: another version was published concurrently`, { cause: err });
      throw err;
    } finally {
      await fs.rm(tmp, { force: true });
    }
    await fs.rm(path.join(dir, WITHDRAWN), { force: true });
  }

  async users(domain: string): Promise<string[]> {
    const base = path.join(this.dir, component(domain, 'domain'), 'users');
    let locals: string[];
    try {
      locals = await fs.readdir(base);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: string[] = [];
    for (const local of locals.sort()) if (await this.user(`${local}@${domain}`)) out.push(`${local}@${domain.toLowerCase()}`);
    return out;
  }

  async removeUser(address: string): Promise<void> {
    const dir = this.userDir(address);
    if ((await this.versions(dir)).length === 0) throw new DimeError('SIGNET_BAD_ARGUMENT', `${address} has no signet`);
    await fs.writeFile(path.join(dir, WITHDRAWN), `${new Date().toISOString()}\n`);
  }
}
