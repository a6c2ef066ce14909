// Service worker: precaches the app shell (html, js, wasm) so the installed app opens offline.
// Model files are not handled here: they live in IndexedDB (pkg/store.js), which load() reads
// without any request once a model is cached.
importScripts('./shell-list.js');
const CACHE = `inkstone-shell-${self.SHELL_VERSION}`;

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(self.SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (e) => {
  e.waitUntil((async () => {
    for (const k of await caches.keys()) if (k.startsWith('inkstone-shell-') && k !== CACHE) await caches.delete(k);
    await self.clients.claim();
  })());
});

const SHELL_PATHS = new Set(self.SHELL.map((f) => new URL(f, self.location).pathname));
const LAZY_PATHS = new Set((self.LAZY ?? []).map((f) => new URL(f, self.location).pathname));

self.addEventListener('fetch', (e) => {
  const url = new URL(e.request.url);
  // Cache first for the shell; everything else (models, range requests) is not intercepted.
  if (e.request.method !== 'GET' || url.origin !== self.location.origin) return;
  if (LAZY_PATHS.has(url.pathname)) {
    // The CPU build, cached when first used, so an installed app without WebGPU opens offline.
    e.respondWith((async () => {
      const cache = await caches.open(CACHE);
      const hit = await cache.match(e.request, { ignoreSearch: true });
      if (hit) return hit;
      const res = await fetch(e.request);
      if (res.ok) e.waitUntil(cache.put(e.request, res.clone()));
      return res;
    })());
    return;
  }
  if (!SHELL_PATHS.has(url.pathname)) return;
  e.respondWith((async () => {
    const hit = await caches.match(e.request, { cacheName: CACHE, ignoreSearch: true });
    return hit ?? fetch(e.request);
  })());
});
