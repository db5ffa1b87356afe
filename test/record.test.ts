/**
 * Management records (`_dx.<domain>` TXT): libdime genrec's output reproduced byte for byte, the
 * libdime tokenizer rules (separators, `=` handling, names), our stricter value checks, the TXT
 * split, tls= pins (including the second-value regression for libdime bug §9.16) and the CLI.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildProgram } from '../src/cli/main.js';
import { loadCertificate, loadPokSeed } from '../src/cli/record.js';
import { defaultCrypto } from '../src/crypto/index.js';
import { ARMOR_TAGS, dearmor } from '../src/dime/armor.js';
import { base64DecodeStrict, base64Encode, base64EncodeNoPad } from '../src/dime/base64.js';
import { dearmorKeys } from '../src/dime/keys.js';
import {
  MAX_RECORD_CHARS,
  certificateDer,
  formatRecord,
  joinTxtStrings,
  parseRecord,
  parseRecordValue,
  recordOutputLine,
  signTlsPin,
  splitForTxt,
  tlsPinDigest,
  txtPresentation,
  verifyTlsPin,
  zoneFileLine,
  type DimeRecord,
} from '../src/dime/record.js';
import { DimeError, type ErrorCode } from '../src/errors.js';
import { vectorPath, vectorText } from './helpers/vectors.js';

const crypto = defaultCrypto();
const DIME = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/dime');

const KEYS = vectorPath('libdime', 'keys', 'example.com.keys');
const ED_PEM = vectorPath('libdime', 'keys', 'example.com-ed25519.pem');
const USER_KEYS = vectorPath('libdime', 'keys', 'alice-example.com.keys');
const CERT = vectorPath('libdime', 'genrec', 'dx.example.com.crt.pem');
const genrec = (name: string): string => vectorText('libdime', 'genrec', `${name}.stdout`);

// From keys/example.com.keys.stdout (libdime's own reading of the keys file).
const SEED_HEX = '264caa3b66ca83db403ba980ae154fb7fe8b2f485c3ffd7f23008b492cfedc43';
const POK_B64 = '9/GgKfjc+40UhLxLbu3xockoxkWicFPEzIaxMVrSqsw';
// From genrec-tls.stdout.
const TLS_B64 = 'BDJfVfmkkfZKobKpABqeo4kn9jlA506s52qWF2grxioPiaTP85dQcscfudgM90MV+7/xVY1/VGYdLlDfyPbPDA';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const seed = dearmorKeys(vectorText('libdime', 'keys', 'example.com.keys')).signingKey;
const pok = base64DecodeStrict(POK_B64);
const certDer = certificateDer(fs.readFileSync(CERT, 'latin1'));

function base(over: Partial<DimeRecord> = {}): DimeRecord {
  return { version: 1, poks: [pok], tls: [], policy: 'experimental', subdomain: 'strict', dx: [], ...over };
}

function throwsCode(fn: () => unknown, code: ErrorCode, detail?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof DimeError, `expected a DimeError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (detail) assert.match(err.message, detail);
    return true;
  });
}

describe('genrec vectors: formatRecord reproduces them byte for byte', () => {
  it('both key files give the seed libdime reads', () => {
    assert.equal(hex(seed), SEED_HEX);
    assert.equal(hex(dearmor(vectorText('libdime', 'keys', 'example.com-ed25519.pem'), [ARMOR_TAGS.ed25519PrivateKey]).data), SEED_HEX);
    assert.equal(hex(loadPokSeed(KEYS)), SEED_HEX);
    assert.equal(hex(loadPokSeed(ED_PEM)), SEED_HEX);
    assert.equal(base64EncodeNoPad(crypto.ed25519PublicKey(seed)), POK_B64);
  });

  it('genrec-basic', () => {
    assert.equal(formatRecord(base({ poks: [crypto.ed25519PublicKey(seed)] })) + '\n', genrec('genrec-basic'));
  });

  it('genrec-opts (-d dx.example.com -p strict -s relaxed -e 30)', () => {
    const text = formatRecord(base({ policy: 'strict', subdomain: 'relaxed', dx: ['dx.example.com'], expiryDays: 30 }));
    assert.equal(text + '\n', genrec('genrec-opts'));
  });

  it('genrec-tls: the tls= value is Ed25519(POK, SHA-512(DER)) and matches exactly', () => {
    // node:crypto as an independent reference for the digest
    assert.equal(hex(tlsPinDigest(certDer, crypto)), createHash('sha512').update(certDer).digest('hex'));
    const sig = signTlsPin(seed, certDer, crypto);
    assert.equal(base64EncodeNoPad(sig), TLS_B64);
    const text = formatRecord(base({ tls: [sig], policy: 'mixed', dx: ['dx.example.com'] }));
    assert.equal(text + '\n', genrec('genrec-tls'));
  });

  it('genrec-syn, with the missing space before syn= put back', () => {
    const text = formatRecord(base({ syndicates: 'syn.example.net', dx: ['dx.example.com'] }));
    assert.equal(text, `ver=1 pok=${POK_B64} pol=experimental syn=syn.example.net dx=dx.example.com sub=strict`);
    assert.equal(text + '\n', genrec('genrec-syn').replace('experimentalsyn=', 'experimental syn='));
  });
});

describe('parsing the genrec vectors', () => {
  it('genrec-basic', () => {
    assert.deepStrictEqual(parseRecord(genrec('genrec-basic')), base());
  });

  it('genrec-opts', () => {
    assert.deepStrictEqual(parseRecord(genrec('genrec-opts')), base({ policy: 'strict', subdomain: 'relaxed', dx: ['dx.example.com'], expiryDays: 30 }));
  });

  it('genrec-tls', () => {
    const r = parseRecord(genrec('genrec-tls'));
    assert.deepStrictEqual(r, base({ tls: [base64DecodeStrict(TLS_B64)], policy: 'mixed', dx: ['dx.example.com'] }));
  });

  it('genrec-syn is rejected, as libdime rejects it: `pol=experimentalsyn=syn.example.net` is pol = "syn.example.net"', () => {
    // libdime: the second `=` (followed by `s`) restarts the value; the name stays `pol`.
    throwsCode(() => parseRecord(genrec('genrec-syn')), 'RECORD_BAD_POLICY', /"syn\.example\.net".*restarts the value/);
    // With the space put back it is a good record.
    const fixed = parseRecord(genrec('genrec-syn').replace('experimentalsyn=', 'experimental syn='));
    assert.deepStrictEqual(fixed, base({ syndicates: 'syn.example.net', dx: ['dx.example.com'] }));
  });
});

describe('libdime tokenizer rules', () => {
  const P = `pok=${POK_B64}`;

  it('space and ; both separate tokens, in any mix and repetition', () => {
    assert.deepStrictEqual(parseRecord(`ver=1;${P};pol=strict`), base({ policy: 'strict' }));
    assert.deepStrictEqual(parseRecord(`ver=1 ;; ${P}  ;sub=relaxed;`), base({ subdomain: 'relaxed' }));
  });

  it('a tab is not a separator: `pol=strict\\tsub=relaxed` is pol = "relaxed"', () => {
    throwsCode(() => parseRecord(`ver=1 ${P} pol=strict\tsub=relaxed`), 'RECORD_BAD_POLICY', /"relaxed"/);
    throwsCode(() => parseRecord(`ver=1\t${P}`), 'RECORD_BAD_VERSION');
  });

  it('names are case-insensitive (ASCII only) and enum values too', () => {
    assert.deepStrictEqual(parseRecord(`VER=1 POK=${POK_B64} Pol=STRICT sUb=Explicit`), base({ policy: 'strict', subdomain: 'explicit' }));
    // U+212A KELVIN SIGN lower-cases to `k` in JavaScript but not in strcasecmp: an unknown name.
    throwsCode(() => parseRecord(`ver=1 po\u212a=${POK_B64}`), 'RECORD_NO_POK');
  });

  it('long names', () => {
    const r = parseRecord(
      `version=1 primary=${POK_B64} TLS=${TLS_B64} policy=mixed syndicates=s.example deliver=dx.example.com expiry=7 subdomain=relaxed`,
    );
    assert.deepStrictEqual(
      r,
      base({ tls: [base64DecodeStrict(TLS_B64)], policy: 'mixed', subdomain: 'relaxed', dx: ['dx.example.com'], expiryDays: 7, syndicates: 's.example' }),
    );
  });

  it('unknown names, bare words and empty tokens are ignored; fields in any order', () => {
    assert.deepStrictEqual(parseRecord(`sub=relaxed foo=bar ten=1 garbage ${P} ;; ver=1 x=`), base({ subdomain: 'relaxed' }));
  });

  it('trailing == stays in the value: a padded pok is 45 characters here, not 43', () => {
    throwsCode(() => parseRecord(`ver=1 pok=${POK_B64}==`), 'RECORD_BAD_POK', /45 characters/);
  });

  it('an = followed by a character other than = or whitespace restarts the value', () => {
    // name `pok`, value after the last such `=`
    assert.deepStrictEqual(parseRecord(`ver=1 pok=junk=${POK_B64}`), base());
    // `pok=` with nothing after the `=` is a token named "pok=": unknown, ignored
    assert.deepStrictEqual(parseRecord(`ver=1 pok= ${P}`), base());
    // `pol==strict`: the first `=` is followed by `=`, so the name is "pol=": ignored
    assert.deepStrictEqual(parseRecord(`pol==strict ${P}`), base());
  });

  it('a known name with no value is refused (libdime would reuse the previous value)', () => {
    throwsCode(() => parseRecord(`ver=1 ${P} dx`), 'RECORD_SYNTAX', /"dx" has no value/);
    throwsCode(() => parseRecord(`sub=strict pol ${P}`), 'RECORD_SYNTAX');
  });
});

describe('value checks', () => {
  const P = `pok=${POK_B64}`;

  it('pok must be exactly 43 characters of canonical unpadded base64', () => {
    throwsCode(() => parseRecord(`pok=${POK_B64}=`), 'RECORD_BAD_POK', /44 characters/); // the padded form
    throwsCode(() => parseRecord(`pok=${POK_B64.slice(0, 42)}`), 'RECORD_BAD_POK', /42 characters/);
    throwsCode(() => parseRecord(`pok=${POK_B64}A`), 'RECORD_BAD_POK', /44 characters/);
    throwsCode(() => parseRecord(`pok=${POK_B64.slice(0, 42)}!`), 'RECORD_BAD_POK', /base64/);
    // last character `t` instead of `w`: non-zero unused bits, a second spelling of another key
    throwsCode(() => parseRecord(`pok=${POK_B64.slice(0, 42)}t`), 'RECORD_BAD_POK', /canonical/);
  });

  it('tls must be exactly 86 characters', () => {
    throwsCode(() => parseRecord(`${P} tls=${TLS_B64.slice(0, 85)}`), 'RECORD_BAD_TLS', /85 characters/);
    throwsCode(() => parseRecord(`${P} tls=${TLS_B64}A`), 'RECORD_BAD_TLS', /87 characters/);
    throwsCode(() => parseRecord(`${P} tls=${TLS_B64}==`), 'RECORD_BAD_TLS', /88 characters/);
  });

  it('version must be 1 (digits only; absent means 1)', () => {
    for (const v of ['2', '0', '1x', '+1', '-1', 'one']) throwsCode(() => parseRecord(`ver=${v} ${P}`), 'RECORD_BAD_VERSION');
    assert.equal(parseRecord(`ver=01 ${P}`).version, 1);
    assert.equal(parseRecord(P).version, 1);
  });

  it('at least one pok', () => {
    throwsCode(() => parseRecord('ver=1 pol=strict'), 'RECORD_NO_POK');
    throwsCode(() => parseRecord(''), 'RECORD_NO_POK');
  });

  it('bad pol and sub values', () => {
    throwsCode(() => parseRecord(`${P} pol=lax`), 'RECORD_BAD_POLICY');
    throwsCode(() => parseRecord(`${P} sub=strictly`), 'RECORD_BAD_SUBDOMAIN');
    throwsCode(() => parseRecord(`${P} sub=mixed`), 'RECORD_BAD_SUBDOMAIN');
  });

  it('defaults: experimental and strict', () => {
    const r = parseRecord(P);
    assert.equal(r.policy, 'experimental');
    assert.equal(r.subdomain, 'strict');
    assert.ok(!('expiryDays' in r) && !('syndicates' in r));
  });

  it('single-valued fields may not repeat, under either name; pok, tls and dx may', () => {
    throwsCode(() => parseRecord(`${P} pol=strict policy=strict`), 'RECORD_DUPLICATE');
    throwsCode(() => parseRecord(`ver=1 ${P} version=1`), 'RECORD_DUPLICATE');
    throwsCode(() => parseRecord(`${P} exp=1 exp=2`), 'RECORD_DUPLICATE');
    throwsCode(() => parseRecord(`${P} sub=strict sub=strict`), 'RECORD_DUPLICATE');
    throwsCode(() => parseRecord(`${P} syn=a syn=b`), 'RECORD_DUPLICATE');
    const other = base64EncodeNoPad(crypto.ed25519PublicKey(new Uint8Array(32).fill(7)));
    const r = parseRecord(`${P} pok=${other} tls=${TLS_B64} tls=${TLS_B64} dx=a.example dx=b.example`);
    assert.deepStrictEqual(r.poks.map(base64EncodeNoPad), [POK_B64, other]);
    assert.equal(r.tls.length, 2);
    assert.deepStrictEqual(r.dx, ['a.example', 'b.example']);
  });

  it('exp is 1 to 36500 whole days', () => {
    assert.equal(parseRecord(`${P} exp=30`).expiryDays, 30);
    assert.equal(parseRecord(`${P} exp=36500`).expiryDays, 36500);
    for (const v of ['0', '-1', '1.5', '30d', 'abc', '36501', '99999999999999999']) throwsCode(() => parseRecord(`${P} exp=${v}`), 'RECORD_BAD_EXPIRY');
  });

  it('dx must be a host name', () => {
    assert.deepStrictEqual(parseRecord(`${P} dx=DX-1.Example.COM.`).dx, ['DX-1.Example.COM.']);
    const long = `${'a'.repeat(63)}.example`;
    assert.deepStrictEqual(parseRecord(`${P} dx=${long}`).dx, [long]);
    for (const v of ['-dx.example', 'dx-.example', 'a..b', 'under_score.example', `${'a'.repeat(64)}.example`, '.', 'dx.example..', `${'a.'.repeat(127)}ab`]) {
      throwsCode(() => parseRecord(`${P} dx=${v}`), 'RECORD_BAD_DX');
    }
  });

  it('syn is kept verbatim but must be printable ASCII', () => {
    assert.equal(parseRecord(`${P} syn=a"b\\c==`).syndicates, 'a"b\\c==');
    throwsCode(() => parseRecord(`${P} syn=a\tb`), 'RECORD_BAD_SYNDICATES');
    throwsCode(() => parseRecord(`${P} syn=\u00e9`), 'RECORD_BAD_SYNDICATES');
  });

  it('NUL and oversized input are refused', () => {
    throwsCode(() => parseRecord(`${P}\0pol=strict`), 'RECORD_SYNTAX', /NUL/);
    throwsCode(() => parseRecordValue(`${P} ${'x'.repeat(MAX_RECORD_CHARS)}`), 'RECORD_TOO_LARGE');
    throwsCode(() => parseRecord(' '.repeat(4 * 65536 + 1)), 'RECORD_TOO_LARGE');
  });

  it('parseRecord trims surrounding whitespace; parseRecordValue (the DNS path) does not', () => {
    assert.deepStrictEqual(parseRecord(`  ${P} sub=relaxed\r\n`), base({ subdomain: 'relaxed' }));
    throwsCode(() => parseRecordValue(`${P} sub=relaxed\r\n`), 'RECORD_BAD_SUBDOMAIN');
  });
});

describe('multi-string (DNS presentation) input', () => {
  it('quoted strings are concatenated with no separator, even mid-token', () => {
    assert.deepStrictEqual(parseRecord(`"ver=1 pok=${POK_B64.slice(0, 20)}" "${POK_B64.slice(20)} pol=strict"`), base({ policy: 'strict' }));
    assert.equal(joinTxtStrings('"a" "b"  "c"'), 'abc');
  });

  it('parentheses, newlines and RFC 1035 escapes', () => {
    const zone = `( "ver=1\\059pok=${POK_B64}"\n  " syn=q\\"\\\\\\126" )`;
    assert.deepStrictEqual(parseRecord(zone), base({ syndicates: 'q"\\~' }));
  });

  it('genrec\'s own split output (trailing space and all) parses', () => {
    const text = formatRecord(base({ dx: Array.from({ length: 12 }, (_, i) => `dx${i}.example.com`) }));
    const genrecStyle = splitForTxt(text).map((p) => `"${p}" `).join('') + '\n';
    assert.deepStrictEqual(parseRecord(genrecStyle), parseRecord(text));
  });

  it('malformed presentation form', () => {
    throwsCode(() => parseRecord(`"ver=1 pok=${POK_B64}`), 'RECORD_SYNTAX', /closing quote/);
    throwsCode(() => parseRecord(`"ver=1" pok=${POK_B64}`), 'RECORD_SYNTAX', /expected a quoted string/);
    throwsCode(() => parseRecord(`"ver=1""pok=${POK_B64}"`), 'RECORD_SYNTAX', /no space/);
    throwsCode(() => parseRecord(`"${'x'.repeat(256)}"`), 'RECORD_SYNTAX', /256 characters/);
    throwsCode(() => parseRecord('"a\\999"'), 'RECORD_SYNTAX', /not a byte/);
    throwsCode(() => parseRecord('"a\\'), 'RECORD_SYNTAX');
    throwsCode(() => parseRecord('()'), 'RECORD_SYNTAX', /no quoted string/);
  });
});

describe('TXT splitting and zone-file output', () => {
  it('splitForTxt: up to 255 stays whole, longer is cut every 254 characters', () => {
    assert.deepStrictEqual(splitForTxt('a'.repeat(255)), ['a'.repeat(255)]);
    assert.deepStrictEqual(splitForTxt('a'.repeat(256)).map((p) => p.length), [254, 2]);
    assert.deepStrictEqual(splitForTxt('a'.repeat(600)).map((p) => p.length), [254, 254, 92]);
    assert.deepStrictEqual(splitForTxt(''), ['']);
    throwsCode(() => splitForTxt('\u0100'), 'RECORD_SYNTAX');
  });

  it('a long record round-trips through the quoted split form and the zone line', () => {
    const keys = [1, 2, 3].map((b) => crypto.ed25519PublicKey(new Uint8Array(32).fill(b)));
    const record = base({
      poks: [pok, ...keys],
      tls: [signTlsPin(seed, certDer, crypto), new Uint8Array(64).fill(9), new Uint8Array(64).fill(10)],
      policy: 'mixed',
      dx: ['dx1.example.com', 'dx2.example.com'],
      expiryDays: 30,
      syndicates: 'a"b\\c',
    });
    const text = formatRecord(record);
    assert.ok(text.length > 2 * 254, `test record should need 3 strings, is ${text.length} characters`);
    const pieces = splitForTxt(text);
    assert.equal(pieces.join(''), text);
    const line = recordOutputLine(text);
    assert.equal(line, pieces.map((p) => `"${p.replace(/[\\"]/g, (c) => `\\${c}`)}"`).join(' '));
    assert.deepStrictEqual(parseRecord(line), record);
    const zone = zoneFileLine('example.com', text);
    assert.equal(zone, `_dx.example.com. 3600 IN TXT ${line}`);
    assert.deepStrictEqual(parseRecord(zone.slice(zone.indexOf('TXT ') + 4)), record);
  });

  it('short records print bare; the zone line is always quoted', () => {
    const text = genrec('genrec-basic').trimEnd();
    assert.equal(recordOutputLine(text), text);
    assert.equal(txtPresentation(text), `"${text}"`);
    assert.equal(zoneFileLine('example.com.', text, 300), `_dx.example.com. 300 IN TXT "${text}"`);
    throwsCode(() => zoneFileLine('bad_domain', text), 'RECORD_SYNTAX');
  });
});

describe('formatRecord refuses what would not parse back', () => {
  it('bad shapes', () => {
    throwsCode(() => formatRecord(base({ poks: [] })), 'RECORD_NO_POK');
    throwsCode(() => formatRecord(base({ poks: [new Uint8Array(33)] })), 'RECORD_BAD_POK');
    throwsCode(() => formatRecord(base({ tls: [new Uint8Array(63)] })), 'RECORD_BAD_TLS');
    throwsCode(() => formatRecord({ ...base(), version: 2 as 1 }), 'RECORD_BAD_VERSION');
    throwsCode(() => formatRecord(base({ policy: 'lax' as 'strict' })), 'RECORD_BAD_POLICY');
    throwsCode(() => formatRecord(base({ subdomain: 'mixed' as 'strict' })), 'RECORD_BAD_SUBDOMAIN');
    throwsCode(() => formatRecord(base({ dx: ['a b'] })), 'RECORD_BAD_DX');
    throwsCode(() => formatRecord(base({ expiryDays: 0 })), 'RECORD_BAD_EXPIRY');
    throwsCode(() => formatRecord(base({ expiryDays: 1.5 })), 'RECORD_BAD_EXPIRY');
  });

  it('syn values the tokenizer would change', () => {
    for (const syn of ['', 'a b', 'a;b', 'a=b', '=a', 'a\tb', 'caf\u00e9']) throwsCode(() => formatRecord(base({ syndicates: syn })), 'RECORD_BAD_SYNDICATES');
    const ok = base({ syndicates: 'a==' });
    assert.deepStrictEqual(parseRecord(formatRecord(ok)), ok);
  });
});

describe('tls= pins', () => {
  const goodSig = base64DecodeStrict(TLS_B64);
  const otherSeed = new Uint8Array(32).fill(0x55);
  const otherPok = crypto.ed25519PublicKey(otherSeed);

  it('the vector certificate is pinned by the example.com POK', () => {
    assert.deepStrictEqual(verifyTlsPin(parseRecord(genrec('genrec-tls')), certDer, crypto), { pokIndex: 0, tlsIndex: 0, pok });
  });

  it('a different certificate (one byte of its signature changed) is not pinned', () => {
    const other = certDer.slice();
    other[other.length - 1] = (other.at(-1) as number) ^ 0x01;
    assert.equal(verifyTlsPin(parseRecord(genrec('genrec-tls')), other, crypto), undefined);
  });

  it('no tls= value, or a signature by a key not in the record: no pin', () => {
    assert.equal(verifyTlsPin(base(), certDer, crypto), undefined);
    assert.equal(verifyTlsPin(base({ tls: [signTlsPin(otherSeed, certDer, crypto)] }), certDer, crypto), undefined);
  });

  it('the second tls= value is checked, against every pok (libdime bug §9.16 regression)', () => {
    const wrong = signTlsPin(otherSeed, certDer, crypto);
    assert.deepStrictEqual(verifyTlsPin(base({ tls: [wrong, goodSig] }), certDer, crypto), { pokIndex: 0, tlsIndex: 1, pok });
    assert.deepStrictEqual(verifyTlsPin(base({ poks: [otherPok, pok], tls: [new Uint8Array(64), goodSig] }), certDer, crypto), {
      pokIndex: 1,
      tlsIndex: 1,
      pok,
    });
    // the second pok with the first tls value
    assert.deepStrictEqual(verifyTlsPin(base({ poks: [pok, otherPok], tls: [wrong] }), certDer, crypto), { pokIndex: 1, tlsIndex: 0, pok: otherPok });
  });
});

describe('certificateDer', () => {
  const pem = fs.readFileSync(CERT, 'latin1');

  it('PEM, DER, and a chain (the first block is the leaf)', () => {
    assert.equal(certDer.length, 395);
    assert.deepStrictEqual(certificateDer(new Uint8Array(Buffer.from(pem, 'latin1'))), certDer);
    assert.deepStrictEqual(certificateDer(certDer), certDer);
    const second = `-----BEGIN CERTIFICATE-----\n${base64Encode(new Uint8Array([0x30, 0x01, 0x00]))}\n-----END CERTIFICATE-----\n`;
    assert.deepStrictEqual(certificateDer(`subject=CN = dx.example.com\n${pem}${second}`), certDer);
    assert.deepStrictEqual(certificateDer(second + pem), new Uint8Array([0x30, 0x01, 0x00]));
  });

  it('anything else is TLS_BAD_CERTIFICATE', () => {
    throwsCode(() => certificateDer('hello'), 'TLS_BAD_CERTIFICATE', /neither DER nor/);
    throwsCode(() => certificateDer(new Uint8Array([1, 2, 3])), 'TLS_BAD_CERTIFICATE');
    throwsCode(() => certificateDer(pem.replace('-----END CERTIFICATE-----', '')), 'TLS_BAD_CERTIFICATE', /END line/);
    throwsCode(() => certificateDer(pem.replace('MIIB', 'M!IB')), 'TLS_BAD_CERTIFICATE', /base64/);
    const trailing = new Uint8Array([...certDer, 0]);
    throwsCode(() => certificateDer(trailing), 'TLS_BAD_CERTIFICATE', /396/);
    throwsCode(() => certificateDer(certDer.subarray(0, 100)), 'TLS_BAD_CERTIFICATE');
    throwsCode(() => certificateDer(new Uint8Array([0x30, 0x80, 0, 0])), 'TLS_BAD_CERTIFICATE', /indefinite/);
  });

  it('the CLI loader also requires X.509 to parse', () => {
    assert.deepStrictEqual(loadCertificate(CERT), certDer);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dime-record-'));
    try {
      const bogus = path.join(dir, 'bogus.der');
      fs.writeFileSync(bogus, new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00]));
      throwsCode(() => loadCertificate(bogus), 'TLS_BAD_CERTIFICATE');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('CLI: bin/dime record', () => {
  interface Run {
    status: number | null;
    stdout: string;
    stderr: string;
  }
  // Asynchronous so independent runs overlap: each node start-up costs ~150 ms.
  function dime(...args: string[]): Promise<Run> {
    return new Promise((resolve) => {
      execFile(process.execPath, [DIME, 'record', ...args], { encoding: 'utf8' }, (err, stdout, stderr) => {
        const status = err === null ? 0 : typeof err.code === 'number' ? err.code : null;
        resolve({ status, stdout, stderr });
      });
    });
  }

  it('generate reproduces genrec-basic, -opts and -tls from either key file', async () => {
    const [fromKeys, fromPem, opts, tls] = await Promise.all([
      dime('generate', '--keys', KEYS),
      dime('generate', '--keys', ED_PEM),
      dime('generate', '--keys', KEYS, '--dx', 'dx.example.com', '--policy', 'STRICT', '--subdomain', 'relaxed', '--expiry', '30'),
      dime('generate', '--keys', ED_PEM, '--tls-cert', CERT, '--dx', 'dx.example.com', '--policy', 'mixed'),
    ]);
    assert.deepStrictEqual(fromKeys, { status: 0, stdout: genrec('genrec-basic'), stderr: '' });
    assert.deepStrictEqual(fromPem, { status: 0, stdout: genrec('genrec-basic'), stderr: '' });
    assert.deepStrictEqual(opts, { status: 0, stdout: genrec('genrec-opts'), stderr: '' });
    assert.deepStrictEqual(tls, { status: 0, stdout: genrec('genrec-tls'), stderr: '' });
  });

  it('generate --zone adds the zone-file line; long records come out split', async () => {
    const extra = base64EncodeNoPad(crypto.ed25519PublicKey(new Uint8Array(32).fill(3)));
    const [r, long] = await Promise.all([
      dime('generate', '--keys', KEYS, '--zone', 'example.com'),
      dime('generate', '--keys', KEYS, '--pok', extra, '--tls-cert', CERT, '--tls-cert', CERT, '--dx', 'dx.example.com'),
    ]);
    const value = genrec('genrec-basic').trimEnd();
    assert.deepStrictEqual(r, { status: 0, stdout: `${value}\n_dx.example.com. 3600 IN TXT "${value}"\n`, stderr: '' });

    assert.equal(long.status, 0, long.stderr);
    const expected = formatRecord(
      base({ poks: [pok, base64DecodeStrict(extra)], tls: [base64DecodeStrict(TLS_B64), base64DecodeStrict(TLS_B64)], dx: ['dx.example.com'] }),
    );
    assert.equal(long.stdout, `${recordOutputLine(expected)}\n`);
    assert.match(long.stdout, /^"[^"]{254}" "[^"]+"\n$/);
  });

  it('generate refuses a user keys file and bad option values with exit 2', async () => {
    const [user, badPolicy, missing] = await Promise.all([
      dime('generate', '--keys', USER_KEYS),
      dime('generate', '--keys', KEYS, '--policy', 'lax'),
      dime('generate', '--keys', '/nonexistent/keys'),
    ]);
    assert.equal(user.status, 2);
    assert.match(user.stderr, /user's keys.*\[USAGE\]/);
    assert.equal(user.stdout, '');
    assert.equal(badPolicy.status, 2);
    assert.match(badPolicy.stderr, /--policy must be experimental, mixed, strict, not "lax" \[USAGE\]/);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /\[FILE_UNREADABLE\]/);
  });

  it('every bad generate option value is a USAGE error (in process: the exit status mapping is tested above)', async () => {
    for (const bad of [
      ['--subdomain', 'mixed'],
      ['--expiry', '0'],
      ['--expiry', '36501'],
      ['--expiry', '3x'],
      ['--dx', 'not a host'],
      ['--syndicates', 'a;b'],
      ['--syndicates', 'a=b'],
      ['--zone', 'bad_zone'],
      ['--pok', 'short'],
      ['--pok', `${POK_B64}=`],
    ]) {
      await assert.rejects(buildProgram().parseAsync(['node', 'dime', 'record', 'generate', '--keys', KEYS, ...bad]), (err: unknown) => {
        assert.ok(err instanceof DimeError, `${bad.join(' ')}: ${String(err)}`);
        assert.equal(err.code, 'USAGE', `${bad.join(' ')}: ${err.message}`);
        return true;
      });
    }
  });

  it('parse prints the fields; malformed records exit 1 with the code on stderr', async () => {
    const [ok, bad] = await Promise.all([dime('parse', genrec('genrec-opts')), dime('parse', genrec('genrec-syn'))]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(
      ok.stdout,
      `version     : 1\npok         : ${POK_B64}\ntls         : (none)\npolicy      : strict\nsubdomain   : relaxed\n` +
        `dx          : dx.example.com\nexpiry      : 30 days\nsyndicates  : (none)\n`,
    );
    assert.equal(bad.status, 1);
    assert.equal(bad.stdout, '');
    assert.match(bad.stderr, /\[RECORD_BAD_POLICY\]/);
  });

  it('parse --json prints exactly one JSON object, for good and bad records', async () => {
    const [ok, bad] = await Promise.all([dime('parse', '--json', genrec('genrec-tls')), dime('parse', '--json', `pok=${POK_B64}=`)]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout.split('\n').length, 2); // one line plus the final newline
    assert.deepStrictEqual(JSON.parse(ok.stdout), {
      version: 1,
      poks: [`${POK_B64}=`],
      tls: [`${TLS_B64}==`],
      policy: 'mixed',
      subdomain: 'strict',
      dx: ['dx.example.com'],
      expiryDays: null,
      syndicates: null,
    });

    assert.equal(bad.status, 1);
    assert.equal(bad.stdout.split('\n').length, 2);
    const err = JSON.parse(bad.stdout) as { error: { code: string; message: string } };
    assert.equal(err.error.code, 'RECORD_BAD_POK');
    assert.match(err.error.message, /44 characters/);
    assert.match(bad.stderr, /\[RECORD_BAD_POK\]/);
  });

  it('parse --cert reports the matching pok, and exits 1 when none matches', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dime-record-'));
    try {
      const other = certDer.slice();
      other[other.length - 1] = (other.at(-1) as number) ^ 0x01; // still parses as X.509; its digest differs
      const otherFile = path.join(dir, 'other.der');
      fs.writeFileSync(otherFile, other);
      const [ok, human, no, noTls, missing] = await Promise.all([
        dime('parse', genrec('genrec-tls'), '--cert', CERT, '--json'),
        dime('parse', genrec('genrec-tls'), '--cert', CERT),
        dime('parse', genrec('genrec-tls'), '--cert', otherFile, '--json'),
        dime('parse', genrec('genrec-basic'), '--cert', CERT),
        dime('parse', genrec('genrec-tls'), '--cert', path.join(dir, 'missing.pem'), '--json'),
      ]);
      assert.equal(ok.status, 0, ok.stderr);
      assert.deepStrictEqual((JSON.parse(ok.stdout) as { tlsPin: unknown }).tlsPin, { verified: true, pokIndex: 0, tlsIndex: 0, pok: `${POK_B64}=` });
      assert.equal(human.status, 0);
      assert.match(human.stdout, /\ntls pin     : certificate pinned: tls #1 verifies under pok #1 \(9\/GgKf[^)]*\)\n$/);
      assert.equal(no.status, 1);
      assert.deepStrictEqual((JSON.parse(no.stdout) as { tlsPin: unknown }).tlsPin, { verified: false });
      assert.equal(noTls.status, 1);
      assert.match(noTls.stdout, /NOT pinned: the record has no tls= value/);
      assert.equal(missing.status, 2);
      assert.equal((JSON.parse(missing.stdout) as { error: { code: string } }).error.code, 'FILE_UNREADABLE');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
