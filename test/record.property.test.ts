/**
 * Property tests for the management-record codec: every valid record survives format → parse (also
 * through the quoted split form and the zone-file line), and no input — random, mutated, truncated
 * or extended record text — makes the parser throw anything but a typed RECORD_ or BASE64_ error.
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { base64EncodeNoPad } from '../src/dime/base64.js';
import {
  MAX_EXPIRY_DAYS,
  POLICIES,
  SUBDOMAIN_POLICIES,
  formatRecord,
  parseRecord,
  parseRecordValue,
  recordOutputLine,
  splitForTxt,
  zoneFileLine,
  type DimeRecord,
} from '../src/dime/record.js';
import { DimeError } from '../src/errors.js';

const RUNS = 300;

const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?$/);
const hostName = fc
  .tuple(fc.array(label, { minLength: 1, maxLength: 4 }), fc.boolean())
  .map(([labels, dot]) => labels.join('.') + (dot ? '.' : ''));
// What the tokenizer returns unchanged: printable ASCII without ';', not starting with '=', and any
// '=' only in a trailing run.
const syndicates = fc
  .tuple(fc.stringMatching(/^[\x21-\x3a\x3c\x3e-\x7e]{1,30}$/), fc.integer({ min: 0, max: 3 }))
  .map(([body, pad]) => body + '='.repeat(pad));

const record: fc.Arbitrary<DimeRecord> = fc.record(
  {
    version: fc.constant(1 as const),
    poks: fc.array(fc.uint8Array({ minLength: 32, maxLength: 32 }), { minLength: 1, maxLength: 4 }),
    tls: fc.array(fc.uint8Array({ minLength: 64, maxLength: 64 }), { maxLength: 3 }),
    policy: fc.constantFrom(...POLICIES),
    subdomain: fc.constantFrom(...SUBDOMAIN_POLICIES),
    dx: fc.array(hostName, { maxLength: 4 }),
    expiryDays: fc.integer({ min: 1, max: MAX_EXPIRY_DAYS }),
    syndicates,
  },
  { requiredKeys: ['version', 'poks', 'tls', 'policy', 'subdomain', 'dx'] },
).map((r) => ({ ...r })); // fc.record builds null-prototype objects; the parser returns plain ones

/** The parser's contract: a DimeRecord, or a DimeError with a RECORD_/BASE64_ code; nothing else. */
function parsesOrTypedError(text: string, parse: (t: string) => DimeRecord = parseRecord): DimeRecord | undefined {
  try {
    return parse(text);
  } catch (err) {
    assert.ok(err instanceof DimeError, `not a DimeError: ${String(err)}`);
    assert.ok(err.code.startsWith('RECORD_') || err.code.startsWith('BASE64_'), `unexpected code ${err.code}`);
    return undefined;
  }
}

describe('format → parse round trip', () => {
  it('parseRecord(formatRecord(x)) deep-equals x', () => {
    fc.assert(
      fc.property(record, (r) => {
        assert.deepStrictEqual(parseRecordValue(formatRecord(r)), r);
      }),
      { numRuns: RUNS },
    );
  });

  it('the printed form (split when long) and the zone-file line parse back to x', () => {
    fc.assert(
      fc.property(record, hostName, (r, domain) => {
        const text = formatRecord(r);
        const pieces = splitForTxt(text);
        assert.ok(pieces.every((p) => p.length <= 255));
        assert.equal(pieces.join(''), text);
        assert.deepStrictEqual(parseRecord(recordOutputLine(text)), r);
        const zone = zoneFileLine(domain, text);
        assert.deepStrictEqual(parseRecord(zone.slice(zone.indexOf(' IN TXT ') + 8)), r);
      }),
      { numRuns: RUNS },
    );
  });

  it('whatever parses re-formats to text that parses to the same record', () => {
    fc.assert(
      fc.property(record, fc.array(fc.constantFrom(' ', ';', ' foo=bar ', ' ;;'), { maxLength: 3 }), (r, noise) => {
        const text = noise.join('') + formatRecord(r) + noise.join('');
        const parsed = parsesOrTypedError(text);
        assert.ok(parsed);
        assert.deepStrictEqual(parseRecord(formatRecord(parsed)), parsed);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('robustness: only typed errors', () => {
  it('random strings (binary, ASCII and record-like tokens)', () => {
    const pieces = fc.constantFrom(
      'ver', 'pok', 'tls', 'pol', 'sub', 'dx', 'exp', 'syn', 'version', 'primary', '=', '==', ' ', ';', '\t', '\0', '"', '\\',
      '(', ')', '1', '30', 'strict', 'mixed', 'relaxed', 'a.example', '-', base64EncodeNoPad(new Uint8Array(32).fill(1)),
    );
    const inputs = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 200 }),
      fc.string({ maxLength: 200 }),
      fc.array(pieces, { maxLength: 40 }).map((p) => p.join('')),
    );
    fc.assert(
      fc.property(inputs, (s) => {
        parsesOrTypedError(s);
        parsesOrTypedError(s, parseRecordValue);
        parsesOrTypedError(`"${s}"`);
      }),
      { numRuns: RUNS * 2 },
    );
  });

  it('byte flips, truncations and extensions of valid record text', () => {
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), ch: fc.integer({ min: 0, max: 0xff }) }),
      fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('extend' as const), tail: fc.string({ unit: 'binary-ascii', maxLength: 60 }) }),
    );
    fc.assert(
      fc.property(record, fc.boolean(), fc.array(mutation, { minLength: 1, maxLength: 4 }), (r, quoted, mutations) => {
        let text = quoted ? recordOutputLine(formatRecord(r)) : formatRecord(r);
        for (const m of mutations) {
          if (m.kind === 'flip' && text.length > 0) {
            const at = m.at % text.length;
            text = text.slice(0, at) + String.fromCharCode(m.ch) + text.slice(at + 1);
          } else if (m.kind === 'truncate') {
            text = text.slice(0, m.at % (text.length + 1));
          } else if (m.kind === 'extend') {
            text += m.tail;
          }
        }
        const parsed = parsesOrTypedError(text);
        // Anything accepted must be a record we can emit again.
        if (parsed) assert.deepStrictEqual(parseRecord(formatRecord(parsed)), parsed);
      }),
      { numRuns: RUNS * 2 },
    );
  });
});
