/**
 * Structured logging (pino, JSON lines). Private keys, passwords and message content never reach a
 * log: the paths below are censored wherever they appear, one level deep in any object too.
 */
import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

const SECRET_KEYS = [
  'privateKey',
  'signingKey',
  'encryptionKey',
  'seed',
  'secret',
  'password',
  'passphrase',
  'pin',
  'body',
  'content',
  'plaintext',
  'headers',
];

/** Redacted at the top level and one object below it (`err.body`, `msg.headers`, …). */
export const REDACT_PATHS = [...SECRET_KEYS, ...SECRET_KEYS.map((k) => `*.${k}`)];

export interface LogOptions {
  level?: string;
  name?: string;
  /** Where lines go; standard error by default so command output on stdout stays clean. */
  destination?: NodeJS.WritableStream;
}

export function createLogger(options: LogOptions = {}): Logger {
  const config: LoggerOptions = {
    level: options.level ?? process.env.DIME_LOG_LEVEL ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { name: options.name ?? 'dime' },
  };
  return pino(config, (options.destination ?? process.stderr) as pino.DestinationStream);
}
