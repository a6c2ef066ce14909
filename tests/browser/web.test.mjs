// Real-browser tests: Debian chromium (SwiftShader WebGPU) driven by playwright-core, against
// the built www/ (run ./build.sh first) served by server.mjs with fault injection.
//   cd tests/browser && npm ci && node --test --test-concurrency=1 .
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { INKSTONE_BIN, launchChromium, OUT, ROOT, WWW, writeHookedWorker } from './chromium.mjs';
import { startServer } from './server.mjs';
import { readSafetensors } from './safetensors.mjs';
import { logConsole, maxAbs, nativeImage, openApp } from './common.mjs';

const TINY = join(ROOT, 'tests/fixtures/tiny-sd');
/** How long a load through the page may take: it ends with the warm-up generation
 *  (pkg/worker.js), tens of seconds on SwiftShader under load. */
const LOAD_TIMEOUT = 180_000;
/** Small IndexedDB chunks so the tiny model's files span several chunks. */
const CHUNK = 256 * 1024;

if (!existsSync(join(WWW, 'pkg/inkstone_core_bg.wasm'))) throw new Error('www/ is not built: run ./build.sh first');

let srv, browser;
const MODEL = () => `${srv.origin}/models/tiny-sd/`;

/** The tiny model's files, sizes and tensor counts, read directly from the fixture. */
function fixtureFiles() {
  const out = [];
  const walk = (dir, rel = '') => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(join(dir, e.name), r);
      else out.push({ path: r, size: readFileSync(join(dir, e.name)).length });
    }
  };
  walk(TINY);
  return out;
}

/** Writes tensors of `src` (from readSafetensors) to `to`: `pairs` is [[newKey, srcKey], ...]. */
function writeSafetensors(to, src, pairs) {
  const h = {};
  const data = [];
  let off = 0;
  for (const [key, from] of pairs) {
    const bytes = src.raw(from);
    data.push(bytes);
    h[key] = { ...src.header[from], data_offsets: [off, off + bytes.length] };
    off += bytes.length;
  }
  let json = JSON.stringify(h);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(to, Buffer.concat([len, Buffer.from(json), ...data]));
}

const tensorCount = (path) => readSafetensors(join(TINY, path)).keys.length;
const sha256 = (b) => createHash('sha256').update(b).digest('hex');

// `--expose-gc`: the soak test collects garbage before it reads the JS heap.
const launch = (webgpu = true) => launchChromium({ webgpu, args: ['--js-flags=--expose-gc'], viewport: { width: 1200, height: 900 } });

const openPage = (context) => openApp(context, srv.origin);

/** A page of its own in `context` (beside the one openPage reuses), with the app ready: for a
 *  group of tests that share one loaded model (`describe` below) and so one GPU device. */
async function sharedPage(context) {
  const page = logConsole(await context.newPage());
  await page.goto(`${srv.origin}/index.html`);
  await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 60_000 });
  return page;
}

/** The page's Load button always asks for the warm-up (a 1-step generation that compiles the
 *  GPU pipelines: most of a minute on SwiftShader, for each new worker). Tests of what a load
 *  does and shows (downloads, cache, precision, a picked folder) generate nothing afterwards, so
 *  they take it out of the load message the page posts to its worker; the warm-up keeps its
 *  own tests (the shared tiny-sd page below loads with it, gpu.test.mjs counts what it
 *  compiles, the NaN test loads through a failing one). */
const withoutWarmUp = (page) => page.evaluate(() => {
  const post = Worker.prototype.postMessage;
  Worker.prototype.postMessage = function (msg, ...rest) {
    return post.call(this, msg?.type === 'load' ? { ...msg, warmUp: false } : msg, ...rest);
  };
});

/** Runs load() in the page; returns { info, progress } or { error }. Without the warm-up
 *  generations by default (they would add ~1 min per load on SwiftShader; gpu.test.mjs and the
 *  page's own loads cover them). */
const loadIn = (page, url, chunkSize = CHUNK, dtype = undefined, warmUp = false, reuse = false) => page.evaluate(async ({ url, chunkSize, dtype, warmUp, reuse }) => {
  const progress = [];
  try {
    const into = reuse && window.lastGenerator ? { reuse: window.lastGenerator } : {};
    const g = await window.inkstone.load(url, { chunkSize, dtype, warmUp, ...into, onProgress: (p) => progress.push(p) });
    window.lastGenerator?.dispose();
    window.lastGenerator = g;
    return { info: g.info, progress };
  } catch (e) {
    return { error: e.message, progress };
  }
}, { url, chunkSize, dtype, warmUp, reuse });

/** The page of the tests that need a model loaded and generating, not a fresh page or
 *  worker: each loads into the worker of the one before (`load({ reuse })`), so the GPU
 *  pipelines are compiled once for all of them (a fresh worker spends ~40 s of SwiftShader
 *  compiling tiny-sd's). */
let modelsPage = null;
const sharedModelsPage = async () => (modelsPage ??= sharedPage(browser));
const loadShared = async (url, { warmUp = false } = {}) => {
  const page = await sharedModelsPage();
  return { page, ...(await loadIn(page, url, CHUNK, undefined, warmUp, true)) };
};

/** sha256 of the cached bytes of one file (read from IndexedDB in the page), with the chunk
 *  count, or null when the file is not (completely) cached. */
const cachedSha = (page, model, path) => page.evaluate(async ({ model, path }) => {
  const store = await import('./pkg/store.js');
  const meta = await store.getFile(model, path);
  if (!meta?.complete) return null;
  const parts = [];
  for (let i = 0; i < meta.chunks; i++) parts.push(await store.getChunk(model, path, i));
  const digest = await crypto.subtle.digest('SHA-256', await new Blob(parts).arrayBuffer());
  return { chunks: meta.chunks, sha: [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('') };
}, { model, path });

const requests = (pred = () => true) => srv.log.filter(pred);

/** The service worker's own scripts. Chromium re-fetches them on its own schedule to check for
 *  a new app version (navigation, worker start): browser traffic that carries nothing of the
 *  page's. Every other request still counts. */
const SW_SCRIPTS = new Set(['sw.js', 'shell-list.js']);
const pageRequests = (since) => srv.log.slice(since).filter((r) => !SW_SCRIPTS.has(r.path));

/** Lets the browser finish its own service-worker update check (a GET of sw.js that Chromium
 *  makes after navigation, unrelated to the page's work) before requests are counted. */
async function settle(page) {
  await page.evaluate(async () => {
    const reg = await navigator.serviceWorker.getRegistration();
    await reg?.update();
  });
  // Chromium's post-navigation soft update of the worker can come a moment later: wait until
  // the server has seen no request for 2 s.
  for (let seen = -1; seen !== srv.log.length;) {
    seen = srv.log.length;
    await new Promise((r) => setTimeout(r, 2000));
  }
}

before(async () => {
  mkdirSync(OUT, { recursive: true });
  srv = await startServer(WWW);
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await srv?.close();
});

test('page loads and finds a WebGPU adapter', async () => {
  const page = await openPage(browser);
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'ready');
  const gpu = JSON.parse(await page.evaluate(() => document.body.dataset.gpu));
  console.log('  adapter:', JSON.stringify(gpu));
  assert.ok(gpu.maxBufferSize >= 128 * 2 ** 20, `maxBufferSize ${gpu.maxBufferSize}`);
  assert.equal(typeof gpu.shaderF16, 'boolean');
  assert.ok(gpu.adapter.length > 0, 'adapter named');
  assert.match(await page.textContent('#gpu'), /^WebGPU: .*shader-f16 (yes|no)/);
  await page.screenshot({ path: join(OUT, 'page.png'), fullPage: true });
});

test('load() downloads every file once with progress and caches it', async () => {
  const page = await openPage(browser);
  const before = srv.log.length;
  const { info, progress, error } = await loadIn(page, MODEL());
  assert.equal(error, undefined, error);
  const files = fixtureFiles();
  const gets = srv.log.slice(before).filter((r) => r.method === 'GET' && r.path.startsWith('models/tiny-sd/'));
  for (const f of files) {
    const n = gets.filter((r) => r.path === `models/tiny-sd/${f.path}` && r.range === null).length;
    // model_index.json is read once to resolve the folder and once more into the cache.
    assert.equal(n, f.path === 'model_index.json' ? 2 : 1, `${f.path} fetched ${n} times`);
  }
  assert.equal(info.files.length, files.length);
  assert.equal(info.bytes, files.reduce((a, f) => a + f.size, 0));
  assert.equal(info.cached, false);
  // Tensors per component arrived in wasm (streamed through TensorStream) and match the files.
  for (const c of ['text_encoder', 'unet', 'vae']) {
    const path = files.find((f) => f.path.startsWith(`${c}/`) && f.path.endsWith('.safetensors')).path;
    assert.equal(info.components[c], tensorCount(path), c);
  }
  const downloads = progress.filter((p) => p.phase === 'download');
  const last = downloads.at(-1);
  assert.equal(last.bytes, info.bytes, 'download progress reaches the total');
  assert.equal(last.totalBytes, info.bytes);
  assert.ok(downloads.length > files.length, `${downloads.length} progress events`);
  assert.ok(downloads.every((p, i) => i === 0 || p.bytes >= downloads[i - 1].bytes), 'monotonic');
  assert.equal(progress.at(-1).phase, 'ready');
  // Cached, byte for byte, in several chunks.
  const unet = 'unet/diffusion_pytorch_model.safetensors';
  const cached = await cachedSha(page, MODEL(), unet);
  assert.equal(cached.sha, sha256(readFileSync(join(TINY, unet))));
  assert.ok(cached.chunks > 1, `${cached.chunks} chunks`);
  const listed = await page.evaluate(() => window.inkstone.cachedModels());
  const m = listed.find((x) => x.model === MODEL());
  assert.ok(m?.complete, JSON.stringify(listed));
  assert.equal(m.bytes, info.bytes);
  // The page lists it with its size.
  await withoutWarmUp(page);
  await page.click('#load').catch(() => {}); // also exercises the UI path (bundled preset = same URL)
  await page.waitForFunction(() => document.body.dataset.state === 'loaded', null, { timeout: LOAD_TIMEOUT });
  assert.match(await page.textContent('#cached'), /Tiny demo model.*MB/);
  assert.match(await page.textContent('#load-status'), /from the cache/);
});

test('a second load() makes no network request', async () => {
  const page = await openPage(browser);
  await page.waitForTimeout(300);
  const before = srv.log.length;
  const { info, error } = await loadIn(page, MODEL());
  assert.equal(error, undefined, error);
  assert.equal(info.cached, true);
  // (The app shell may be revalidated; no model file, probe or weight is requested.)
  assert.deepEqual(srv.log.slice(before).filter((r) => r.path.startsWith('models/')), [], 'model requests during a cached load');
});

test('precision: auto follows shader-f16; f16 without it, or an unknown dtype, fails before any download', async () => {
  const page = await openPage(browser);
  const gpu = JSON.parse(await page.evaluate(() => document.body.dataset.gpu));
  const auto = await loadIn(page, MODEL());
  assert.equal(auto.error, undefined, auto.error);
  assert.equal(auto.info.dtype, gpu.shaderF16 ? 'f16' : 'f32');
  const f32 = await loadIn(page, MODEL(), CHUNK, 'f32');
  assert.equal(f32.info.dtype, 'f32');
  const url = `${srv.origin}/models/tiny-flow/`; // not cached yet: any attempt would show in the log
  const before = srv.log.length;
  const f16 = await loadIn(page, url, CHUNK, 'f16');
  if (gpu.shaderF16) {
    assert.equal(f16.info?.dtype, 'f16', f16.error);
  } else {
    assert.match(f16.error ?? '', /^dtype 'f16' needs a GPU with the WebGPU feature shader-f16.*load with dtype 'f32'/);
    assert.deepEqual(pageRequests(before).filter((r) => r.path.startsWith('models/')), [], 'requests before the dtype error');
  }
  const bogus = await loadIn(page, url, CHUNK, 'f64');
  assert.match(bogus.error ?? '', /dtype "f64": expected 'auto', 'f16' or 'f32'/);
  // The page says which precision the model runs in.
  await withoutWarmUp(page);
  await page.click('#load');
  await page.waitForFunction(() => document.body.dataset.state === 'loaded', null, { timeout: LOAD_TIMEOUT });
  assert.match(await page.textContent('#load-status'), new RegExp(`running in ${auto.info.dtype}`));
});

test('offline: the app shell opens from the service worker, load() works from the cache, and it generates', async () => {
  const page = await openPage(browser);
  // Bounded: an install that fails (a shell file missing, a full quota) leaves `ready` pending
  // forever. After a minute, register once more (an install that lost a race with the page's
  // first loads gets a second chance, as a returning user's would) and wait again; then say
  // what the worker and the storage look like instead of hanging the suite.
  const files = JSON.parse(/self\.SHELL = (.*);/.exec(readFileSync(join(WWW, 'shell-list.js'), 'utf8'))[1]);
  const sw = await page.evaluate(async (files) => {
    const within = (p, ms) => Promise.race([p.then(() => 'ready'), new Promise((r) => setTimeout(() => r('timeout'), ms))]);
    if ((await within(navigator.serviceWorker.ready, 60_000)) === 'ready') return null;
    const again = await navigator.serviceWorker.register('sw.js').then(() => null, (e) => `register: ${e.message}`);
    if (!again && (await within(navigator.serviceWorker.ready, 60_000)) === 'ready') return null;
    const reg = await navigator.serviceWorker.getRegistration();
    const state = (w) => w?.state ?? 'none';
    const shell = [];
    for (const f of files) shell.push(`${f} ${(await fetch(f, { cache: 'no-store' })).status}`);
    return { again, registered: !!reg, installing: state(reg?.installing), waiting: state(reg?.waiting), active: state(reg?.active),
      storage: await navigator.storage.estimate(), shell };
  }, files);
  assert.equal(sw, null, `the service worker never became ready: ${JSON.stringify(sw)}`);
  if (!(await page.evaluate(() => !!navigator.serviceWorker.controller))) await page.reload();
  await page.waitForFunction(() => !!navigator.serviceWorker.controller, null, { timeout: 30_000 });
  await browser.setOffline(true);
  const before = srv.log.length;
  try {
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 60_000 });
    const { info, error } = await loadIn(page, MODEL());
    assert.equal(error, undefined, error);
    assert.equal(info.cached, true);
    const n = await page.evaluate(async () => (await window.lastGenerator.generate({ prompt: 'offline', steps: 1, seed: 3, width: 64, height: 64 })).pixels.length);
    assert.equal(n, 3 * 64 * 64);
    await page.screenshot({ path: join(OUT, 'offline.png'), fullPage: true });
  } finally {
    await browser.setOffline(false);
  }
  assert.deepEqual(pageRequests(before), [], 'requests while offline');
});

test('an interrupted download resumes with a Range request and the bytes are right', async () => {
  const ctx = await launch();
  try {
    const page = await openPage(ctx);
    const unet = 'models/tiny-sd/unet/diffusion_pytorch_model.safetensors';
    srv.faults.dropOnce.add(unet);
    const before = srv.log.length;
    const { error, info, progress } = await loadIn(page, MODEL());
    assert.equal(error, undefined, error);
    const log = srv.log.slice(before).filter((r) => r.path === unet && r.method === 'GET');
    assert.ok(log[0].dropped, JSON.stringify(log));
    const ranged = log.filter((r) => r.range !== null);
    assert.equal(ranged.length, 1, JSON.stringify(log));
    const start = Number(/bytes=(\d+)-/.exec(ranged[0].range)[1]);
    assert.ok(start > 0, `resumed at ${start}`);
    assert.equal(ranged[0].status, 206);
    assert.ok(progress.some((p) => /connection lost/.test(p.warning ?? '')));
    const cached = await cachedSha(page, MODEL(), 'unet/diffusion_pytorch_model.safetensors');
    assert.equal(cached?.sha, sha256(readFileSync(join(TINY, 'unet/diffusion_pytorch_model.safetensors'))));
    assert.equal(info.components.unet, tensorCount('unet/diffusion_pytorch_model.safetensors'));
  } finally {
    await ctx.close();
  }
});

test('a download cut off by a reload resumes from the chunks already stored', async () => {
  const ctx = await launch();
  try {
    let page = await openPage(ctx);
    const rel = 'unet/diffusion_pytorch_model.safetensors';
    const unet = `models/tiny-sd/${rel}`;
    srv.faults.stallOnce.add(unet);
    const before = srv.log.length;
    // Not awaited: the U-Net download stalls half-way, as when the tab is closed.
    page.evaluate(({ url, chunkSize }) => { window.inkstone.load(url, { chunkSize }).catch(() => {}); }, { url: MODEL(), chunkSize: CHUNK });
    const storedChunks = () => page.evaluate(async ({ model, rel }) => {
      const store = await import('./pkg/store.js');
      return (await store.getFile(model, rel))?.chunks ?? 0;
    }, { model: MODEL(), rel });
    const size = readFileSync(join(TINY, rel)).length;
    const expected = Math.floor((size >> 1) / CHUNK); // whole chunks in the half that arrived
    let chunks = 0;
    for (let i = 0; i < 600 && chunks < expected; i++) {
      await page.waitForTimeout(100);
      chunks = await storedChunks();
    }
    assert.ok(expected > 0 && chunks === expected, `${chunks} of ${expected} chunks stored before the reload`);
    assert.ok(srv.log.slice(before).some((r) => r.path === unet && r.stalled));

    page = await openPage(ctx); // reload: the stalled fetch dies with the old page
    const again = srv.log.length;
    const { error, info } = await loadIn(page, MODEL());
    assert.equal(error, undefined, error);
    const log = srv.log.slice(again).filter((r) => r.method === 'GET' && r.path.startsWith('models/'));
    const unetGets = log.filter((r) => r.path === unet);
    assert.deepEqual(unetGets.map((r) => r.range), [`bytes=${chunks * CHUNK}-`], 'resumed from the stored chunks');
    assert.equal(unetGets[0].status, 206);
    // Weight files completed before the reload are not fetched again.
    const done = [...new Set(srv.log.slice(before, again)
      .filter((r) => r.method === 'GET' && r.path.endsWith('.safetensors') && r.status === 200 && !r.stalled).map((r) => r.path))];
    assert.ok(done.length > 0, 'some weight file completed before the stall');
    for (const p of done) assert.ok(!log.some((r) => r.path === p), `${p} fetched again`);
    const cached = await cachedSha(page, MODEL(), rel);
    assert.equal(cached?.sha, sha256(readFileSync(join(TINY, rel))));
    assert.equal(info.components.unet, tensorCount(rel));
  } finally {
    await ctx.close();
  }
});

test('a corrupt safetensors file is rejected, named, and not cached', async () => {
  const ctx = await launch();
  const vae = 'vae/diffusion_pytorch_model.safetensors';
  try {
    const page = await openPage(ctx);
    // Broken header: rejected by the wasm header check.
    srv.faults.corrupt.set(`models/tiny-sd/${vae}`, 'header');
    let r = await loadIn(page, MODEL());
    assert.match(r.error ?? '', new RegExp(vae.replace(/\./g, '\\.')));
    assert.match(r.error, /not cached/);
    assert.equal(await cachedSha(page, MODEL(), vae), null);
    // Flipped weight byte: rejected by the sha256 the server announces.
    srv.faults.corrupt.set(`models/tiny-sd/${vae}`, 'data');
    r = await loadIn(page, MODEL());
    assert.match(r.error ?? '', /vae\/diffusion_pytorch_model\.safetensors: sha256 [0-9a-f]{64} does not match/);
    assert.equal(await cachedSha(page, MODEL(), vae), null);
    // Fixed server: loads, and only the rejected file is downloaded again.
    srv.faults.corrupt.clear();
    const before = srv.log.length;
    r = await loadIn(page, MODEL());
    assert.equal(r.error, undefined, r.error);
    const weights = srv.log.slice(before).filter((x) => x.method === 'GET' && x.path.endsWith('.safetensors')).map((x) => x.path);
    assert.deepEqual(weights, [`models/tiny-sd/${vae}`]);
  } finally {
    srv.faults.corrupt.clear();
    await ctx.close();
  }
});

/** Browser pixels vs the native CLI's and diffusers' from the same latents (reference case
 *  `refName`), with `model` loaded in `page` as `window.lastGenerator`. */
async function pipelineParity(page, model, refName) {
  const refPath = join(ROOT, `tests/fixtures/ref/${refName}.safetensors`);
  const ref = readSafetensors(refPath);
  const c = ref.note;
  const outTensor = join(OUT, `native-${refName}.safetensors`);
  assert.ok(existsSync(INKSTONE_BIN), `native CLI not built at ${INKSTONE_BIN} (run cargo build first)`);
  execFileSync(INKSTONE_BIN, ['generate', '--model', join(ROOT, 'tests/fixtures', model), '--prompt', c.prompt,
    '--negative-prompt', c.negative_prompt, '--steps', String(c.steps), '--guidance', String(c.guidance),
    '--width', String(c.width), '--height', String(c.height), '--latents', refPath, '--out-tensor', outTensor], { stdio: 'pipe' });
  const native = readSafetensors(outTensor).tensor('image').data;

  await settle(page);
  const before = srv.log.length;
  const out = await page.evaluate(async ({ c, latents }) => {
    const previews = [];
    const r = await window.lastGenerator.generate({ prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps,
      guidance: c.guidance, width: c.width, height: c.height, seed: 0, latents: new Float32Array(latents),
      onStep: (s, t, preview) => previews.push(preview ? preview.width : null) });
    return { pixels: Array.from(r.pixels), previews };
  }, { c, latents: Array.from(ref.tensor('latents').data) });
  const during = pageRequests(before);
  const vsNative = maxAbs(out.pixels, native);
  const vsDiffusers = maxAbs(out.pixels, ref.tensor('image').data);
  console.log(`  ${model}: browser vs native max abs ${vsNative.toExponential(3)}, vs diffusers ${vsDiffusers.toExponential(3)} (tolerance 1e-3)`);
  assert.ok(vsNative <= 1e-3, `browser vs native: ${vsNative}`);
  assert.ok(vsDiffusers <= 1e-3, `browser vs diffusers: ${vsDiffusers}`);
  assert.deepEqual(during, [], 'requests during generation');
  // The tiny decoder gives a preview at every step; the KL decoder none.
  assert.equal(out.previews.length, c.steps);
  assert.ok(out.previews.every((w) => (model === 'tiny-flow' ? w === c.width : w === null)), JSON.stringify(out.previews));
}

// One page, one worker and one compilation of tiny-sd's GPU pipelines for every test here that
// only needs the bundled model loaded (a fresh load costs most of a minute of pipeline
// compilation on SwiftShader): loaded once with the page's own Load button, with its warm-up as
// a user gets it, then driven through the API (`window.inkstone.generator`) and the form. The
// lost-device test comes last: it ends the worker (the generator then runs on a new one). The
// page stays for the tests after it that load other models into that worker (loadShared).
describe('the bundled tiny-sd, loaded once in the page', () => {
  let page;
  before(async () => {
    page = await sharedModelsPage();
    // The sampler picker starts at the model's own.
    assert.equal(await page.inputValue('#scheduler'), '');
    await page.click('#load');
    await page.waitForFunction(() => ['loaded', 'load-error'].includes(document.body.dataset.state), null, { timeout: LOAD_TIMEOUT });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'loaded', await page.textContent('#load-status'));
    await page.evaluate(() => { window.lastGenerator = window.inkstone.generator; });
  });

  test('generate() reports every step, makes zero requests, and cancels between steps', async () => {
    await settle(page);
    const before = srv.log.length;
    const r = await page.evaluate(async () => {
      const steps = [];
      try {
        const out = await window.lastGenerator.generate({ prompt: 'a lighthouse', steps: 2, guidance: 0, seed: 7, width: 64, height: 64, onStep: (s, t) => steps.push([s, t]) });
        return { out: { width: out.width, height: out.height, n: out.pixels.length, rgba: out.rgba.length, seed: out.seed,
          min: Math.min(...out.pixels), max: Math.max(...out.pixels) }, steps };
      } catch (e) {
        return { error: e.message, steps };
      }
    });
    assert.equal(r.error, undefined, r.error);
    assert.deepEqual(r.steps, [[1, 2], [2, 2]]);
    assert.deepEqual([r.out.width, r.out.height, r.out.n, r.out.rgba, r.out.seed], [64, 64, 3 * 64 * 64, 4 * 64 * 64, 7]);
    assert.ok(r.out.min >= 0 && r.out.max <= 1 && r.out.max > r.out.min);
    assert.deepEqual(pageRequests(before), [], 'requests during generation');
    // Cancel after the first step: rejects promptly with an AbortError, and the next generate works.
    const c = await page.evaluate(async () => {
      const ac = new AbortController();
      const t0 = performance.now();
      let steps = 0;
      try {
        await window.lastGenerator.generate({ prompt: 'x', steps: 6, seed: 1, width: 64, height: 64, signal: ac.signal, onStep: () => { steps++; ac.abort(); } });
        return { name: 'finished' };
      } catch (e) {
        const again = await window.lastGenerator.generate({ prompt: 'x', steps: 1, seed: 1, width: 64, height: 64 });
        return { name: e.name, steps, ms: performance.now() - t0, again: again.pixels.length };
      }
    });
    assert.equal(c.name, 'AbortError');
    assert.equal(c.steps, 1, 'no step after the cancel');
    assert.equal(c.again, 3 * 64 * 64);
  });

  test('tiny-sd: browser pixels match the native CLI (and diffusers) from the same latents', () => pipelineParity(page, 'tiny-sd', 'pipeline_sd'));

  test('generate() options are strict; scheduler, timesteps and sigmas follow the samplers\' rules', async () => {
    const r = await page.evaluate(async () => {
      const g = window.lastGenerator;
      const base = { prompt: 'x', width: 64, height: 64, seed: 1, guidance: 0 };
      const attempt = async (o) => {
        const steps = [];
        try {
          await g.generate({ ...base, ...o, onStep: (s, t) => steps.push([s, t]) });
          return { steps };
        } catch (e) {
          return { error: e.message };
        }
      };
      const cases = {
        fractionalSteps: { steps: 2.5 }, unknownOption: { step: 2 }, nanGuidance: { steps: 1, guidance: NaN },
        stringSteps: { steps: '2' }, fractionalWidth: { steps: 1, width: 64.5 }, negativeSeed: { steps: 1, seed: -1 },
        infiniteTimestep: { timesteps: [Infinity] }, flowOnSd: { steps: 1, scheduler: 'flow-euler' },
        unknownScheduler: { steps: 1, scheduler: 'heun' }, ddimTimesteps: { scheduler: 'ddim', timesteps: [999] },
        both: { timesteps: [999], sigmas: [1, 0] }, oneStep: { timesteps: [999] },
        lcmFour: { scheduler: 'lcm', timesteps: [999, 749, 499, 249] }, eulerSigmas: { sigmas: [14.6, 3, 0] },
        dpmSde: { scheduler: 'dpm++2m-sde-karras', steps: 2 },
      };
      const out = {};
      for (const [name, o] of Object.entries(cases)) out[name] = await attempt(o);
      return out;
    });
    assert.match(r.fractionalSteps.error, /`steps` must be an integer in 1\.\.=10000, got 2\.5/);
    assert.match(r.unknownOption.error, /unknown field `step`/);
    assert.match(r.nanGuidance.error, /`guidance` must be a finite number, got NaN/);
    assert.match(r.stringSteps.error, /`steps`: invalid type/);
    assert.match(r.fractionalWidth.error, /`width` must be an integer/);
    assert.match(r.negativeSeed.error, /`seed` must be an integer in 0\.\./);
    assert.match(r.infiniteTimestep.error, /`timesteps` must hold finite numbers/);
    assert.match(r.flowOnSd.error, /flow-euler samples flow-matching models only/);
    assert.match(r.unknownScheduler.error, /unknown scheduler "heun"/);
    assert.match(r.ddimTimesteps.error, /custom timesteps are not supported by DDIMScheduler/);
    assert.match(r.both.error, /give timesteps or sigmas, not both/);
    assert.deepEqual(r.oneStep, { steps: [[1, 1]] });
    assert.deepEqual(r.lcmFour, { steps: [[1, 4], [2, 4], [3, 4], [4, 4]] });
    assert.deepEqual(r.eulerSigmas, { steps: [[1, 2], [2, 2]] });
    assert.deepEqual(r.dpmSde, { steps: [[1, 2], [2, 2]] });
  });

  test('the page\'s sampler picker defaults to the model\'s own and passes the choice and timesteps', async () => {
    // The model's own until the user picks one (also checked before the load, in before()).
    assert.equal(await page.inputValue('#scheduler'), '');
    await page.selectOption('#size', '64');
    await page.selectOption('#scheduler', 'dpm++2m-karras');
    await page.fill('#timesteps', '999');
    await page.click('#generate');
    await page.waitForFunction(() => ['generated', 'generate-error'].includes(document.body.dataset.state), null, { timeout: 120_000 });
    // Karras sigmas fix their own timesteps: diffusers refuses custom ones there, and so does the page.
    assert.match(await page.textContent('#gen-status'), /cannot be used with use_karras_sigmas/);
    await page.selectOption('#scheduler', 'euler-a');
    await page.fill('#timesteps', '');
    await page.fill('#steps', '2');
    await page.click('#generate');
    await page.waitForFunction(() => ['generated', 'generate-error'].includes(document.body.dataset.state), null, { timeout: 120_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'generated', await page.textContent('#gen-status'));
    await page.selectOption('#scheduler', 'dpm++2m');
    await page.fill('#timesteps', '999');
    await page.click('#generate');
    await page.waitForFunction(() => ['generated', 'generate-error'].includes(document.body.dataset.state), null, { timeout: 120_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'generated', await page.textContent('#gen-status'));
    await page.selectOption('#scheduler', 'flow-euler');
    await page.click('#generate');
    await page.waitForFunction(() => ['generated', 'generate-error'].includes(document.body.dataset.state), null, { timeout: 120_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'generate-error');
    assert.match(await page.textContent('#gen-status'), /flow-euler samples flow-matching models only/);
  });

  test('the page loads the bundled model, generates with the form and shows the result (screenshot)', async () => {
    // (Loaded by before(): the page's Load button, the bundled model, its warm-up.)
    const shown = await page.locator('#gallery img').count();
    await page.selectOption('#scheduler', ''); // the model's own (the sampler test picked others)
    await page.fill('#timesteps', '');
    await page.fill('#prompt', 'a photo of a cat');
    await page.fill('#steps', '2');
    // The smallest size: what is tested is the form's round trip, not a size (a 256 px image
    // took minutes on a loaded 2-core machine; other sizes run in the parity and limits tests).
    await page.selectOption('#size', '64');
    await page.click('#generate');
    await page.waitForFunction(() => ['generated', 'generate-error'].includes(document.body.dataset.state), null, { timeout: 120_000 });
    const text = await page.textContent('#gen-status');
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'generated', text);
    assert.match(text, /^Done in/);
    assert.equal(await page.locator('#gallery img').count(), shown + 1, 'the image joins the gallery');
    await page.screenshot({ path: join(OUT, 'generated.png'), fullPage: true });
  });

  test('a lost GPU device mid-generation: the page says so, and the next Generate recovers from the cache with no download', async () => {
    // The page's model loaded by before() (the bundled tiny model, from the cache).
    await page.fill('#timesteps', '');
    await page.selectOption('#scheduler', '');
    await page.fill('#prompt', 'a lighthouse');
    await page.fill('#steps', '3');
    await page.fill('#seed', '11');
    await page.selectOption('#size', '64');
    const generated = async () => {
      await page.click('#generate');
      await page.waitForFunction(() => ['generated', 'generate-error', 'device-lost'].includes(document.body.dataset.state), null, { timeout: 120_000 + LOAD_TIMEOUT });
      return page.evaluate(() => document.body.dataset.state);
    };
    assert.equal(await generated(), 'generated', await page.textContent('#gen-status'));
    const before = await page.evaluate(() => document.querySelector('#canvas').toDataURL());

    // Destroy the device (what a driver reset does) as soon as the first step is reported.
    await settle(page);
    const since = srv.log.length;
    await page.evaluate(() => {
      const g = window.inkstone.generator;
      const post = g._w.worker.onmessage;
      g._w.worker.onmessage = (e) => {
        if (e.data.type === 'step') g._w.worker.postMessage({ type: 'destroy-device' });
        post(e);
      };
    });
    assert.equal(await generated(), 'device-lost');
    assert.match(await page.textContent('#gen-status'), /GPU device was lost \(destroyed.*reloaded from the cache/);

    assert.equal(await generated(), 'generated', await page.textContent('#gen-status'));
    const after = await page.evaluate(() => document.querySelector('#canvas').toDataURL());
    assert.equal(after, before, 'same seed, same image after the recovery');
    const info = await page.evaluate(() => window.inkstone.generator.info);
    assert.equal(info.recoveries, 1);
    assert.equal(info.cached, true);
    assert.deepEqual(pageRequests(since).filter((r) => r.path.startsWith('models/')), [], 'model requests during the recovery');
  });
});

test('tiny-flow: browser pixels match the native CLI (and diffusers) from the same latents', async () => {
  const { page, error } = await loadShared(`${srv.origin}/models/tiny-flow/`);
  assert.equal(error, undefined, error);
  await pipelineParity(page, 'tiny-flow', 'pipeline_flow');
});

/** tiny-sd-pndm (the SD-1.x layout: PNDMScheduler; its components are symlinks into tiny-sd),
 *  copied with the links resolved under www/models/ for the server. */
function pndmModel() {
  const dir = join(WWW, 'models/tiny-sd-pndm');
  rmSync(dir, { recursive: true, force: true });
  cpSync(join(ROOT, 'tests/fixtures/tiny-sd-pndm'), dir, { recursive: true, dereference: true });
  return dir;
}

// tiny-sd-pndm loaded once for its three samplers (one worker, one pipeline compilation).
describe('tiny-sd-pndm, loaded once', () => {
  let page, dir;
  before(async () => {
    dir = pndmModel();
    let error;
    ({ page, error } = await loadShared(`${srv.origin}/models/tiny-sd-pndm/`));
    assert.equal(error, undefined, error);
  });

  // The SD-1.x repo layout (PNDM) as shipped, and DPM++ 2M Karras picked over it: browser, native
  // CLI and diffusers (`DPMSolverMultistepScheduler.from_config(..., use_karras_sigmas=True)`) agree.
  for (const [refName, scheduler] of [['pipeline_sd_pndm', undefined], ['pipeline_sd_dpm_karras', 'dpm++2m-karras']]) {
    test(`tiny-sd-pndm${scheduler ? ` with scheduler ${scheduler}` : ' (PNDMScheduler)'}: browser pixels match the native CLI and diffusers`, async () => {
      const refPath = join(ROOT, `tests/fixtures/ref/${refName}.safetensors`);
      const ref = readSafetensors(refPath);
      const c = ref.note;
      assert.equal(c.scheduler, scheduler);
      const native = nativeImage(dir, ['--prompt', c.prompt, '--negative-prompt', c.negative_prompt, '--steps', String(c.steps),
        '--guidance', String(c.guidance), '--latents', refPath, ...(scheduler ? ['--scheduler', scheduler] : [])], refName);

      const out = await page.evaluate(async ({ c, latents }) => {
        const steps = [];
        const r = await window.lastGenerator.generate({ prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps,
          guidance: c.guidance, width: c.width, height: c.height, seed: 0, latents: new Float32Array(latents),
          scheduler: c.scheduler, onStep: (s, t) => steps.push([s, t]) });
        return { pixels: Array.from(r.pixels), steps };
      }, { c, latents: Array.from(ref.tensor('latents').data) });
      const vsNative = maxAbs(out.pixels, native);
      const vsDiffusers = maxAbs(out.pixels, ref.tensor('image').data);
      console.log(`  ${refName}: browser vs native max abs ${vsNative.toExponential(3)}, vs diffusers ${vsDiffusers.toExponential(3)} (tolerance 1e-3)`);
      assert.ok(vsNative <= 1e-3, `browser vs native: ${vsNative}`);
      assert.ok(vsDiffusers <= 1e-3, `browser vs diffusers: ${vsDiffusers}`);
      // PLMS evaluates the U-Net steps + 1 times (its second step repeats a timestep).
      const total = scheduler ? c.steps : c.steps + 1;
      assert.deepEqual(out.steps, Array.from({ length: total }, (_, i) => [i + 1, total]));
    });
  }

  test('a stochastic sampler (euler-a) gives the native image for the same seed', async () => {
    const o = { prompt: 'a red house', steps: 3, guidance: 7.5, seed: 5, width: 64, height: 64 };
    const native = nativeImage(dir, ['--prompt', o.prompt, '--steps', '3', '--guidance', '7.5', '--seed', '5', '--width', '64',
      '--height', '64', '--scheduler', 'euler-a'], 'euler-a');
    const pixels = await page.evaluate(async (o) => Array.from((await window.lastGenerator.generate({ ...o, scheduler: 'euler-a' })).pixels), o);
    const other = await page.evaluate(async (o) => Array.from((await window.lastGenerator.generate({ ...o, seed: 6, scheduler: 'euler-a' })).pixels), o);
    const err = maxAbs(pixels, native);
    console.log(`  euler-a seed 5: browser vs native max abs ${err.toExponential(3)} (tolerance 1e-3)`);
    assert.ok(err <= 1e-3, `browser vs native: ${err}`);
    assert.ok(maxAbs(other, native) > 1e-3, 'another seed gives another image');
  });
});

test('a local folder picked in the page loads with no network', async () => {
  const page = await openPage(browser);
  await page.setInputFiles('#model-dir', TINY);
  const before = srv.log.length;
  await withoutWarmUp(page);
  await page.click('#load');
  await page.waitForFunction(() => ['loaded', 'load-error'].includes(document.body.dataset.state), null, { timeout: LOAD_TIMEOUT });
  const text = await page.textContent('#load-status');
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'loaded', text);
  assert.match(text, /Loaded local:tiny-sd/);
  assert.deepEqual(srv.log.slice(before).filter((r) => r.path.startsWith('models/')), []);
  await page.screenshot({ path: join(OUT, 'loaded-local.png'), fullPage: true });
});

test('a full storage quota gives a clear warning and the model still loads (uncached)', async () => {
  const ctx = await launch();
  try {
    const page = await openPage(ctx);
    const cdp = await ctx.newCDPSession(page);
    // 1.5 MB: the text encoder (3.2 MB) cannot be stored.
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: srv.origin, quotaSize: 1_500_000 });
    const { info, error } = await loadIn(page, MODEL());
    assert.equal(error, undefined, error);
    assert.ok(info.warnings.some((w) => /Storage is full: .* not cached .*generation still works/.test(w)), JSON.stringify(info.warnings));
    assert.equal(info.components.text_encoder, tensorCount('text_encoder/model.safetensors'));
    assert.equal(info.components.unet, tensorCount('unet/diffusion_pytorch_model.safetensors'));
    const listed = await page.evaluate(() => window.inkstone.cachedModels());
    assert.ok(!listed.some((m) => m.model === MODEL() && m.complete), JSON.stringify(listed));
  } finally {
    await ctx.close();
  }
});

/** A copy of the tiny model laid out like big hub repos: the UNet split into two shards with a
 *  `diffusion_pytorch_model.safetensors.index.json`, the text encoder as `model.fp16.safetensors`. */
function writeShardedModel(dir) {
  rmSync(dir, { recursive: true, force: true });
  cpSync(TINY, dir, { recursive: true });
  const unet = join(dir, 'unet/diffusion_pytorch_model.safetensors');
  const st = readSafetensors(unet);
  const keys = [...st.keys].sort();
  const halves = [keys.slice(0, keys.length >> 1), keys.slice(keys.length >> 1)];
  const weightMap = {};
  halves.forEach((part, i) => {
    const name = `diffusion_pytorch_model-0000${i + 1}-of-00002.safetensors`;
    writeSafetensors(join(dir, 'unet', name), st, part.map((k) => [k, k]));
    for (const k of part) weightMap[k] = name;
  });
  rmSync(unet);
  writeFileSync(`${unet}.index.json`, JSON.stringify({ metadata: { total_size: st.dataSize }, weight_map: weightMap }));
  renameSync(join(dir, 'text_encoder/model.safetensors'), join(dir, 'text_encoder/model.fp16.safetensors'));
}

test('sharded (*.index.json) and .fp16 weight files are found and streamed', async () => {
  writeShardedModel(join(WWW, 'models/tiny-sd-sharded'));
  const page = await openPage(browser);
  const { info, error } = await loadIn(page, `${srv.origin}/models/tiny-sd-sharded/`);
  assert.equal(error, undefined, error);
  const paths = info.files.map((f) => f.path);
  for (const p of ['unet/diffusion_pytorch_model.safetensors.index.json', 'unet/diffusion_pytorch_model-00001-of-00002.safetensors',
    'unet/diffusion_pytorch_model-00002-of-00002.safetensors', 'text_encoder/model.fp16.safetensors']) {
    assert.ok(paths.includes(p), `${p} in ${paths}`);
  }
  assert.equal(info.components.unet, tensorCount('unet/diffusion_pytorch_model.safetensors'));
  assert.equal(info.components.text_encoder, tensorCount('text_encoder/model.safetensors'));
});

/** Writes the tensors of safetensors file `from` whose keys `rename` maps to a new key into `to`. */
function rewriteSafetensors(from, to, rename) {
  const st = readSafetensors(from);
  writeSafetensors(to, st, st.keys.map((k) => [rename(k), k]).filter(([key]) => key));
}

test('a tiny decoder in the original TAESD layout (no vae/config.json) loads and matches the native CLI', async () => {
  // tiny-flow with its AutoencoderTiny rewritten as taesd_decoder/encoder.safetensors: diffusers'
  // `decoder.layers.{i}` is the original `{i + 1}`, `encoder.layers.{i}` is `{i}`.
  const dir = join(WWW, 'models/tiny-flow-taesd');
  rmSync(dir, { recursive: true, force: true });
  cpSync(join(ROOT, 'tests/fixtures/tiny-flow'), dir, { recursive: true });
  const vae = join(dir, 'vae/diffusion_pytorch_model.safetensors');
  const layer = (part, shift) => (k) => {
    const m = new RegExp(`^${part}\\.layers\\.(\\d+)\\.(.*)$`).exec(k);
    return m && `${Number(m[1]) + shift}.${m[2]}`;
  };
  rewriteSafetensors(vae, join(dir, 'vae/taesd_decoder.safetensors'), layer('decoder', 1));
  rewriteSafetensors(vae, join(dir, 'vae/taesd_encoder.safetensors'), layer('encoder', 0));
  rmSync(vae);
  rmSync(join(dir, 'vae/config.json'));

  const opts = { prompt: '一只猫 a cat', negativePrompt: '', steps: 2, guidance: 4.5, width: 64, height: 48, seed: 7 };
  const outTensor = join(OUT, 'native-tiny-flow-taesd.safetensors');
  execFileSync(INKSTONE_BIN, ['generate', '--model', dir, '--prompt', opts.prompt, '--steps', '2', '--guidance', '4.5',
    '--width', '64', '--height', '48', '--seed', '7', '--out-tensor', outTensor], { stdio: 'pipe' });
  const native = readSafetensors(outTensor).tensor('image').data;

  const { page, info, error } = await loadShared(`${srv.origin}/models/tiny-flow-taesd/`);
  assert.equal(error, undefined, error);
  assert.deepEqual(info.files.filter((f) => f.path.startsWith('vae/')).map((f) => f.path),
    ['vae/taesd_decoder.safetensors', 'vae/taesd_encoder.safetensors']);
  const pixels = await page.evaluate(async (o) => Array.from((await window.lastGenerator.generate(o)).pixels), opts);
  const err = maxAbs(pixels, native);
  console.log(`  original-layout TAESD: browser vs native max abs ${err.toExponential(3)} (tolerance 1e-3)`);
  assert.ok(err <= 1e-3, `browser vs native: ${err}`);
});

/** Folders laid out like real hub repos (tools/reference/hub_layouts.py), each with diffusers'
 *  image from the same folder and latents. */
const HUB_CASES = [
  // SD-1.x era: safety_checker/feature_extractor listed, .safetensors + .fp16 + .bin side by side,
  // 2022 VAE names, text_model.* keys with position_ids (I64), AddedToken tokenizer configs,
  // PNDMScheduler; and the same folder with the sampler overridden to Euler (diffusers'
  // `EulerDiscreteScheduler.from_config` of its PNDM config).
  { model: 'tiny-sd1-hub', ref: 'hub_sd1_pndm' },
  { model: 'tiny-sd1-hub', ref: 'hub_sd1_euler', scheduler: 'euler' },
  // JuZhou-class: BERT-Chinese tower without pooler, position_ids/token_type_ids buffers, 4 flow steps.
  { model: 'tiny-flow-hub', ref: 'hub_flow' },
];

// Each hub-layout folder is downloaded and loaded once (its requests checked by every case of it)
// and generates each of its reference cases: one worker per folder.
for (const model of [...new Set(HUB_CASES.map((h) => h.model))]) {
  describe(`${model}, downloaded and loaded once`, () => {
    let page, loaded, asked;
    before(async () => {
      const dir = join(WWW, 'models', model);
      rmSync(dir, { recursive: true, force: true });
      cpSync(join(ROOT, 'tests/fixtures', model), dir, { recursive: true });
      page = await sharedModelsPage();
      // A fresh download: the requests are what is checked.
      await page.evaluate((m) => window.inkstone.clearCache(m), `${srv.origin}/models/${model}/`);
      const before = srv.log.length;
      loaded = await loadShared(`${srv.origin}/models/${model}/`);
      const prefix = `models/${model}/`;
      asked = srv.log.slice(before).filter((r) => r.path.startsWith(prefix)).map((r) => ({ ...r, path: r.path.slice(prefix.length) }));
    });

    for (const hub of HUB_CASES.filter((h) => h.model === model)) {
      test(`${hub.model} (${hub.ref}): a hub-layout folder fetches only the files it runs and matches the native CLI and diffusers`, async () => {
        const dir = join(WWW, 'models', hub.model);
        const refPath = join(ROOT, `tests/fixtures/ref/${hub.ref}.safetensors`);
        const ref = readSafetensors(refPath);
        const c = ref.note;
        const outTensor = join(OUT, `native-${hub.ref}.safetensors`);
        execFileSync(INKSTONE_BIN, ['generate', '--model', dir, '--prompt', c.prompt, '--negative-prompt', c.negative_prompt,
          '--steps', String(c.steps), '--guidance', String(c.guidance), '--width', String(c.width), '--height', String(c.height),
          '--latents', refPath, '--out-tensor', outTensor, ...(hub.scheduler ? ['--scheduler', hub.scheduler] : [])], { stdio: 'pipe' });
        const native = readSafetensors(outTensor).tensor('image').data;

        const { info, error } = loaded;
        assert.equal(error, undefined, error);
        assert.equal(info.dtype, 'f32'); // SwiftShader has no shader-f16
        for (const r of asked) {
          assert.ok(!/^(safety_checker|feature_extractor)\//.test(r.path), `requested ${r.method} ${r.path}`);
          assert.ok(!/\.(bin|ckpt)$/.test(r.path), `requested pickle ${r.method} ${r.path}`);
          assert.ok(!(r.method === 'GET' && r.path.includes('.fp16.')), `an f32 load downloaded ${r.path}`);
        }
        // Exactly the planned files are downloaded (model_index.json is read once more to plan).
        const gets = [...new Set(asked.filter((r) => r.method === 'GET').map((r) => r.path))].sort();
        assert.deepEqual(gets, info.files.map((f) => f.path).sort());
        const weights = info.files.filter((f) => f.kind === 'weights').map((f) => f.path).sort();
        assert.deepEqual(weights, ['text_encoder/model.safetensors', 'unet/diffusion_pytorch_model.safetensors',
          'vae/diffusion_pytorch_model.safetensors']);
        if (hub.model === 'tiny-sd1-hub') assert.deepEqual(info.skipped, ['feature_extractor', 'safety_checker']);

        const pixels = await page.evaluate(async ({ c, latents, scheduler }) => Array.from((await window.lastGenerator.generate({
          prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps, guidance: c.guidance, width: c.width,
          height: c.height, seed: 0, latents: new Float32Array(latents), ...(scheduler ? { scheduler } : {}) })).pixels),
        { c, latents: Array.from(ref.tensor('latents').data), scheduler: hub.scheduler });
        const vsNative = maxAbs(pixels, native);
        const vsDiffusers = maxAbs(pixels, ref.tensor('image').data);
        console.log(`  ${hub.model}: browser vs native max abs ${vsNative.toExponential(3)}, vs diffusers ${vsDiffusers.toExponential(3)} (tolerance 1e-3)`);
        assert.ok(vsNative <= 1e-3, `browser vs native: ${vsNative}`);
        assert.ok(vsDiffusers <= 1e-3, `browser vs diffusers: ${vsDiffusers}`);
      });
    }
  });
}

/** The page's size format (www/app.js `fmt`). */
const size = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GB` : `${(n / 2 ** 20).toFixed(1)} MB`);

/** docs/models.md's summary table: per repo, the download sizes in GB (3 decimals) recorded
 *  there with their sources. */
function documentedSizes() {
  const rows = {};
  const gb = (c) => Number(c.match(/^(\d+\.\d{3}) GB/)?.[1]);
  for (const line of readFileSync(join(ROOT, 'docs/models.md'), 'utf8').split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length === 7 && gb(cells[3]) && gb(cells[4])) rows[cells[1]] = { f16: gb(cells[3]), f32: gb(cells[4]) };
  }
  return rows;
}

test('presets: every hub preset is offered with its download size for the dtype and its recommended settings', async () => {
  const { PRESETS } = await import(join(WWW, 'presets.js'));
  // The presets' figures against docs/models.md, where each rests on a cited source (not
  // against presets.js itself, which the page reads).
  const docs = documentedSizes();
  for (const p of PRESETS) {
    const d = docs[p.repo];
    assert.ok(d, `${p.repo}: no row in docs/models.md's summary`);
    for (const dtype of ['f16', 'f32']) {
      assert.ok(Math.abs(p.bytes[dtype] / 1e9 - d[dtype]) < 0.0005, `${p.repo} ${dtype}: preset ${p.bytes[dtype]} B, docs ${d[dtype]} GB`);
    }
  }
  const page = await openPage(browser);
  const options = await page.$$eval('#preset option', (os) => os.map((o) => ({ value: o.value, text: o.textContent })));
  for (const p of PRESETS) {
    const option = options.find((o) => o.text.includes(p.repo));
    assert.ok(option, `${p.repo} offered`);
    await page.selectOption('#preset', option.value);
    const note = await page.textContent('#preset-note');
    assert.doesNotMatch(note, /not supported/i, p.repo);
    // SwiftShader has no shader-f16: 'auto' runs in f32, so the f32 download size is shown.
    assert.ok(note.includes(`Download at f32: ${size(p.bytes.f32)}`), `${p.repo}: ${note}`);
    assert.equal(Number(await page.inputValue('#steps')), p.defaults.steps, p.repo);
    assert.equal(Number(await page.inputValue('#guidance')), p.defaults.guidance, p.repo);
    assert.equal(await page.inputValue('#size'), String(p.defaults.width), p.repo);
  }
  const sdxs = PRESETS.find((p) => p.id === 'sdxs-512-dreamshaper');
  assert.deepEqual([sdxs.defaults.steps, sdxs.defaults.guidance], [1, 0]);
  const bk = PRESETS.find((p) => p.id === 'bk-sdm-tiny');
  assert.deepEqual([bk.defaults.steps, bk.defaults.guidance], [25, 7.5]);
  await page.selectOption('#dtype', 'f16');
  await page.selectOption('#preset', options.find((o) => o.text.includes('bk-sdm-tiny')).value);
  assert.ok((await page.textContent('#preset-note')).includes(`Download at f16: ${size(bk.bytes.f16)}`));
});

/** A worker that counts GPU work around the package's worker.js (gpu-hooks.mjs): live GPU
 *  buffer bytes (createBuffer minus destroy), dispatches and submits. */
const writeCountingWorker = () => `${srv.origin}${writeHookedWorker('counting-worker.mjs')}`;

/** A probe of the JS heap of the page's worker whose script URL contains `urlPart`: used bytes
 *  after a garbage collection, over the DevTools protocol (workers have no performance.memory). */
async function workerHeapProbe(page, urlPart) {
  const cdp = await page.context().newCDPSession(page);
  let session = null;
  cdp.on('Target.attachedToTarget', (e) => { if (e.targetInfo.type === 'worker' && e.targetInfo.url.includes(urlPart)) session = e.sessionId; });
  await cdp.send('Target.setAutoAttach', { autoAttach: true, waitForDebuggerOnStart: false, flatten: false });
  for (let i = 0; i < 50 && !session; i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(session, `no worker ${urlPart} to measure`);
  let id = 0;
  const waiting = new Map();
  cdp.on('Target.receivedMessageFromTarget', (e) => { const m = JSON.parse(e.message); waiting.get(m.id)?.(m.result); });
  const call = (method) => new Promise((resolve) => {
    waiting.set(++id, resolve);
    cdp.send('Target.sendMessageToTarget', { sessionId: session, message: JSON.stringify({ id, method, params: {} }) });
  });
  return async () => (await call('HeapProfiler.collectGarbage'), (await call('Runtime.getHeapUsage')).usedSize);
}

test('soak: many generations in one tab keep GPU memory, the wasm heap and the JS heap flat', async () => {
  // 8 in CI (SwiftShader is slow); SOAK_RUNS=100 for the full soak (docs/reliability.md).
  const runs = Number(process.env.SOAK_RUNS ?? 8);
  const warmup = 3;
  const workerUrl = writeCountingWorker();
  const page = await openPage(browser);
  await page.evaluate(async ({ url, workerUrl }) => {
    // No load warm-up: the first generations (before `warmup`) compile the pipelines instead.
    window.soakGen = await window.inkstone.load(url, { workerUrl, warmUp: false });
  }, { url: MODEL(), workerUrl });
  const worker = page.workers().at(-1);
  const workerHeap = await workerHeapProbe(page, 'counting-worker');
  const samples = [];
  for (let i = 0; i < runs; i++) {
    const out = await page.evaluate((i) => window.soakGen.generate({ prompt: `soak ${i}`, steps: 1, width: 64, height: 64, seed: i })
      .then((o) => {
        globalThis.gc?.(); // what is left after a collection is what the page keeps
        return { wasm: o.wasmHeapBytes, js: performance.memory?.usedJSHeapSize ?? 0 };
      }), i);
    samples.push({ ...out, workerJs: await workerHeap(), gpu: await worker.evaluate(() => ({ ...self.gpuCounts })) });
  }
  await page.evaluate(() => window.soakGen.dispose());
  const [w, last] = [samples[warmup - 1], samples.at(-1)];
  const mb = (n) => (n / 2 ** 20).toFixed(2);
  const per = samples.slice(warmup).map((s, i) => s.gpu.dispatches - samples[warmup + i - 1].gpu.dispatches);
  console.log(`  soak ${runs} generations: GPU live ${mb(w.gpu.liveBytes)} -> ${mb(last.gpu.liveBytes)} MiB (peak ${mb(last.gpu.peakBytes)}), `
    + `buffers ${w.gpu.buffers} -> ${last.gpu.buffers}, wasm heap ${mb(w.wasm)} -> ${mb(last.wasm)} MiB, `
    + `page JS heap ${mb(w.js)} -> ${mb(last.js)} MiB, worker JS heap ${mb(w.workerJs)} -> ${mb(last.workerJs)} MiB, ${per[0]} dispatches and ${last.gpu.submits - samples.at(-2).gpu.submits} submits per generation`);
  assert.ok(last.gpu.liveBytes <= w.gpu.liveBytes, `GPU bytes grew: ${w.gpu.liveBytes} -> ${last.gpu.liveBytes}`);
  assert.ok(last.gpu.buffers <= w.gpu.buffers, 'live GPU buffers grew');
  // wasm memory only grows (by whole pages, when the allocator runs out): a leak grows it again
  // and again, while a fragmented free list may make it grow once. So: at most one growth after
  // warm-up, of at most 1 MiB (a leak of a generation's pixels, 48 KiB, over 100 soak runs
  // would be several).
  const heaps = samples.slice(warmup - 1).map((s) => s.wasm);
  const growths = heaps.slice(1).filter((h, i) => h > heaps[i]).length;
  assert.ok(growths <= 1 && last.wasm - w.wasm <= 2 ** 20, `the wasm heap grew after warm-up: ${heaps.map(mb).join(' -> ')} MiB`);
  // The page keeps nothing of a finished generation (each hands over ~64 KiB of pixels).
  assert.ok(last.js <= w.js + 2 ** 20, `page JS heap grew: ${w.js} -> ${last.js}`);
  // Nor does the worker's JS side (streams, previews, messages) keep anything per generation.
  assert.ok(w.workerJs > 0 && last.workerJs <= w.workerJs + 2 ** 20, `worker JS heap grew: ${w.workerJs} -> ${last.workerJs}`);
  // Dispatches per generation are deterministic: every generation does the same GPU work.
  assert.ok(per.every((n) => n === per[0]), `dispatches per generation vary: ${per}`);
});

test('a U-Net that overflows gives an error naming it, not a NaN image', async () => {
  const dir = join(WWW, 'models/tiny-sd-nan');
  rmSync(dir, { recursive: true, force: true });
  cpSync(TINY, dir, { recursive: true });
  // conv_out.bias (BF16 in the fixture) set to NaN: every latent after the first step is NaN.
  const unet = join(dir, 'unet/diffusion_pytorch_model.safetensors');
  const bytes = readFileSync(unet);
  const n = Number(bytes.readBigUInt64LE(0));
  const entry = JSON.parse(bytes.subarray(8, 8 + n).toString())['conv_out.bias'];
  bytes.fill(0xff, 8 + n + entry.data_offsets[0], 8 + n + entry.data_offsets[1]); // all-ones: NaN in f32/f16/bf16
  writeFileSync(unet, bytes);
  // With the warm-up: its generation fails too, and the load must not.
  const { page, error } = await loadShared(`${srv.origin}/models/tiny-sd-nan/`, { warmUp: true });
  assert.equal(error, undefined, error);
  const msg = await page.evaluate(() => window.lastGenerator.generate({ prompt: 'x', steps: 2, width: 64, height: 64, seed: 1 })
    .then(() => 'no error', (e) => e.message));
  assert.match(msg, /^the unet produced non-finite values \(NaN or infinity\), so there is no image: it ran in f32/);
});

test('without WebGPU the page says so, and offers the CPU build', async () => {
  const ctx = await launch(false);
  try {
    const page = await openPage(ctx);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'no-webgpu');
    assert.match(await page.textContent('#gpu'), /No WebGPU here .* the WebAssembly CPU build/);
    // Loading falls back to the CPU build (tests/browser/cpu.test.mjs generates with it).
    assert.equal(await page.isDisabled('#load'), false);
    await page.screenshot({ path: join(OUT, 'no-webgpu.png') });
  } finally {
    await ctx.close();
  }
});
