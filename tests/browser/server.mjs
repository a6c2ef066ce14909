// A small static server for the browser tests (and for trying the page: `node server.mjs ../../www`).
// Serves HEAD/GET with Range, announces the sha256 of *.safetensors as `X-Linked-Etag` like the
// hub, logs every request, and injects faults on demand: drop the connection mid-file once, stall
// mid-file once, serve a file with a corrupt header or corrupt data, or answer 404 for a path.
//
// Threads for the WebAssembly CPU build would need a cross-origin isolated page
// (`crossOriginIsolated`, for SharedArrayBuffer): serve it with
//   Cross-Origin-Opener-Policy: same-origin
//   Cross-Origin-Embedder-Policy: require-corp
// (`startServer(root, { isolated: true })` adds both). The build is single-threaded today
// (docs/performance.md says why), and the page works with or without them.
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.json': 'application/json', '.webmanifest': 'application/manifest+json', '.wasm': 'application/wasm',
  '.png': 'image/png', '.txt': 'text/plain; charset=utf-8',
};
export const CSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; img-src 'self' blob: data:; style-src 'self'; object-src 'none'; base-uri 'none'";

export async function startServer(root, { port = 0, isolated = false } = {}) {
  root = resolve(root);
  const log = [];
  // dropOnce: cut the connection half-way once; stallOnce: send half, then nothing (a tab closed
  // mid-download); corrupt: path -> 'header' | 'data'.
  // missing: paths answered 404 as if never deployed (a bundle without its CPU build);
  // linkedSize: path -> bytes announced as `X-Linked-Size` on HEAD (the hub's LFS size), as if
  // the file were that big.
  const faults = { dropOnce: new Set(), stallOnce: new Set(), corrupt: new Map(), missing: new Set(), linkedSize: new Map() };
  const shaCache = new Map();

  const server = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const rel = decodeURIComponent(url.pathname).replace(/^\/+/, '') || 'index.html';
    const entry = { method: req.method, path: rel, range: req.headers.range ?? null, status: 0 };
    log.push(entry);
    const reply = (status, headers = {}, body) => {
      entry.status = status;
      res.writeHead(status, headers);
      res.end(body);
    };
    let file = normalize(join(root, rel));
    if (!file.startsWith(root)) return reply(403);
    if (faults.missing.has(rel)) return reply(404, { 'Content-Type': 'text/plain' }, 'not found');
    try {
      if ((await stat(file)).isDirectory()) file = join(file, 'index.html');
      let bytes = await readFile(file);
      const headers = {
        'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream',
        'Accept-Ranges': 'bytes',
        'Cache-Control': 'no-cache',
        'Content-Security-Policy': CSP,
        ...(isolated ? { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' } : {}),
      };
      if (file.endsWith('.safetensors')) {
        if (!shaCache.has(file)) shaCache.set(file, createHash('sha256').update(bytes).digest('hex'));
        const mode = faults.corrupt.get(rel);
        if (mode === 'header') {
          bytes = Buffer.from(bytes);
          bytes.fill(0x7b, 8, 40); // `{{{{...`: the JSON header no longer parses
        } else if (mode === 'data') {
          bytes = Buffer.from(bytes);
          bytes[bytes.length - 3] ^= 0xff; // flip one weight byte: only the hash can tell
        }
        // Like the hub: the LFS sha256 of the real file (mismatching a corrupt body).
        if (mode !== 'header') headers['X-Linked-Etag'] = `"${shaCache.get(file)}"`;
      }
      let start = 0, end = bytes.length - 1, status = 200;
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      if (m) {
        start = Number(m[1]);
        end = m[2] ? Math.min(Number(m[2]), end) : end;
        if (start > end) return reply(416, { 'Content-Range': `bytes */${bytes.length}` });
        status = 206;
        headers['Content-Range'] = `bytes ${start}-${end}/${bytes.length}`;
      }
      headers['Content-Length'] = end - start + 1;
      if (req.method === 'HEAD' && faults.linkedSize.has(rel)) headers['X-Linked-Size'] = String(faults.linkedSize.get(rel));
      if (req.method === 'HEAD') return reply(status, headers);
      entry.status = status;
      const body = bytes.subarray(start, end + 1);
      if (faults.dropOnce.delete(rel)) {
        // Send the headers and half the body, then cut the connection.
        entry.dropped = true;
        res.writeHead(status, headers);
        res.write(body.subarray(0, body.length >> 1), () => setTimeout(() => res.socket.destroy(), 50));
        return;
      }
      if (faults.stallOnce.delete(rel)) {
        entry.stalled = true;
        res.writeHead(status, headers);
        res.write(body.subarray(0, body.length >> 1)); // and never end (closed with the server)
        return;
      }
      res.writeHead(status, headers);
      res.end(body);
    } catch (e) {
      reply(e.code === 'ENOENT' ? 404 : 500, { 'Content-Type': 'text/plain' }, e.code === 'ENOENT' ? 'not found' : String(e));
    }
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return { server, origin, log, faults, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const s = await startServer(process.argv[2] ?? 'www', { port: Number(process.argv[3] ?? 8080) });
  console.log(`serving ${process.argv[2] ?? 'www'} at ${s.origin}`);
}
