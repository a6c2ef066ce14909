// The WebAssembly CPU build (pkg/inkstone_cpu_bg.wasm) where WebGPU is missing: Debian's Firefox
// ESR (no WebGPU on Linux) driven by puppeteer-core over WebDriver BiDi, and Chromium (playwright-
// core) with WebGPU disabled or `backend: 'cpu'`. Against the built www/ (./build.sh) and the
// native CLI ($INKSTONE_BIN), on the tiny fixture at 64x64.
//   cd tests/browser && npm ci && node --test --test-concurrency=1 cpu.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { INKSTONE_BIN, launchChromium, OUT, ROOT, WWW } from './chromium.mjs';
import { maxAbs } from './common.mjs';
import { startServer } from './server.mjs';
import { readSafetensors } from './safetensors.mjs';

const FIREFOX = process.env.FIREFOX ?? '/usr/bin/firefox-esr';
/** A call that has not settled by then is a hang (the bug these tests guard against), not slowness:
 *  a CPU-build load + generation of the tiny model takes seconds. */
const HANG = Number(process.env.INKSTONE_HANG_MS ?? 120_000);

if (!existsSync(join(WWW, 'pkg/inkstone_cpu_bg.wasm'))) throw new Error('www/ has no CPU build: run ./build.sh first');

let srv, firefox;
const cpuWasm = (r) => /inkstone_cpu/.test(r.path);
const gpuWasm = (r) => /inkstone_core/.test(r.path);


// The committed diffusers reference (tiny-sd, 4 Euler steps, CFG, 64x64, its own latents) and
// the native CLI's image on the same inputs.
const REF_PATH = join(ROOT, 'tests/fixtures/ref/pipeline_sd.safetensors');
const REF = readSafetensors(REF_PATH);
const C = REF.note;
let native;
function nativeImage() {
  if (native) return native;
  assert.ok(existsSync(INKSTONE_BIN), `native CLI not built at ${INKSTONE_BIN} (run cargo build first)`);
  mkdirSync(OUT, { recursive: true });
  const out = join(OUT, 'native-cpu-pipeline_sd.safetensors');
  execFileSync(INKSTONE_BIN, ['generate', '--model', join(ROOT, 'tests/fixtures/tiny-sd'), '--prompt', C.prompt,
    '--negative-prompt', C.negative_prompt, '--steps', String(C.steps), '--guidance', String(C.guidance),
    '--width', String(C.width), '--height', String(C.height), '--latents', REF_PATH, '--out-tensor', out], { stdio: 'pipe' });
  return (native = readSafetensors(out).f32('image'));
}

/** In the page: `load(url, opts)` from module `from`, then the reference generation. Resolves to
 *  `{ info, pixels, steps }` or `{ error, phase }`; never left open (see HANG). */
const loadAndGenerate = (page, { from, url, opts = {}, generate = true }) => page.evaluate(async ({ from, url, opts, generate, c, latents }) => {
  const { load } = await import(from);
  let phase = 'load';
  try {
    const g = await load(url, opts);
    if (!generate) {
      g.dispose();
      return { info: g.info };
    }
    phase = 'generate';
    const steps = [];
    const r = await g.generate({ prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps, guidance: c.guidance,
      width: c.width, height: c.height, seed: 0, latents: new Float32Array(latents), onStep: (s, t) => steps.push([s, t]) });
    g.dispose();
    return { info: g.info, pixels: Array.from(r.pixels), steps };
  } catch (e) {
    return { error: `${e.name}: ${e.message}`, phase };
  }
}, { from, url, opts, generate, c: C, latents: generate ? Array.from(REF.f32('latents')) : [] });

/** `promise`, or a rejection naming `what` once HANG has passed. */
function noHang(promise, what) {
  let timer;
  const hang = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: still pending after ${HANG / 1000} s (a hang)`)), HANG); });
  return Promise.race([promise, hang]).finally(() => clearTimeout(timer));
}

/** Checks one CPU-build generation against the native CLI (1e-4) and diffusers (1e-3). */
function checkImage(r, label) {
  assert.equal(r.error, undefined, r.error);
  assert.equal(r.info.backend, 'cpu', JSON.stringify(r.info.gpu));
  assert.equal(r.info.threads, 1);
  assert.equal(r.info.gpu.simd128, true, 'built with SIMD128');
  assert.deepEqual(r.steps, Array.from({ length: C.steps }, (_, i) => [i + 1, C.steps]));
  const vsNative = maxAbs(r.pixels, nativeImage());
  const vsDiffusers = maxAbs(r.pixels, REF.f32('image'));
  const weights = Object.values(r.info.gpuBytes).reduce((a, b) => a + b, 0);
  console.log(`  ${label}: CPU build vs native CLI max abs ${vsNative.toExponential(3)} (tolerance 1e-4), vs diffusers ${vsDiffusers.toExponential(3)} (1e-3); `
    + `wasm memory ${(r.info.wasmHeapBytes / 2 ** 20).toFixed(1)} MiB after the load, f32 weights ${(weights / 2 ** 20).toFixed(1)} MiB`);
  assert.ok(vsNative <= 1e-4, `CPU build vs native: ${vsNative}`);
  assert.ok(vsDiffusers <= 1e-3, `CPU build vs diffusers: ${vsDiffusers}`);
}

async function firefoxPage() {
  const page = await firefox.newPage();
  page.on('console', (m) => { if (['error', 'warn', 'warning'].includes(m.type())) console.log(`  [firefox ${m.type()}] ${m.text()}`); });
  return page;
}

async function chromiumContext(webgpu) {
  const ctx = await launchChromium({ webgpu });
  return { ctx, close: () => ctx.close() };
}

before(async () => {
  srv = await startServer(WWW);
  firefox = await puppeteer.launch({ browser: 'firefox', executablePath: FIREFOX, headless: true });
});

after(async () => {
  await firefox?.close();
  await srv?.close();
});

const MODEL = () => `${srv.origin}/models/tiny-sd/`;
const PKG = () => `${srv.origin}/pkg/index.js`;

test('Firefox ESR has no WebGPU: the premise of this file', async () => {
  const page = await firefoxPage();
  await page.goto(`${srv.origin}/pkg/package.json`);
  assert.equal(await page.evaluate(() => typeof navigator.gpu), 'undefined');
  await page.close();
});

test("Firefox: backend 'webgpu' rejects at once, naming what is missing; no wasm is fetched", async () => {
  const page = await firefoxPage();
  await page.goto(`${srv.origin}/index.html`);
  const since = srv.log.length;
  const r = await noHang(loadAndGenerate(page, { from: PKG(), url: MODEL(), opts: { backend: 'webgpu' }, generate: false }), "load({ backend: 'webgpu' })");
  assert.match(r.error ?? '', /backend 'webgpu' cannot run here: this browser has no WebGPU \(navigator\.gpu is missing\)/);
  assert.deepEqual(srv.log.slice(since).filter((e) => cpuWasm(e) || gpuWasm(e) || e.path.startsWith('models/')), []);
  // gpuInfo() (the page's WebGPU probe) rejects too, with the same reason.
  const info = await noHang(page.evaluate(async (from) => (await import(from)).gpuInfo().then(() => 'resolved', (e) => e.message), PKG()), 'gpuInfo()');
  assert.match(info, /no WebGPU \(navigator\.gpu is missing\)/);
  await page.close();
});

test('Firefox: a worker that fails to start or throws at import rejects the pending load()', async () => {
  mkdirSync(join(WWW, 'test'), { recursive: true });
  // An import that throws while the worker's modules are evaluated (before worker.js runs).
  writeFileSync(join(WWW, 'test/throws-at-import.mjs'), "throw new Error('broken at import');\n");
  writeFileSync(join(WWW, 'test/throwing-worker.mjs'), "import './throws-at-import.mjs';\nimport '../pkg/worker.js';\n");
  writeFileSync(join(WWW, 'test/bad-import-worker.mjs'), "import '../pkg/no-such-module.js';\n");
  const page = await firefoxPage();
  await page.goto(`${srv.origin}/index.html`);
  for (const [worker, expect] of [
    ['test/no-such-worker.mjs', /the Inkstone worker could not start: .*no-such-worker\.mjs/],
    ['test/bad-import-worker.mjs', /the Inkstone worker could not start: .*bad-import-worker\.mjs or one of its imports/],
    ['test/throwing-worker.mjs', /the Inkstone worker could not start: .*throwing-worker\.mjs or one of its imports .*broken at import/],
  ]) {
    const r = await noHang(loadAndGenerate(page, { from: PKG(), url: MODEL(), opts: { workerUrl: `${srv.origin}/${worker}` }, generate: false }), worker);
    assert.match(r.error ?? '', expect, worker);
  }
  await page.close();
});

test("Firefox: without a deployed CPU build, backend 'auto' rejects naming the missing file", async () => {
  srv.faults.missing.add('pkg/inkstone_cpu.js');
  try {
    const page = await firefoxPage();
    await page.goto(`${srv.origin}/index.html`);
    const r = await noHang(loadAndGenerate(page, { from: PKG(), url: MODEL(), generate: false }), 'load() without the CPU build');
    assert.match(r.error ?? '', /could not load the CPU build \(http:\/\/.*\/pkg\/inkstone_cpu\.js\)/);
    await page.close();
  } finally {
    srv.faults.missing.delete('pkg/inkstone_cpu.js');
  }
});

test('Firefox: a model too big for wasm32 memory is refused before its download, with its size and the limit', async () => {
  const unet = 'models/tiny-sd/unet/diffusion_pytorch_model.safetensors';
  srv.faults.linkedSize.set(unet, 5 * 2 ** 30);
  try {
    const page = await firefoxPage();
    await page.goto(`${srv.origin}/index.html`);
    const since = srv.log.length;
    const r = await noHang(loadAndGenerate(page, { from: PKG(), url: MODEL(), generate: false }), 'load() of a 5 GiB model');
    assert.match(r.error ?? '', /this model's weights take at least 51\d\d MiB \(their files' size\), more than the 4096 MiB the WebAssembly CPU build can address/);
    const gets = srv.log.slice(since).filter((e) => e.method === 'GET' && e.path.endsWith('.safetensors'));
    assert.deepEqual(gets, [], 'no weight file was downloaded');
    await page.close();
  } finally {
    srv.faults.linkedSize.delete(unet);
  }
});

test('Firefox: the page falls back to the CPU build and gives the native image', async () => {
  const page = await firefoxPage();
  await page.goto(`${srv.origin}/index.html`);
  await page.waitForFunction(() => ['ready', 'no-webgpu'].includes(document.body.dataset.state), { timeout: 60_000 });
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'no-webgpu');
  assert.match(await page.$eval('#gpu', (e) => e.textContent), /No WebGPU here .* WebAssembly CPU build/);
  // The page's own Load button, on the bundled tiny model (the first preset). (What it fetches
  // is checked on the plain page below: here the service worker and the earlier tests' loads
  // in this profile may serve the CPU build from a cache.)
  await page.$eval('#preset', (e) => { e.value = '0'; e.dispatchEvent(new Event('change')); });
  await page.click('#load');
  await page.waitForFunction(() => ['loaded', 'load-error'].includes(document.body.dataset.state), { timeout: HANG });
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'loaded', await page.$eval('#load-status', (e) => e.textContent));
  assert.match(await page.$eval('#backend-status', (e) => e.textContent), /Running on the CPU \(WebAssembly SIMD128, 1 thread\)/);
  // Generate from the page (the step estimate), then the reference inputs on its generator.
  await page.$eval('#steps', (e) => { e.value = '2'; });
  await page.$eval('#size', (e) => { e.value = '64'; });
  await page.click('#generate');
  await page.waitForFunction(() => ['generated', 'generate-error'].includes(document.body.dataset.state), { timeout: HANG });
  assert.match(await page.$eval('#gen-status', (e) => e.textContent), /^Done in [\d.]+ s/);
  const r = await noHang(page.evaluate(async ({ c, latents }) => {
    const g = window.inkstone.generator;
    const steps = [];
    const out = await g.generate({ prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps, guidance: c.guidance,
      width: c.width, height: c.height, seed: 0, latents: new Float32Array(latents), onStep: (s, t) => steps.push([s, t]) });
    return { info: g.info, pixels: Array.from(out.pixels), steps };
  }, { c: C, latents: Array.from(REF.f32('latents')) }), 'generate() on the page');
  checkImage(r, 'Firefox page');
  await page.screenshot({ path: join(OUT, 'firefox-cpu.png') });
  await page.close();
});

test('Firefox: the npm package (npm pack, plain page) loads and generates on the CPU build', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'inkstone-pack-'));
  const app = join(dir, 'app');
  let appSrv;
  try {
    execFileSync('npm', ['pack', join(ROOT, 'pkg'), '--pack-destination', dir], { stdio: 'pipe' });
    const tgz = readdirSync(dir).find((f) => /^inkstone-.*\.tgz$/.test(f));
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), '{"name":"plain-page","private":true}');
    execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', join(dir, tgz)], { cwd: app, stdio: 'pipe' });
    const files = readdirSync(join(app, 'node_modules/inkstone'));
    for (const f of ['inkstone_cpu.js', 'inkstone_cpu_bg.wasm', 'inkstone_core_bg.wasm']) assert.ok(files.includes(f), `${f} in ${files}`);
    cpSync(join(ROOT, 'tests/fixtures/tiny-sd'), join(app, 'tiny-sd'), { recursive: true });
    writeFileSync(join(app, 'index.html'), '<!doctype html><title>plain</title>');
    appSrv = await startServer(app);
    const page = await firefoxPage();
    await page.goto(`${appSrv.origin}/index.html`);
    const r = await noHang(loadAndGenerate(page, { from: `${appSrv.origin}/node_modules/inkstone/index.js`, url: `${appSrv.origin}/tiny-sd/` }), 'the package in Firefox');
    checkImage(r, 'Firefox npm package');
    assert.ok(appSrv.log.some((e) => e.path === 'node_modules/inkstone/inkstone_cpu_bg.wasm'), 'the CPU wasm was fetched');
    assert.deepEqual(appSrv.log.filter(gpuWasm).map((e) => e.path), [], 'a CPU session fetches no WebGPU wasm');
    await page.close();
  } finally {
    await appSrv?.close();
    rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
  }
});

test('Firefox: the CPU build keeps the cache, previews and cancel', async () => {
  const page = await firefoxPage();
  await page.goto(`${srv.origin}/index.html`);
  const url = `${srv.origin}/models/tiny-flow/`;
  const r = await noHang(page.evaluate(async ({ from, url }) => {
    const { load } = await import(from);
    const first = await load(url);
    first.dispose();
    const g = await load(url); // from IndexedDB this time
    const previews = [];
    await g.generate({ prompt: '山', steps: 3, width: 64, height: 64, seed: 1, onStep: (s, t, p) => previews.push(p && [p.width, p.rgba.length]) });
    const ac = new AbortController();
    let steps = 0;
    const cancelled = await g.generate({ prompt: '山', steps: 3, width: 64, height: 64, seed: 1, signal: ac.signal,
      onStep: () => { steps += 1; ac.abort(); } }).then(() => 'resolved', (e) => e.name);
    g.dispose();
    return { backend: g.info.backend, cached: g.info.cached, previews, cancelled, steps };
  }, { from: PKG(), url }), 'cache, previews, cancel');
  assert.equal(r.backend, 'cpu');
  assert.equal(r.cached, true, 'the second load reads the cache');
  // tiny-flow's tiny decoder gives a preview after every step.
  assert.deepEqual(r.previews, [[64, 64 * 64 * 4], [64, 64 * 64 * 4], [64, 64 * 64 * 4]]);
  assert.equal(r.cancelled, 'AbortError');
  assert.equal(r.steps, 1, 'no step after the cancel');
  await page.close();
});

test("Chromium with WebGPU: 'auto' picks WebGPU and fetches no CPU wasm; backend 'cpu' gives the native image", async () => {
  const { ctx, close } = await chromiumContext(true);
  try {
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    const since = srv.log.length;
    await page.goto(`${srv.origin}/index.html`);
    await page.waitForFunction(() => ['ready', 'no-webgpu'].includes(document.body.dataset.state), null, { timeout: 60_000 });
    const gpu = await noHang(loadAndGenerate(page, { from: PKG(), url: MODEL(), opts: { warmUp: false }, generate: false }), 'WebGPU load');
    assert.equal(gpu.error, undefined, gpu.error);
    assert.equal(gpu.info.backend, 'webgpu');
    assert.equal(gpu.info.threads, null);
    const session = srv.log.slice(since);
    assert.ok(session.some((e) => e.path === 'pkg/inkstone_core_bg.wasm'), 'the WebGPU wasm was fetched');
    assert.deepEqual(session.filter(cpuWasm).map((e) => e.path), [], 'a WebGPU session (page, service worker, load) fetches no CPU wasm');

    const r = await noHang(loadAndGenerate(page, { from: PKG(), url: MODEL(), opts: { backend: 'cpu' } }), "Chromium backend 'cpu'");
    checkImage(r, "Chromium backend 'cpu'");
  } finally {
    await close();
  }
});

test("Chromium without WebGPU: 'auto' falls back to the CPU build", async () => {
  const { ctx, close } = await chromiumContext(false);
  try {
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    await page.goto(`${srv.origin}/index.html`);
    await page.waitForFunction(() => document.body.dataset.state === 'no-webgpu', null, { timeout: 60_000 });
    const r = await noHang(loadAndGenerate(page, { from: PKG(), url: MODEL() }), 'Chromium auto without WebGPU');
    checkImage(r, 'Chromium without WebGPU');
    assert.match(r.info.gpu.fallback, /no GPU adapter was granted/);
  } finally {
    await close();
  }
});
