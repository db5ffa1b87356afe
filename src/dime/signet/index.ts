/** Signets: organisational (1776), user (1789) and signing requests (1215). */
import { ARMOR_TAGS, armor, dearmor, type ArmorTag } from '../armor.js';
import { decodeSignet, type Signet } from './codec.js';

export * from './access.js';
export * from './codec.js';
export * from './fields.js';
export * from './signing.js';
export * from './validate.js';

/**
 * libdime labels everything that is not a user signet ORGANIZATIONAL SIGNET, SSRs included (§3.9);
 * we write the same so libdime's tools can read our files.
 */
export function signetArmorTag(signet: Signet): ArmorTag {
  return signet.type === 'user' ? ARMOR_TAGS.userSignet : ARMOR_TAGS.orgSignet;
}

export function armorSignet(signet: Signet): string {
  return armor(signetArmorTag(signet), signet.bytes);
}

/** Read an armored signet of any type; the type comes from the magic number, never from the tag. */
export function dearmorSignet(text: string): Signet {
  return decodeSignet(dearmor(text, [ARMOR_TAGS.userSignet, ARMOR_TAGS.orgSignet, ARMOR_TAGS.signingRequest]).data);
}
