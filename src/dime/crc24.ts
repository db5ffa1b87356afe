/** The OpenPGP CRC-24 (RFC 4880 §6.1) that DIME armor uses: init 0xB704CE, polynomial 0x1864CFB. */

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let b = 0; b < 256; b++) {
    let crc = b << 16;
    for (let i = 0; i < 8; i++) {
      crc <<= 1;
      if (crc & 0x1000000) crc ^= 0x1864cfb;
    }
    t[b] = crc & 0xffffff;
  }
  return t;
})();

export function crc24(data: Uint8Array): number {
  let crc = 0xb704ce;
  for (let i = 0; i < data.length; i++) {
    crc = ((crc << 8) & 0xffffff) ^ (TABLE[((crc >> 16) ^ (data[i] as number)) & 0xff] as number);
  }
  return crc;
}

export function crc24Bytes(data: Uint8Array): Uint8Array {
  const c = crc24(data);
  return Uint8Array.of((c >> 16) & 0xff, (c >> 8) & 0xff, c & 0xff);
}
