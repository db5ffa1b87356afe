/**
 * MIME ↔ DMIME chunk contents (docs/mime-mapping.md): every corpus message in test/fixtures/mail
 * round-trips byte for byte and splits into exactly the documented chunk 33 text and display /
 * attachment chunks; absent, duplicate, odd-case and unrepresentable common headers; the
 * degradations (no boundary, too deep, too many parts, large skeleton); the size limits; damaged
 * structure lines; parts from a foreign DIME author; and a 25 MiB message.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { decodeCommonHeaders, encodeCommonHeaders } from '../src/dime/message/headers.js';
import {
  MAX_HEADER_BYTES,
  MAX_HEADER_FIELDS,
  MAX_MESSAGE_BYTES,
  MAX_MULTIPART_DEPTH,
  MAX_NODE_SKELETON_BYTES,
  MAX_PARTS,
  MAX_SKELETON_BYTES,
  mimeToParts,
  partsToMime,
  type MessageParts,
} from '../src/gateway/mime.js';
import { expectCode } from './helpers/typed-errors.js';

const MAIL = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test/fixtures/mail');
const fixture = (name: string): Uint8Array => new Uint8Array(fs.readFileSync(path.join(MAIL, name)));
const bytes = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'utf8'));
const text = (b: Uint8Array): string => Buffer.from(b).toString('utf8');
const crlf = (s: string): string => s.replace(/\r?\n/g, '\r\n');

/** The structure line, unfolded, without its name. */
function structure(p: MessageParts): string {
  const other = Buffer.from(p.otherHeaders).toString('latin1');
  const m = /^X-DIME-MIME-Map: ((?:[^\r]|\r\n )*)\r\n/.exec(other);
  assert.ok(m, 'chunk 34 starts with the structure line');
  return (m[1] as string).replace(/\r\n/g, '');
}
/** Chunk 34 after the structure line. */
function otherFields(p: MessageParts): string {
  const other = Buffer.from(p.otherHeaders).toString('utf8');
  return other.slice(/\r\n(?! )/.exec(other)!.index + 2);
}

function roundTrip(raw: Uint8Array, what: string): MessageParts {
  const parts = mimeToParts(raw);
  const back = partsToMime(parts);
  assert.ok(Buffer.from(back).equals(Buffer.from(raw)), `${what}: round trip is not byte-exact`);
  // chunk 33 must be what libdime writes and reads
  assert.deepEqual(decodeCommonHeaders(encodeCommonHeaders(parts.common)), parts.common, `${what}: chunk 33`);
  assert.ok(parts.display.length >= 1, `${what}: at least one display chunk`);
  return parts;
}

interface Expected {
  chunk33: string;
  display: number;
  attachments: number;
  structure?: string;
}

// chunk 33 text exactly as encodeCommonHeaders writes it (libdime's order), the chunk counts, and
// for some the structure line.
const CORPUS: Record<string, Expected> = {
  '01-plain-ascii.eml': {
    chunk33: 'Date: Tue, 12 Mar 2024 09:14:02 +0000\r\nTo: Bob Builder <bob@example.org>\r\nFrom: Alice Liddell <alice@example.com>\r\nSubject: Lunch on Thursday?\r\n',
    display: 1,
    attachments: 0,
    structure: '1 Date=3 To=5 From=4 Subject=6 D',
  },
  '02-utf8-8bit.eml': {
    chunk33:
      'Date: Wed, 13 Mar 2024 18:02:09 +0100\r\nTo: yuki@example.jp\r\nFrom: =?UTF-8?Q?Ren=C3=A9e_Dupr=C3=A9?= <renee@example.net>\r\nSubject: =?UTF-8?B?UmU6IOS8muitsOOBruS6iOWumg==?=\r\n',
    display: 1,
    attachments: 0,
  },
  '03-alternative.eml': {
    chunk33: 'Date: Thu, 14 Mar 2024 07:30:00 -0400\r\nTo: carol@example.org\r\nFrom: "Example Shop" <orders@shop.example.com>\r\nSubject: Your order #10424 has shipped\r\n',
    display: 2,
    attachments: 0,
    structure: '1 Date=0 To=2 From=1 Subject=3 M=00000000000048a8e0061384f1c2 D D .',
  },
  '04-mixed-pdf-png.eml': {
    chunk33:
      'Date: Fri, 15 Mar 2024 16:45:12 +0000\r\nTo: "Dave Jones" <dave@example.com>\r\nCC: ledger@example.com\r\nFrom: Accounts <accounts@supplier.example>\r\nSubject: Invoice 2024-117 and delivery photo\r\n',
    display: 1,
    attachments: 2,
    structure: '1 Date=0 To=2 CC=3;n:Cc From=1 Subject=4 M=----=_Part_4417_1130624352.1710521112000 D A A .',
  },
  '05-quoted-printable.eml': {
    chunk33: 'Date: Sat, 16 Mar 2024 10:00:00 +0100\r\nTo: erik@example.com\r\nFrom: Newsletter <news@example.de>\r\nSubject: =?ISO-8859-1?Q?Fr=FChlingsangebote?=\r\n',
    display: 1,
    attachments: 0,
  },
  '06-encoded-words.eml': {
    chunk33:
      'Date: Sun, 17 Mar 2024 21:12:40 +0900\r\n' +
      'To: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>, =?UTF-8?Q?Fran=C3=A7oise?= <francoise@example.fr>\r\n' +
      'From: =?UTF-8?B?5bGx55SwIOWkqumDjg==?= <taro.yamada@example.jp>\r\n' +
      'Subject: =?UTF-8?B?5LiA57eS44Gr6aOf5LqL44Gr6KGM44GN44G+44Gb44KT44GL77yf?= =?UTF-8?B?IENhZsOpIGFtIEZyZWl0YWc/?=\r\n',
    display: 1,
    attachments: 0,
    structure: '1 Date=0 To=2;f:53 From=1 Subject=3;f:64 D',
  },
  '07-long-folded.eml': {
    chunk33:
      'Date: Mon, 18 Mar 2024 08:00:01 +0000\r\n' +
      'To: "Developer One" <dev1@example.com>, "Developer Two" <dev2@example.com>,\t"Developer Three" <dev3@example.com>, "Developer Four" <dev4@example.com>,\t"Quality Assurance" <qa@example.com>\r\n' +
      'CC: "Operations Team" <ops@example.com>,        "Security Team" <security@example.com>,        "Release Management" <release@example.com>\r\n' +
      'From: Project Lead <lead@example.com>\r\n' +
      'Subject: [project] Release 4.2 planning: freeze dates, owners and the remaining blockers for the March milestone\r\n',
    display: 1,
    attachments: 0,
    structure: '1 Date=0 To=2;f:71,146 CC=3;f:36,83 From=1 Subject=4;f:60 D',
  },
  '08-odd-case-common.eml': {
    chunk33:
      'Date: Tue, 19 Mar 2024 11:11:11 -0700\r\nTo: hank@example.org\r\nCC: ivy@example.org, jack@example.org\r\nFrom: Greg <greg@example.com>\r\nOrganization: Example Widgets, Inc.\r\nSubject: oddly cased headers   \r\n',
    display: 1,
    attachments: 0,
    structure: '1 Date=0;n:date;p:%20%20%20 To=2;n:TO CC=3;n:cc From=1;n:from;p: Organization=5;n:organization Subject=4;n:SUBJECT%20 D',
  },
  '09-duplicate-headers.eml': {
    chunk33: 'Date: Wed, 20 Mar 2024 13:05:07 +0000\r\nTo: kate@example.net\r\nCC: mike@example.net\r\nFrom: Larry <larry@example.org>\r\nSubject: Minutes from today\r\n',
    display: 1,
    attachments: 0,
    structure: '1 Date=5 To=7 CC=8;n:Cc From=6 Subject=10 D',
  },
  '10-forward-rfc822.eml': {
    chunk33: 'Date: Thu, 21 Mar 2024 10:30:00 +0000\r\nTo: Quinn <quinn@example.net>\r\nFrom: Pam <pam@example.com>\r\nSubject: Fwd: Original question\r\n',
    display: 2, // the forwarded message is inline and stays whole in one chunk
    attachments: 0,
    structure: '1 Date=0 To=2 From=1 Subject=3 M=fwd-mixed-1 D D .',
  },
  '11-related-inline-image.eml': {
    chunk33: 'Date: Fri, 22 Mar 2024 12:00:00 +0000\r\nTo: rachel@example.com\r\nFrom: Marketing <hello@brand.example>\r\nSubject: Spring collection\r\n',
    display: 3, // text, html and the image marked inline
    attachments: 0,
    structure:
      '1 Date=0 To=2 From=1 Subject=3 M=alt-9f1c D M=rel-77ab ' +
      'h=Content-Type:%20multipart/related%3B%20boundary="rel-77ab"%3B%20type="text/html"%0D%0A%0D%0A D D . .',
  },
  '12-smime-signed.eml': {
    chunk33: 'Date: Sat, 23 Mar 2024 14:20:00 +0100\r\nTo: tina@example.eu\r\nFrom: Sam Signer <sam@example.eu>\r\nSubject: Signed contract confirmation\r\n',
    display: 1,
    attachments: 1,
  },
  '13-pgp-signed-mixed.eml': {
    chunk33: 'Date: Sun, 24 Mar 2024 19:45:00 +0000\r\nTo: victor@example.org\r\nFrom: Uma <uma@example.org>\r\nSubject: Signed report with attachment\r\n',
    display: 1, // the signed multipart/mixed stays whole so the signature can be checked over one chunk
    attachments: 1,
    structure:
      '1 Date=0 To=2 From=1 Subject=3 M=sig-outer-31 ' +
      'g=This%20is%20an%20OpenPGP/MIME%20signed%20message%20(RFC%204880%20and%203156)%0D%0A*%0D%0A D A .',
  },
  '14-bare-lf.eml': {
    chunk33: 'Date: Mon, 25 Mar 2024 06:06:06 +0000\r\nTo: xena@example.com\r\nFrom: Walter <walter@example.com>\r\nSubject: Stored with Unix line ends\r\n',
    display: 1,
    attachments: 1,
    structure: '1 eol=n Date=3 To=1 From=0 Subject=2 M=unixlf D A .',
  },
  '15-no-final-newline.eml': {
    chunk33: 'Date: Tue, 26 Mar 2024 17:17:17 +0000\r\nTo: zane@example.com\r\nFrom: Yara <yara@example.com>\r\nSubject: No newline at the end\r\n',
    display: 1,
    attachments: 0,
  },
  '16-no-subject.eml': {
    chunk33: 'Date: Wed, 27 Mar 2024 08:08:08 +0000\r\nTo: beth@example.com\r\nFrom: Adam <adam@example.com>\r\nSubject: \r\n',
    display: 1,
    attachments: 0,
    structure: '1 Date=0 To=2 From=1 Subject=none D',
  },
  '17-bcc-only.eml': {
    chunk33: 'Date: Thu, 28 Mar 2024 09:09:09 +0000\r\nTo: undisclosed-recipients:;\r\nFrom: Announcements <announce@example.com>\r\nSubject: Office closed on Friday\r\n',
    display: 1,
    attachments: 0,
    structure: '1 Date=0 To=none From=1 Subject=3 D',
  },
  '18-preamble-epilogue.eml': {
    chunk33: 'Date: Fri, 29 Mar 2024 10:10:10 +0000\r\nTo: dana@example.com\r\nFrom: Carl <carl@example.com>\r\nSubject: Preamble and epilogue\r\n',
    display: 1,
    attachments: 1,
    structure:
      '1 Date=0 To=2 From=1 Subject=3 M=Apple-Mail=_5E7A1B2C-3D4E-5F60-7182-93A4B5C6D7E8 ' +
      'g=This%20is%20a%20multi-part%20message%20in%20MIME%20format.%0D%0AOld%20readers%20show%20this%20text.%0D%0A%0D%0A*%0D%0A ' +
      'D g=%0D%0A*%20%20%09%0D%0A A ' +
      'g=%0D%0A*--%0D%0A%0D%0AThis%20epilogue%20is%20ignored%20by%20readers.%0D%0AIt%20has%20two%20lines.%0D%0A .',
  },
  '19-mailing-list.eml': {
    chunk33: 'Date: Sat, 30 Mar 2024 11:11:05 +0000\r\nTo: dev@lists.example.org\r\nFrom: Fred <fred@example.net>\r\nSubject: [dev] Proposal: drop Python 3.8\r\n',
    display: 1,
    attachments: 0,
  },
  '20-malformed-no-close-boundary.eml': {
    chunk33: 'Date: Sun, 31 Mar 2024 12:12:12 +0000\r\nTo: gina@example.com\r\nFrom: Broken Mailer <robot@legacy.example>\r\nSubject: Report (truncated by a broken mailer)\r\n',
    display: 1,
    attachments: 1,
    structure: '1 Date=0 To=2 From=1 Subject=3 M=trunc-1 D A g= .',
  },
  '21-malformed-header-no-colon.eml': {
    chunk33: 'Date: Mon, 1 Apr 2024 13:13:13 +0000\r\nTo: iris@example.com\r\nFrom: Hal <hal@example.com>\r\nSubject: \r\n',
    display: 1,
    attachments: 0,
    structure: '1 Date=0 To=2 From=1 Subject=none sep=- D',
  },
  '22-pgp-encrypted.eml': {
    chunk33: 'Date: Tue, 2 Apr 2024 14:14:14 +0000\r\nTo: ken@example.org\r\nFrom: Joan <joan@example.org>\r\nSubject: ...\r\n',
    display: 1, // the ciphertext part is marked inline; the version part is an attachment
    attachments: 1,
  },
  '23-dsn-bounce.eml': {
    chunk33:
      'Date: Wed, 3 Apr 2024 15:15:15 +0000 (UTC)\r\nTo: leo@example.com\r\nFrom: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\nSubject: Undelivered Mail Returned to Sender\r\n',
    display: 2,
    attachments: 1,
  },
};

describe('MIME gateway: corpus', () => {
  const files = fs.readdirSync(MAIL).filter((f) => f.endsWith('.eml')).sort();

  it('has an expectation for every message (and at least 15 messages)', () => {
    assert.deepEqual(files, Object.keys(CORPUS).sort());
    assert.ok(files.length >= 15);
  });

  for (const file of files) {
    it(`${file}: round trip and documented parts`, () => {
      const raw = fixture(file);
      const parts = roundTrip(raw, file);
      const want = CORPUS[file] as Expected;
      assert.equal(text(encodeCommonHeaders(parts.common)), want.chunk33);
      assert.equal(parts.display.length, want.display, 'display chunks');
      assert.equal(parts.attachments.length, want.attachments, 'attachment chunks');
      if (want.structure) assert.equal(structure(parts), want.structure);
      // every other top-level field is in chunk 34 verbatim, in order
      for (const chunk of [...parts.display, ...parts.attachments]) {
        assert.equal(chunk.buffer, raw.buffer, 'display and attachment chunks are views, not copies');
      }
    });
  }

  it('keeps every other header verbatim in chunk 34, in order, and only those', () => {
    const parts = mimeToParts(fixture('09-duplicate-headers.eml'));
    const other = otherFields(parts);
    assert.match(other, /^Received: from mx2\.example\.org .*\r\nReceived: from relay.*\r\nReceived: by relay/s);
    assert.equal(other.match(/^DKIM-Signature:/gm)?.length, 2);
    // the second Cc and the second To are not the first of their label: verbatim, in place
    assert.match(other, /\r\nCc: nina@example\.net\r\nTo: second-to@example\.net\r\nMessage-ID:/);
    assert.doesNotMatch(other, /^(Date|From|Subject):/m);
    assert.doesNotMatch(other, /^To: kate|^Cc: mike/m);
  });

  it('puts a single-part body, and only the body, in the one display chunk', () => {
    const raw = fixture('15-no-final-newline.eml');
    const parts = mimeToParts(raw);
    assert.equal(text(parts.display[0] as Uint8Array), 'This body ends without a line break.');
    assert.equal(otherFields(parts), 'Content-Type: text/plain; charset=us-ascii\r\n');
  });

  it('gives each part of a multipart a whole MIME entity (part headers and body)', () => {
    const parts = mimeToParts(fixture('03-alternative.eml'));
    assert.match(text(parts.display[0] as Uint8Array), /^Content-Type: text\/plain; charset="UTF-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHello Carol,\r\n/);
    assert.match(text(parts.display[1] as Uint8Array), /^Content-Type: text\/html;.*<\/body><\/html>\r\n$/s);
    // the line end before a delimiter belongs to the delimiter (RFC 2046), not to the part
    const pdf = mimeToParts(fixture('04-mixed-pdf-png.eml'));
    assert.match(text(pdf.display[0] as Uint8Array), /Kind regards,\r\nAccounts$/);
  });

  it('keeps a malformed header block: the body starts at the first line that is not a field', () => {
    const parts = mimeToParts(fixture('21-malformed-header-no-colon.eml'));
    assert.equal(
      text(parts.display[0] as Uint8Array),
      crlf('This line lacks a colon, so the header block ends here\nSubject: this is now body text\nMIME-Version: 1.0\n\nThe blank line above is part of the body.\n'),
    );
  });

  it('promotes the first part to display when no part is read inline', () => {
    const raw = bytes(
      crlf(
        'From: a@example.com\nTo: b@example.com\nSubject: s\nDate: d\nContent-Type: multipart/mixed; boundary=x\n\n' +
          '--x\nContent-Type: application/pdf\nContent-Disposition: attachment\n\nPDF\n--x\nContent-Type: image/png\n\nPNG\n--x--\n',
      ),
    );
    const parts = roundTrip(raw, 'attachments only');
    assert.equal(parts.display.length, 1);
    assert.match(text(parts.display[0] as Uint8Array), /application\/pdf/);
    assert.equal(parts.attachments.length, 1);
    assert.equal(structure(parts), '1 Date=3 To=1 From=0 Subject=2 M=x D A .');
  });
});

describe('MIME gateway: common headers', () => {
  const body = '\r\nbody\r\n';

  it('records absent required headers, shows placeholders, and restores the absence', () => {
    const raw = bytes(`X-Only: 1\r\n${body}`);
    const parts = roundTrip(raw, 'no common headers');
    assert.equal(text(encodeCommonHeaders(parts.common)), 'Date: \r\nTo: undisclosed-recipients:;\r\nFrom: \r\nSubject: \r\n');
    assert.equal(structure(parts), '1 Date=none To=none From=none Subject=none D');
    const withPlaceholders = mimeToParts(raw, { placeholders: { From: bytes('<alice@example.com>'), Date: bytes('Mon, 1 Apr 2024 00:00:00 +0000') } });
    assert.equal(text(withPlaceholders.common.From as Uint8Array), '<alice@example.com>');
    assert.equal(text(withPlaceholders.common.Date as Uint8Array), 'Mon, 1 Apr 2024 00:00:00 +0000');
    assert.ok(Buffer.from(partsToMime(withPlaceholders)).equals(Buffer.from(raw)));
    expectCode(() => mimeToParts(raw, { placeholders: { Subject: bytes('a\r\nb') } }), 'MESSAGE_BAD_HEADERS', 'placeholder with a line break');
  });

  it('omits absent optional headers from chunk 33 and the structure line', () => {
    const parts = roundTrip(bytes(`From: a\r\nTo: b\r\nSubject: c\r\nDate: d\r\n${body}`), 'no CC');
    assert.equal(parts.common.CC, undefined);
    assert.equal(parts.common.Organization, undefined);
    assert.equal(structure(parts), '1 Date=3 To=1 From=0 Subject=2 D');
  });

  it('takes the first of duplicates and keeps the rest verbatim in chunk 34', () => {
    const raw = bytes(`Subject: first\r\nsubject:  second\r\nTo: a\r\nTO: b\r\n${body}`);
    const parts = roundTrip(raw, 'duplicates');
    assert.equal(text(parts.common.Subject as Uint8Array), 'first');
    assert.equal(text(parts.common.To as Uint8Array), 'a');
    assert.equal(otherFields(parts), 'subject:  second\r\nTO: b\r\n');
  });

  it('records odd label case, white space before the colon and no space after it', () => {
    const raw = bytes(`cC :x@example.com\r\nfRoM:\t a@example.com\r\n${body}`);
    const parts = roundTrip(raw, 'odd case');
    assert.equal(text(parts.common.CC as Uint8Array), 'x@example.com');
    assert.equal(text(parts.common.From as Uint8Array), 'a@example.com');
    assert.equal(structure(parts), '1 Date=none To=none CC=0;n:cC%20;p: From=1;n:fRoM;p:%09%20 Subject=none D');
  });

  it('unfolds into chunk 33 and records where the folds were, including a fold right after the colon', () => {
    const raw = bytes('Subject:\r\n  folded\r\n\tthree\r\n times \r\nTo: a\r\n\r\n');
    const parts = roundTrip(raw, 'folds');
    assert.equal(text(parts.common.Subject as Uint8Array), 'folded\tthree times ');
    assert.match(structure(parts), / Subject=0;p:%0D%0A%20%20;f:6,12 /);
  });

  it('records bare-LF folds and line ends in a CRLF message', () => {
    const raw = bytes('From: f\r\nSubject: a\n b\r\nTo: x\n\r\nbody');
    const parts = roundTrip(raw, 'mixed line ends');
    assert.equal(text(parts.common.Subject as Uint8Array), 'a b');
    assert.equal(structure(parts), '1 Date=none To=2;t:n From=0 Subject=1;f:1n D');
    // the message's default line end is its first line's
    assert.equal(structure(mimeToParts(bytes('Subject: a\n b\r\nTo: x\n\r\nbody'))), '1 eol=n Date=none To=1 From=none Subject=0;f:1;t:c sep=c D');
  });

  it('keeps a header whose value holds a bare CR verbatim in chunk 34 and shows a cleaned copy', () => {
    const raw = bytes(`Subject: odd\rvalue\r\nFrom: a\r\n${body}`);
    const parts = roundTrip(raw, 'bare CR');
    assert.equal(text(parts.common.Subject as Uint8Array), 'odd value');
    assert.equal(otherFields(parts), 'Subject: odd\rvalue\r\n');
    assert.match(structure(parts), / Subject=raw /);
  });

  it('handles a message that ends inside its header block', () => {
    for (const m of ['Subject: x', 'Subject: x\r\n', 'To: a\r\n b', 'X: y\r\nSubject:']) {
      const parts = roundTrip(bytes(m), JSON.stringify(m));
      assert.equal(parts.display.length, 1);
      assert.equal((parts.display[0] as Uint8Array).length, 0);
    }
    assert.match(structure(mimeToParts(bytes('Subject: x'))), /Subject=0;t:- sep=- D$/);
  });
});

describe('MIME gateway: degraded structure stays exact', () => {
  const head = 'From: a\r\nTo: b\r\nSubject: c\r\nDate: d\r\n';

  it('keeps the body whole when the boundary is missing, empty or never used', () => {
    for (const ct of ['multipart/mixed', 'multipart/mixed; boundary=""', 'multipart/mixed; boundary=zz', `multipart/mixed; boundary=${'b'.repeat(300)}`]) {
      const raw = bytes(`${head}Content-Type: ${ct}\r\n\r\n--x\r\n\r\npart\r\n--x--\r\n`);
      const parts = roundTrip(raw, ct);
      assert.equal(parts.display.length, 1);
      assert.equal(text(parts.display[0] as Uint8Array), '--x\r\n\r\npart\r\n--x--\r\n');
    }
  });

  it('keeps nesting deeper than MAX_MULTIPART_DEPTH in one chunk', () => {
    let entity = 'Content-Type: text/plain\r\n\r\nleaf';
    for (let d = MAX_MULTIPART_DEPTH + 3; d >= 1; d--) {
      entity = `Content-Type: multipart/mixed; boundary=b${d}\r\n\r\n--b${d}\r\n${entity}\r\n--b${d}--`;
    }
    const raw = bytes(head + entity);
    const parts = roundTrip(raw, 'deep');
    assert.equal(parts.display.length, 1);
    assert.equal(parts.attachments.length, 0);
    assert.equal((structure(parts).match(/M=/g) ?? []).length, MAX_MULTIPART_DEPTH);
    assert.match(text(parts.display[0] as Uint8Array), new RegExp(`^Content-Type: multipart/mixed; boundary=b${MAX_MULTIPART_DEPTH + 1}\r\n`));
  });

  it('keeps the body whole when it has more than MAX_PARTS parts', () => {
    const many = (n: number): Uint8Array =>
      bytes(`${head}Content-Type: multipart/mixed; boundary=p\r\n\r\n${'--p\r\n\r\nx\r\n'.repeat(n)}--p--\r\n`);
    assert.equal(roundTrip(many(MAX_PARTS), 'MAX_PARTS').display.length, MAX_PARTS);
    const over = roundTrip(many(MAX_PARTS + 1), 'MAX_PARTS + 1');
    assert.equal(over.display.length, 1);
    assert.equal(over.attachments.length, 0);
  });

  it('keeps the body whole when the parts of all multiparts together exceed MAX_PARTS', () => {
    const inner = (b: string, n: number): string => `Content-Type: multipart/mixed; boundary=${b}\r\n\r\n${`--${b}\r\n\r\nx\r\n`.repeat(n)}--${b}--`;
    const half = Math.ceil((MAX_PARTS + 1) / 2);
    const raw = bytes(`${head}Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n${inner('i1', half)}\r\n--o\r\n${inner('i2', half)}\r\n--o--\r\n`);
    const parts = roundTrip(raw, 'parts over several multiparts');
    assert.equal(parts.display.length, 1);
    assert.equal(structure(parts), '1 Date=3 To=1 From=0 Subject=2 D');
  });

  it('keeps the body whole when the skeletons together exceed MAX_SKELETON_BYTES', () => {
    const preamble = 'p'.repeat(MAX_NODE_SKELETON_BYTES - 200);
    const inner = (b: string): string => `Content-Type: multipart/mixed; boundary=${b}\r\n\r\n${preamble}\r\n--${b}\r\n\r\nx\r\n--${b}--`;
    const n = Math.ceil(MAX_SKELETON_BYTES / preamble.length) + 1;
    const children = Array.from({ length: n }, (_, i) => `--o\r\n${inner(`i${i}`)}\r\n`).join('');
    const parts = roundTrip(bytes(`${head}Content-Type: multipart/mixed; boundary=o\r\n\r\n${children}--o--\r\n`), 'large skeletons');
    assert.equal(parts.display.length, 1);
    // one fewer child fits
    const fits = Array.from({ length: n - 2 }, (_, i) => `--o\r\n${inner(`i${i}`)}\r\n`).join('');
    assert.equal(roundTrip(bytes(`${head}Content-Type: multipart/mixed; boundary=o\r\n\r\n${fits}--o--\r\n`), 'skeletons that fit').display.length, n - 2);
  });

  it('stays linear on pathological parts: MiBs of tiny part header fields, near-miss delimiter lines', () => {
    const fields = 'a:b\r\n'.repeat(1 << 20);
    const nearMiss = '--bX\r\n--b-\r\n'.repeat(1 << 18);
    const raw = bytes(`${head}Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n${fields}\r\nbody\r\n--b\r\n\r\n${nearMiss}\r\n--b--\r\n`);
    const parts = roundTrip(raw, 'pathological');
    assert.equal(parts.display.length, 2);
  });

  it('keeps a multipart whole when its preamble would bloat the structure line', () => {
    const raw = bytes(`${head}Content-Type: multipart/mixed; boundary=p\r\n\r\n${'x'.repeat(MAX_NODE_SKELETON_BYTES)}\r\n--p\r\n\r\nx\r\n--p--\r\n`);
    const parts = roundTrip(raw, 'large preamble');
    assert.equal(parts.display.length, 1);
    assert.match(structure(parts), / D$/);
  });

  it('maps a header-less byte string to one display chunk', () => {
    for (const s of ['', '\r\n', '\n\n', 'no header here', ' leading space: x\r\n\r\nbody', 'From alice@example.com Mon Apr 1\nSubject: x\n\nbody']) {
      const parts = roundTrip(bytes(s), JSON.stringify(s));
      assert.equal(parts.display.length, 1);
    }
  });
});

describe('MIME gateway: limits', () => {
  it('rejects a message over MAX_MESSAGE_BYTES', () => {
    expectCode(() => mimeToParts(new Uint8Array(MAX_MESSAGE_BYTES + 1)), 'MIME_TOO_LARGE', 'too large');
    const big: MessageParts = {
      common: mimeToParts(bytes('')).common,
      otherHeaders: mimeToParts(bytes('')).otherHeaders,
      display: [new Uint8Array(MAX_MESSAGE_BYTES + 1)],
      attachments: [],
    };
    expectCode(() => partsToMime(big), 'MIME_TOO_LARGE', 'rebuilt message too large');
  });

  it('rejects a header block over MAX_HEADER_BYTES or MAX_HEADER_FIELDS', () => {
    expectCode(() => mimeToParts(bytes(`X-Big: ${'a'.repeat(MAX_HEADER_BYTES)}\r\n\r\n`)), 'MIME_HEADERS_TOO_LARGE', 'one long field');
    expectCode(() => mimeToParts(bytes(`X-Big: a\r\n${' b\r\n'.repeat(MAX_HEADER_BYTES / 4)}\r\n`)), 'MIME_HEADERS_TOO_LARGE', 'many continuation lines');
    expectCode(() => mimeToParts(bytes(`${'X: y\r\n'.repeat(MAX_HEADER_FIELDS + 1)}\r\n`)), 'MIME_HEADERS_TOO_LARGE', 'too many fields');
    roundTrip(bytes(`${'X: y\r\n'.repeat(MAX_HEADER_FIELDS)}\r\n`), 'MAX_HEADER_FIELDS fields');
    // a long body line is not a header
    roundTrip(bytes(`Subject: s\r\n\r\n${'a'.repeat(MAX_HEADER_BYTES + 10)}`), 'long body line');
  });
});

describe('MIME gateway: the way back', () => {
  const good = (): MessageParts => mimeToParts(fixture('04-mixed-pdf-png.eml'));
  const withStructure = (p: MessageParts, s: string): MessageParts => ({
    ...p,
    otherHeaders: bytes(`X-DIME-MIME-Map: ${s}\r\n${otherFields(p)}`),
  });

  it('rejects chunks that do not match the structure line', () => {
    const p = good();
    expectCode(() => partsToMime({ ...p, attachments: p.attachments.slice(1) }), 'MIME_BAD_MANIFEST', 'missing attachment');
    expectCode(() => partsToMime({ ...p, display: [...p.display, bytes('x')] }), 'MIME_BAD_MANIFEST', 'extra display');
    const noCc = { ...p.common };
    delete noCc.CC;
    expectCode(() => partsToMime({ ...p, common: noCc }), 'MIME_BAD_MANIFEST', 'CC missing from chunk 33');
    expectCode(() => partsToMime({ ...p, common: { ...p.common, Organization: bytes('x') } }), 'MIME_BAD_MANIFEST', 'unexpected Organization');
  });

  it('rejects a damaged structure line', () => {
    const p = good();
    const s = structure(p);
    for (const bad of [
      s.replace('1 ', '2 '),
      s.replace('Date=0', 'Date=9'),
      s.replace('Date=0', 'Date=1'),
      s.replace(' .', ''),
      `${s} D`,
      s.replace('M=', 'M=%ZZ'),
      s.replace('M=----=_Part', 'M=----=_Part*'),
      s.replace('CC=3;n:Cc', 'CC=3;q:x'),
      s.replace('D A A', 'g=x g=y D A A'),
      s.replace('M=----=_Part_4417_1130624352.1710521112000 D A A .', 'M=b .'),
      s.replace('Subject=4', 'Subject=4;f:99'),
      '',
    ]) {
      expectCode(() => partsToMime(withStructure(p, bad)), 'MIME_BAD_MANIFEST', JSON.stringify(bad));
    }
    expectCode(() => partsToMime({ ...p, otherHeaders: bytes(`X-DIME-MIME-Map: ${s}\r\nX: y\r\n\r\nbody`) }), 'MIME_BAD_MANIFEST', 'body in chunk 34');
  });

  it('rebuilds parts from a foreign DIME author (no structure line) as a readable message', () => {
    const common = { Date: bytes('Mon, 1 Apr 2024 00:00:00 +0000'), To: bytes('b@example.org'), From: bytes('a@example.com'), Subject: bytes('hi') };
    const single = text(partsToMime({ common, otherHeaders: bytes('X-Mailer: magma'), display: [bytes('hello\r\n')], attachments: [] }));
    assert.equal(single, 'Date: Mon, 1 Apr 2024 00:00:00 +0000\r\nTo: b@example.org\r\nFrom: a@example.com\r\nSubject: hi\r\nX-Mailer: magma\r\n\r\nhello\r\n');
    const multi = partsToMime({ common, otherHeaders: new Uint8Array(0), display: [bytes('Content-Type: text/plain\r\n\r\nhello')], attachments: [bytes('Content-Type: application/octet-stream\r\n\r\n=_dime_0')] });
    const m = text(multi);
    assert.match(m, /^MIME-Version: 1\.0\r\nContent-Type: multipart\/mixed; boundary="=_dime_1"\r\nDate: /);
    assert.match(m, /\r\n\r\n--=_dime_1\r\nContent-Type: text\/plain\r\n\r\nhello\r\n--=_dime_1\r\nContent-Type: application\/octet-stream\r\n\r\n=_dime_0\r\n--=_dime_1--\r\n$/);
    // and that message maps like any other
    const again = roundTrip(multi, 'foreign rebuilt');
    assert.equal(again.display.length, 1);
    assert.equal(again.attachments.length, 1);
  });
});

describe('MIME gateway: large messages', () => {
  it('maps and rebuilds a 25 MiB message with a base64 attachment, without copying the parts', (t) => {
    const payload = randomBytes(Math.ceil((25 * 1024 * 1024) / 78) * 57); // 57 bytes per 76-column base64 line and its CRLF
    const b64 = Buffer.from(payload.toString('base64'), 'latin1');
    const lines = Math.ceil(b64.length / 76);
    const body = Buffer.alloc(b64.length + 2 * lines);
    for (let i = 0, o = 0; i < b64.length; i += 76) {
      o += b64.copy(body, o, i, Math.min(i + 76, b64.length));
      body[o++] = 0x0d;
      body[o++] = 0x0a;
    }
    const headText = crlf(
      'From: a@example.com\nTo: b@example.org\nSubject: big\nDate: Mon, 1 Apr 2024 00:00:00 +0000\nMIME-Version: 1.0\n' +
        'Content-Type: multipart/mixed; boundary="big-1"\n\n--big-1\nContent-Type: text/plain\n\nSee attachment.\n' +
        '--big-1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename="big.bin"\n\n',
    );
    const raw = new Uint8Array(Buffer.concat([Buffer.from(headText, 'latin1'), body, Buffer.from('--big-1--\r\n', 'latin1')]));
    assert.ok(raw.length >= 25 * 1024 * 1024, `${raw.length} bytes`);
    const t0 = performance.now();
    const parts = mimeToParts(raw);
    const t1 = performance.now();
    const back = partsToMime(parts);
    const t2 = performance.now();
    t.diagnostic(`${(raw.length / 1048576).toFixed(1)} MiB: mimeToParts ${(t1 - t0).toFixed(0)} ms, partsToMime ${(t2 - t1).toFixed(0)} ms`);
    assert.equal(parts.display.length, 1);
    assert.equal(parts.attachments.length, 1);
    const attachment = parts.attachments[0] as Uint8Array;
    assert.equal(attachment.buffer, raw.buffer, 'the attachment is a view into the message');
    assert.ok(attachment.length > body.length);
    assert.ok(Buffer.from(back).equals(Buffer.from(raw)));
  });
});
