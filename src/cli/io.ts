/** File helpers for the CLI: typed errors for unreadable files, private files created 0600, atomic replace. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DimeError } from '../errors.js';

/** Armored inputs are small; anything this large is not a DIME key, signet or certificate. */
export const MAX_INPUT_FILE = 32 * 1024 * 1024;

export function readInputFile(file: string): Buffer {
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new DimeError('FILE_UNREADABLE', `${file} is not a regular file`);
    if (st.size > MAX_INPUT_FILE) throw new DimeError('FILE_UNREADABLE', `${file} is larger than ${MAX_INPUT_FILE} bytes`);
    return fs.readFileSync(file);
  } catch (err) {
    if (err instanceof DimeError) throw err;
    throw new DimeError('FILE_UNREADABLE', `${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

export function readInputText(file: string): string {
  return readInputFile(file).toString('latin1');
}

export interface WriteOptions {
  /** 0o600 for anything holding a private key. */
  mode: number;
  /** Replace an existing file (atomically, through a temporary file in the same directory). */
  force?: boolean;
}

export function writeOutputFile(file: string, content: string | Uint8Array, options: WriteOptions): void {
  try {
    if (!options.force) {
      fs.writeFileSync(file, content, { mode: options.mode, flag: 'wx' });
      return;
    }
    const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
    fs.writeFileSync(tmp, content, { mode: options.mode, flag: 'wx' });
    fs.renameSync(tmp, file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new DimeError('FILE_EXISTS', `${file} (use --force to replace it)`, { cause: err });
    throw new DimeError('FILE_WRITE_FAILED', `${file}: ${code ?? (err as Error).message}`, { cause: err });
  }
}
