import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** test/vectors in the source tree (tests run from dist/test, so climb out of dist). */
export const VECTORS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/vectors');

export function vectorPath(...parts: string[]): string {
  return path.join(VECTORS, ...parts);
}
export function vectorText(...parts: string[]): string {
  return fs.readFileSync(vectorPath(...parts), 'latin1');
}
export function vectorBytes(...parts: string[]): Uint8Array {
  return new Uint8Array(fs.readFileSync(vectorPath(...parts)));
}
export function vectorJson<T = any>(...parts: string[]): T {
  return JSON.parse(fs.readFileSync(vectorPath(...parts), 'utf8')) as T;
}
