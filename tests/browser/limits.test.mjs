// Lowered WebGPU limits in Chromium (SwiftShader): the splitting of weights, activations and
// decodes that phones' default limits need, with the native CLI's image as the answer. Its own
// file, so the phone-limits tests run alone (it does not shorten the suite: tests/browser/README.md).
//   cd tests/browser && node --test limits.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { INKSTONE_BIN, launchChromium, OUT, ROOT, WWW, writeHookedWorker } from './chromium.mjs';
import { maxAbs, nativeImage, openApp } from './common.mjs';
import { startServer } from './server.mjs';

if (!existsSync(join(WWW, 'pkg/inkstone_core_bg.wasm'))) throw new Error('www/ is not built: run ./build.sh first');

let srv, browser;
const openPage = (context) => openApp(context, srv.origin);

before(async () => {
  mkdirSync(OUT, { recursive: true });
  mkdirSync(join(WWW, 'test'), { recursive: true });
  srv = await startServer(WWW);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await srv?.close();
});

/** A worker whose adapter offers, and whose device is granted, only WebGPU's default buffer
 *  limits (128 MiB per binding, 256 MiB per buffer), as on many phones and Windows adapters;
 *  with the counting hooks (largest buffer created included). */
function writeDefaultLimitsWorker(query = '') {
  return `${srv.origin}${writeHookedWorker(`limits-worker${query ? '-small' : ''}.mjs`, { limits: query })}`;
}

// The same splitting in the browser build at tiny scale: limits reported as 1 MiB per binding
// make tiny-sd's CLIP table (6.3 MB) upload in pieces and its KL decoder run over channel chunks
// at 256×256 (4 MiB activations), and tiny-flow's BERT table split and its tiny decoder decode
// in tiles; the images must still be the native CLI's (which runs everything whole).
for (const model of ['tiny-sd', 'tiny-flow']) {
  test(`${model} with 1 MiB bindings reported: pieces, chunks and tiles give the native image`, async () => {
    // One step (with CFG's batch of 2): the splitting is the same at every step.
    const o = { prompt: 'a red bicycle', steps: 1, guidance: 3, seed: 11, width: 256, height: 256 };
    const native = nativeImage(join(ROOT, 'tests/fixtures', model), ['--prompt', o.prompt, '--steps', '1', '--guidance', '3',
      '--seed', '11', '--width', '256', '--height', '256'], `${model}-small-limits`);
    const workerUrl = writeDefaultLimitsWorker(`?binding=${2 ** 20}&buffer=${2 ** 21}`);
    const page = await openPage(browser);
    const r = await page.evaluate(async ({ url, workerUrl, o }) => {
      const gen = await window.inkstone.load(url, { workerUrl, warmUp: false });
      const out = await gen.generate(o);
      window.smallGen = gen;
      return { pixels: Array.from(out.pixels), binding: gen.info.gpu.maxStorageBufferBindingSize, gpuBytes: gen.info.gpuBytes };
    }, { url: `${srv.origin}/models/${model}/`, workerUrl, o });
    const w = await page.workers().at(-1).evaluate(() => ({ binding: self.largestBinding, buffer: self.largestBuffer, violations: self.limitViolations }));
    await page.evaluate(() => window.smallGen.dispose());
    // A device granted these limits would reject any larger buffer or binding: weights in
    // pieces, activations in blocks, chunks and tiles must all stay under them
    // (tests/browser/default-limits.mjs enforces the grant WebGPU cannot make).
    console.log(`  ${model} under 1 MiB bindings: largest binding ${w.binding} bytes, largest buffer ${w.buffer} bytes`);
    assert.deepEqual(w.violations, [], 'over the limits the device was granted');
    assert.ok(w.binding > 0 && w.binding <= 2 ** 20, `a ${w.binding}-byte binding exceeds the reported 1 MiB limit`);
    assert.ok(w.buffer > 0 && w.buffer <= 2 ** 21, `a ${w.buffer}-byte buffer exceeds the reported 2 MiB limit`);
    assert.equal(r.binding, 2 ** 20, 'the reported limit reached the engine');
    const err = maxAbs(r.pixels, native);
    console.log(`  ${model} under 1 MiB bindings: browser vs native max abs ${err.toExponential(3)} (tolerance 1e-3); GPU weights ${JSON.stringify(r.gpuBytes)}`);
    assert.ok(err <= 1e-3, `browser vs native: ${err}`);
    assert.ok(r.gpuBytes.text_encoder > 2 ** 20 && r.gpuBytes.unet > 0 && r.gpuBytes.vae > 0, JSON.stringify(r.gpuBytes));
  });
}

/** tools/random_model.rs, built by test.sh (`cargo build --example random-model`). */
const RANDOM_MODEL = process.env.INKSTONE_RANDOM_MODEL ?? join(INKSTONE_BIN, '../examples/random-model');

// The family's largest weights on a device with only the default limits: CLIP-L's 49408×768
// token table (152 MB in f32: uploaded and used in two pieces) and 2560→1280 3×3 convs (118 MB
// in f32), few layers, seeded random weights (f16 on disk), at 64×64 so that SwiftShader
// manages; real-size activations (attention over 4096+ tokens, a 768² decode) run in
// scripts/scale-check.sh. The image must equal the native one.
test('default WebGPU limits (128 MiB binding): real-size worst-case weights give the native image', async () => {
  assert.ok(existsSync(RANDOM_MODEL), `tools/random_model.rs not built at ${RANDOM_MODEL} (cargo build --example random-model)`);
  const dir = join(WWW, 'models/worst-case');
  rmSync(dir, { recursive: true, force: true });
  execFileSync(RANDOM_MODEL, ['worst-case', dir, 'f16'], { stdio: 'pipe' });
  const o = { prompt: 'a lighthouse at dusk', steps: 1, guidance: 0, seed: 7, width: 64, height: 64 };
  const native = nativeImage(dir, ['--prompt', o.prompt, '--steps', '1', '--guidance', '0', '--seed', '7',
    '--width', '64', '--height', '64'], 'worst-case');
  writeFileSync(join(WWW, 'test/worst-case-native.f32'), Buffer.from(native.buffer, native.byteOffset, native.byteLength));

  const workerUrl = writeDefaultLimitsWorker();
  const page = await openPage(browser);
  const r = await page.evaluate(async ({ url, workerUrl, o, nativeUrl }) => {
    const gen = await window.inkstone.load(url, { workerUrl, warmUp: false });
    const out = await gen.generate(o);
    const native = new Float32Array(await (await fetch(nativeUrl)).arrayBuffer());
    let err = 0;
    for (let i = 0; i < native.length; i++) err = Math.max(err, Math.abs(out.pixels[i] - native[i]));
    window.worstGen = gen;
    return { err, n: out.pixels.length, gpu: gen.info.gpu, heap: gen.info.wasmHeapBytes, genHeap: out.wasmHeapBytes };
  }, { url: `${srv.origin}/models/worst-case/`, workerUrl, o, nativeUrl: `${srv.origin}/test/worst-case-native.f32` });
  const gpu = await page.workers().at(-1).evaluate(() => ({ largest: self.largestBuffer, binding: self.largestBinding, peak: self.gpuCounts.peakBytes, violations: self.limitViolations }));
  await page.evaluate(() => window.worstGen.dispose());
  const mib = (n) => (n / 2 ** 20).toFixed(1);
  console.log(`  default limits, worst-case weights: browser vs native max abs ${r.err.toExponential(3)} (tolerance 1e-3), `
    + `wasm heap ${mib(r.heap)} MiB after load, ${mib(r.genHeap)} MiB after generation; largest GPU buffer ${mib(gpu.largest)} MiB, `
    + `peak GPU bytes ${mib(gpu.peak)} MiB`);
  assert.equal(r.gpu.maxStorageBufferBindingSize, 128 * 2 ** 20, 'the device was granted only the default binding limit');
  assert.equal(r.gpu.maxBufferSize, 256 * 2 ** 20);
  assert.equal(r.n, native.length);
  assert.ok(r.err <= 1e-3, `browser vs native: ${r.err}`);
  assert.deepEqual(gpu.violations, [], 'over the limits the device was granted');
  assert.ok(gpu.largest <= 128 * 2 ** 20, `a ${gpu.largest}-byte buffer cannot be bound on this device`);
  assert.ok(gpu.binding > 64 * 2 ** 20 && gpu.binding <= 128 * 2 ** 20, `largest binding ${gpu.binding} bytes (limit 128 MiB)`);
  // Weights are streamed tensor by tensor: the heap holds the largest tensor, not the model.
  assert.ok(r.genHeap < 300 * 2 ** 20, `wasm heap ${r.genHeap}`);
});
