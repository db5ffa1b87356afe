/**
 * The primitives DIME needs, behind one interface so that the fast implementation (node:crypto and
 * libsecp256k1) and the portable one (@noble) are interchangeable and can be tested against each
 * other. Key formats are DIME's raw forms: Ed25519 32-byte seeds and public keys, secp256k1 32-byte
 * big-endian scalars and 33-byte compressed points.
 */
export interface Signer {
  /** Raw 32-byte Ed25519 public key. */
  readonly publicKey: Uint8Array;
  /** Pure Ed25519 (RFC 8032) signature. Async so that an HSM can stand behind it. */
  sign(message: Uint8Array): Promise<Uint8Array>;
}

export interface CryptoBackend {
  readonly name: string;
  /** Which implementation does secp256k1, for start-up logs and `dime doctor`. */
  readonly secp256k1Impl: 'libsecp256k1' | 'openssl' | 'noble';

  ed25519PublicKey(seed: Uint8Array): Uint8Array;
  ed25519Sign(seed: Uint8Array, message: Uint8Array): Uint8Array;
  /**
   * RFC 8032 verification: canonical S < L, strict decoding of the public key (y < p, no x = 0 with
   * the sign bit) and small-order public keys refused (with one, forging is trivial). False for
   * malformed keys or signatures. Both backends agree on every signature an RFC 8032 signer can
   * make; they differ only on signatures crafted with a small-order component in R (or in a
   * mixed-order key), which only the key's holder can produce: node:crypto (OpenSSL) checks the
   * cofactorless equation and refuses them, @noble checks the cofactored one and accepts them.
   * We use each library's own verification rather than write the equation by hand.
   */
  ed25519Verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
  /** A signer that keeps the imported key for repeated use (organisation keys, benchmarks). */
  ed25519Signer(seed: Uint8Array): Signer;

  secp256k1IsValidPrivateKey(key: Uint8Array): boolean;
  secp256k1IsValidPublicKey(key: Uint8Array): boolean;
  /** Compressed (33-byte) public key of a 32-byte scalar. */
  secp256k1PublicKey(privateKey: Uint8Array): Uint8Array;
  /** ECDH: the 32-byte big-endian x-coordinate of priv·Pub (OpenSSL ECDH_compute_key semantics). */
  secp256k1Ecdh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array;

  sha256(data: Uint8Array): Uint8Array;
  sha512(data: Uint8Array): Uint8Array;
  hmacSha512(key: Uint8Array, data: Uint8Array): Uint8Array;

  /** AES-256-CBC without padding (DIME pads its own plaintexts to whole blocks). */
  aes256CbcEncrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array;
  aes256CbcDecrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array;
  /**
   * AES-256-CBC without padding, written into `out` at `offset` (which must have room): large
   * payloads are encrypted into the message buffer in place instead of through a transient copy.
   */
  aes256CbcEncryptInto(key: Uint8Array, iv: Uint8Array, data: Uint8Array, out: Uint8Array, offset: number): void;
  /** AES-256-GCM, any IV length ≥ 12 (PRIME uses 16), 16-byte tag, optional AAD. */
  aes256GcmEncrypt(key: Uint8Array, iv: Uint8Array, data: Uint8Array, aad?: Uint8Array): { ciphertext: Uint8Array; tag: Uint8Array };
  aes256GcmDecrypt(key: Uint8Array, iv: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array, aad?: Uint8Array): Uint8Array;

  randomBytes(length: number): Uint8Array;
}
