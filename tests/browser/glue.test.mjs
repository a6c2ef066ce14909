// The browser glue only moves bytes and messages (issue 22): what it used to decide itself now
// comes from wasm. A cached plan is planned again by `planModel`; the option names of
// `generate()` in `index.d.ts` are the Rust list; the seed default and the RGBA bytes are wasm's.
//   cd tests/browser && node --test --test-concurrency=1 glue.test.mjs   (after ./build.sh)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { launchChromium, OUT, ROOT, WWW } from './chromium.mjs';
import { openApp } from './common.mjs';
import { startServer } from './server.mjs';

if (!existsSync(join(WWW, 'pkg/inkstone_core_bg.wasm'))) throw new Error('www/ is not built: run ./build.sh first');

let srv, context;
const MODEL = () => `${srv.origin}/models/tiny-sd/`;

before(async () => {
  mkdirSync(OUT, { recursive: true });
  srv = await startServer(WWW);
  context = await launchChromium();
});

after(async () => {
  await context?.close();
  await srv?.close();
});

const openPage = () => openApp(context, srv.origin);

/** load() in the page, without the warm-up; `{ info }` or `{ error }`. */
const loadIn = (page, url) => page.evaluate(async (url) => {
  try {
    const g = await window.inkstone.load(url, { warmUp: false });
    window.lastGenerator?.dispose();
    window.lastGenerator = g;
    return { info: g.info };
  } catch (e) {
    return { error: e.message };
  }
}, url);

test('a cached plan made under older rules is planned again by planModel, from the cache alone', async () => {
  const page = await openPage();
  await page.evaluate(() => window.inkstone.clearCache());
  const fresh = await loadIn(page, MODEL());
  assert.equal(fresh.error, undefined, fresh.error);
  assert.equal(fresh.info.cached, false);
  // What older rules might have saved: a file list in another order and one file short, and a
  // component skipped that the rules now run. Every file it names is cached, so a glue that
  // trusted the stored plan would load exactly it.
  const stale = await page.evaluate(async (model) => {
    const store = await import('./pkg/store.js');
    const record = await store.getModel(model);
    const files = record.files.filter((f) => f.path !== 'scheduler/scheduler_config.json').reverse();
    await store.putModel({ ...record, files, skipped: ['text_encoder'] });
    return (await store.getModel(model)).files.map((f) => f.path);
  }, MODEL());
  assert.notDeepEqual(stale, fresh.info.files.map((f) => f.path), 'the stored plan was changed');
  const before = srv.log.length;
  const again = await loadIn(page, MODEL());
  assert.equal(again.error, undefined, again.error);
  assert.equal(again.info.cached, true);
  assert.deepEqual(again.info.files, fresh.info.files, 'the files of a fresh plan, in its order');
  assert.deepEqual(again.info.skipped, fresh.info.skipped);
  assert.deepEqual(srv.log.slice(before).filter((r) => r.path.startsWith('models/')), [], 'model requests while re-planning from the cache');
  // The stored plan is the fresh one now.
  const stored = await page.evaluate(async (model) => (await (await import('./pkg/store.js')).getModel(model)).files, MODEL());
  assert.deepEqual(stored, fresh.info.files);
});

test('generate() options in index.d.ts are the Rust list (generate::OPTIONS)', async () => {
  const page = await openPage();
  const rust = await page.evaluate(async () => {
    const wasm = await import('./pkg/inkstone_core.js');
    await wasm.default();
    return wasm.generateOptions();
  });
  // index.js takes these two itself (cancel, step callback); wasm sees every other option.
  const JS_ONLY = ['signal', 'onStep'];
  const dts = readFileSync(join(ROOT, 'pkg/index.d.ts'), 'utf8');
  const block = /export interface GenerateOptions \{([\s\S]*?)\n\}/.exec(dts)?.[1];
  assert.ok(block, 'index.d.ts declares GenerateOptions');
  const declared = [...block.matchAll(/^ {2}(\w+)\??:/gm)].map((m) => m[1]);
  assert.deepEqual(declared.filter((k) => !JS_ONLY.includes(k)).sort(), [...rust].sort(), 'index.d.ts GenerateOptions vs generate::OPTIONS');
  assert.ok(JS_ONLY.every((k) => declared.includes(k)));
});

test('the seed and size defaults, dtype auto and the RGBA bytes come from wasm', async () => {
  const page = await openPage();

  // dtype 'auto' (the default) runs in what wasm reports as its choice, which the page shows.
  const { info, error } = await loadIn(page, MODEL());
  assert.equal(error, undefined, error);
  assert.ok(['f16', 'f32'].includes(info.gpu.autoDtype), `autoDtype ${info.gpu.autoDtype}`);
  assert.equal(info.dtype, info.gpu.autoDtype);
  const r = await page.evaluate(async () => {
    const g = window.lastGenerator;
    const base = { prompt: 'seed', steps: 1, width: 64, height: 64 };
    const a = await g.generate(base);
    const b = await g.generate({ ...base, seed: a.seed });
    // No size either: the model's own (unet sample_size 8 × 8 px per latent), as the CLI's.
    const c = await g.generate({ prompt: 'seed', steps: 1 });
    return { seeds: [a.seed, b.seed, c.seed], same: a.pixels.every((v, i) => v === b.pixels[i]), size: [c.width, c.height],
      pixels: Array.from(a.pixels), rgba: Array.from(a.rgba), rgbaType: a.rgba.constructor.name };
  });
  const [a, b, c] = r.seeds;
  assert.ok(Number.isInteger(a) && a >= 0 && a < 2 ** 32, `seed ${a}`);
  assert.equal(b, a);
  assert.ok(r.same, 'the returned seed gives the same image');
  assert.notEqual(c, a, 'two generations without a seed got the same one (p = 2^-32)');
  assert.deepEqual(r.size, [64, 64], 'generate() without width/height: not the model\'s default size');
  // The RGBA bytes are [3, H, W] floats interleaved, rounded as diffusers' numpy_to_pil:
  // the product in float32 (a double product can sit just under a half the f32 one reaches),
  // halves to even (np.round).
  const toByte = (v) => {
    const x = Math.fround(Math.min(Math.max(v, 0), 1) * 255);
    const f = Math.floor(x);
    return x - f > 0.5 || (x - f === 0.5 && f % 2 === 1) ? f + 1 : f;
  };
  assert.equal(r.rgbaType, 'Uint8ClampedArray');
  const n = 64 * 64;
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < 3; ch++) {
      const want = toByte(r.pixels[ch * n + i]);
      if (r.rgba[4 * i + ch] !== want) assert.fail(`rgba[${4 * i + ch}] = ${r.rgba[4 * i + ch]}, expected ${want}`);
    }
    if (r.rgba[4 * i + 3] !== 255) assert.fail(`alpha at pixel ${i}: ${r.rgba[4 * i + 3]}`);
  }
});
