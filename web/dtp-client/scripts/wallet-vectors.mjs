// The identity-proof vectors of docs/protocol.md section 8.4, one per Sui signature
// scheme, made with Mysten's TypeScript SDK (@mysten/sui, a dev dependency) from the
// fixed keys of demo/wallets.js, and the proofs a verifier must refuse. Prints them as
// JSON, one vector a line; tests/identity/test_wallet_vectors.py checks that the SDK
// still makes the very bytes the spec shows.
//
//   node scripts/wallet-vectors.mjs

import { walletVectors } from '../demo/wallet-vectors.js';

for (const vector of await walletVectors()) process.stdout.write(`${JSON.stringify(vector)}\n`);
