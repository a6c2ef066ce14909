// IndexedDB cache of model files, in chunks (a multi-GB file is never one ArrayBuffer).
//   files:  `${model}\n${path}` -> { model, path, size, sha256, chunkSize, chunks, complete }
//   chunks: [fileKey, index]    -> Uint8Array
//   models: model               -> { model, files: [{ path, size, kind, component }], bytes, complete, savedAt }
// A file is only usable once `complete` (size and hash verified); partial records let an
// interrupted download resume after a reload.
const DB = 'inkstone-cache';

let dbPromise;
function db() {
  dbPromise ??= new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => {
      const d = req.result;
      d.createObjectStore('files');
      d.createObjectStore('chunks');
      d.createObjectStore('models');
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return dbPromise;
}

function done(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx(stores, mode, fn) {
  const d = await db();
  const t = d.transaction(stores, mode);
  const finished = new Promise((resolve, reject) => {
    t.oncomplete = resolve;
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error ?? new DOMException('transaction aborted', 'AbortError'));
  });
  const result = await fn(t);
  await finished;
  return result;
}

export const fileKey = (model, path) => `${model}\n${path}`;

export const getFile = (model, path) =>
  tx(['files'], 'readonly', (t) => done(t.objectStore('files').get(fileKey(model, path))));

export const putFile = (meta) =>
  tx(['files'], 'readwrite', (t) => done(t.objectStore('files').put(meta, fileKey(meta.model, meta.path))));

/** Stores chunk `index` and the file record in one transaction (so a partial record never
 *  claims a chunk that is not there). */
export const putChunk = (meta, index, bytes) =>
  tx(['files', 'chunks'], 'readwrite', (t) => {
    const key = fileKey(meta.model, meta.path);
    t.objectStore('chunks').put(bytes, [key, index]);
    return done(t.objectStore('files').put(meta, key));
  });

export const getChunk = (model, path, index) =>
  tx(['chunks'], 'readonly', (t) => done(t.objectStore('chunks').get([fileKey(model, path), index])));

export async function deleteFile(model, path) {
  const key = fileKey(model, path);
  await tx(['files', 'chunks'], 'readwrite', (t) => {
    t.objectStore('chunks').delete(IDBKeyRange.bound([key, 0], [key, Infinity]));
    return done(t.objectStore('files').delete(key));
  });
}

export const getModel = (model) =>
  tx(['models'], 'readonly', (t) => done(t.objectStore('models').get(model)));

export const putModel = (record) =>
  tx(['models'], 'readwrite', (t) => done(t.objectStore('models').put(record, record.model)));

/** Every model with cached bytes: { model, bytes, complete, files }. Partial downloads count. */
export async function listModels() {
  const [models, files] = await tx(['models', 'files'], 'readonly', (t) =>
    Promise.all([done(t.objectStore('models').getAll()), done(t.objectStore('files').getAll())]));
  const out = new Map(models.map((m) => [m.model, { ...m, bytes: 0 }]));
  for (const f of files) {
    const m = out.get(f.model) ?? { model: f.model, complete: false, files: [], bytes: 0 };
    m.bytes += f.complete ? f.size : Math.min(f.size ?? 0, f.chunks * f.chunkSize);
    out.set(f.model, m);
  }
  return [...out.values()];
}

/** Removes one model (or all when `model` is undefined). */
export async function clear(model) {
  if (model === undefined) {
    await tx(['models', 'files', 'chunks'], 'readwrite', (t) =>
      Promise.all(['models', 'files', 'chunks'].map((s) => done(t.objectStore(s).clear()))));
    return;
  }
  const files = await tx(['files'], 'readonly', (t) => done(t.objectStore('files').getAll()));
  for (const f of files.filter((f) => f.model === model)) await deleteFile(model, f.path);
  await tx(['models'], 'readwrite', (t) => done(t.objectStore('models').delete(model)));
}

export const isQuotaError = (e) =>
  e?.name === 'QuotaExceededError' || (e?.inner ?? e)?.name === 'QuotaExceededError';
