// Felt's service worker: the app shell (HTML, CSS, the modules) for screens on a flaky local
// network. Network first (the server sends `Cache-Control: no-cache`, so a fresh shell wins
// whenever the server answers within 3 s), the cached copy when the network fails or is slower
// (a slow network with nothing cached is waited for). Only GETs under /apps/
// are touched: the API, its watches and /readyz always go to the network. The last tournament
// state itself is kept by the page (localStorage), not here.

const CACHE = "felt-shell-v2";
const SHELL = ["./", "index.html", "style.css", "app.js", "felt.js", "schema.js", "qr.js", "../shared/api.js", "../shared/dom.js", "../shared/pow.js"];

self.addEventListener("install", (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (e) => {
  e.waitUntil((async () => {
    for (const k of await caches.keys()) if (k !== CACHE) await caches.delete(k);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== "GET" || url.origin !== self.location.origin || !url.pathname.startsWith("/apps/")) return;
  e.respondWith(networkFirst(e.request));
});

async function networkFirst(req) {
  const cache = await caches.open(CACHE);
  const net = fetch(req).then(async (r) => {
    if (r.ok) await cache.put(req, r.clone());
    return r;
  });
  // A slow network (3 s) yields to the cached copy when there is one; with none, it is awaited.
  const slow = new Promise((res) => setTimeout(res, 3000, "slow"));
  try {
    if ((await Promise.race([net, slow])) !== "slow") return await net;
  } catch (err) {
    const hit = await cache.match(req, { ignoreSearch: true });
    if (hit) return hit;
    throw err;
  }
  const hit = await cache.match(req, { ignoreSearch: true });
  return hit || net;
}
