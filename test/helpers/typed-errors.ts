/** Fuzz-test helpers: every rejection must be a DimeError with a registered code. */
import assert from 'node:assert/strict';
import { DimeError, ERROR_CODES, type ErrorCode } from '../../src/errors.js';

export type Attempt<T> = { ok: true; value: T } | { ok: false; code: ErrorCode };

/** Run `fn`; a throw must be a DimeError with a registered code, anything else fails the test. */
export function attempt<T>(fn: () => T): Attempt<T> {
  try {
    return { ok: true, value: fn() };
  } catch (err) {
    assert.ok(err instanceof DimeError, `expected a DimeError, got ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
    assert.ok(Object.hasOwn(ERROR_CODES, err.code), `unregistered error code ${String(err.code)}`);
    return { ok: false, code: err.code };
  }
}

/** `fn` must be rejected with exactly `code`. */
export function expectCode(fn: () => unknown, code: ErrorCode, what: string): void {
  const r = attempt(fn);
  assert.equal(r.ok ? 'accepted' : r.code, code, what);
}

/** Set a 5-byte-header object's u24 length to its real size (what an attacker keeping the object consistent does). */
export function withFixedHeader(bytes: Uint8Array): Uint8Array {
  const out = Uint8Array.from(bytes);
  if (out.length >= 5) {
    const n = out.length - 5;
    out[2] = (n >> 16) & 0xff;
    out[3] = (n >> 8) & 0xff;
    out[4] = n & 0xff;
  }
  return out;
}
