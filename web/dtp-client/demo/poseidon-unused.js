// Stands in for poseidon-lite on the unbundled demo page (demo/sui.html): @mysten/sui
// imports it for zkLogin addresses only, and it ships as CommonJS, which a browser cannot
// import without a bundler. A dApp's bundler includes the real one; this page never
// computes a zkLogin address, and says so if it is asked to.

function unused() {
  throw new Error('poseidon hashing (zkLogin) is not available on this demo page');
}

export const poseidon1 = unused;
export const poseidon2 = unused;
export const poseidon3 = unused;
export const poseidon4 = unused;
export const poseidon5 = unused;
export const poseidon6 = unused;
export const poseidon7 = unused;
export const poseidon8 = unused;
export const poseidon9 = unused;
export const poseidon10 = unused;
export const poseidon11 = unused;
export const poseidon12 = unused;
export const poseidon13 = unused;
export const poseidon14 = unused;
export const poseidon15 = unused;
export const poseidon16 = unused;
