import type { DimeError } from '../errors.js';

/** 0 success; 1 a negative result or bad input (invalid signet, malformed record); 2 usage and unreadable files. */
export const EXIT = { ok: 0, negative: 1, usage: 2 } as const;

/** Thrown by commands that have already printed their result and only need an exit status. */
export class ExitStatus extends Error {
  constructor(readonly status: number) {
    super(`exit ${status}`);
  }
}

export function exitStatusFor(err: DimeError): number {
  return err.code === 'USAGE' || err.code === 'FILE_UNREADABLE' || err.code === 'FILE_EXISTS' || err.code === 'FILE_WRITE_FAILED' ? EXIT.usage : EXIT.negative;
}
