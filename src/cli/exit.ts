import type { DimeError } from '../errors.js';

/** 0 success; 1 a negative result or bad input (invalid signet, malformed record); 2 usage and unreadable files. */
export const EXIT = { ok: 0, negative: 1, usage: 2 } as const;

/** Thrown by commands that have already printed their result and only need an exit status. */
export class ExitStatus extends Error {
  constructor(readonly status: number) {
    super(`exit ${status}`);
  }
}

/** Errors about how the command was called or its files, as opposed to verdicts about the input's content. */
const USAGE_CODES: ReadonlySet<string> = new Set(['USAGE', 'FILE_UNREADABLE', 'FILE_EXISTS', 'FILE_WRITE_FAILED', 'MESSAGE_BAD_ARGUMENT', 'CONFIG_INVALID', 'SOCKET_BAD_SPEC', 'SOCKET_IN_USE']);

export function exitStatusFor(err: DimeError): number {
  return USAGE_CODES.has(err.code) ? EXIT.usage : EXIT.negative;
}
