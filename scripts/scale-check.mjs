// Real-size scale check (not CI; minutes per model on SwiftShader): for each named preset,
// builds a real-shaped model with seeded random weights (tools/random_model.rs), generates one
// image natively and in headless Chromium under WebGPU's default limits (128 MiB binding,
// 256 MiB buffer; tests/browser/default-limits.mjs), and prints load and generation times, the
// peak wasm heap, GPU weight bytes per component, peak GPU buffer bytes, the largest buffer,
// dispatch counts per phase, and browser vs native max abs; fails (exit 1) unless the image is
// the native one (≤ 1e-3) and no binding exceeds the default limit.
//   scripts/scale-check.sh [preset ...]   (presets: sdxs worst-case bk-sdm-tiny; default sdxs)
// Env: STEPS (default 2), SIZE (default 512), DTYPE of the files written (default f16),
//      INKSTONE_BIN, INKSTONE_RANDOM_MODEL, CHROMIUM.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const WWW = join(ROOT, 'www');
const require = createRequire(join(ROOT, 'tests/browser/package.json'));
const { chromium } = require('playwright-core');
const { startServer } = await import(join(ROOT, 'tests/browser/server.mjs'));

const TARGET = process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, '.cache/inkstone-target');
const BIN = process.env.INKSTONE_BIN ?? join(TARGET, 'debug/inkstone');
const MAKER = process.env.INKSTONE_RANDOM_MODEL ?? join(TARGET, 'debug/examples/random-model');
const STEPS = Number(process.env.STEPS ?? 2);
const SIZE = Number(process.env.SIZE ?? 512);
const presets = process.argv.slice(2).length ? process.argv.slice(2) : ['sdxs'];
const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;

// The worker: default limits, the suite's GPU counters (tests/browser/gpu-hooks.mjs) with a
// snapshot at every step and result it posts (so dispatches fall into phases: load, text encoder
// + step 1, each further step, decode).
const { writeHookedWorker } = await import(join(ROOT, 'tests/browser/chromium.mjs'));
const WORKER = writeHookedWorker('scale-worker.mjs', { limits: '' });

const srv = await startServer(WWW);
const userDir = mkdtempSync(join(tmpdir(), 'inkstone-scale-'));
const browser = await chromium.launchPersistentContext(userDir, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true,
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--no-first-run'],
});
try {
  for (const name of presets) {
    const dir = join(WWW, 'models', `scale-${name}`);
    rmSync(dir, { recursive: true, force: true });
    execFileSync(MAKER, [name, dir, process.env.DTYPE ?? 'f16'], { stdio: 'inherit' });
    const o = { prompt: 'a lighthouse on a cliff at dusk', steps: STEPS, guidance: 0, seed: 7, width: SIZE, height: SIZE };
    const outTensor = join(tmpdir(), `scale-${name}.safetensors`);
    const t0 = Date.now();
    const log = execFileSync(BIN, ['generate', '--model', dir, '--prompt', o.prompt, '--steps', String(STEPS), '--guidance', '0',
      '--seed', '7', '--width', String(SIZE), '--height', String(SIZE), '--out-tensor', outTensor], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const nativeMs = Date.now() - t0;
    const b = readFileSync(outTensor);
    const n = Number(b.readBigUInt64LE(0));
    const header = JSON.parse(b.subarray(8, 8 + n).toString());
    const [s, e] = header.image.data_offsets;
    const native = new Float32Array(b.buffer.slice(b.byteOffset + 8 + n + s, b.byteOffset + 8 + n + e));
    writeFileSync(join(WWW, 'test/scale-native.f32'), Buffer.from(native.buffer));

    const page = browser.pages()[0] ?? (await browser.newPage());
    page.on('crash', () => console.error('the page crashed (out of memory?)'));
    page.on('console', (m) => console.error(`[page ${m.type()}] ${m.text()}`));
    await page.goto(`${srv.origin}/index.html`);
    await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 120_000 });
    const r = await page.evaluate(async ({ url, workerUrl, o }) => {
      const t0 = performance.now();
      const gen = await window.inkstone.load(url, { workerUrl });
      const loadMs = performance.now() - t0;
      console.log(`loaded in ${(loadMs / 1000).toFixed(1)} s`);
      const out = await gen.generate({ ...o, onStep: (i, n) => console.log(`step ${i}/${n} at ${((performance.now() - t0) / 1000).toFixed(1)} s`) });
      const second = await gen.generate({ ...o, seed: 8 });
      const native = new Float32Array(await (await fetch('/test/scale-native.f32')).arrayBuffer());
      let err = 0;
      for (let i = 0; i < native.length; i++) err = Math.max(err, Math.abs(out.pixels[i] - native[i]));
      window.scaleGen = gen;
      return { loadMs, genMs: out.ms, secondMs: second.ms, err, info: gen.info, heap: second.wasmHeapBytes };
    }, { url: `${srv.origin}/models/scale-${name}/`, workerUrl: `${srv.origin}${WORKER}`, o });
    const w = await page.workers().at(-1).evaluate(() => ({
      marks: self.gpuSnaps.filter((m) => m.what !== 'warm-up'), largest: self.largestBuffer, binding: self.largestBinding, counts: self.gpuCounts,
      violations: self.limitViolations,
    }));
    await page.evaluate(() => window.scaleGen.dispose());
    // marks: [load done, step 1..STEPS, generation done, (second generation) step 1..STEPS, done]
    const [loaded, ...first] = w.marks;
    const steps = first.slice(0, STEPS);
    const done = first[STEPS];
    const d = (a, b) => b.dispatches - a.dispatches;
    const perStep = steps.slice(1).map((m, i) => d(steps[i], m));
    console.log(`\n== ${name} (${SIZE}×${SIZE}, ${STEPS} steps, guidance 0), files ${process.env.DTYPE ?? 'f16'}, browser f32 under default limits`);
    console.log(`native CLI: ${secs(nativeMs)} in all (${log.trim().split('\n').filter((l) => /loaded|generated/.test(l)).join('; ')})`);
    console.log(`browser: load ${secs(r.loadMs)}, first image ${secs(r.genMs)}, second ${secs(r.secondMs)}; browser vs native max abs ${r.err.toExponential(2)}`);
    console.log(`device limits: binding ${mib(r.info.gpu.maxStorageBufferBindingSize)}, buffer ${mib(r.info.gpu.maxBufferSize)}; largest buffer created ${mib(w.largest)}, largest binding ${mib(w.binding)}`);
    console.log(`wasm heap: ${mib(r.info.wasmHeapBytes)} after load, ${mib(r.heap)} peak after two images`);
    console.log(`GPU weights: ${Object.entries(r.info.gpuBytes).map(([c, n]) => `${c} ${mib(n)}`).join(', ')}; peak GPU buffer bytes ${mib(w.counts.peakBytes)}`);
    console.log(`dispatches: load ${loaded.dispatches}, text encoder + step 1 (+ preview) ${d(loaded, steps[0])}, `
      + `each further step (+ preview) ${perStep.join(', ') || '-'}, final decode ${d(steps.at(-1), done)}; submits per image ${done.submits - loaded.submits}`);
    // The check itself: a real-size model under a phone's limits gives the native image.
    const fail = [];
    if (!(r.err <= 1e-3)) fail.push(`browser vs native max abs ${r.err} > 1e-3`);
    if (r.info.gpu.maxStorageBufferBindingSize !== 128 * 2 ** 20) fail.push(`binding limit ${r.info.gpu.maxStorageBufferBindingSize}, not the default 128 MiB`);
    if (w.binding > 128 * 2 ** 20) fail.push(`a ${w.binding}-byte binding exceeds 128 MiB`);
    if (w.largest > 256 * 2 ** 20) fail.push(`a ${w.largest}-byte buffer exceeds 256 MiB`);
    if (w.violations.length) fail.push(`over the granted limits: ${w.violations.join(', ')}`);
    if (steps.length !== STEPS || !done) fail.push(`${steps.length} steps reported, expected ${STEPS}`);
    if (fail.length) throw new Error(`scale check ${name} failed: ${fail.join('; ')}`);
    console.log(`${name}: OK`);
  }
} finally {
  await browser.close();
  srv.close?.();
  rmSync(userDir, { recursive: true, force: true });
}
