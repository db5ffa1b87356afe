/**
 * Property tests for the MIME ↔ chunk-contents mapping (docs/mime-mapping.md).
 *
 *  1. Generated MIME trees (random header fields with folding and odd spacing, common headers in
 *     any case, repeated or absent; nested multiparts of every subtype, message/rfc822 parts,
 *     preambles, epilogues, transport padding, missing close delimiters; base64, quoted-printable,
 *     8-bit and binary bodies; CRLF, LF or mixed line ends) round-trip byte for byte, and split into
 *     the chunks the documented rules predict: one per leaf, display or attachment as §4 says, the
 *     first common field of each label unfolded in chunk 33.
 *  2. Arbitrary byte strings, MIME-shaped token soup and mutated corpus messages round-trip byte for
 *     byte, or fail only with a size-limit DimeError.
 *  3. A damaged structure line makes partsToMime fail only with MIME_BAD_MANIFEST.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { COMMON_HEADER_LABELS, decodeCommonHeaders, encodeCommonHeaders, type CommonHeaderLabel } from '../src/dime/message/headers.js';
import { mimeToParts, partsToMime, type MessageParts } from '../src/gateway/mime.js';
import { attempt } from './helpers/typed-errors.js';

const RUNS = 1000;
const MAIL = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test/fixtures/mail');
const CORPUS = fs
  .readdirSync(MAIL)
  .filter((f) => f.endsWith('.eml'))
  .sort()
  .map((f) => new Uint8Array(fs.readFileSync(path.join(MAIL, f))));

/** The mapping's contract on any input: exact round trip, or a size-limit DimeError. */
function roundTripsOrLimit(raw: Uint8Array): MessageParts | undefined {
  const r = attempt(() => mimeToParts(raw));
  if (!r.ok) {
    assert.ok(r.code === 'MIME_TOO_LARGE' || r.code === 'MIME_HEADERS_TOO_LARGE', `unexpected ${r.code}`);
    return undefined;
  }
  const back = partsToMime(r.value);
  if (!Buffer.from(back).equals(Buffer.from(raw))) {
    assert.fail(`round trip differs for ${JSON.stringify(Buffer.from(raw).toString('latin1').slice(0, 400))}`);
  }
  assert.deepEqual(decodeCommonHeaders(encodeCommonHeaders(r.value.common)), r.value.common);
  assert.ok(r.value.display.length >= 1);
  return r.value;
}

// ---------------------------------------------------------------------------------------------
// Generated MIME trees

type EolMode = 'crlf' | 'lf' | 'mixed';
interface HeaderField {
  name: string;
  /** Between the colon and the first word. */
  lead: string;
  words: string[];
  /** Separator before each word after the first: white space, optionally preceded by a line break (a fold). */
  seps: Array<{ fold: boolean; ws: string }>;
}
interface Leaf {
  kind: 'leaf';
  headers: HeaderField[];
  type: string;
  disposition: '' | 'inline' | 'attachment';
  body: { enc: 'base64' | 'qp' | '8bit' | 'binary'; data: Uint8Array; text: string[] };
}
interface Multi {
  kind: 'multi';
  headers: HeaderField[];
  subtype: string;
  tag: string;
  preamble: string[];
  epilogue: string[];
  padding: string;
  closed: boolean;
  parts: Tree[];
}
type Tree = Leaf | Multi;
interface Message {
  eol: EolMode;
  eolSeed: number[];
  headers: HeaderField[];
  body: Tree;
}

const word = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9.,<>@"()\[\]!?#&+\/:;]{1,10}$/),
  fc.constantFrom('=?UTF-8?B?w6kgw6A=?=', '=?ISO-8859-1?Q?Fr=FCh?=', 'Ünïcødé', '日本語', '<a@example.com>', 'undisclosed-recipients:;'),
);
const sep = fc.record({ fold: fc.boolean(), ws: fc.constantFrom(' ', '\t', '  ', ' \t') });
const fieldOf = (name: fc.Arbitrary<string>): fc.Arbitrary<HeaderField> =>
  fc.record({
    name,
    lead: fc.constantFrom(' ', ' ', ' ', '', '  ', '\t'),
    words: fc.array(word, { minLength: 0, maxLength: 5 }),
    seps: fc.array(sep, { minLength: 4, maxLength: 4 }),
  });
const randomCase = (s: string): fc.Arbitrary<string> =>
  fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }).map((up) => [...s].map((c, i) => (up[i] ? c.toUpperCase() : c.toLowerCase())).join(''));
const commonName = fc.constantFrom('Date', 'To', 'Cc', 'CC', 'From', 'Organization', 'Subject').chain((n) => fc.oneof(fc.constant(n), randomCase(n)));
const otherName = fc.constantFrom('Received', 'Message-ID', 'X-Mailer', 'DKIM-Signature', 'Reply-To', 'List-Id', 'References', 'Bcc', 'X-Spam-Score', 'Content-Description');
const topHeaders = fc.array(fc.oneof(fieldOf(commonName), fieldOf(otherName)), { maxLength: 10 });
const partHeaders = fc.array(fieldOf(fc.constantFrom('Content-ID', 'Content-Description', 'X-Attachment-Id')), { maxLength: 2 });
const textLines = fc.array(fc.stringMatching(/^[A-Za-z0-9 .,!?éüß€]{0,40}$/), { maxLength: 5 });

const leafArb: fc.Arbitrary<Leaf> = fc.record({
  kind: fc.constant('leaf' as const),
  headers: partHeaders,
  type: fc.constantFrom('text/plain; charset=utf-8', 'text/html', 'TEXT/Plain', 'application/pdf', 'image/png', 'application/octet-stream', 'message/rfc822', ''),
  disposition: fc.constantFrom('' as const, 'inline' as const, 'attachment' as const),
  body: fc.record({ enc: fc.constantFrom('base64' as const, 'qp' as const, '8bit' as const, 'binary' as const), data: fc.uint8Array({ maxLength: 200 }), text: textLines }),
});

const treeArb: fc.Arbitrary<Tree> = fc.letrec<{ tree: Tree; multi: Multi }>((tie) => ({
  tree: fc.oneof({ depthSize: 'small', maxDepth: 5, withCrossShrink: true }, leafArb, tie('multi')),
  multi: fc.record({
    kind: fc.constant('multi' as const),
    headers: partHeaders,
    subtype: fc.constantFrom('mixed', 'alternative', 'related', 'signed', 'report', 'digest', 'x-unknown'),
    tag: fc.stringMatching(/^[A-Za-z0-9'()+,.\/:?=-]{0,20}$/),
    preamble: textLines,
    epilogue: textLines,
    padding: fc.constantFrom('', '', '', ' ', '\t '),
    closed: fc.oneof(fc.constant(true), fc.constant(true), fc.constant(false)),
    parts: fc.array(tie('tree'), { minLength: 1, maxLength: 3 }),
  }),
})).tree;

const messageArb: fc.Arbitrary<Message> = fc.record({
  eol: fc.constantFrom('crlf' as const, 'lf' as const, 'mixed' as const),
  eolSeed: fc.array(fc.boolean().map(Number), { minLength: 16, maxLength: 16 }),
  headers: topHeaders,
  body: treeArb,
});

/** Serialises a generated message; also predicts the chunks (in document order) and chunk 33. */
class Writer {
  private out: Buffer[] = [];
  private n = 0;
  private boundaries = 0;
  leaves: Array<{ display: boolean }> = [];
  constructor(private readonly msg: Message) {}

  eol(): string {
    if (this.msg.eol === 'crlf') return '\r\n';
    if (this.msg.eol === 'lf') return '\n';
    return this.msg.eolSeed[this.n++ % 16] ? '\r\n' : '\n';
  }
  put(s: string | Uint8Array): void {
    this.out.push(typeof s === 'string' ? Buffer.from(s, 'utf8') : Buffer.from(s));
  }
  field(f: HeaderField): void {
    this.put(`${f.name}:${f.lead}`);
    f.words.forEach((w, i) => {
      if (i > 0) {
        const s = f.seps[(i - 1) % 4] as { fold: boolean; ws: string };
        if (s.fold) this.put(this.eol());
        this.put(s.ws);
      }
      this.put(w);
    });
    this.put(this.eol());
  }
  lines(ls: string[]): void {
    for (const l of ls) this.put(l + this.eol());
  }
  body(leaf: Leaf): void {
    const { enc, data, text } = leaf.body;
    if (enc === 'base64') {
      const b = Buffer.from(data).toString('base64');
      for (let i = 0; i < b.length; i += 76) this.put(b.slice(i, i + 76) + this.eol());
    } else if (enc === 'qp') {
      for (const l of text) this.put(Buffer.from(l, 'utf8').toString('latin1').replace(/[^ -<>-~]/g, (c) => `=${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`).replace(/(.{70})/g, `$1=${this.eol()}`) + this.eol());
    } else if (enc === '8bit') {
      this.lines(text);
    } else {
      this.put(data);
    }
  }
  /** Entity = part headers + blank line + body; `parent` drives the documented display rule. */
  entity(t: Tree, parent: string, index: number, depth: number): void {
    for (const f of t.headers) this.field(f);
    if (t.kind === 'leaf') {
      if (t.type) this.put(`Content-Type: ${t.type}${this.eol()}`);
      if (t.disposition) this.put(`Content-Disposition: ${t.disposition}; filename="f${index}"${this.eol()}`);
      if (t.body.enc !== '8bit') this.put(`Content-Transfer-Encoding: ${t.body.enc}${this.eol()}`);
      this.put(this.eol());
      this.body(t);
      this.leaves.push({ display: isDisplay(parent, index, t.disposition, t.type || (parent === 'digest' ? 'message/rfc822' : 'text/plain')) });
      return;
    }
    const boundary = `=_${t.tag}_${this.boundaries++}`;
    this.put(`Content-Type: multipart/${t.subtype};${this.eol()} boundary="${boundary}"${this.eol()}${this.eol()}`);
    const before = this.leaves.length;
    this.multipartBody(t, boundary, depth);
    // children of multipart/signed stay whole: one leaf for the signed entity
    if (parent === 'signed') this.leaves.splice(before, this.leaves.length - before, { display: isDisplay(parent, index, '', 'multipart/x') });
  }
  multipartBody(t: Multi, boundary: string, depth: number): void {
    this.lines(t.preamble);
    t.parts.forEach((p, i) => {
      if (i > 0) this.put(this.eol());
      this.put(`--${boundary}${t.padding}${this.eol()}`);
      this.entity(p, t.subtype, i, depth + 1);
    });
    if (t.closed) {
      this.put(`${this.eol()}--${boundary}--${this.eol()}`);
      this.lines(t.epilogue);
    }
  }
  message(): Uint8Array {
    for (const f of this.msg.headers) this.field(f);
    const t = this.msg.body;
    if (t.kind === 'leaf') {
      // a single-part message: its Content-* fields are top-level headers, the body is one display chunk
      if (t.type) this.put(`Content-Type: ${t.type}${this.eol()}`);
      this.put(this.eol());
      this.body(t);
      this.leaves.push({ display: true });
    } else {
      const boundary = `=_${t.tag}_${this.boundaries++}`;
      this.put(`MIME-Version: 1.0${this.eol()}Content-Type: multipart/${t.subtype}; boundary="${boundary}"${this.eol()}${this.eol()}`);
      this.multipartBody(t, boundary, 1);
      if (!this.leaves.some((l) => l.display)) (this.leaves[0] as { display: boolean }).display = true;
    }
    return new Uint8Array(Buffer.concat(this.out));
  }
}

/** docs/mime-mapping.md §4, restated independently of the implementation. */
function isDisplay(parent: string, index: number, disposition: string, type: string): boolean {
  if (disposition) return disposition === 'inline';
  if (parent === 'alternative' || (parent === 'signed' && index === 0)) return true;
  const major = type.split('/')[0]?.toLowerCase();
  return major === 'text' || major === 'multipart';
}

/** Chunk 33 as documented: the first field of each label, unfolded, leading white space dropped. */
function expectedCommon(msg: Message): Partial<Record<CommonHeaderLabel, string>> {
  const out: Partial<Record<CommonHeaderLabel, string>> = {};
  for (const f of msg.headers) {
    const label = COMMON_HEADER_LABELS.find((l) => l.toLowerCase() === f.name.toLowerCase());
    if (!label || out[label] !== undefined) continue;
    out[label] = f.words.map((w, i) => (i > 0 ? (f.seps[(i - 1) % 4] as { ws: string }).ws : '') + w).join('');
  }
  return out;
}

describe('MIME gateway properties: generated MIME trees', () => {
  it('round-trip byte for byte and split into the documented chunks', (t) => {
    const seen = { runs: 0, multipart: 0, attachments: 0, maxChunks: 0, bytes: 0 };
    fc.assert(
      fc.property(messageArb, (msg) => {
        const w = new Writer(msg);
        const raw = w.message();
        const parts = roundTripsOrLimit(raw);
        assert.ok(parts, 'a generated message is far below the limits');
        seen.runs++;
        seen.bytes += raw.length;
        if (msg.body.kind === 'multi') seen.multipart++;
        if (parts.attachments.length > 0) seen.attachments++;
        seen.maxChunks = Math.max(seen.maxChunks, parts.display.length + parts.attachments.length);
        assert.deepEqual(
          { display: parts.display.length, attachments: parts.attachments.length },
          { display: w.leaves.filter((l) => l.display).length, attachments: w.leaves.filter((l) => !l.display).length },
        );
        const want = expectedCommon(msg);
        for (const label of COMMON_HEADER_LABELS) {
          const got: Uint8Array | undefined = parts.common[label];
          const expected = want[label];
          if (expected !== undefined) assert.equal(Buffer.from(got as Uint8Array).toString('utf8'), expected, label);
          else if (label === 'CC' || label === 'Organization') assert.equal(got, undefined, label);
          else assert.equal(Buffer.from(got as Uint8Array).toString('utf8'), label === 'To' ? 'undisclosed-recipients:;' : '', label);
        }
      }),
      { numRuns: RUNS },
    );
    // what the generator covered, so a generator that degenerates shows up in the log
    t.diagnostic(`${seen.runs} messages, ${seen.multipart} multipart, ${seen.attachments} with attachments, up to ${seen.maxChunks} chunks, ${Math.round(seen.bytes / seen.runs)} bytes on average`);
  });
});

// ---------------------------------------------------------------------------------------------
// Anything at all

const FRAGMENTS = [
  '\r\n', '\n', '\r', ' ', '\t', ':', '--', '--b', '--b--', '--c', 'b', '"', ';', '=',
  'Subject:', 'To: ', 'cc:', 'FROM :', 'Date:', 'Organization:', 'X-A: 1', 'Received: x',
  'Content-Type: multipart/mixed; boundary=b', 'Content-Type: multipart/alternative; boundary="c"',
  'Content-Type: multipart/signed; boundary=b', 'Content-Type: text/plain', 'Content-Type: message/rfc822',
  'Content-Disposition: attachment', 'Content-Disposition: inline', 'X-DIME-MIME-Map: 1 D',
  '\u00e9', '\u0000', '\u00ff', 'body text',
];
const soup = fc
  .array(fc.oneof(fc.constantFrom(...FRAGMENTS).map((s) => Buffer.from(s, 'latin1')), fc.uint8Array({ maxLength: 8 }).map((b) => Buffer.from(b))), { maxLength: 80 })
  .map((xs) => new Uint8Array(Buffer.concat(xs)));

type Mutation = { at: number; kind: 'insert' | 'delete' | 'replace' | 'dup' | 'truncate' | 'lf'; len: number; bytes: Uint8Array };
const mutation: fc.Arbitrary<Mutation> = fc.record({
  at: fc.nat(),
  kind: fc.constantFrom('insert' as const, 'delete' as const, 'replace' as const, 'dup' as const, 'truncate' as const, 'lf' as const),
  len: fc.integer({ min: 1, max: 200 }),
  bytes: fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 6 }), fc.constantFrom(...FRAGMENTS).map((s) => new Uint8Array(Buffer.from(s, 'latin1')))),
});
function mutate(src: Uint8Array, ms: Mutation[]): Uint8Array {
  let b = Buffer.from(src);
  for (const m of ms) {
    const at = b.length === 0 ? 0 : m.at % (b.length + 1);
    const end = Math.min(b.length, at + m.len);
    if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
    else if (m.kind === 'delete') b = Buffer.concat([b.subarray(0, at), b.subarray(end)]);
    else if (m.kind === 'replace') b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(Math.min(b.length, at + m.bytes.length))]);
    else if (m.kind === 'dup') b = Buffer.concat([b.subarray(0, end), b.subarray(at, end), b.subarray(end)]);
    else if (m.kind === 'truncate') b = b.subarray(0, at);
    else b = Buffer.from(b.toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
  }
  return new Uint8Array(b);
}

describe('MIME gateway properties: any input', () => {
  it('arbitrary byte strings round-trip or hit a size limit', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 3000 }), (raw) => void roundTripsOrLimit(raw)), { numRuns: RUNS });
  });

  it('MIME-shaped token soup round-trips or hits a size limit', () => {
    fc.assert(fc.property(soup, (raw) => void roundTripsOrLimit(raw)), { numRuns: 3 * RUNS });
  });

  it('mutated corpus messages round-trip or hit a size limit', () => {
    fc.assert(
      fc.property(fc.nat(CORPUS.length - 1), fc.array(mutation, { minLength: 1, maxLength: 4 }), (i, ms) => void roundTripsOrLimit(mutate(CORPUS[i] as Uint8Array, ms))),
      { numRuns: 2 * RUNS },
    );
  });

  it('generated messages with their lines shuffled or cut round-trip', () => {
    fc.assert(
      fc.property(messageArb, fc.array(mutation, { minLength: 1, maxLength: 3 }), (msg, ms) => void roundTripsOrLimit(mutate(new Writer(msg).message(), ms))),
      { numRuns: RUNS },
    );
  });
});

describe('MIME gateway properties: damaged structure line', () => {
  it('partsToMime fails only with MIME_BAD_MANIFEST', () => {
    const base = CORPUS.map((raw) => mimeToParts(raw));
    const printable = fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c));
    fc.assert(
      fc.property(fc.nat(base.length - 1), fc.array(fc.tuple(fc.nat(), printable, fc.boolean()), { minLength: 1, maxLength: 3 }), (i, edits) => {
        const p = base[i] as MessageParts;
        const other = Buffer.from(p.otherHeaders).toString('latin1');
        const end = /\r\n(?! )/.exec(other)!.index;
        let line = other.slice(0, end);
        for (const [at, c, insert] of edits) {
          const k = 'X-DIME-MIME-Map: '.length + (at % Math.max(1, line.length - 'X-DIME-MIME-Map: '.length));
          line = insert ? line.slice(0, k) + c + line.slice(k) : line.slice(0, k) + c + line.slice(k + 1);
        }
        const r = attempt(() => partsToMime({ ...p, otherHeaders: new Uint8Array(Buffer.from(line + other.slice(end), 'latin1')) }));
        if (!r.ok) assert.equal(r.code, 'MIME_BAD_MANIFEST');
      }),
      { numRuns: 2 * RUNS },
    );
  });
});
