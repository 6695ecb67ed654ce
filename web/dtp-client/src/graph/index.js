// The graph's signed tiers for pages and gun.js apps (docs/graph.md, "The tiers from a
// browser"): keys, the envelopes, and the tiers over a gun instance.

export { GraphValueError, gunText, readText } from './format.js';
export { generateIdentity, graphIdentity, identityFromKeystring, readerKeyOf, storedIdentity } from './keys.js';
export * as privateEnvelope from './private.js';
export * as signedEnvelope from './signed.js';
export { GraphWriteError, NotAReader, NotTheAuthor, installTiers, refusal, refusedByReason, tiers } from './tiers.js';
