/**
 * Signet features the libdime vectors do not exercise: secondary organisational keys and their
 * permission bits, undefined and photo fields, every text field, rotation chains, argument errors.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { defaultCrypto } from '../src/crypto/index.js';
import { utf8 } from '../src/dime/bytes.js';
import { generateKeys } from '../src/dime/keys.js';
import {
  SOK_PERMISSIONS,
  createOrgSignet,
  createSigningRequest,
  dearmorSignet,
  armorSignet,
  decodeSignet,
  fieldSpecs,
  getField,
  getFields,
  secondaryKeysOf,
  signField,
  signUserSignet,
  signetSigningKeys,
  validateSignet,
  type Signet,
} from '../src/dime/signet/index.js';
import { isDimeError } from '../src/errors.js';

const crypto = defaultCrypto();

function keypair(type: 'org' | 'user') {
  const k = generateKeys(type, crypto);
  return { keys: k, signer: crypto.ed25519Signer(k.signingKey), enc: crypto.secp256k1PublicKey(k.encryptionKey) };
}

async function newUser(previous?: ReturnType<typeof keypair>) {
  const u = keypair('user');
  const ssr = await createSigningRequest({ signer: u.signer, encryptionKey: u.enc, ...(previous ? { previousSigner: previous.signer } : {}) });
  return { ...u, ssr };
}

describe('secondary organisational keys', () => {
  it('a SOK with the signets permission signs user signets; one without it does not', async () => {
    const pok = keypair('org');
    const signing = keypair('org');
    const messagesOnly = keypair('org');
    const org = await createOrgSignet({
      signer: pok.signer,
      encryptionKey: pok.enc,
      secondaryKeys: [
        { permissions: SOK_PERMISSIONS.signets | SOK_PERMISSIONS.tls, publicKey: signing.signer.publicKey },
        { permissions: SOK_PERMISSIONS.messages, publicKey: messagesOnly.signer.publicKey },
      ],
      domain: 'example.net',
    });
    assert.equal(validateSignet(crypto, org, { poks: [pok.signer.publicKey] }).state, 'id');
    assert.deepEqual(
      secondaryKeysOf(org).map((s) => s.permissions),
      [SOK_PERMISSIONS.signets | SOK_PERMISSIONS.tls, SOK_PERMISSIONS.messages],
    );
    assert.deepEqual(signetSigningKeys(org), [pok.signer.publicKey, signing.signer.publicKey]);

    const u = await newUser();
    const bySok = await signUserSignet(crypto, u.ssr, { orgSigner: signing.signer, address: 'u@example.net' });
    assert.equal(validateSignet(crypto, bySok, { org }).state, 'id');
    const byWrongSok = await signUserSignet(crypto, u.ssr, { orgSigner: messagesOnly.signer, address: 'u@example.net' });
    assert.equal(validateSignet(crypto, byWrongSok, { org }).state, 'invalid');
    // The SOK is not a POK: an org signet is only ever checked against the record's POKs.
    assert.equal(validateSignet(crypto, org, { poks: [signing.signer.publicKey] }).state, 'unknown-pok');
  });

  it('refuses a permission value that is not a byte', async () => {
    const pok = keypair('org');
    await assert.rejects(
      createOrgSignet({ signer: pok.signer, encryptionKey: pok.enc, secondaryKeys: [{ permissions: 256, publicKey: pok.signer.publicKey }] }),
      (e: unknown) => isDimeError(e, 'SIGNET_BAD_ARGUMENT'),
    );
  });
});

describe('informational, undefined and photo fields', () => {
  it('every text field of both tables, repeated phones, undefined fields and a photo round-trip and validate', async () => {
    const pok = keypair('org');
    const png = new Uint8Array(70_000).fill(7); // needs the u24 length of field 252
    png.set([0x89, 0x50, 0x4e, 0x47]);
    const orgText = fieldSpecs('org').filter((s) => s.kind === 'text').map((s) => ({ id: s.id, value: `${s.name} of the org ✓` }));
    orgText.push({ id: 21, value: '+1-555-0199' });
    const org = await createOrgSignet({
      signer: pok.signer,
      encryptionKey: pok.enc,
      info: { text: orgText, undefined: [{ name: 'X-Note', value: utf8.encode('first') }, { name: 'X-Note', value: utf8.encode('second') }], photo: png },
      domain: 'example.net',
    });
    const again = dearmorSignet(armorSignet(org));
    assert.deepEqual(again.bytes, org.bytes);
    assert.equal(validateSignet(crypto, again, { poks: [pok.signer.publicKey] }).state, 'id');
    assert.deepEqual(getFields(again, 21).map((f) => utf8.decode(f.value)), ['Phone-Number of the org ✓', '+1-555-0199']);
    assert.deepEqual(getFields(again, 251).map((f) => [utf8.decode(f.name!), utf8.decode(f.value)]), [['X-Note', 'first'], ['X-Note', 'second']]);
    assert.deepEqual(getField(again, 252)!.value, png);

    const u = await newUser();
    const userText = fieldSpecs('user').filter((s) => s.kind === 'text').map((s) => ({ id: s.id, value: `${s.name} of the user` }));
    const user = await signUserSignet(crypto, u.ssr, { orgSigner: pok.signer, address: 'u@example.net', info: { text: userText } });
    assert.equal(validateSignet(crypto, decodeSignet(user.bytes), { org }).state, 'id');
    assert.equal(getFields(user, 202).length, 1);
  });

  it('refuses fields that are not text fields of the type, duplicates of unique fields, and empty values', async () => {
    const pok = keypair('org');
    const base = { signer: pok.signer, encryptionKey: pok.enc };
    await assert.rejects(createOrgSignet({ ...base, info: { text: [{ id: 94, value: 'Title is a user field' }] } }), (e: unknown) => isDimeError(e, 'SIGNET_BAD_ARGUMENT'));
    await assert.rejects(createOrgSignet({ ...base, info: { text: [{ id: 16, value: 'a' }, { id: 16, value: 'b' }] } }), (e: unknown) => isDimeError(e, 'SIGNET_BAD_ARGUMENT'));
    await assert.rejects(createOrgSignet({ ...base, info: { text: [{ id: 16, value: '' }] } }), (e: unknown) => isDimeError(e, 'SIGNET_FIELD_EMPTY'));
    await assert.rejects(createOrgSignet({ ...base, info: { text: [{ id: 16, value: 'x'.repeat(256) }] } }), (e: unknown) => isDimeError(e, 'SIGNET_FIELD_LENGTH'));
    await assert.rejects(createOrgSignet({ ...base, domain: '' }), (e: unknown) => isDimeError(e, 'SIGNET_BAD_ARGUMENT'));
  });
});

describe('rotation and chain of custody', () => {
  it('a chain of three user keys validates link by link, and a skipped link is broken custody', async () => {
    const pok = keypair('org');
    const org = await createOrgSignet({ signer: pok.signer, encryptionKey: pok.enc, domain: 'example.net' });
    const sign = (ssr: Signet, previous?: Signet) => signUserSignet(crypto, ssr, { orgSigner: pok.signer, address: 'u@example.net', ...(previous ? { previous } : {}) });
    const u1 = await newUser();
    const s1 = await sign(u1.ssr);
    const u2 = await newUser(u1);
    const s2 = await sign(u2.ssr, s1);
    const u3 = await newUser(u2);
    const s3 = await sign(u3.ssr, s2);
    assert.equal(validateSignet(crypto, s1, { org }).state, 'id');
    assert.equal(validateSignet(crypto, s2, { org, previous: s1 }).state, 'id');
    assert.equal(validateSignet(crypto, s3, { org, previous: s2 }).state, 'id');
    assert.equal(validateSignet(crypto, s3, { org, previous: s1 }).state, 'broken-custody');
    // The first signet has no custody signature, so offering a "previous" one is itself a break.
    assert.equal(validateSignet(crypto, s1, { org, previous: s3 }).state, 'broken-custody');
    // signUserSignet checks custody when it can.
    await assert.rejects(sign(u3.ssr, s1), (e: unknown) => isDimeError(e, 'SIGNET_NOT_SIGNABLE'));
  });

  it('refuses to sign something that is not a valid SSR', async () => {
    const pok = keypair('org');
    const org = await createOrgSignet({ signer: pok.signer, encryptionKey: pok.enc, domain: 'example.net' });
    await assert.rejects(signUserSignet(crypto, org, { orgSigner: pok.signer }), (e: unknown) => isDimeError(e, 'SIGNET_NOT_SIGNABLE'));
    const u = await newUser();
    const forged = await signField(u.ssr, 5, keypair('user').signer); // self-signature by someone else
    assert.equal(validateSignet(crypto, forged).state, 'invalid');
    await assert.rejects(signUserSignet(crypto, forged, { orgSigner: pok.signer }), (e: unknown) => isDimeError(e, 'SIGNET_NOT_SIGNABLE'));
  });

  it('signField replaces an existing signature in place', async () => {
    const pok = keypair('org');
    const org = await createOrgSignet({ signer: pok.signer, encryptionKey: pok.enc, domain: 'example.net' });
    const other = keypair('org');
    const resigned = await signField(org, 253, other.signer);
    assert.deepEqual(resigned.fields.map((f) => f.id), org.fields.map((f) => f.id));
    assert.equal(validateSignet(crypto, resigned, { poks: [pok.signer.publicKey] }).state, 'invalid');
    const back = await signField(resigned, 253, pok.signer);
    assert.deepEqual(back.bytes, org.bytes);
  });
});
