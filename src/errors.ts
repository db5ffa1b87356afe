/**
 * Every failure the sidecar reports carries a stable `code`. Codes are API: scripts, logs, metrics
 * and (later) the SMTP reply table key on them, so never rename one; add new ones instead.
 */
export const ERROR_CODES = {
  // Encoding primitives
  BASE64_INVALID: 'text is not valid base64',
  ARMOR_NOT_FOUND: 'no armored block with an expected BEGIN line',
  ARMOR_NO_END: 'armored block has no END line',
  ARMOR_NO_CHECKSUM: 'armored block has no =CRC checksum line',
  ARMOR_CRC_MISMATCH: 'armor checksum does not match its content',
  ARMOR_TRAILING_DATA: 'data between the checksum line and the END line',
  ARMOR_TOO_LARGE: 'armored text exceeds the size limit',
  // Binary objects
  OBJECT_TRUNCATED: 'object is shorter than its header',
  OBJECT_LENGTH_MISMATCH: 'header length does not match the object size',
  OBJECT_TOO_LARGE: 'object exceeds the size limit',
  OBJECT_BAD_MAGIC: 'unexpected DIME object type (magic number)',
  // Keys files
  KEYS_BAD_FIELD: 'keys file field is missing or has the wrong id or length',
  KEYS_TRAILING_DATA: 'keys file has bytes after its last field',
  // Signets
  SIGNET_FIELD_UNKNOWN: 'signet field id is not defined for this signet type',
  SIGNET_FIELD_ORDER: 'signet fields out of order or a unique field repeated',
  SIGNET_FIELD_OVERFLOW: 'signet field length runs past the end of the signet',
  SIGNET_FIELD_LENGTH: 'signet field has an invalid length for its id',
  SIGNET_FIELD_EMPTY: 'signet field has an empty value',
  SIGNET_BAD_SIGNING_KEY: 'signet signing key is not a 0x40-prefixed (or bare) 32-byte Ed25519 key',
  SIGNET_BAD_ENCRYPTION_KEY: 'signet encryption key is not a compressed secp256k1 point',
  SIGNET_DIALECT_UNKNOWN: 'signet layout matches none of the known dialects',
  SIGNET_MISSING_FIELD: 'a field required for this operation is absent',
  SIGNET_INVALID_SIGNATURE: 'a signet signature does not verify',
  SIGNET_WRONG_KEY: 'the key does not belong to this signet',
  SIGNET_NOT_SIGNABLE: 'the signet is not in a state that allows this signature',
  SIGNET_BAD_ARGUMENT: 'invalid argument for a signet operation',
  // Management records
  RECORD_SYNTAX: 'management record token is not name=value',
  RECORD_BAD_VERSION: 'management record version is not 1',
  RECORD_NO_POK: 'management record has no pok= key',
  RECORD_BAD_POK: 'pok= is not 43 characters of unpadded base64',
  RECORD_BAD_TLS: 'tls= is not 86 characters of unpadded base64',
  RECORD_BAD_POLICY: 'pol= is not experimental, mixed or strict',
  RECORD_BAD_SUBDOMAIN: 'sub= is not strict, relaxed or explicit',
  RECORD_BAD_EXPIRY: 'exp= is not a whole number of days',
  RECORD_BAD_DX: 'dx= is not a host name',
  RECORD_DUPLICATE: 'a single-valued management record field appears twice',
  RECORD_TOO_LARGE: 'management record text exceeds the size limit',
  TLS_BAD_CERTIFICATE: 'certificate is not a PEM or DER X.509 certificate',
  RECORD_BAD_SYNDICATES: 'syn= is not printable ASCII',
  // MIME gateway
  MIME_TOO_LARGE: 'message exceeds the MIME gateway size limit',
  MIME_HEADERS_TOO_LARGE: 'message header block has too many fields or too many bytes',
  MIME_BAD_MANIFEST: 'the structure line in the other-headers chunk does not describe the chunks',
  // Gateway (outbound): the submission milter and the bundle it queues
  GATEWAY_BAD_BUNDLE: 'not a well-formed bundle of sealed messages (docs/mail-flow.md)',
  GATEWAY_NOT_DARK: 'a recipient cannot be reached by DIME as policy requires',
  GATEWAY_SENDER_CANNOT_SEAL: 'the sender has no key the server may seal with',
  GATEWAY_REINJECT_FAILED: 'the bundle service did not queue the sealed messages',
  // Gateway (inbound): what the inbound milter finds wrong with DIME mail (src/gateway/inbound.ts).
  // All but the last are refusals by the invalid policy (reject or quarantine), never a tempfail.
  GATEWAY_BAD_WRAPPER: 'the DIME part cannot be read (not base64, not one application/x-dime-message part, or a broken MIME structure)',
  GATEWAY_UNDECODABLE: 'the DMIME object inside the message does not parse',
  GATEWAY_TOO_MANY_RECIPIENTS: 'a DIME message arrived for several envelope recipients; a DMIME object is for exactly one',
  GATEWAY_NOT_LOCAL_RECIPIENT: 'the envelope recipient is not a current user of our dark domain',
  GATEWAY_NOT_FOR_RECIPIENT: "the message does not open with the recipient's keys (or the organisation's, for a sealed account)",
  GATEWAY_RECIPIENT_MISMATCH: 'the DMIME envelope names another recipient than the SMTP envelope',
  GATEWAY_WRONG_DESTINATION: 'the DMIME envelope names another destination domain than ours',
  GATEWAY_ORIGIN_MISMATCH: "the author's address is not in the origin domain",
  GATEWAY_NOT_OUR_SIGNET: 'the envelope names a destination or recipient signet we never published',
  GATEWAY_UNKNOWN_SIGNET: 'the author or origin signet the envelope names does not exist or does not validate',
  GATEWAY_VERIFY_FAILED: 'a signature or structural check of the DMIME message failed',
  GATEWAY_UNREPRESENTABLE: 'the decrypted original cannot be written back through the milter exactly, so it stays sealed',
  // DMIME messages
  MESSAGE_BAD_HEADERS: 'common headers chunk is not libdime\'s Label: value CRLF form',
  MESSAGE_BAD_ENVELOPE: 'envelope chunk is not the exact libdime line sequence',
  MESSAGE_BAD_ARGUMENT: 'invalid argument for a message operation',
  MESSAGE_TRUNCATED: 'a chunk runs past the end of the message',
  MESSAGE_UNKNOWN_CHUNK: 'chunk type is not defined by DMIME',
  MESSAGE_CHUNK_ORDER: 'chunks out of canonical order, or a single chunk repeated',
  MESSAGE_INCOMPLETE: 'a required chunk is missing',
  MESSAGE_BAD_CHUNK: 'a chunk payload has the wrong size for its type',
  MESSAGE_BAD_PAYLOAD: 'a decrypted payload has an invalid length or padding',
  MESSAGE_UNSUPPORTED: 'a payload uses a flag that cannot be decoded (alternate padding, compression)',
  MESSAGE_DECRYPT_FAILED: 'a chunk does not decrypt with this actor\'s key',
  MESSAGE_NOT_ALLOWED: 'this actor holds no keyslot for the chunk',
  MESSAGE_SIGNATURE_INVALID: 'a message signature does not verify',
  MESSAGE_SIGNET_MISMATCH: 'the envelope names a different signet or identity than the one given',
  // Milter
  MILTER_BAD_PACKET: 'milter packet is malformed (bad length, truncated, or a payload that does not parse)',
  MILTER_PACKET_TOO_LARGE: 'milter packet exceeds the size limit',
  MILTER_UNKNOWN_COMMAND: 'milter command code is not defined',
  MILTER_PROTOCOL: 'milter command not allowed in this state',
  MILTER_BAD_REPLY_CODE: 'SMTP reply is not a valid 4xx/5xx reply for a milter',
  MILTER_BAD_MODIFICATION: 'milter modification is invalid or was not negotiated with the MTA',
  MILTER_BAD_VERDICT: 'milter verdict is not allowed at this stage',
  MILTER_MESSAGE_TOO_LARGE: 'message exceeds the milter buffer limit',
  SOCKET_BAD_SPEC: 'socket is not inet:HOST:PORT or unix:PATH',
  SOCKET_IN_USE: 'another process is listening on the unix socket',
  DEADLINE_EXCEEDED: 'a handler did not finish before its deadline',
  DNS_SERVFAIL: 'DNS lookup failed (SERVFAIL or validation failure)',
  DNS_TIMEOUT: 'DNS lookup timed out',
  SIGNET_NOT_FOUND: 'no signet could be found for the address or domain',
  HSM_UNAVAILABLE: 'the hardware security module is unavailable',
  // DMTP (src/dmtp/): src/dmtp/replies.ts maps each to the reply a peer gets
  DMTP_LINE_TOO_LONG: 'DMTP line exceeds the line length limit',
  DMTP_BAD_CHARACTER: 'DMTP line holds a control character, NUL or a byte outside ASCII',
  DMTP_UNKNOWN_COMMAND: 'DMTP command verb is not recognised',
  DMTP_BAD_SYNTAX: 'DMTP command arguments match none of the accepted forms',
  DMTP_BAD_ARGUMENT: 'value cannot go into a DMTP command or reply (not a domain, address, fingerprint or printable text)',
  DMTP_BAD_SEQUENCE: 'DMTP command out of order (EHLO, MAIL FROM, RCPT TO, DATA)',
  DMTP_TLS_REQUIRED: 'DMTP command needs TLS first (STARTTLS)',
  DMTP_SMTP_FALLBACK: 'an SMTP command reached a DMTP-only listener',
  DMTP_TOO_MANY_ERRORS: 'too many invalid DMTP commands in one session',
  DMTP_TIMEOUT: 'the DMTP peer did not complete a command, the data or the TLS handshake in time',
  DMTP_SIZE_EXCEEDED: 'the DMTP message is larger than the size limit',
  DMTP_BUSY: 'the relay already holds as many message bytes in flight as its memory budget allows',
  DMTP_SIZE_MISMATCH: 'the DMTP data did not end after exactly SIZE octets',
  DMTP_NOT_OUR_DOMAIN: 'RCPT TO names a domain this relay does not serve',
  DMTP_FINGERPRINT_MISMATCH: 'a DMTP fingerprint does not match the signet it names',
  DMTP_ORIGIN_MISMATCH: 'the message names another origin domain than MAIL FROM',
  DMTP_RECIPIENT_UNKNOWN: 'the recipient is not a local user with a current signet',
  DMTP_BAD_REPLY: 'DMTP reply is malformed (code, continuation line or length)',
  DMTP_BAD_BANNER: 'the DMTP greeting is not 220 with the DMTPv1 token',
  DMTP_REFUSED: 'the DMTP peer refused the command',
  DMTP_CONNECTION_LOST: 'the DMTP connection closed before the exchange finished',
  DMTP_CONNECT_FAILED: 'no DMTP host of the domain could be reached',
  DMTP_CERTIFICATE_REJECTED: "the DX's TLS certificate fails the DIME trust model",
  DMTP_NO_RECORD: 'the domain has no usable DIME management record',
  DMTP_RECORD_BOGUS: 'the management record failed DNSSEC validation',
  DMTP_SIGNET_REJECTED: 'a signet fetched over DMTP does not validate against the record or its organisation',
  DMTP_MTA_UNAVAILABLE: 'the local MTA could not be reached or broke off the SMTP session',
  DMTP_MTA_TEMPFAIL: 'the local MTA refused the message temporarily (4xx)',
  DMTP_MTA_REJECTED: 'the local MTA refused the message permanently (5xx)',
  DMTP_SHUTTING_DOWN: 'the relay is stopping',
  // LMTP (src/dmtp/lmtp.ts, src/dmtp/outbound.ts): Postfix's dmtp transport hands bundles to the relay
  LMTP_LINE_TOO_LONG: 'LMTP command line exceeds the line length limit',
  LMTP_BAD_CHARACTER: 'LMTP command holds a control character, NUL or a byte outside ASCII',
  LMTP_UNKNOWN_COMMAND: 'LMTP command verb is not recognised',
  LMTP_BAD_SYNTAX: 'LMTP command arguments match none of the accepted forms',
  LMTP_BAD_PARAMETER: 'MAIL FROM or RCPT TO parameter that this LMTP server does not offer',
  LMTP_BAD_REPLY: 'LMTP reply with an invalid code or enhanced status code',
  LMTP_NOT_LOOPBACK: 'the LMTP listener has no authentication: it binds loopback or a unix socket unless explicitly allowed',
  LMTP_NOT_BUNDLE: 'the message handed to the relay is not a DIME bundle, or holds no DIME message for the recipient',
  LMTP_ORIGIN_MISMATCH: 'a bundle part names another origin domain than ours',
  // Resolver (src/resolver/): DNS_SERVFAIL and DNS_TIMEOUT above are also the resolver's
  RESOLVE_DEADLINE: 'the signet resolution did not finish before its deadline: the answer is unknown (tempfail), never "no signet"',
  RESOLVE_BAD_NAME: 'not a domain name or a user@domain address the resolver can look up',
  RESOLVE_SIGNET_INVALID: 'a fetched signet does not validate against the management record or the organisational signet',
  RESOLVE_CUSTODY_BROKEN: "the user's signing key changed without a valid chain-of-custody signature from the signet seen before",
  RESOLVE_FETCH_FAILED: "the signet could not be fetched from the domain's DX",
  RESOLVE_NO_FETCHER: 'no signet source is configured, so only the management record can be resolved',
  DNS_BOGUS: 'the DNS answer failed DNSSEC validation (bogus); it is never used',
  DNS_NO_RECORD: 'the domain publishes no DIME management record (NXDOMAIN or NODATA)',
  DNS_BAD_RESPONSE: 'the DNS answer cannot be decoded or does not answer the question asked',
  RECORD_AMBIGUOUS: 'several DIME management records at _dx.<domain>; none is chosen',
  RECORD_NOT_DIME: 'the TXT records at _dx.<domain> hold no DIME management record',
  CACHE_UNAVAILABLE: 'the shared Redis cache is unreachable; the in-process cache answers alone',
  // Crypto
  CRYPTO_BAD_KEY: 'key has the wrong length or is not a valid curve point or scalar',
  CRYPTO_BAD_INPUT: 'input length is not valid for this cipher',
  CRYPTO_AUTH_FAILED: 'authenticated decryption failed',
  CRYPTO_NATIVE_UNAVAILABLE: 'the native libsecp256k1 binding could not be loaded',
  // Policy delegation and socketmap services (src/policy/)
  POLICY_BAD_ATTRIBUTE: 'policy request line is not a name=value attribute',
  POLICY_DUPLICATE_ATTRIBUTE: 'policy request repeats an attribute',
  POLICY_LINE_TOO_LONG: 'policy request line exceeds the line length limit',
  POLICY_TOO_MANY_ATTRIBUTES: 'policy request has more attributes than the limit',
  POLICY_REQUEST_TOO_LARGE: 'policy request exceeds the size limit',
  POLICY_BAD_ACTION: 'policy action is malformed or cannot be sent safely',
  NETSTRING_BAD_LENGTH: 'netstring length is not canonical decimal digits followed by a colon',
  NETSTRING_TOO_LARGE: 'netstring length exceeds the size limit',
  NETSTRING_NO_COMMA: 'netstring payload is not followed by a comma',
  NETSTRING_TRUNCATED: 'connection closed in the middle of a netstring',
  SOCKETMAP_BAD_REQUEST: 'socketmap request is not "name key"',
  SOCKETMAP_BAD_REPLY: 'socketmap reply is malformed or longer than Postfix accepts',
  SERVICE_DEADLINE: 'the handler did not answer before the request deadline',
  // Keystore (src/keystore/); HSM_UNAVAILABLE above is also the keystore's "HSM not usable now"
  HSM_MODULE_NOT_FOUND: 'the PKCS#11 module cannot be loaded',
  HSM_TOKEN_NOT_FOUND: 'no token with the configured label is present',
  HSM_BAD_PIN: 'the HSM refused the PIN (wrong, locked or expired)',
  HSM_KEY_NOT_FOUND: 'the keystore does not hold the expected keys',
  HSM_UNSUPPORTED: 'the HSM lacks a mechanism DIME needs (EdDSA, secp256k1 ECDH or AES-GCM)',
  KEYSTORE_EXISTS: 'the keystore already holds organisation keys',
  KEYSTORE_INSECURE: 'a private key or PIN file is readable by other users',
  KEYSTORE_CORRUPT: 'a keystore file is damaged',
  SEALED_KEY_CORRUPT: 'a sealed key is damaged, truncated or sealed for another user',
  PRIME_KEY_MALFORMED: 'encrypted PRIME key (1947/1976) is malformed',
  STACIE_BAD_INPUT: 'invalid STACIE input (salt, nonce, password encoding or a work limit)',
  USER_BAD_ADDRESS: 'not an address of this organisation',
  USER_EXISTS: 'the user already exists',
  USER_NOT_FOUND: 'no such user',
  USER_BAD_PASSWORD: 'the password does not unlock this user\'s key',
  USER_WRONG_MODE: 'the operation is not possible in the user\'s custody mode',
  USER_LOCKED: 'the user\'s key is not unlocked (never, or its unlock lifetime ended)',
  // CLI and I/O
  USAGE: 'invalid command-line usage',
  FILE_UNREADABLE: 'file cannot be read',
  FILE_EXISTS: 'refusing to overwrite an existing file',
  FILE_WRITE_FAILED: 'file cannot be written',
  CONFIG_INVALID: 'the configuration file has an error',
  IMPORT_BAD_LINE: 'a line of the import file is not address[,mode[,request[,encrypted-key]]]',
  IMPORT_INCOMPLETE: 'some users of the import file were not added',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class DimeError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, detail?: string, options?: { cause?: unknown }) {
    super(detail ? `${ERROR_CODES[code]}: ${detail}` : ERROR_CODES[code], options);
    this.name = 'DimeError';
    this.code = code;
  }
}

export function isDimeError(err: unknown, code?: ErrorCode): err is DimeError {
  return err instanceof DimeError && (code === undefined || err.code === code);
}

/** Validate an argument at a public boundary (noble style): name the argument in the error. */
export function assertBytes(name: string, value: unknown, ...lengths: number[]): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array)) {
    throw new DimeError('CRYPTO_BAD_KEY', `${name} must be a Uint8Array`);
  }
  if (lengths.length > 0 && !lengths.includes(value.length)) {
    throw new DimeError('CRYPTO_BAD_KEY', `${name} must be ${lengths.join(' or ')} bytes, got ${value.length}`);
  }
}
