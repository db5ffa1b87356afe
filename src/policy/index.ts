/** Postfix policy delegation and socketmap services, also usable from Exim (docs/policy.md). */
export * from './action.js';
export * from './codec.js';
export * from './handler.js';
export * from './server.js';
export * from './session.js';
export * from './socketmap.js';
