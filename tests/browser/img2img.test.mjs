// Image-to-image in real Chromium (SwiftShader WebGPU): generate({ image, strength }) against the
// native CLI on the same PNG and noise (and diffusers' own image, tests/fixtures/ref/img2img_*),
// and the page's own img2img from a picked file and from a gallery image.
//   cd tests/browser && node --test --test-concurrency=1 img2img.test.mjs   (after ./build.sh and cargo build)
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32, deflateSync } from 'node:zlib';
import { INKSTONE_BIN, launchChromium, OUT, ROOT, WWW } from './chromium.mjs';
import { maxAbs, openApp } from './common.mjs';
import { startServer } from './server.mjs';
import { readSafetensors } from './safetensors.mjs';

if (!existsSync(join(WWW, 'pkg/inkstone_core_bg.wasm'))) throw new Error('www/ is not built: run ./build.sh first');

let srv, context;

/** Fixture folders the bundle does not ship, served from www/models/ with their links resolved. */
const EXTRA_MODELS = ['tiny-flow-img2img'];

before(async () => {
  mkdirSync(OUT, { recursive: true });
  for (const m of EXTRA_MODELS) {
    rmSync(join(WWW, 'models', m), { recursive: true, force: true });
    cpSync(join(ROOT, 'tests/fixtures', m), join(WWW, 'models', m), { recursive: true, dereference: true });
  }
  srv = await startServer(WWW);
  context = await launchChromium();
});

after(async () => {
  await context?.close();
  await srv?.close();
  for (const m of EXTRA_MODELS) rmSync(join(WWW, 'models', m), { recursive: true, force: true });
});

/** `latents` for the CLI's --latents: one F32 tensor. */
function writeLatents(path, shape, data) {
  let json = JSON.stringify({ latents: { dtype: 'F32', shape, data_offsets: [0, data.byteLength] } });
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, Buffer.from(json), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

/** An 8-bit RGB PNG of planar [3, H, W] bytes (filter 0 rows, one IDAT). */
function encodePng(planar, w, h) {
  const rows = Buffer.alloc(h * (1 + 3 * w));
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) rows[y * (1 + 3 * w) + 1 + 3 * x + c] = planar[c * w * h + y * w + x];
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit, RGB, deflate, no filter method, no interlace
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(rows)), chunk('IEND', Buffer.alloc(0))]);
}

const openPage = () => openApp(context, srv.origin);

/** load() in the page without the warm-up; with `reuse`, into the worker of the page's last
 *  generator (its compiled pipelines kept: load({ reuse })). */
const loadIn = (page, url, reuse = false) => page.evaluate(async ({ url, reuse }) => {
  try {
    const into = reuse && window.lastGenerator ? { reuse: window.lastGenerator } : {};
    const g = await window.inkstone.load(url, { warmUp: false, ...into });
    window.lastGenerator?.dispose();
    window.lastGenerator = g;
    return { info: window.lastGenerator.info };
  } catch (e) {
    return { error: e.message };
  }
}, { url, reuse });

/** The page of the describe below, kept for the flow case (which loads into its worker). */
let sdPage = null;

/** One reference case: its PNG and noise files for the CLI, and the options. */
function caseFiles(name) {
  const ref = readSafetensors(join(ROOT, `tests/fixtures/ref/${name}.safetensors`));
  const c = ref.note;
  const [w, h] = c.image;
  const png = encodePng(ref.raw('init_image'), w, h);
  const pngPath = join(OUT, `${name}.png`);
  writeFileSync(pngPath, png);
  const noise = ref.f32('noise');
  const noisePath = join(OUT, `${name}-noise.safetensors`);
  writeLatents(noisePath, ref.header.noise.shape, noise);
  return { ref, c, png, pngPath, noise, noisePath };
}

/** Reference case `name` against the native CLI and diffusers, on `page`'s `window.lastGenerator`
 *  (`model`, the case's own, loaded there). */
async function img2imgParity(page, name, model) {
  const { ref, c, png, pngPath, noise, noisePath } = caseFiles(name);
  assert.equal(c.model, model, `${name} runs on ${c.model}`);
  assert.ok(existsSync(INKSTONE_BIN), `native CLI not built at ${INKSTONE_BIN}`);
  const outTensor = join(OUT, `native-${name}.safetensors`);
  const args = ['generate', '--model', join(ROOT, 'tests/fixtures', c.model), '--prompt', c.prompt,
    '--negative-prompt', c.negative_prompt, '--steps', String(c.steps), '--guidance', String(c.guidance),
    '--init-image', pngPath, '--strength', String(c.strength), '--latents', noisePath, '--out-tensor', outTensor];
  execFileSync(INKSTONE_BIN, args, { stdio: 'pipe' });
  const native = readSafetensors(outTensor).f32('image');

  const out = await page.evaluate(async ({ c, png, noise }) => {
    const image = new Blob([new Uint8Array(png)], { type: 'image/png' });
    const r = await window.lastGenerator.generate({ prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps,
      guidance: c.guidance, image, strength: c.strength, latents: new Float32Array(noise), seed: 0 });
    return { pixels: Array.from(r.pixels), width: r.width, height: r.height };
  }, { c, png: Array.from(png), noise: Array.from(noise) });
  assert.deepEqual([out.width, out.height], [c.width, c.height]);
  const vsNative = maxAbs(out.pixels, native);
  const vsDiffusers = maxAbs(out.pixels, ref.f32('image'));
  console.log(`  ${name}: browser vs native max abs ${vsNative.toExponential(3)}, vs diffusers ${vsDiffusers.toExponential(3)} (tolerance 1e-3)`);
  assert.ok(vsNative <= 1e-3, `browser vs native: ${vsNative}`);
  assert.ok(vsDiffusers <= 1e-3, `browser vs diffusers: ${vsDiffusers}`);
}

// tiny-sd loaded once (one worker, one compilation of its pipelines) for the tests that only
// need it loaded; the lazy encoder upload comes first, while no image-to-image call has run.
describe('tiny-sd, loaded once', () => {
  let page, loaded;
  before(async () => {
    page = sdPage = await openPage();
    loaded = await loadIn(page, `${srv.origin}/models/tiny-sd/`);
  });

  test('the vae encoder reaches the GPU only at the first image-to-image call (gen.info.gpuBytes)', async () => {
    // tiny-sd's vae file: what its encoder (`encoder.*`, `quant_conv.*`) and the rest take in f32
    // (a force_upcast AutoencoderKL runs in f32).
    const vae = readSafetensors(join(ROOT, 'tests/fixtures/tiny-sd/vae/diffusion_pytorch_model.safetensors'));
    const bytes = { encoder: 0, rest: 0, encoderTensors: 0 };
    for (const [key, t] of Object.entries(vae.header)) {
      if (key === '__metadata__') continue;
      const n = t.shape.reduce((a, b) => a * b, 1) * 4;
      if (key.startsWith('encoder.') || key.startsWith('quant_conv.')) bytes.encoder += n, bytes.encoderTensors++;
      else bytes.rest += n;
    }
    // The shared generator before any image-to-image call (this test runs first in the group).
    const { info, error } = loaded;
    assert.equal(error, undefined, error);
    assert.equal(info.gpuBytes.vae, bytes.rest, 'only the decoder side of the vae is on the GPU');
    assert.equal(info.gpuBytes['vae.encoder'], undefined);
    assert.deepEqual(info.deferred, { 'vae.encoder': bytes.encoderTensors });
    assert.equal(info.components.vae, Object.keys(vae.header).filter((k) => k !== '__metadata__').length, 'every vae tensor arrived');
    const after = await page.evaluate(async () => {
      const g = window.lastGenerator;
      await g.generate({ prompt: 'a red house', steps: 1, width: 32, height: 32 });
      const textOnly = structuredClone(g.info.gpuBytes);
      const bad = await g.generate({ prompt: 'x', steps: 1, width: 32, height: 32, image: new ImageData(32, 32), strength: 0.1 })
        .then(() => 'resolved', (e) => e.message);
      const afterBad = structuredClone(g.info.gpuBytes);
      await g.generate({ prompt: 'a red house', steps: 2, width: 32, height: 32, image: new ImageData(32, 32), strength: 0.5 });
      return { textOnly, bad, afterBad, img2img: g.info.gpuBytes, deferred: g.info.deferred };
    });
    assert.equal(after.textOnly['vae.encoder'], undefined, 'text-to-image uploads no encoder weights');
    assert.match(after.bad, /strength 0\.1/);
    assert.equal(after.afterBad['vae.encoder'], undefined, 'a refused call uploads nothing');
    assert.equal(after.img2img['vae.encoder'], bytes.encoder, 'the encoder is resident after img2img');
    assert.equal(after.img2img.vae, bytes.rest);
    assert.deepEqual(after.deferred, {});
  });

  test('img2img_sd_euler: generate({ image: Blob, strength }) matches the native CLI and diffusers', async () => {
    assert.equal(loaded.error, undefined, loaded.error);
    await img2imgParity(page, 'img2img_sd_euler', 'tiny-sd');
  });

  test('generate(): bad image and strength options reject naming them', async () => {
    assert.equal(loaded.error, undefined, loaded.error);
    const errors = await page.evaluate(async () => {
      const g = window.lastGenerator;
      const attempt = (o) => g.generate({ prompt: 'x', steps: 2, width: 32, height: 32, ...o }).then(() => 'resolved', (e) => e.message);
      return {
        strength: await attempt({ image: new ImageData(32, 32), strength: 1.5 }),
        noImage: await attempt({ strength: 0.5 }),
        tooFew: await attempt({ image: new ImageData(32, 32), strength: 0.2 }),
        text: await attempt({ image: new Blob(['not a picture'], { type: 'text/plain' }) }),
        kind: await attempt({ image: 42 }),
        float: await attempt({ image: new Float32Array(5) }),
      };
    });
    assert.match(errors.strength, /strength 1\.5 is outside \(0, 1\]/);
    assert.match(errors.noImage, /`strength` needs an `image`/);
    assert.match(errors.tooFew, /steps 2 × strength 0\.2/);
    assert.match(errors.text, /`image`: the Blob \(text\/plain, 13 bytes\) is not an image/);
    assert.match(errors.kind, /`image` must be an ImageData/);
    assert.match(errors.float, /`image`: init image: 5 values, expected 3 x 32 x 32/);
  });
});

test('img2img_flow: generate({ image: Blob, strength }) matches the native CLI and diffusers', async () => {
  // Into tiny-sd's worker: tiny-sd's pipelines are not compiled again.
  const page = sdPage ?? await openPage();
  const { error } = await loadIn(page, `${srv.origin}/models/tiny-flow-img2img/`, true);
  assert.equal(error, undefined, error);
  await img2imgParity(page, 'img2img_flow', 'tiny-flow-img2img');
});

test('the page: img2img from a picked file, then from a gallery image', async () => {
  const { png } = caseFiles('img2img_sd_euler');
  const page = await openPage();
  await page.selectOption('#preset', { index: 0 }); // the bundled tiny-sd
  await page.click('#load');
  await page.waitForFunction(() => ['loaded', 'load-error'].includes(document.body.dataset.state), null, { timeout: 300_000 });
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'loaded', await page.textContent('#load-status'));
  await page.fill('#steps', '2');
  await page.selectOption('#size', '64');
  await page.setInputFiles('#init-file', { name: 'init.png', mimeType: 'image/png', buffer: png });
  await page.waitForFunction(() => document.body.dataset.initImage === 'set');
  await page.$eval('#strength', (el) => { el.value = '0.5'; el.dispatchEvent(new Event('input')); });
  const run = async () => {
    await page.click('#generate');
    await page.waitForFunction(() => ['generated', 'generate-error'].includes(document.body.dataset.state), null, { timeout: 300_000 });
    return page.textContent('#gen-status');
  };
  let msg = await run();
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'generated', msg);
  // The 32×32 file resized to the chosen 64×64, said in the status line; one step of two ran.
  assert.match(msg, /resized to 64x64/);
  await page.click('#gallery figure button.use-as-input');
  await page.waitForFunction(() => document.body.dataset.initImage === 'set' && document.querySelector('#init-preview').src.startsWith('blob:'));
  msg = await run();
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'generated', msg);
  assert.doesNotMatch(msg, /resized/, 'a gallery image already has the chosen size');
  assert.equal(await page.locator('#gallery figure').count(), 2);
  await page.screenshot({ path: join(OUT, 'img2img-page.png'), fullPage: true });
});

