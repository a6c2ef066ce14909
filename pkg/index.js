// Inkstone: text-to-image in the browser. The model runs in a module Web Worker (worker.js) on
// WebGPU, or on the WebAssembly CPU build where there is none; this module is the thin
// promise-based API around it. No call is ever left open: every failure rejects it.
import * as store from './store.js';

let nextId = 1;

/** One worker (= one device) holding one loaded model (another one after `load({ reuse })`). */
class Worker_ {
  constructor(url, onLost) {
    this.url = String(url ?? new URL('./worker.js', import.meta.url));
    this.worker = new Worker(this.url, { type: 'module' });
    /** The `onDeviceLost` of the load that holds this worker now. */
    this.onLost = onLost;
    this.pending = new Map();
    /** `{ reason, message }` once the GPU device is lost: the worker is then ended. */
    this.lost = null;
    /** Set when the worker's module has loaded (its `ready` message). */
    this.ready = false;
    /** The Error that ended this worker (it failed to start, or crashed): later calls get it. */
    this.failed = null;
    this.worker.onmessage = ({ data }) => {
      if (data.type === 'ready') return void (this.ready = true);
      if (data.type === 'fatal') return this.fail(new Error(data.message));
      if (data.type === 'device-lost') return this.deviceLost(data);
      const p = this.pending.get(data.id);
      if (!p) return;
      if (data.type === 'progress') p.onProgress?.(data.progress);
      else if (data.type === 'step') {
        // The worker waits for this ack before its next step, so a cancel posted from inside
        // onStep (messages keep their order) is always seen before that step starts.
        try {
          p.onStep?.(data.step, data.total, data.preview);
        } finally {
          this.worker.postMessage({ type: 'ack', target: data.id });
        }
      }
      else {
        this.pending.delete(data.id);
        if (data.type === 'done') p.resolve(data.value);
        else p.reject(data.cancelled ? new DOMException('generation cancelled', 'AbortError') : new Error(data.message));
      }
    };
    // A module worker that fails to load (a missing file, a syntax error, an import that
    // throws) fires a bare `error` event (no message in Firefox); so does an uncaught error later.
    this.worker.onerror = (e) => {
      const where = e.filename ? ` (${e.filename}:${e.lineno})` : '';
      this.fail(new Error(this.ready
        ? `the Inkstone worker failed: ${e.message ?? 'uncaught error'}${where}`
        : `the Inkstone worker could not start: ${this.url} or one of its imports failed to load or threw${e.message ? `: ${e.message}` : ''}${where}`));
    };
    this.worker.onmessageerror = () => this.fail(new Error('a message from the Inkstone worker could not be deserialized'));
  }
  /** Rejects every open call with `error`, and every later one; ends the worker. */
  fail(error) {
    this.failed ??= error;
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
    this.worker.terminate();
  }
  /** Fails what is in flight (its result would never come) and ends the worker. */
  deviceLost({ reason, message }) {
    if (this.lost) return;
    this.lost = { reason, message };
    const why = `the GPU device was lost (${reason}${message ? `: ${message}` : ''})`;
    for (const p of this.pending.values()) {
      p.reject(Object.assign(new Error(`${why}; the next generate() restarts WebGPU and reloads the model from the cache`), { name: 'DeviceLostError' }));
    }
    this.pending.clear();
    this.worker.terminate();
    this.onLost?.(this.lost);
  }
  call(msg, handlers = {}, transfer = []) {
    const id = nextId++;
    return {
      id,
      promise: new Promise((resolve, reject) => {
        if (this.failed) return reject(this.failed);
        this.pending.set(id, { resolve, reject, ...handlers });
        this.worker.postMessage({ id, ...msg }, transfer);
      }),
    };
  }
}

/**
 * The `image` option as the worker takes it: a `Float32Array` [3, H, W] as given, anything else
 * as `{ width, height, data }` with the browser's 8-bit RGBA pixels (the Rust core decides what
 * becomes of them: alpha dropped, v / 255). Blobs (PNG/JPEG files) are decoded without colour
 * management or premultiplication, so the pixels are the file's own, as the CLI reads them.
 */
async function imageOption(image) {
  if (image == null || image instanceof Float32Array) return image;
  if (typeof ImageData !== 'undefined' && image instanceof ImageData) {
    return { width: image.width, height: image.height, data: image.data };
  }
  let source = image;
  if (typeof Blob !== 'undefined' && image instanceof Blob) {
    try {
      source = await createImageBitmap(image, { premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
    } catch (e) {
      throw new Error(`generate(): \`image\`: the Blob (${image.type || 'no type'}, ${image.size} bytes) is not an image the browser can decode: ${e.message}`);
    }
  } else if (typeof HTMLImageElement !== 'undefined' && image instanceof HTMLImageElement) {
    await image.decode();
  }
  const width = source.naturalWidth ?? source.width;
  const height = source.naturalHeight ?? source.height;
  const drawable = [globalThis.ImageBitmap, globalThis.HTMLImageElement, globalThis.HTMLCanvasElement, globalThis.OffscreenCanvas]
    .some((T) => T && source instanceof T);
  if (!drawable || !width || !height) {
    throw new TypeError('generate(): `image` must be an ImageData, ImageBitmap, HTMLImageElement, HTMLCanvasElement, Blob or Float32Array [3, H, W]');
  }
  const ctx = new OffscreenCanvas(width, height).getContext('2d', { willReadFrequently: true });
  ctx.drawImage(source, 0, 0);
  if (source !== image) source.close?.();
  return { width, height, data: ctx.getImageData(0, 0, width, height).data };
}

/** A loaded model; `generate` runs on its worker. */
export class Generator {
  constructor(w, info, reload, msg) {
    this._w = w;
    this._msg = msg;
    /** `{ model, backend, threads, gpu, dtype, cached, warnings, files, skipped, components, gpuBytes, deferred, bytes, recoveries }` */
    this.info = { ...info, recoveries: 0 };
    this._reload = reload;
    /** Set by `load({ reuse: this })`: the worker is the new Generator's now. */
    this._replaced = false;
    /** Set when a `load({ reuse: this })` failed: the worker was ended with this model in it,
     *  so the next call reloads it (from the cache) on a new worker, as after a lost device. */
    this._orphaned = false;
    /** generate()/setLoras() calls not yet settled (counted from the call, before any await). */
    this._busy = 0;
  }

  /** Runs `f` counted as busy: `load({ reuse })` refuses a Generator with a call in flight. */
  async _counted(f) {
    this._busy += 1;
    try {
      return await f();
    } finally {
      this._busy -= 1;
    }
  }

  /** Rejects calls on a Generator whose worker went to another one; recovers an orphaned one. */
  async _ready() {
    if (this._replaced) throw new Error('this Generator was replaced by load({ reuse }): use the Generator that load() returned');
    if (this._w.lost || this._orphaned) await this._recover();
  }

  /** The worker for `load({ reuse: this })`, which replaces this Generator; null when it has
   *  none to give (its device was lost: the new model gets a new worker). */
  _handOver() {
    if (this._replaced) throw new Error('load(): reuse: this Generator was already replaced by another load({ reuse })');
    if (this._w.failed) throw new Error(`load(): reuse: this Generator's worker has ended (${this._w.failed.message})`);
    if (this._busy) {
      throw new Error('load(): reuse: the Generator is busy (a generate() or setLoras() is in flight): wait for it, or cancel it, first');
    }
    this._replaced = true;
    return this._w.lost || this._orphaned ? null : this._w;
  }

  /** After a failed `load({ reuse: this })`: usable again, reloading its model at the next call. */
  _takeBack() {
    this._replaced = false;
    this._orphaned = true;
  }

  /** After a lost device: a new worker (a new WebGPU device) with the model reloaded from the
   *  cache (or the picked files); nothing is downloaded again that was cached. */
  async _recover() {
    const { w, info } = await this._reload();
    this._w = w;
    this._orphaned = false;
    this.info = { ...info, recoveries: this.info.recoveries + 1 };
  }

  generate(options = {}) {
    return this._counted(() => this._generate(options));
  }

  async _generate({ signal, onStep, ...options }) {
    signal?.throwIfAborted();
    await this._ready();
    if ('image' in options) options.image = await imageOption(options.image);
    const { id, promise } = this._w.call({ type: 'generate', options }, { onStep });
    const abort = () => this._w.worker.postMessage({ type: 'cancel', target: id });
    signal?.addEventListener('abort', abort, { once: true });
    try {
      const { gpuBytes, ...out } = await promise;
      // The first image-to-image call uploads the vae's encoder: gen.info says it is resident.
      if (gpuBytes) this.info = { ...this.info, gpuBytes, deferred: 'vae.encoder' in gpuBytes ? {} : this.info.deferred };
      return out;
    } finally {
      signal?.removeEventListener('abort', abort);
    }
  }

  /**
   * Fuses exactly `loras` (`[{ url | file, scale }]`, `[]` removes them all) into the loaded
   * model, replacing the set before; resolves to what was applied (also `info.loras`). An
   * adapter already fused or added is not fetched again: a change of scales makes no request.
   * On an error (a LoRA for another architecture, a corrupt file) the model stays as it was.
   */
  setLoras(loras, options = {}) {
    return this._counted(() => this._setLoras(loras, options));
  }

  async _setLoras(loras, { onProgress }) {
    const list = checkLoras(loras);
    await this._ready();
    const applied = await this._w.call({ type: 'setLoras', loras: list, base: this._msg.base }, { onProgress }).promise;
    this._msg.loras = list; // what a reload after a lost device applies
    this.info = { ...this.info, loras: applied };
    return applied;
  }

  /** Ends the worker and frees the GPU memory; later calls reject. A Generator replaced by
   *  `load({ reuse })` has no worker of its own left: disposing of it does nothing. */
  dispose() {
    if (this._replaced) return;
    this._w.fail(new Error('this Generator was disposed'));
  }
}

/**
 * Downloads (or reads from the cache, or from picked local files) a diffusers-format model and
 * uploads it to the device. `source`: base URL of the folder (a hub `.../resolve/main/` URL
 * works) or the File list of `<input type=file webkitdirectory>`. `backend`: 'auto' (WebGPU
 * where an adapter is granted, else the WebAssembly CPU build), 'webgpu' or 'cpu'.
 */
/** `[{ url | file, scale }]`, checked strictly (an unknown key or a bad scale names itself). */
function checkLoras(loras) {
  if (loras === undefined) return [];
  if (!Array.isArray(loras)) throw new TypeError('loras: expected an array of { url | file, scale }');
  return loras.map((l, i) => {
    const extra = Object.keys(l ?? {}).filter((k) => !['url', 'file', 'scale'].includes(k));
    if (extra.length) throw new TypeError(`loras[${i}]: unknown option ${extra[0]}`);
    if ((l.url === undefined) === (l.file === undefined)) throw new TypeError(`loras[${i}]: give url or file (one of them)`);
    if (l.url !== undefined && typeof l.url !== 'string' && !(l.url instanceof URL)) throw new TypeError(`loras[${i}].url: expected a string`);
    if (l.file !== undefined && !(l.file instanceof Blob)) throw new TypeError(`loras[${i}].file: expected a File`);
    const scale = l.scale ?? 1;
    if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new TypeError(`loras[${i}].scale: expected a finite number`);
    return l.url !== undefined ? { url: String(l.url), scale } : { file: l.file, scale };
  });
}

export async function load(source, { onProgress, onDeviceLost, chunkSize, workerUrl, dtype = 'auto', maxGpuBytes, warmUp = true, backend = 'auto', loras, reuse } = {}) {
  if (!['auto', 'webgpu', 'cpu'].includes(backend)) throw new TypeError(`load(): backend ${JSON.stringify(backend)}: expected 'auto', 'webgpu' or 'cpu'`);
  if (reuse !== undefined) {
    if (!(reuse instanceof Generator)) throw new TypeError('load(): reuse: expected a Generator that load() returned');
    if (workerUrl !== undefined) throw new TypeError('load(): give workerUrl or reuse, not both (a reused Generator keeps its worker)');
    if (backend !== 'auto' && backend !== reuse.info.backend) {
      throw new TypeError(`load(): backend '${backend}' cannot reuse a Generator running on '${reuse.info.backend}'`);
    }
  }
  if (backend === 'webgpu' && !globalThis.navigator?.gpu) {
    throw new Error("load(): backend 'webgpu' cannot run here: this browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome/Edge, enable WebGPU in the browser settings, or load with backend 'auto' or 'cpu' (the slower WebAssembly CPU build)");
  }
  const msg = { type: 'load', chunkSize, dtype, maxGpuBytes, warmUp, backend, loras: checkLoras(loras) };
  if (typeof source === 'string' || source instanceof URL) {
    msg.url = String(source);
    msg.base = globalThis.location?.href;
    // Ask the browser not to evict cached models under storage pressure (window only). Not
    // awaited: Firefox asks the user first, and the promise stays open until they answer
    // (forever in a headless or embedded page).
    globalThis.navigator?.storage?.persist?.().catch(() => false);
  } else {
    msg.files = [...source];
  }
  msg.base ??= globalThis.location?.href;
  const url = reuse ? reuse._w.url : workerUrl;
  // `given`: the worker of the Generator `reuse` (its device and compiled pipelines kept).
  const start = async (given = null) => {
    const w = given ?? new Worker_(url);
    w.onLost = (lost) => onDeviceLost?.(lost);
    try {
      return { w, info: await w.call(msg, { onProgress }).promise };
    } catch (e) {
      w.worker.terminate();
      throw e;
    }
  };
  if (!reuse) {
    const { w, info } = await start();
    return new Generator(w, info, start, msg);
  }
  const given = reuse._handOver();
  try {
    const { w, info } = await start(given);
    return new Generator(w, info, () => start(), msg);
  } catch (e) {
    // The worker may hold half of the new model: it was ended, and `reuse` reloads its own
    // (as it would anyway after a lost device, when there was no worker to give).
    reuse._takeBack();
    throw e;
  }
}

/** WebGPU adapter report (`{ adapter, shaderF16, maxBufferSize, ... }`) without loading a model;
 *  rejects with a readable message when WebGPU is unavailable. */
export async function gpuInfo({ workerUrl } = {}) {
  const w = new Worker_(workerUrl);
  try {
    return await w.call({ type: 'boot' }).promise;
  } finally {
    w.worker.terminate();
  }
}

/** Models in the cache with the bytes each takes: `[{ model, bytes, complete }]`. */
export const cachedModels = () => store.listModels();

/** Deletes one cached model, or all of them. */
export const clearCache = (model) => store.clear(model);
