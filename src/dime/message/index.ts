/** DMIME messages (1847): seal as author, sign as origin, open as any of the four actors. */
export * from './chunks.js';
export * from './headers.js';
export * from './open.js';
export * from './origin.js';
export * from './payload.js';
export * from './seal.js';
export * from './signatures.js';
