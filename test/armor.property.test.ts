/**
 * Property and fuzz tests for base64, CRC-24 and the armor (dime-formats.md §1.2–1.4,
 * prime-and-stacie.md §1.6): round trips, the one accepted spelling of strict base64, known CRC
 * answers, byte-exact reproduction of every armored vector, the reader's tolerances and its exact
 * error codes, and typed errors only on any text.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ARMOR_TAGS, MAX_ARMOR_TEXT, armor, dearmor, type ArmorTag } from '../src/dime/armor.js';
import { base64DecodeLenient, base64DecodeStrict, base64Encode, base64EncodeNoPad } from '../src/dime/base64.js';
import { toHex } from '../src/dime/bytes.js';
import { crc24, crc24Bytes } from '../src/dime/crc24.js';
import { vectorJson, vectorPath, vectorText } from './helpers/vectors.js';
import { attempt, expectCode } from './helpers/typed-errors.js';

const hex = toHex;
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const ALL_TAGS = Object.values(ARMOR_TAGS) as ArmorTag[];

/** Reference base64 encoder (RFC 4648 §4), independent of Buffer. */
function refEncode(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const n = ((bytes[i] as number) << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    const chars = [18, 12, 6, 0].map((s) => ALPHABET[(n >> s) & 63]);
    const keep = Math.min(4, bytes.length - i + 1);
    out += chars.slice(0, keep).join('') + '='.repeat(4 - keep);
  }
  return out;
}

/** Reference CRC-24 exactly as §1.3 words it: bitwise, no table. */
function refCrc24(data: Uint8Array): number {
  let c = 0xb704ce;
  for (const b of data) {
    c ^= b << 16;
    for (let i = 0; i < 8; i++) {
      c <<= 1;
      if (c & 0x1000000) c ^= 0x1864cfb;
    }
  }
  return c & 0xffffff;
}

const bytesArb = (max: number): fc.Arbitrary<Uint8Array> => fc.uint8Array({ maxLength: max });
const whitespace = fc.constantFrom(' ', '\n', '\r', '\t', '\r\n', '  ');

/** Insert `pieces` at the given relative positions of `s`. */
function insertAt(s: string, inserts: readonly [number, string][]): string {
  const sorted = inserts.map(([p, x]) => [p % (s.length + 1), x] as const).sort((a, b) => b[0] - a[0]);
  let out = s;
  for (const [p, x] of sorted) out = out.slice(0, p) + x + out.slice(p);
  return out;
}

describe('base64', () => {
  it('encoders match the RFC 4648 reference; lenient decoding inverts both', () => {
    fc.assert(
      fc.property(bytesArb(200), (x) => {
        const padded = base64Encode(x);
        assert.equal(padded, refEncode(x));
        assert.equal(base64EncodeNoPad(x), refEncode(x).replace(/=+$/, ''));
        assert.equal(hex(base64DecodeLenient(padded)), hex(x));
        assert.equal(hex(base64DecodeLenient(base64EncodeNoPad(x))), hex(x));
        // Views with an offset encode their own bytes only.
        const big = new Uint8Array(x.length + 6).fill(0xee);
        big.set(x, 3);
        assert.equal(base64Encode(big.subarray(3, 3 + x.length)), padded);
      }),
      { numRuns: 500 },
    );
  });

  it('lenient: whitespace and other non-alphabet characters anywhere are ignored; decoding stops at "="', () => {
    fc.assert(
      fc.property(bytesArb(120), fc.array(fc.tuple(fc.nat(), whitespace), { maxLength: 12 }), (x, ws) => {
        assert.equal(hex(base64DecodeLenient(insertAt(base64Encode(x), ws))), hex(x));
        assert.equal(hex(base64DecodeLenient(insertAt(base64EncodeNoPad(x), ws))), hex(x));
      }),
      { numRuns: 500 },
    );
    const junk = fc.constantFrom('-', '_', '*', '.', '\u00e9', '\u20ac', '\u0000', '\u007f', '\ud83d\ude00');
    fc.assert(
      fc.property(bytesArb(120), fc.array(fc.tuple(fc.nat(), junk), { maxLength: 8 }), fc.string({ maxLength: 20 }), (x, js, tail) => {
        const noPad = base64EncodeNoPad(x);
        assert.equal(hex(base64DecodeLenient(insertAt(noPad, js))), hex(x));
        // Everything after the first '=' is ignored.
        assert.equal(hex(base64DecodeLenient(`${noPad}=${tail}`)), hex(x));
      }),
      { numRuns: 300 },
    );
  });

  it('lenient: a final group of one character is BASE64_INVALID, 2 or 3 characters give 1 or 2 bytes', () => {
    fc.assert(
      fc.property(bytesArb(60), fc.constantFrom(...ALPHABET), (x, c) => {
        const groups = base64Encode(x).replace(/=+$/, '');
        const whole = base64Encode(x.subarray(0, x.length - (x.length % 3)));
        expectCode(() => base64DecodeLenient(`${whole}${c}`), 'BASE64_INVALID', `${whole}${c}`);
        expectCode(() => base64DecodeLenient(`${whole} \n${c}==`), 'BASE64_INVALID', `${whole}${c}==`);
        assert.equal(base64DecodeLenient(groups).length, x.length);
      }),
      { numRuns: 200 },
    );
  });

  it('strict: accepts exactly the canonical padded and unpadded spellings', () => {
    // Candidate strings: canonical spellings, their small corruptions, and random strings over a
    // small alphabet that includes padding, whitespace and non-alphabet characters.
    const canonical = bytesArb(20).chain((x) => fc.constantFrom(base64Encode(x), base64EncodeNoPad(x)));
    const corrupted = fc
      .tuple(canonical, fc.nat(), fc.constantFrom(...'AQgwBRhx+/=- \n'), fc.constantFrom('replace', 'insert', 'delete'))
      .map(([s, p, c, op]) => {
        const i = p % (s.length + 1);
        if (op === 'insert') return s.slice(0, i) + c + s.slice(i);
        if (s.length === 0) return c;
        const j = i % s.length;
        return op === 'delete' ? s.slice(0, j) + s.slice(j + 1) : s.slice(0, j) + c + s.slice(j + 1);
      });
    const random = fc.string({ unit: fc.constantFrom(...'AQgwBR+/=\n -é'), maxLength: 10 });
    let accepted = 0;
    let rejected = 0;
    fc.assert(
      fc.property(fc.oneof(canonical, corrupted, random), (s) => {
        const lenient = attempt(() => base64DecodeLenient(s));
        const isCanonical = lenient.ok && (s === base64Encode(lenient.value) || s === base64EncodeNoPad(lenient.value));
        const strict = attempt(() => base64DecodeStrict(s));
        if (strict.ok) {
          accepted++;
          assert.ok(isCanonical, `strict accepted the non-canonical ${JSON.stringify(s)}`);
          assert.equal(hex(strict.value), hex((lenient as { value: Uint8Array }).value));
        } else {
          rejected++;
          assert.equal(strict.code, 'BASE64_INVALID');
          assert.ok(!isCanonical, `strict rejected the canonical ${JSON.stringify(s)}`);
        }
      }),
      { numRuns: 3000 },
    );
    assert.ok(accepted > 300 && rejected > 300, `accepted ${accepted}, rejected ${rejected}`);
  });

  it('strict: known spellings', () => {
    const ok: [string, string][] = [
      ['', ''],
      ['QQ==', '41'],
      ['QQ', '41'],
      ['QUI=', '4142'],
      ['QUI', '4142'],
      ['QUJD', '414243'],
      ['+/+/', 'fbffbf'],
    ];
    for (const [s, h] of ok) assert.equal(hex(base64DecodeStrict(s)), h, s);
    for (const s of ['Q', 'QR==', 'QR', 'QUJ=', 'QUJ', 'QQ=', 'QQ===', 'Q===', '====', '==', '=', 'QUJD=', 'QUJD==', 'QUJD====', ' QUJD', 'QU JD', 'QUJD\n', 'QQ==QQ==', '-_-_', 'QUI=A', 'QUÉD', 'QQ\r\n']) {
      expectCode(() => base64DecodeStrict(s), 'BASE64_INVALID', JSON.stringify(s));
    }
  });
});

describe('CRC-24', () => {
  it('known answers: empty input is the initial value 0xB704CE, "123456789" gives 0x21CF02', () => {
    assert.equal(crc24(new Uint8Array(0)), 0xb704ce);
    assert.equal(hex(crc24Bytes(new Uint8Array(0))), 'b704ce');
    assert.equal(crc24(new TextEncoder().encode('123456789')), 0x21cf02);
    assert.equal(hex(crc24Bytes(new TextEncoder().encode('123456789'))), '21cf02');
  });

  it('the table implementation equals the bitwise definition', () => {
    fc.assert(
      fc.property(bytesArb(300), (x) => {
        const c = crc24(x);
        assert.equal(c, refCrc24(x));
        assert.ok(c >= 0 && c <= 0xffffff);
        assert.equal(hex(crc24Bytes(x)), c.toString(16).padStart(6, '0'));
      }),
      { numRuns: 500 },
    );
  });

  it('the =XXXX line of every armored vector is the CRC-24 of its decoded body', () => {
    const files = armoredVectors();
    assert.ok(files.length >= 15, `${files.length} armored vectors`);
    for (const f of files) {
      const lines = vectorText(f).replace(/\n$/, '').split('\n');
      const sum = lines.at(-2)!;
      assert.match(sum, /^=[A-Za-z0-9+/]{4}$/, f);
      const body = lines.slice(1, -2).join('');
      const data = new Uint8Array(Buffer.from(body, 'base64'));
      assert.equal(`=${base64Encode(crc24Bytes(data))}`, sum, f);
    }
    const org = vectorJson<{ org_signet: { binary_hex: string; armor: { crc24_hex: string } }; org_key: { binary_hex: string; armor: { crc24_hex: string } } }>('magma/org.json');
    for (const o of [org.org_signet, org.org_key]) {
      assert.equal(crc24(new Uint8Array(Buffer.from(o.binary_hex, 'hex'))).toString(16).padStart(6, '0'), o.armor.crc24_hex);
    }
  });
});

/** Every armored file among the vectors (relative paths), libdime and magma. */
function armoredVectors(): string[] {
  const out: string[] = [];
  for (const dir of ['libdime/signets', 'libdime/keys', 'libdime/appendix-b-check', 'magma/sandbox']) {
    for (const name of fs.readdirSync(vectorPath(dir)).sort()) {
      const rel = `${dir}/${name}`;
      if (vectorText(rel).startsWith('-----BEGIN ')) out.push(rel);
    }
  }
  return out;
}

function tagOf(text: string): ArmorTag {
  const m = /^-----BEGIN (.+)-----$/m.exec(text);
  assert.ok(m);
  const tag = ALL_TAGS.find((t) => t === m[1]);
  assert.ok(tag, `unknown tag ${m[1]}`);
  return tag;
}

describe('armor writer', () => {
  it('dearmor then armor reproduces every libdime vector byte for byte, and magma files plus one final LF', () => {
    let libdime = 0;
    let magma = 0;
    for (const f of armoredVectors()) {
      const text = vectorText(f);
      const tag = tagOf(text);
      const { tag: got, data } = dearmor(text, [tag]);
      assert.equal(got, tag);
      if (f.startsWith('magma/')) {
        assert.ok(!text.endsWith('\n'), `${f} has no final LF`);
        assert.equal(armor(tag, data), `${text}\n`, f);
        magma++;
      } else {
        assert.equal(armor(tag, data), text, f);
        libdime++;
      }
    }
    // 10 signets and SSRs (tampered ones included), 5 keys files, the Ed25519 PEM, 2 Appendix B files.
    assert.equal(libdime, 18);
    assert.equal(magma, 2);
  });

  it('layout: BEGIN, 64-column body, one =CRC line, END, one final LF; dearmor inverts it', () => {
    fc.assert(
      fc.property(fc.constantFrom(...ALL_TAGS), bytesArb(400), (tag, x) => {
        const text = armor(tag, x);
        assert.ok(text.endsWith('\n') && !text.endsWith('\n\n'));
        const lines = text.slice(0, -1).split('\n');
        assert.equal(lines[0], `-----BEGIN ${tag}-----`);
        assert.equal(lines.at(-1), `-----END ${tag}-----`);
        assert.equal(lines.at(-2), `=${refEncode(Uint8Array.of(refCrc24(x) >> 16, (refCrc24(x) >> 8) & 0xff, refCrc24(x) & 0xff))}`);
        const body = lines.slice(1, -2);
        assert.equal(body.join(''), refEncode(x));
        body.forEach((l, i) => assert.ok(i === body.length - 1 ? l.length > 0 && l.length <= 64 : l.length === 64));
        const back = dearmor(text, [tag]);
        assert.equal(back.tag, tag);
        assert.equal(hex(back.data), hex(x));
      }),
      { numRuns: 300 },
    );
  });
});

/** What libdime's dime_keys_generate writes: a newline after every 64th body character, so a blank line when the body fills its last line. */
function keysGenerateStyle(tag: ArmorTag, x: Uint8Array): string {
  const b64 = base64Encode(x);
  let body = '';
  for (let i = 0; i < b64.length; i++) body += b64[i] + ((i + 1) % 64 === 0 ? '\n' : '');
  return `-----BEGIN ${tag}-----\n${body}\n=${base64Encode(crc24Bytes(x))}\n-----END ${tag}-----\n`;
}

describe('armor reader tolerance', () => {
  const tagArb = fc.constantFrom(...ALL_TAGS);

  it('CRLF, no final newline, blank lines, whitespace around and inside lines, text before BEGIN and after END', () => {
    const prefix = fc.array(fc.string({ unit: 'grapheme-ascii', maxLength: 30 }), { maxLength: 3 }).map((ls) => ls.filter((l) => !l.includes('-----BEGIN')));
    fc.assert(
      fc.property(
        tagArb,
        bytesArb(300),
        fc.record({ crlf: fc.boolean(), noFinal: fc.boolean(), blankBeforeSum: fc.boolean(), pad: fc.array(fc.tuple(fc.nat(), fc.constantFrom(' ', '\t', '  ')), { maxLength: 6 }) }),
        prefix,
        fc.string({ maxLength: 40 }),
        (tag, x, o, before, after) => {
          let lines = armor(tag, x).slice(0, -1).split('\n');
          if (o.blankBeforeSum) lines.splice(lines.length - 2, 0, '', '  ');
          // Leading/trailing whitespace on any line, and whitespace inside body and END lines.
          lines = lines.map((l, i) => {
            const pads = o.pad.filter(([p]) => p % lines.length === i);
            if (pads.length === 0) return l;
            const inner = i > 0 ? insertAt(l, pads) : l;
            return `${pads[0]![1]}${inner}${pads[0]![1]}`;
          });
          let text = [...before, ...lines].join('\n') + (o.noFinal ? '' : `\n${after}`);
          if (o.crlf) text = text.replace(/\n/g, '\r\n');
          const r = dearmor(text, [tag]);
          assert.equal(r.tag, tag);
          assert.equal(hex(r.data), hex(x));
        },
      ),
      { numRuns: 500 },
    );
  });

  it("dime_keys_generate's blank line before the checksum (body a multiple of 64 characters)", () => {
    fc.assert(
      fc.property(tagArb, fc.integer({ min: 0, max: 6 }).chain((n) => fc.uint8Array({ minLength: 48 * n, maxLength: 48 * n })), (tag, x) => {
        const text = keysGenerateStyle(tag, x);
        if (x.length > 0) assert.ok(text.includes('\n\n='), 'the writer emits the blank line');
        assert.equal(hex(dearmor(text, [tag]).data), hex(x));
      }),
      { numRuns: 100 },
    );
    fc.assert(
      fc.property(tagArb, bytesArb(300), (tag, x) => {
        assert.equal(hex(dearmor(keysGenerateStyle(tag, x), [tag]).data), hex(x));
      }),
      { numRuns: 200 },
    );
  });

  it('the first block with a requested tag wins; the tag comes back', () => {
    const a = armor(ARMOR_TAGS.orgSignet, Uint8Array.of(1, 2, 3));
    const b = armor(ARMOR_TAGS.userSignet, Uint8Array.of(4, 5, 6));
    assert.deepEqual(dearmor(a + b, [ARMOR_TAGS.userSignet, ARMOR_TAGS.orgSignet]), { tag: ARMOR_TAGS.orgSignet, data: Uint8Array.of(1, 2, 3) });
    assert.deepEqual(dearmor(a + b, [ARMOR_TAGS.userSignet]), { tag: ARMOR_TAGS.userSignet, data: Uint8Array.of(4, 5, 6) });
    // Body lines of any width are accepted.
    const x = Uint8Array.from({ length: 200 }, (_, i) => i);
    const oneLine = `-----BEGIN USER KEY-----\n${base64Encode(x)}\n=${base64Encode(crc24Bytes(x))}\n-----END USER KEY-----`;
    assert.equal(hex(dearmor(oneLine, [ARMOR_TAGS.userKey]).data), hex(x));
  });
});

describe('armor reader errors', () => {
  const sample = vectorText('libdime/signets/example.com.signet');
  const tags = [ARMOR_TAGS.userSignet, ARMOR_TAGS.orgSignet];
  const lines = sample.slice(0, -1).split('\n');
  const sumAt = lines.length - 2;
  const join = (ls: string[]): string => ls.join('\n') + '\n';

  it('exact codes for each kind of damage', () => {
    assert.equal(hex(dearmor(sample, tags).data), hex(dearmor(join(lines), tags).data));
    expectCode(() => dearmor('', tags), 'ARMOR_NOT_FOUND', 'empty text');
    expectCode(() => dearmor(sample, [ARMOR_TAGS.userKey, ARMOR_TAGS.signingRequest]), 'ARMOR_NOT_FOUND', 'other tags');
    expectCode(() => dearmor(sample.replace('-----BEGIN ORGANIZATIONAL SIGNET-----', '-----BEGIN ORGANIZATIONAL SIGNET----- x'), tags), 'ARMOR_NOT_FOUND', 'junk after BEGIN');
    expectCode(() => dearmor(sample.replace('BEGIN ORGANIZATIONAL', 'BEGIN  ORGANIZATIONAL'), tags), 'ARMOR_NOT_FOUND', 'two spaces in BEGIN');
    expectCode(() => dearmor(sample.toLowerCase(), tags), 'ARMOR_NOT_FOUND', 'lower case');
    expectCode(() => dearmor(join(lines.filter((_, i) => i !== sumAt)), tags), 'ARMOR_NO_CHECKSUM', 'no checksum line');
    expectCode(() => dearmor(join(lines.map((l, i) => (i === sumAt ? '=AAAA' : l))), tags), 'ARMOR_CRC_MISMATCH', 'wrong checksum');
    expectCode(() => dearmor(join(lines.map((l, i) => (i === 1 ? `${l[0] === 'A' ? 'B' : 'A'}${l.slice(1)}` : l))), tags), 'ARMOR_CRC_MISMATCH', 'changed body');
    expectCode(() => dearmor(join(lines.slice(0, -1)), tags), 'ARMOR_NO_END', 'no END line');
    expectCode(() => dearmor(join(lines.map((l, i) => (i === lines.length - 1 ? '-----END USER SIGNET-----' : l))), tags), 'ARMOR_TRAILING_DATA', 'END of another tag');
    expectCode(() => dearmor(join([...lines.slice(0, sumAt)]), tags), 'ARMOR_NO_END', 'cut before the checksum');
    expectCode(() => dearmor(join([...lines.slice(0, -1), 'AAAA', lines.at(-1)!]), tags), 'ARMOR_TRAILING_DATA', 'data after the checksum');
    expectCode(() => dearmor(join([...lines.slice(0, sumAt), '=AAAA', lines[sumAt]!, lines.at(-1)!]), tags), 'ARMOR_TRAILING_DATA', 'two checksum lines');
    // 358 bytes end in a 2-character group: three more characters leave a final group of one.
    expectCode(() => dearmor(join([lines[0]!, 'AAA', ...lines.slice(1)]), tags), 'BASE64_INVALID', 'a final group of one character');
    // After the padding, decoding has stopped: an extra body line there changes nothing.
    assert.equal(dearmor(join([...lines.slice(0, sumAt), 'AAAA', ...lines.slice(sumAt)]), tags).data.length, 358);
    expectCode(() => dearmor(' '.repeat(MAX_ARMOR_TEXT + 1), tags), 'ARMOR_TOO_LARGE', 'oversized text');
    expectCode(() => dearmor(sample + ' '.repeat(MAX_ARMOR_TEXT + 1 - sample.length), tags), 'ARMOR_TOO_LARGE', 'oversized armor');
    assert.equal(dearmor(sample + ' '.repeat(MAX_ARMOR_TEXT - sample.length), tags).data.length, 358, 'at the limit');
  });

  it('any single character change: in the body exact by re-decoding, in the checksum always a mismatch, in BEGIN/END not found / trailing', () => {
    const data = dearmor(sample, tags).data;
    const nonSpace = fc.constantFrom(...ALPHABET, '=', '-', '.', 'é');
    fc.assert(
      fc.property(fc.nat(), nonSpace, (p, c) => {
        const at = p % sample.length;
        fc.pre(sample[at] !== c && sample[at] !== '\n');
        const text = sample.slice(0, at) + c + sample.slice(at + 1);
        const lineNo = sample.slice(0, at).split('\n').length - 1;
        const r = attempt(() => dearmor(text, tags));
        const what = `${JSON.stringify(c)} at ${at} (line ${lineNo})`;
        if (lineNo === 0) {
          assert.equal(r.ok ? 'accepted' : r.code, 'ARMOR_NOT_FOUND', what);
        } else if (lineNo === lines.length - 1) {
          assert.equal(r.ok ? 'accepted' : r.code, 'ARMOR_TRAILING_DATA', what);
        } else if (lineNo === sumAt) {
          // The checksum is 4 characters for exactly 24 bits: every change is detected (or breaks the line).
          // Replacing the leading '=' turns the line into body text, and then there is no checksum at all.
          const leading = at === sample.indexOf('\n=') + 1;
          assert.equal(r.ok ? 'accepted' : r.code, leading ? 'ARMOR_NO_CHECKSUM' : 'ARMOR_CRC_MISMATCH', what);
        } else if (ALPHABET.includes(c)) {
          // A base64 change: rejected unless it only touched the unused bits before the padding.
          const body = text.split('\n').slice(1, sumAt).join('');
          const same = Buffer.from(body, 'base64').equals(Buffer.from(data));
          assert.equal(r.ok ? 'accepted' : r.code, same ? 'accepted' : 'ARMOR_CRC_MISMATCH', what);
          if (r.ok) assert.equal(hex(r.value.data), hex(data));
        } else {
          // '=' ends the base64 early; other characters are skipped. Either way the data must match the CRC.
          if (r.ok) assert.equal(hex(r.value.data), hex(data), what);
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('armor fuzz', () => {
  const tags = ALL_TAGS;

  it('random text never throws anything but a DimeError', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 300 }), fc.string({ unit: 'grapheme-ascii', maxLength: 300 })), fc.subarray(tags, { minLength: 1 }), (s, ts) => {
        const r = attempt(() => dearmor(s, ts));
        if (r.ok) assert.ok(ts.includes(r.value.tag));
      }),
      { numRuns: 1000 },
    );
  });

  it('mutated armor never throws anything but a DimeError, and what it returns has a matching checksum line', () => {
    const pieces = fc.constantFrom('\n', '\r\n', ' ', '=', '==', '-----', 'A', '/', '+', '\u00e9', '-----END USER KEY-----', '-----BEGIN USER KEY-----', '=AAAA', '');
    fc.assert(
      fc.property(
        fc.constantFrom(...ALL_TAGS),
        bytesArb(200),
        fc.array(fc.tuple(fc.nat(), fc.nat(5), pieces), { minLength: 1, maxLength: 6 }),
        (tag, x, edits) => {
          let text = armor(tag, x);
          for (const [p, del, ins] of edits) {
            const at = p % (text.length + 1);
            text = text.slice(0, at) + ins + text.slice(at + del);
          }
          const r = attempt(() => dearmor(text, [tag, ARMOR_TAGS.userKey]));
          if (r.ok) {
            // Whatever comes back carries a checksum line that is the CRC-24 of it.
            const sums = text.split('\n').map((l) => l.replace(/\s+/g, '')).filter((l) => l.length === 5 && l.startsWith('='));
            assert.ok(sums.includes(`=${base64Encode(crc24Bytes(r.value.data))}`), `no matching checksum line in ${JSON.stringify(text)}`);
          }
        },
      ),
      { numRuns: 1500 },
    );
  });
});
