// Where model files come from (a base URL, or a folder the user picked), and fetching them:
// which files a folder needs is the Rust core's answer (`planModel`, src/folder.rs), asked round
// by round; this module only probes the paths it names and moves the bytes.
import * as store from './store.js';
import { Sha256 } from './sha256.js';

/** A diffusers folder at a base URL (`https://huggingface.co/<repo>/resolve/main/` works). */
export class UrlSource {
  constructor(base) {
    this.base = base.endsWith('/') ? base : base + '/';
    this.name = this.base;
  }
  url(path) {
    return new URL(path, this.base).href;
  }
  /** Size in bytes, or null when the file does not exist. */
  async probe(path) {
    const r = await fetch(this.url(path), { method: 'HEAD', cache: 'no-store' });
    if (r.status === 404 || r.status === 403 || r.status === 401) return null;
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    const n = r.headers.get('x-linked-size') ?? r.headers.get('content-length');
    return n === null ? -1 : Number(n);
  }
  async bytes(path) {
    const r = await fetch(this.url(path), { cache: 'no-store' });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  }
}

/** A folder picked with `<input type=file webkitdirectory>`: no network at all. */
export class FilesSource {
  constructor(files) {
    this.files = new Map();
    for (const f of files) {
      const rel = f.webkitRelativePath || f.name;
      // Drop the picked folder's own name: `sd/unet/config.json` -> `unet/config.json`.
      const parts = rel.split('/');
      this.files.set(parts.length > 1 ? parts.slice(1).join('/') : rel, f);
    }
    const first = files[0]?.webkitRelativePath?.split('/')[0];
    this.name = `local:${first || 'folder'}`;
  }
  async probe(path) {
    return this.files.get(path)?.size ?? null;
  }
  async bytes(path) {
    const f = this.files.get(path);
    if (!f) throw new Error(`${path}: not in the picked folder`);
    return new Uint8Array(await f.arrayBuffer());
  }
  async prefix(path, n) {
    return new Uint8Array(await this.files.get(path).slice(0, n).arrayBuffer());
  }
  async *chunks(path, chunkSize) {
    const f = this.files.get(path);
    for (let o = 0; o < f.size; o += chunkSize) {
      yield new Uint8Array(await f.slice(o, o + chunkSize).arrayBuffer());
    }
  }
}

/** A path a cached load cannot answer without the network (fromCache then fetches the model). */
export class NotCached extends Error {}

/**
 * A model as the cache holds it, for planning again with no network: a completely cached file
 * has its cached size and bytes; a path the last planning probed (`record.probed`) keeps the
 * answer it got (null: absent); any other path throws NotCached.
 */
export class CacheSource {
  constructor(model, record) {
    this.name = model;
    this.model = model;
    // Records saved before `probed` was kept: the files of their plan.
    this.probed = record.probed ?? Object.fromEntries(record.files.map((f) => [f.path, f.size]));
  }
  async probe(path) {
    const meta = await store.getFile(this.model, path);
    if (meta?.complete) return meta.size;
    if (path in this.probed) return this.probed[path];
    throw new NotCached(`${path} was never looked up for this cached model`);
  }
  async bytes(path) {
    const meta = await store.getFile(this.model, path);
    if (!meta?.complete) throw new NotCached(`${path} is not cached`);
    return cachedFile(this.model, meta).prefix(meta.size);
  }
}

const decoder = new TextDecoder();

/**
 * The files a load in `dtype` reads: `{ files: [{ path, component, kind: 'file'|'weights',
 * size }], skipped, known }`, decided by the Rust core's model-folder rules (`planModel`, from wasm),
 * not here. The rules ask round by round for the sizes of the paths they consider (HEAD
 * requests, or the picked folder) and for the text of the JSON files they read, until the plan
 * is complete; components the pipeline never runs (safety_checker/, ...) are never asked for.
 */
export async function resolveModel(src, dtype, planModel) {
  // Empty at first: the rules ask for model_index.json like any other file.
  const known = { name: src.name, sizes: {}, texts: {} };
  // Each round settles at least one step of the rules; real folders take 2-4.
  for (let round = 0; round < 12; round++) {
    const step = planModel(known, dtype);
    if (step.status === 'done') return { ...step.plan, known };
    await Promise.all([
      ...step.probe.map(async (path) => {
        const size = await src.probe(path);
        known.sizes[path] = size === null ? null : Math.max(size, 0);
      }),
      ...step.read.map(async (path) => { known.texts[path] = decoder.decode(await src.bytes(path)); }),
    ]);
  }
  throw new Error(`${src.name}: planning the model files did not finish`);
}

/** A sha256 announced by the server (the hub sends it as the ETag / X-Linked-Etag of LFS files). */
function announcedSha256(headers) {
  for (const name of ['x-linked-etag', 'etag']) {
    const v = headers.get(name)?.replace(/^W\//, '').replace(/"/g, '').trim().toLowerCase();
    if (v && /^[0-9a-f]{64}$/.test(v)) return v;
  }
  return null;
}

/**
 * A verified file: `{ path, size, cached, chunks() }` where chunks() yields Uint8Arrays in order,
 * from IndexedDB or (storage full / local folder) from memory or the picked file.
 */
class Held {
  constructor(path, size, read, cached) {
    Object.assign(this, { path, size, read, cached });
  }
  chunks() {
    return this.read();
  }
  async prefix(n) {
    const parts = [];
    let have = 0;
    for await (const c of this.chunks()) {
      parts.push(c);
      have += c.length;
      if (have >= n) break;
    }
    const out = new Uint8Array(Math.min(n, have));
    let o = 0;
    for (const p of parts) {
      const take = Math.min(p.length, out.length - o);
      out.set(p.subarray(0, take), o);
      o += take;
      if (o === out.length) break;
    }
    return out;
  }
}

export function cachedFile(model, meta) {
  return new Held(meta.path, meta.size, async function* () {
    for (let i = 0; i < meta.chunks; i++) {
      const c = await store.getChunk(model, meta.path, i);
      if (!c) throw new Error(`${meta.path}: cached chunk ${i} is missing; clear the cache and reload`);
      yield c;
    }
  }, true);
}

export function localFile(src, path, size, chunkSize) {
  return new Held(path, size, () => src.chunks(path, chunkSize), false);
}

/**
 * Where a download's bytes go: cut into `chunkSize` chunks, hashed, stored in IndexedDB (or,
 * once the quota is full, kept in memory for this session), resuming from the chunks an
 * interrupted earlier session stored.
 */
class ChunkWriter {
  static async open(model, path, chunkSize, state, onWarning) {
    let meta = await store.getFile(model, path);
    if (meta && meta.chunkSize !== chunkSize) {
      await store.deleteFile(model, path);
      meta = undefined;
    }
    const w = new ChunkWriter(model, path, state, onWarning);
    w.meta = meta ?? { model, path, size: null, sha256: null, chunkSize, chunks: 0, complete: false };
    // Re-hash chunks stored by an earlier, interrupted session.
    for (let i = 0; i < w.meta.chunks; i++) w.hash.update(await store.getChunk(model, path, i));
    w.persisted = w.meta.chunks * chunkSize;
    return w;
  }

  constructor(model, path, state, onWarning) {
    Object.assign(this, { model, path, state, onWarning });
    this.inMemory = state.quotaFull;
    this.memory = []; // chunks held in memory when the cache is full
    this.hash = new Sha256();
    this.pending = [];
    this.pendingLen = 0;
  }

  /** Bytes received so far: where a resumed request starts. */
  get position() {
    return this.persisted + this.pendingLen;
  }

  /** The server ignored a Range request: everything starts over. */
  restart() {
    this.meta.chunks = 0;
    this.persisted = 0;
    this.pending = [];
    this.pendingLen = 0;
    this.hash = new Sha256();
    this.memory.length = 0;
  }

  async push(bytes) {
    this.pending.push(bytes);
    this.pendingLen += bytes.length;
    if (this.pendingLen >= this.meta.chunkSize) await this.flush(false);
  }

  /** The next `n` pending bytes as one chunk. */
  take(n) {
    const chunk = new Uint8Array(n);
    for (let o = 0; o < n;) {
      const p = this.pending[0];
      const k = Math.min(p.length, n - o);
      chunk.set(p.subarray(0, k), o);
      o += k;
      if (k === p.length) this.pending.shift();
      else this.pending[0] = p.subarray(k);
    }
    this.pendingLen -= n;
    return chunk;
  }

  /** Stores every whole chunk (and, when `final`, the short last one). */
  async flush(final) {
    while (this.pendingLen >= this.meta.chunkSize || (final && this.pendingLen > 0)) {
      const chunk = this.take(Math.min(this.meta.chunkSize, this.pendingLen));
      this.hash.update(chunk);
      if (!this.inMemory) await this.store(chunk);
      if (this.inMemory) this.memory.push(chunk);
      this.meta.chunks += 1;
      this.persisted += chunk.length;
    }
  }

  async store(chunk) {
    try {
      await store.putChunk({ ...this.meta, chunks: this.meta.chunks + 1 }, this.meta.chunks, chunk);
    } catch (e) {
      if (!store.isQuotaError(e)) throw e;
      this.inMemory = this.state.quotaFull = true;
      this.onWarning?.(`Storage is full: ${this.model} is not cached and will be downloaded again next time (generation still works).`);
      // Move what was stored so far into memory so the file stays whole.
      for (let i = 0; i < this.meta.chunks; i++) this.memory.push(await store.getChunk(this.model, this.path, i));
      await store.deleteFile(this.model, this.path).catch(() => {});
    }
  }

  held() {
    const { memory } = this;
    return this.inMemory
      ? new Held(this.path, this.persisted, async function* () { yield* memory; }, false)
      : cachedFile(this.model, this.meta);
  }
}

/** One request from `w.position` on; resolves once the body has been read to its end. */
async function fetchFrom(url, path, w) {
  const pos = w.position;
  const resp = await fetch(url, { headers: pos > 0 ? { Range: `bytes=${pos}-` } : {}, cache: 'no-store' });
  if (!resp.ok) throw Object.assign(new Error(`${path}: HTTP ${resp.status}`), { fatal: resp.status !== 503 });
  if (pos > 0 && resp.status !== 206) w.restart();
  else if (pos > 0) {
    const start = Number(/bytes (\d+)-/.exec(resp.headers.get('content-range') ?? '')?.[1]);
    if (start !== pos) throw Object.assign(new Error(`${path}: server resumed at ${start}, asked ${pos}`), { fatal: true });
  }
  const range = /\/(\d+)$/.exec(resp.headers.get('content-range') ?? '');
  const length = range ? Number(range[1]) : Number(resp.headers.get('content-length')) + (resp.status === 206 ? pos : 0);
  if (Number.isFinite(length) && length > 0) w.meta.size = length;
  w.meta.sha256 = announcedSha256(resp.headers) ?? w.meta.sha256;
  return resp.body.getReader();
}

/**
 * Downloads `path` with progress, resuming with HTTP Range after a dropped connection (and after
 * a reload, from the chunks already stored), verifies size, sha256 (when announced) and
 * `check(path, held)`, and only then marks it complete in the cache. A failed verification
 * deletes what was stored. When storage is full (QuotaExceededError) the file is kept in memory
 * for this session and `onWarning` says so.
 */
export async function download(src, model, path, { chunkSize, onBytes, check, onWarning, retries = 5, state }) {
  const meta = await store.getFile(model, path);
  if (meta?.complete) return cachedFile(model, meta);
  const w = await ChunkWriter.open(model, path, chunkSize, state, onWarning);
  for (let attempt = 0; ; attempt++) {
    try {
      const reader = await fetchFrom(src.url(path), path, w);
      for (let r = await reader.read(); !r.done; r = await reader.read()) {
        onBytes?.(r.value.length);
        await w.push(r.value);
      }
      break;
    } catch (e) {
      if (e.fatal || attempt >= retries) throw e;
      onWarning?.(`${path}: connection lost at byte ${w.position}; resuming`);
      await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
    }
  }
  await w.flush(true);
  return verified(w, check);
}

/** The downloaded file once its size, hash and `check` agree; deleted from the cache otherwise. */
async function verified(w, check) {
  const { model, path, meta } = w;
  const fail = async (why) => {
    await store.deleteFile(model, path).catch(() => {});
    throw new Error(`${path}: ${why}; the file was not cached`);
  };
  if (meta.size !== null && w.persisted !== meta.size) await fail(`received ${w.persisted} bytes, expected ${meta.size}`);
  const digest = w.hash.hex();
  if (meta.sha256 && digest !== meta.sha256) await fail(`sha256 ${digest} does not match the server's ${meta.sha256}`);
  meta.size = w.persisted;
  const held = w.held();
  if (check) {
    try {
      await check(path, held);
    } catch (e) {
      await fail(e.message ?? String(e));
    }
  }
  if (!w.inMemory) await store.putFile({ ...meta, complete: true, sha256: digest });
  return held;
}
