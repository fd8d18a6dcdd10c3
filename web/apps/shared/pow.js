// Proof of work for the apps: fetch a challenge, solve it in a worker, and hand back the
// `Patch-PoW` header value. See `/docs` (GET /pow/challenge) for the rules.
//
//   import { powHeader } from "/apps/shared/pow.js";
//   const headers = { "Patch-PoW": await powHeader() };        // for POST /invites/redeem
//
// A route that answers `428 pow_required` carries a fresh challenge in `error.details`:
// `solve(details.challenge, details.difficulty)` answers it without another round trip.

const WORKER = new URL("./pow-worker.js", import.meta.url);

/** Solves `challenge` at `difficulty` bits off the main thread: `{nonce, hashes, ms}`. */
export function solve(challenge, difficulty) {
  if (difficulty === 0) return Promise.resolve({ nonce: "0", hashes: 1, ms: 0 });
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER);
    worker.onmessage = (ev) => { worker.terminate(); resolve(ev.data); };
    worker.onerror = (ev) => { worker.terminate(); reject(new Error(ev.message || "pow worker failed")); };
    worker.postMessage({ challenge, difficulty });
  });
}

/** Fetches a challenge (`kind`: "invites" or "streams") and returns `challenge:nonce`. */
export async function powHeader(kind = "invites", base = "") {
  const r = await fetch(`${base}/api/v1/pow/challenge?for=${encodeURIComponent(kind)}`);
  if (!r.ok) throw new Error(`pow challenge: HTTP ${r.status}`);
  const { challenge, difficulty } = await r.json();
  const { nonce } = await solve(challenge, difficulty);
  return `${challenge}:${nonce}`;
}
