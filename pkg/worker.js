// The module Web Worker that owns the device (WebGPU, or the CPU build where there is none):
// downloads/caches model files (files.js, store.js), streams weights into wasm tensor by tensor,
// and runs generation step by step so the page never freezes and cancel messages are seen
// between steps.
import * as store from './store.js';
import { UrlSource, FilesSource, CacheSource, NotCached, resolveModel, download, cachedFile, localFile } from './files.js';

/** Largest piece handed to wasm at once: bounds the transient copy in the wasm heap. */
const FEED = 4 << 20;
const DEFAULT_CHUNK = 16 << 20;

let engine = null;
let gpu = null;
/** 'webgpu' (inkstone_core.wasm) or 'cpu' (inkstone_cpu.wasm), once booted. */
let backend = null;
/** The exports of the wasm build in use (both builds export the same API). */
let Inkstone, headerLength, checkSafetensors, planModel, weightsGpuBytes;
/** The wasm instance's linear memory: it only grows, so its size is the peak wasm heap. */
let wasmMemory = null;
const wasmHeapBytes = () => wasmMemory?.buffer.byteLength ?? 0;
/** The GPUDevice wgpu requested (caught on its way out, to watch `device.lost`). */
let gpuDevice = null;
/** The first GPU validation/out-of-memory error since the last load or generation: such an
 *  error means some GPU work was skipped, so the result would be silently wrong. */
let gpuError = null;
const cancelled = new Set();
/** Generation id → resolver of the ack the page sends after each step. */
const acks = new Map();

const BACKENDS = ['auto', 'webgpu', 'cpu'];

/** A WebGPU adapter, or why there is none. */
async function findAdapter() {
  if (!self.navigator.gpu) return { why: 'this browser has no WebGPU (navigator.gpu is missing)' };
  const adapter = await self.navigator.gpu.requestAdapter().catch(() => null);
  return adapter ? { adapter } : { why: 'WebGPU is present but no GPU adapter was granted (blocked or unsupported GPU)' };
}

/** The wasm build of `name`, imported only now: a WebGPU session never fetches the CPU one. */
async function importBuild(name) {
  const file = name === 'cpu' ? './inkstone_cpu.js' : './inkstone_core.js';
  try {
    return await import(file);
  } catch (e) {
    throw new Error(`could not load the ${name === 'cpu' ? 'CPU' : 'WebGPU'} build (${new URL(file, import.meta.url).href}): ${e?.message ?? e}`);
  }
}

/**
 * Starts the backend `want` asks for: 'webgpu', 'cpu', or 'auto' (WebGPU where an adapter is
 * granted, else the CPU build). Only the chosen build's wasm is fetched.
 */
async function boot(want = 'webgpu') {
  if (!BACKENDS.includes(want)) throw new Error(`backend ${JSON.stringify(want)}: expected 'auto', 'webgpu' or 'cpu'`);
  if (engine) return gpu;
  const { adapter, why } = want === 'cpu' ? { why: "backend 'cpu' was asked for" } : await findAdapter();
  if (!adapter && want === 'webgpu') {
    throw new Error(`${why}: backend 'webgpu' cannot run here. Use a recent Chrome/Edge, enable WebGPU in the browser settings, or load with backend 'auto' or 'cpu' (the slower WebAssembly CPU build)`);
  }
  const wasm = await importBuild(adapter ? 'webgpu' : 'cpu');
  ({ Inkstone, headerLength, checkSafetensors, planModel, weightsGpuBytes } = wasm);
  wasmMemory = (await wasm.default()).memory;
  if (adapter) watchDevice();
  engine = await Inkstone.init();
  backend = adapter ? 'webgpu' : 'cpu';
  gpu = engine.gpu;
  if (!adapter) {
    gpu.fallback = why;
    return gpu;
  }
  gpu.jsFeatures = [...adapter.features];
  // wgpu reports no adapter names on the web; the browser's GPUAdapterInfo does.
  const a = adapter.info ?? {};
  gpu.adapter ||= [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(' ');
  gpu.architecture ||= a.architecture ?? '';
  return gpu;
}

/**
 * Tells the page when the GPU device is lost (driver reset, a mobile tab sent to the background,
 * iOS turning an out-of-memory into a loss): this worker is then useless, and the page starts a
 * new one that reloads the model from the cache (pkg/index.js).
 */
function watchDevice() {
  const request = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await request.apply(this, args);
    gpuDevice = device;
    device.addEventListener('uncapturederror', (e) => { gpuError ??= e.error?.message ?? String(e.error); });
    device.lost.then(({ reason, message }) => self.postMessage({ type: 'device-lost', reason, message }));
    return device;
  };
}

/** Fails `what` when the GPU rejected any of its work (a buffer over the device's limits, out
 *  of memory): better an error naming the cause than a wrong image. */
function checkGpuErrors(what) {
  const e = gpuError;
  gpuError = null;
  if (e) throw new Error(`the GPU rejected part of the ${what}, so its result would be wrong: ${e.split('\n')[0]}`);
}

/** Validates a downloaded safetensors header in wasm before the file is cached. */
async function checkWeights(path, held) {
  checkSafetensors(path, await held.prefix(headerLength(path, await held.prefix(8), held.size)), held.size);
}

const totalBytes = (list) => list.reduce((a, f) => a + Math.max(f.size ?? 0, 0), 0);

/** Load progress as the page sees it, and the warnings gathered on the way. */
function progressReporter(post) {
  const progress = { phase: 'resolve', bytes: 0, totalBytes: 0, files: 0, totalFiles: 0, file: null };
  const warnings = [];
  const report = (extra) => post({ type: 'progress', progress: { ...progress, ...extra } });
  const warn = (w) => { warnings.push(w); report({ warning: w }); };
  /** Starts a phase over `list` (counts and bytes from zero). */
  const phase = (name, list) => Object.assign(progress, { phase: name, bytes: 0, files: 0, totalFiles: list.length, totalBytes: totalBytes(list) });
  return { progress, warnings, report, warn, phase };
}

/**
 * GPU bytes per component the planned weight files will take in `dtype`, from their headers
 * alone (`prefixOf(path, n)`: a file's first bytes) and the planning round's `known` files: the
 * rule is the Rust core's (`weightsGpuBytes`).
 */
async function gpuEstimate(files, known, dtype, prefixOf) {
  const out = {};
  for (const f of files.filter((f) => f.kind === 'weights')) {
    const n = headerLength(f.path, await prefixOf(f.path, 8), f.size);
    const bytes = weightsGpuBytes(known, f.component, f.path, await prefixOf(f.path, n), f.size, dtype);
    out[f.component] = (out[f.component] ?? 0) + bytes;
  }
  return out;
}

const mib = (n) => `${Math.round(n / 2 ** 20)} MiB`;

/**
 * Before anything is downloaded or uploaded: fails when the weights alone exceed the caller's
 * `maxGpuBytes`, and warns when they exceed half of the memory the device reports
 * (`navigator.deviceMemory`, GiB; phones share it between CPU and GPU). WebGPU itself tells no
 * memory size, so these are the only budgets there are.
 */
function checkGpuBudget(estimate, dtype, maxGpuBytes, r) {
  const total = Object.values(estimate).reduce((a, b) => a + b, 0);
  const parts = Object.entries(estimate).map(([c, b]) => `${c} ${mib(b)}`).join(', ');
  if (backend === 'cpu') return checkCpuMemory(total, `need ${mib(total)} in ${dtype} (${parts})`, maxGpuBytes);
  if (maxGpuBytes && total > maxGpuBytes) {
    const advice = dtype === 'f32' ? 'load it in f16 where the GPU has shader-f16, or pick a smaller model' : 'pick a smaller model';
    throw new Error(`this model's weights need ${mib(total)} of GPU memory in ${dtype} (${parts}), more than maxGpuBytes (${mib(maxGpuBytes)}): ${advice}`);
  }
  const memory = self.navigator.deviceMemory;
  if (memory && total > (memory * 2 ** 30) / 2) {
    r.warn(`this model's weights need ${mib(total)} of GPU memory in ${dtype}; this device reports ${memory} GiB of memory in all, so the load may fail or the GPU may be lost`);
  }
  return total;
}

/**
 * The CPU build holds the weights in its own wasm32 memory, at most `gpu.maxMemoryBytes`
 * (4 GiB) and `maxGpuBytes` if given: a model that cannot fit is refused with its size.
 */
function checkCpuMemory(total, need, maxGpuBytes) {
  const limit = Math.min(gpu.maxMemoryBytes, maxGpuBytes || Infinity);
  if (total > limit) {
    const what = limit === gpu.maxMemoryBytes ? 'the WebAssembly CPU build can address (wasm32: 4 GiB, for weights and working memory together)' : 'maxGpuBytes';
    throw new Error(`this model's weights ${need}, more than the ${mib(limit)} ${what}: pick a smaller model, or use a browser with WebGPU`);
  }
  return total;
}

/** A picked local folder: planned and read in place, no network. */
async function fromFiles(msg, dtype, chunkSize, r) {
  const src = new FilesSource(msg.files);
  const { files, skipped, known } = await resolveModel(src, dtype, planModel);
  checkGpuBudget(await gpuEstimate(files, known, dtype, (p, n) => src.prefix(p, n)), dtype, msg.maxGpuBytes, r);
  const held = new Map(files.map((f) => [f.path, localFile(src, f.path, f.size, chunkSize)]));
  return { model: src.name, list: files, skipped, held, cached: false };
}

/**
 * The model from the cache, or null to fetch it. The stored plan is never trusted as it is:
 * `planModel` plans again over the cache (cached files, and the paths the last planning found
 * absent), so a plan saved under older rules is re-made; null when the plan asks about a path
 * the cache cannot answer or names a file not completely cached.
 */
async function fromCache(model, dtype, msg, r) {
  const record = await store.getModel(model);
  if (!record?.complete) return null;
  let planned;
  try {
    planned = await resolveModel(new CacheSource(model, record), dtype, planModel);
  } catch (e) {
    if (e instanceof NotCached) return null;
    throw e;
  }
  const metas = await Promise.all(planned.files.map((f) => store.getFile(model, f.path)));
  if (!metas.every((m) => m?.complete)) return null;
  const held = new Map(metas.map((m) => [m.path, cachedFile(model, m)]));
  const list = planned.files.map((f, i) => ({ ...f, size: metas[i].size }));
  checkGpuBudget(await gpuEstimate(list, planned.known, dtype, (p, n) => held.get(p).prefix(n)), dtype, msg.maxGpuBytes, r);
  if (JSON.stringify([list, planned.skipped]) !== JSON.stringify([record.files, record.skipped])) {
    await store.putModel({ ...record, dtype, files: list, skipped: planned.skipped, savedAt: Date.now() }).catch(() => {});
  }
  return { model, list, skipped: planned.skipped, held, cached: true };
}

/** Plans the model at `model` (a URL) and downloads every planned file into the cache. */
async function fromNetwork(model, dtype, chunkSize, r, msg) {
  const src = new UrlSource(model);
  const { files, skipped, known } = await resolveModel(src, dtype, planModel);
  // What the planning learnt, so a cached load can plan again without the network (fromCache).
  const probed = known.sizes;
  // Before any download: stored weights widen (f16) or keep their size (f32), never shrink.
  if (backend === 'cpu') {
    const stored = totalBytes(files.filter((f) => f.kind === 'weights'));
    checkCpuMemory(stored, `take at least ${mib(stored)} (their files' size)`, msg.maxGpuBytes);
  }
  await store.putModel({ model, dtype, files, skipped, probed, complete: false, savedAt: Date.now() }).catch(() => {});
  r.phase('download', files);
  const state = { quotaFull: false };
  const held = new Map();
  for (const f of files) {
    r.progress.file = f.path;
    r.report({});
    held.set(f.path, await download(src, model, f.path, {
      chunkSize, state, onWarning: r.warn,
      check: f.kind === 'weights' ? checkWeights : null,
      onBytes: (n) => { r.progress.bytes += n; r.report({}); },
    }));
    r.progress.files += 1;
  }
  const list = files.map((f) => ({ ...f, size: held.get(f.path).size }));
  // From the downloaded (and verified) headers: a model that cannot fit is refused before
  // anything reaches the GPU. (Read after the download, so a download's retries and checks
  // stay the only requests made for a file.)
  checkGpuBudget(await gpuEstimate(list, known, dtype, (p, n) => held.get(p).prefix(n)), dtype, msg.maxGpuBytes, r);
  if (!state.quotaFull) {
    await store.putModel({ model, dtype, files: list, skipped, probed, complete: true, savedAt: Date.now() })
      .catch((e) => r.warn(`not cached: ${e.message}`));
  }
  return { model, list, skipped, held, cached: false };
}

/** Hands one planned file to wasm: a small file whole, a weight file streamed tensor by tensor. */
async function upload(f, h, r) {
  if (f.kind === 'weights') {
    engine.beginWeights(f.component, f.path, await h.prefix(headerLength(f.path, await h.prefix(8), h.size)), h.size);
    for await (const chunk of h.chunks()) {
      for (let o = 0; o < chunk.length; o += FEED) engine.feed(chunk.subarray(o, o + FEED));
      r.progress.bytes += chunk.length;
      r.report({});
    }
    engine.endWeights();
    return;
  }
  const parts = [];
  for await (const chunk of h.chunks()) parts.push(chunk);
  const bytes = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  parts.reduce((o, p) => (bytes.set(p, o), o + p.length), 0);
  engine.addFile(f.path, bytes);
  r.progress.bytes += bytes.length;
}

async function load(msg, post) {
  const info = await boot(msg.backend ?? 'auto');
  // Checked before any download: f16 on a GPU without shader-f16 fails here, not after 1 GB.
  const dtype = engine.resolveDtype(msg.dtype ?? 'auto');
  const chunkSize = msg.chunkSize ?? DEFAULT_CHUNK;
  const r = progressReporter(post);
  r.report({});
  let got;
  if (msg.files) got = await fromFiles(msg, dtype, chunkSize, r);
  else {
    const model = new URL(msg.url, msg.base).href.replace(/\/?$/, '/');
    got = (await fromCache(model, dtype, msg, r)) ?? (await fromNetwork(model, dtype, chunkSize, r, msg));
  }
  engine.reset(got.model, dtype);
  r.phase('upload', got.list);
  for (const f of got.list) {
    r.progress.file = f.path;
    r.report({});
    await upload(f, got.held.get(f.path), r);
    r.progress.files += 1;
  }
  const summary = engine.build();
  checkGpuErrors('model upload');
  const loras = msg.loras?.length ? await setLoras(msg, r) : [];
  // The CPU build compiles nothing at first use: a warm-up would only cost a step.
  if (msg.warmUp !== false && backend === 'webgpu') await warmUp(r);
  r.report({ phase: 'ready', file: null });
  return { model: got.model, backend, threads: backend === 'cpu' ? info.threads : null, gpu: info, dtype: summary.dtype, cached: got.cached, warnings: r.warnings, files: got.list,
    skipped: got.skipped, components: summary.components, gpuBytes: summary.gpuBytes, deferred: summary.deferred, bytes: totalBytes(got.list),
    wasmHeapBytes: wasmHeapBytes(), loras };
}

/** The id wasm keeps an adapter under, and its name in messages: the absolute URL, or a
 *  picked file's name, size and date. */
function loraId(spec, base) {
  if (spec.file) return { id: `file:${spec.file.name}:${spec.file.size}:${spec.file.lastModified}`, name: spec.file.name };
  const url = new URL(spec.url, base).href;
  return { id: url, name: url };
}

/** An adapter's bytes: a picked file as it is; a URL from the cache, downloaded (with progress,
 *  resumable, verified like weight files) only the first time. */
async function loraBytes(spec, id, chunkSize, r) {
  if (spec.file) return new Uint8Array(await spec.file.arrayBuffer());
  const dir = id.slice(0, id.lastIndexOf('/') + 1);
  const path = decodeURIComponent(id.slice(dir.length).split(/[?#]/)[0]);
  r.phase('lora', [{ size: 0 }]);
  r.progress.file = id;
  r.report({});
  const held = await download(new UrlSource(dir), `lora:${dir}`, path, {
    chunkSize, state: { quotaFull: false }, onWarning: r.warn, check: checkWeights,
    onBytes: (n) => { r.progress.bytes += n; r.report({}); },
  });
  const bytes = new Uint8Array(held.size);
  let o = 0;
  for await (const chunk of held.chunks()) {
    bytes.set(chunk, o);
    o += chunk.length;
  }
  return bytes;
}

/** Fuses exactly `msg.loras` (`[{ url | file, scale }]`); adapters wasm already holds are not
 *  read again, so a change of scales makes no request and reads no cache. */
async function setLoras(msg, r) {
  if (!engine) throw new Error('no model loaded');
  const wanted = [];
  for (const spec of msg.loras) {
    const { id, name } = loraId(spec, msg.base);
    if (!engine.hasLora(id)) engine.addLora(id, name, await loraBytes(spec, id, msg.chunkSize ?? DEFAULT_CHUNK, r));
    wanted.push({ id, scale: spec.scale });
  }
  gpuError = null;
  const applied = engine.setLoras(wanted);
  checkGpuErrors('LoRA fusion');
  return applied;
}

/**
 * One 1-step generation right after the build, at `engine.warmUpSize()` (the default size,
 * capped at 8 latent pixels a side: 64 px for SD decoders; Pipeline::warm_up_size). WebGPU
 * compiles a pipeline the first time each kernel runs (most of the first image's time on a slow
 * compiler), so doing it here makes the first image cost about what the next ones do, for far
 * less than an image of a 512² model (docs/performance.md, "Round two"). The result is dropped;
 * a failure here (a model that overflows, say) is the first generate()'s to report.
 */
async function warmUp(r) {
  r.report({ phase: 'warm-up', file: null });
  const [width, height] = engine.warmUpSize();
  await engine.generate({ prompt: '', steps: 1, seed: 0, width, height }, () => {}, () => false).catch(() => {});
}

async function generate(msg, post) {
  if (!engine) throw new Error('no model loaded');
  const t0 = performance.now();
  // `preview`: `{ width, height, rgba }` from wasm, or null.
  const onStep = async (step, total, preview) => {
    // Wait for the page's ack: any cancel it sent while handling this step arrives first.
    const acked = new Promise((r) => acks.set(msg.id, r));
    post({ type: 'step', step, total, preview }, preview ? [preview.rgba.buffer] : []);
    await acked;
  };
  gpuError = null;
  const out = await engine.generate(msg.options, onStep, () => cancelled.has(msg.id));
  checkGpuErrors('generation');
  // Everything but the timings is wasm's: the image, its RGBA bytes, the seed it used.
  return { width: out.width, height: out.height, rgba: out.rgba, pixels: out.pixels, seed: out.seed, ms: performance.now() - t0,
    wasmHeapBytes: wasmHeapBytes(), warnings: out.warnings, gpuBytes: out.gpuBytes };
}

// Messages the page could not read (a value that does not clone) would leave its call open.
self.onmessageerror = () => self.postMessage({ type: 'fatal', message: 'the worker received a message it could not deserialize' });

self.onmessage = async ({ data: msg }) => {
  if (msg.type === 'cancel') {
    cancelled.add(msg.target);
    return;
  }
  if (msg.type === 'ack') {
    acks.get(msg.target)?.();
    acks.delete(msg.target);
    return;
  }
  if (msg.type === 'destroy-device') {
    // Diagnostics and tests: what a driver reset does to the page, on demand.
    gpuDevice?.destroy();
    return;
  }
  const post = (m, transfer = []) => self.postMessage({ id: msg.id, ...m }, transfer);
  try {
    let value;
    if (msg.type === 'boot') value = await boot();
    else if (msg.type === 'load') value = await load(msg, post);
    else if (msg.type === 'generate') value = await generate(msg, post);
    else if (msg.type === 'setLoras') value = await setLoras(msg, progressReporter(post));
    else throw new Error(`unknown message ${msg.type}`);
    const transfer = value?.rgba ? [value.rgba.buffer, value.pixels.buffer] : [];
    post({ type: 'done', value }, transfer);
  } catch (e) {
    const message = e?.message ?? String(e);
    post({ type: 'error', message: cancelled.has(msg.id) ? 'cancelled' : message, cancelled: cancelled.has(msg.id) });
  } finally {
    cancelled.delete(msg.id);
  }
};

// The handshake: the page now knows this module and its static imports loaded; an error event
// before this means the worker never started (pkg/index.js names it so).
self.postMessage({ type: 'ready' });
