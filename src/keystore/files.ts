/**
 * File helpers for the keystore and the user key store: atomic writes (a reader sees the old file
 * or the new one, never half of either, even after a crash) and the permission checks that keep
 * private key material private.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DimeError } from '../errors.js';

/** Private files: owner read/write only. */
export const PRIVATE_FILE_MODE = 0o600;
/** Private directories: owner only, so even file names (user addresses) stay private. */
export const PRIVATE_DIR_MODE = 0o700;

/**
 * Nothing the keystore reads is larger than this (keys files are ~200 bytes, a user record ~1 KiB,
 * a sealed user key ~200 bytes, a user's own encrypted key blob at most MAX_USER_BLOB); a bigger
 * file is not ours and is refused before it is read into memory.
 */
export const MAX_KEYSTORE_FILE = 1024 * 1024;

let tmpCounter = 0;

/**
 * Write `content` to `file` atomically: a temporary file in the same directory (created exclusively,
 * with the final mode from the start, so the content is never readable by others even briefly),
 * flushed to disk, renamed over the target, then the directory flushed so the rename survives a
 * crash. On any failure the temporary file is removed and the target is untouched.
 */
export function atomicWriteFile(file: string, content: string | Uint8Array, mode: number): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${++tmpCounter}.tmp`);
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'wx', mode);
    fs.writeFileSync(fd, content);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    // openSync's mode is filtered by the umask; make the final mode exact.
    fs.chmodSync(tmp, mode);
    fs.renameSync(tmp, file);
  } catch (err) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw new DimeError('FILE_WRITE_FAILED', `${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  syncDir(dir);
}

/** Create `file` only if it does not exist yet, atomically (link() refuses an existing target). */
export function atomicCreateFile(file: string, content: string | Uint8Array, mode: number): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${++tmpCounter}.tmp`);
  try {
    const fd = fs.openSync(tmp, 'wx', mode);
    try {
      fs.writeFileSync(fd, content);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.chmodSync(tmp, mode);
    fs.linkSync(tmp, file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new DimeError('FILE_EXISTS', file, { cause: err });
    throw new DimeError('FILE_WRITE_FAILED', `${file}: ${code ?? (err as Error).message}`, { cause: err });
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  syncDir(dir);
}

function syncDir(dir: string): void {
  // Best effort: some file systems refuse fsync on a directory; the rename itself already happened.
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    /* ignored, see above */
  }
}

export function ensurePrivateDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  } catch (err) {
    throw new DimeError('FILE_WRITE_FAILED', `${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

export interface PrivateFileCheck {
  /** Refuse group- as well as world-access (keys); false: refuse world-access, report group-access. */
  refuseGroup: boolean;
  /** What the file is, for the error message. */
  what: string;
}

/**
 * Read a file that holds secrets, refusing it if others could read it. Returns the content and
 * whether the group can read it (only possible with refuseGroup false, for the caller to warn).
 */
export function readPrivateFile(file: string, check: PrivateFileCheck): { content: Buffer; groupReadable: boolean } {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new DimeError('FILE_UNREADABLE', `${check.what} ${file}: ${code ?? (err as Error).message}`, { cause: err });
  }
  if (!st.isFile()) throw new DimeError('FILE_UNREADABLE', `${check.what} ${file} is not a regular file`);
  if (st.size > MAX_KEYSTORE_FILE) throw new DimeError('KEYSTORE_CORRUPT', `${check.what} ${file} is ${st.size} bytes, more than ${MAX_KEYSTORE_FILE}`);
  const mode = st.mode & 0o777;
  const forbidden = check.refuseGroup ? 0o077 : 0o007;
  if ((mode & forbidden) !== 0) {
    throw new DimeError('KEYSTORE_INSECURE', `${check.what} ${file} has mode ${mode.toString(8).padStart(4, '0')}; run chmod 600 ${file}`);
  }
  let content: Buffer;
  try {
    content = fs.readFileSync(file);
  } catch (err) {
    throw new DimeError('FILE_UNREADABLE', `${check.what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  return { content, groupReadable: (mode & 0o070) !== 0 };
}

export function exists(file: string): boolean {
  return fs.existsSync(file);
}
