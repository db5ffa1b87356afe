/** DIME object type numbers ("magic"), u16 big-endian at offset 0 (dime-formats.md §1.1). */
export const MAGIC = {
  signingRequest: 1215,
  orgSignet: 1776,
  userSignet: 1789,
  dmimeTracing: 1837,
  dmimeMessage: 1847,
  encryptedOrgKey: 1947,
  orgKeys: 1952,
  encryptedUserKey: 1976,
  userKeys: 2013,
} as const;

/** 5-byte header objects (keys, signets) carry a u24 length: nothing larger can be encoded. */
export const MAX_U24_OBJECT = 0xffffff;
