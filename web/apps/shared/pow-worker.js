// Proof-of-work solver (a classic worker script; also loadable with importScripts or as a plain
// script for tests). Finds a decimal nonce such that SHA-256(challenge + nonce) starts with
// `difficulty` zero bits. SHA-256 is written out here because SubtleCrypto.digest is async:
// a promise per hash makes a million hashes take minutes instead of about a second.
"use strict";

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const H0 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
const W = new Int32Array(64);

// Compresses the 64-byte blocks of `msg` (already padded) into `h`.
function compress(h, msg, blocks) {
  for (let b = 0; b < blocks; b++) {
    const o = b * 64;
    for (let i = 0; i < 16; i++) {
      const j = o + i * 4;
      W[i] = (msg[j] << 24) | (msg[j + 1] << 16) | (msg[j + 2] << 8) | msg[j + 3];
    }
    for (let i = 16; i < 64; i++) {
      const x = W[i - 15], y = W[i - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    let a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & bb) ^ (a & c) ^ (bb & c))) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = bb; bb = a; a = (t1 + t2) | 0;
    }
    h[0] = (h[0] + a) | 0; h[1] = (h[1] + bb) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
    h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0; h[6] = (h[6] + g) | 0; h[7] = (h[7] + hh) | 0;
  }
}

// SHA-256 of bytes[0..len) (bytes must have room for the padding), as 8 words.
function sha256Words(bytes, len) {
  const blocks = ((len + 8) >> 6) + 1;
  bytes.fill(0, len, blocks * 64);
  bytes[len] = 0x80;
  const bits = len * 8;
  bytes[blocks * 64 - 4] = (bits >>> 24) & 0xff;
  bytes[blocks * 64 - 3] = (bits >>> 16) & 0xff;
  bytes[blocks * 64 - 2] = (bits >>> 8) & 0xff;
  bytes[blocks * 64 - 1] = bits & 0xff;
  const h = Int32Array.from(H0);
  compress(h, bytes, blocks);
  return h;
}

function leadingZeroBits(h) {
  let n = 0;
  for (let i = 0; i < 8; i++) {
    if (h[i] === 0) { n += 32; continue; }
    return n + Math.clz32(h[i]);
  }
  return n;
}

// Hex digest (for tests against known vectors).
function sha256Hex(text) {
  const enc = new TextEncoder().encode(text);
  const buf = new Uint8Array(enc.length + 72);
  buf.set(enc);
  const h = sha256Words(buf, enc.length);
  return Array.from(h, (w) => (w >>> 0).toString(16).padStart(8, "0")).join("");
}

// The first nonce (0, 1, 2, … in decimal) that solves the challenge.
function solvePow(challenge, difficulty) {
  const prefix = new TextEncoder().encode(challenge);
  const buf = new Uint8Array(prefix.length + 20 + 72);
  buf.set(prefix);
  for (let n = 0; ; n++) {
    const digits = String(n);
    let len = prefix.length;
    for (let i = 0; i < digits.length; i++) buf[len++] = digits.charCodeAt(i);
    if (leadingZeroBits(sha256Words(buf, len)) >= difficulty) return { nonce: digits, hashes: n + 1 };
  }
}

if (typeof self !== "undefined" && typeof window === "undefined" && typeof self.postMessage === "function") {
  self.onmessage = (ev) => {
    const started = Date.now();
    const { nonce, hashes } = solvePow(ev.data.challenge, ev.data.difficulty);
    self.postMessage({ nonce, hashes, ms: Date.now() - started });
  };
}
if (typeof module !== "undefined") module.exports = { solvePow, sha256Hex, leadingZeroBits };
