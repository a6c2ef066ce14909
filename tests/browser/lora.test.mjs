// LoRA adapters in the browser (tiny-sd, 64×64, 4 steps): `load(url, { loras })` and
// `gen.setLoras()` against the native CLI's `--lora` and diffusers (tests/fixtures/ref/lora_*),
// each LoRA file downloaded once and then read from IndexedDB, a scale change with no request,
// a LoRA for another architecture refused with the model left usable.
//   cd tests/browser && node --test --test-concurrency=1 lora.test.mjs   (after ./build.sh)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { INKSTONE_BIN, launchChromium, OUT, ROOT, WWW } from './chromium.mjs';
import { maxAbs } from './common.mjs';
import { startServer } from './server.mjs';
import { readSafetensors } from './safetensors.mjs';


if (!existsSync(join(WWW, 'pkg/inkstone_core_bg.wasm'))) throw new Error('www/ is not built: run ./build.sh first');

let srv, context;
const lora = (name) => `${srv.origin}/loras/${name}.safetensors`;
const loraGets = (since, name) => srv.log.slice(since).filter((r) => r.method === 'GET' && r.path === `loras/${name}.safetensors`);
/** Requests of the page's own (the service worker's update checks of its scripts aside). */
const pageRequests = (since) => srv.log.slice(since).filter((r) => !['sw.js', 'shell-list.js'].includes(r.path));


/** The native CLI's image for reference case `lora_<name>` with its adapters as `--lora`. */
function native(name, model = 'tiny-sd') {
  const refPath = join(ROOT, `tests/fixtures/ref/lora_${name}.safetensors`);
  const ref = readSafetensors(refPath);
  const c = ref.note;
  const out = join(OUT, `native-lora-${name}.safetensors`);
  assert.ok(existsSync(INKSTONE_BIN), `native CLI not built at ${INKSTONE_BIN} (run cargo build first)`);
  // A stochastic sampler's case (LCM) carries its seed and sampler: the step noise is the seed's.
  const sampler = c.scheduler ? ['--scheduler', c.scheduler, '--seed', String(c.seed)] : [];
  execFileSync(INKSTONE_BIN, ['generate', '--model', join(ROOT, 'tests/fixtures', model), '--prompt', c.prompt, ...sampler,
    '--negative-prompt', c.negative_prompt, '--steps', String(c.steps), '--guidance', String(c.guidance), '--latents', refPath,
    ...c.loras.flatMap(([f, s]) => ['--lora', `${join(ROOT, 'tests/fixtures/loras', f)}:${s}`]), '--out-tensor', out], { stdio: 'pipe' });
  return { c, native: readSafetensors(out).f32('image'), diffusers: ref.f32('image'), latents: ref.f32('latents') };
}

async function page() {
  const p = context.pages()[0] ?? (await context.newPage());
  await p.goto(`${srv.origin}/index.html`);
  await p.waitForFunction(() => ['ready', 'no-webgpu'].includes(document.body.dataset.state), null, { timeout: 60_000 });
  return p;
}

/** One generation of case `c` from its latents with the page's current generator. */
const generateIn = (p, c, latents) => p.evaluate(async ({ c, latents }) => {
  const r = await window.lastGenerator.generate({ prompt: c.prompt, negativePrompt: c.negative_prompt, steps: c.steps,
    guidance: c.guidance, width: c.width, height: c.height, seed: c.seed ?? 0, latents: new Float32Array(latents),
    ...(c.scheduler ? { scheduler: c.scheduler } : {}) });
  return Array.from(r.pixels);
}, { c, latents: Array.from(latents) });

function check(what, pixels, ref) {
  const vsNative = maxAbs(pixels, ref.native);
  const vsDiffusers = maxAbs(pixels, ref.diffusers);
  console.log(`  ${what}: browser vs native max abs ${vsNative.toExponential(3)}, vs diffusers ${vsDiffusers.toExponential(3)} (tolerance 1e-3)`);
  assert.ok(vsNative <= 1e-3, `browser vs native: ${vsNative}`);
  assert.ok(vsDiffusers <= 1e-3, `browser vs diffusers: ${vsDiffusers}`);
}

before(async () => {
  mkdirSync(OUT, { recursive: true });
  rmSync(join(WWW, 'loras'), { recursive: true, force: true });
  cpSync(join(ROOT, 'tests/fixtures/loras'), join(WWW, 'loras'), { recursive: true });
  rmSync(join(WWW, 'models/tiny-bk'), { recursive: true, force: true });
  cpSync(join(ROOT, 'tests/fixtures/tiny-bk'), join(WWW, 'models/tiny-bk'), { recursive: true, dereference: true });
  srv = await startServer(WWW);
  context = await launchChromium();
});

after(async () => {
  await context?.close();
  await srv?.close();
  rmSync(join(WWW, 'loras'), { recursive: true, force: true });
  rmSync(join(WWW, 'models/tiny-bk'), { recursive: true, force: true });
});

test('load({ loras }) fuses two adapters like the native CLI and diffusers; setLoras re-fuses with no request', async () => {
  const two = native('two');
  const p = await page();
  const before = srv.log.length;
  const loaded = await p.evaluate(async ({ loras }) => {
    const progress = [];
    const g = await window.inkstone.load(new URL('models/tiny-sd/', location.href).href,
      { warmUp: false, loras, onProgress: (x) => progress.push(x.phase) });
    window.lastGenerator = g;
    return { loras: g.info.loras, phases: [...new Set(progress)] };
  }, { loras: [{ url: lora('peft_unet'), scale: 0.7 }, { url: lora('kohya_locon'), scale: -0.5 }] });
  assert.deepEqual(loaded.loras.map((l) => [l.file, l.format, l.scale]),
    [[lora('peft_unet'), 'peft', 0.7], [lora('kohya_locon'), 'kohya', -0.5]]);
  assert.equal(loaded.loras[0].unetModules, 33);
  assert.ok(loaded.loras[1].textEncoderModules === 12 && loaded.loras[1].modules > 40, JSON.stringify(loaded.loras[1]));
  assert.ok(loaded.phases.includes('lora'), loaded.phases.join());
  assert.equal(loraGets(before, 'peft_unet').length, 1, 'one download per LoRA file');
  assert.equal(loraGets(before, 'kohya_locon').length, 1);
  check('lora_two', await generateIn(p, two.c, two.latents), two);

  // Another set and scale: peft_unet alone at 0.8 (lora_peft's case), then nothing at all.
  const peft = native('peft');
  const since = srv.log.length;
  const applied = await p.evaluate((url) => window.lastGenerator.setLoras([{ url, scale: 0.8 }]), lora('peft_unet'));
  assert.deepEqual(applied.map((l) => [l.format, l.scale]), [['peft', 0.8]]);
  assert.deepEqual(pageRequests(since), [], 'requests during a scale change');
  check('lora_peft after setLoras', await generateIn(p, peft.c, peft.latents), peft);
  assert.deepEqual(await p.evaluate(() => window.lastGenerator.setLoras([])), []);
  assert.deepEqual(await p.evaluate(() => window.lastGenerator.info.loras), []);
});

test('a LoRA file comes from IndexedDB after its first download; a wrong one is refused and the model stays usable', async () => {
  const p = await page();
  const before = srv.log.length;
  const r = await p.evaluate(async ({ good, bad }) => {
    const g = await window.inkstone.load(new URL('models/tiny-sd/', location.href).href, { warmUp: false, loras: [{ url: good }] });
    window.lastGenerator = g;
    let error = null;
    try {
      await g.setLoras([{ url: good }, { url: bad }]);
    } catch (e) {
      error = e.message;
    }
    return { applied: g.info.loras, error };
  }, { good: lora('peft_unet'), bad: lora('lcm_kohya') });
  assert.equal(loraGets(before, 'peft_unet').length, 0, 'cached LoRA fetched again');
  assert.match(r.error, /lcm_kohya\.safetensors: `lora_unet_down_blocks_\w+\.lora_down\.weight`: (expected unet module|factors)/);
  assert.deepEqual(r.applied.map((l) => l.scale), [1], 'the set before the error stays');
  // The model generates what the CLI makes with the same adapter.
  const peft = native('peft');
  const pixels = await generateIn(p, peft.c, peft.latents);
  const again = await p.evaluate((url) => window.lastGenerator.setLoras([{ url, scale: 0.8 }]), lora('peft_unet'));
  assert.equal(again[0].scale, 0.8);
  check('lora_peft after a refused LoRA', await generateIn(p, peft.c, peft.latents), peft);
  assert.ok(maxAbs(pixels, peft.native) > 1e-3, 'scale 1 and 0.8 gave the same image');
});

/** The page's Load button asks for the warm-up (a 1-step generation compiling the GPU
 *  pipelines: most of a minute on SwiftShader); a test that generates nothing after the load
 *  takes it out of the load message the page posts to its worker (web.test.mjs and
 *  gpu.test.mjs test the warm-up). */
const withoutWarmUp = (p) => p.evaluate(() => {
  const post = Worker.prototype.postMessage;
  Worker.prototype.postMessage = function (msg, ...rest) {
    return post.call(this, msg?.type === 'load' ? { ...msg, warmUp: false } : msg, ...rest);
  };
});

test('the page: add a LoRA by URL, change its scale with the slider, remove it', async () => {
  const p = await page();
  await withoutWarmUp(p);
  await p.click('#load');
  await p.waitForFunction(() => ['loaded', 'load-error'].includes(document.body.dataset.state), null, { timeout: 300_000 });
  assert.equal(await p.evaluate(() => document.body.dataset.state), 'loaded', await p.textContent('#load-status'));
  const applied = () => p.evaluate(() => document.body.dataset.loras);
  await p.fill('#lora-url', lora('kohya_locon'));
  await p.click('#lora-add-url');
  await p.waitForFunction(() => document.body.dataset.loras?.startsWith('['), null, { timeout: 60_000 });
  assert.deepEqual(JSON.parse(await applied()).map((l) => [l.format, l.scale]), [['kohya', 1]]);
  const since = srv.log.length;
  await p.evaluate(() => {
    document.body.dataset.loras = '';
    const s = document.querySelector('#loras input[type=range]');
    s.value = '0.5';
    s.dispatchEvent(new Event('change'));
  });
  await p.waitForFunction(() => document.body.dataset.loras?.startsWith('['), null, { timeout: 60_000 });
  assert.deepEqual(JSON.parse(await applied()).map((l) => l.scale), [0.5]);
  assert.deepEqual(pageRequests(since), [], 'requests for a slider change');
  assert.match(await p.textContent('#lora-status'), /Fused: kohya_locon\.safetensors \(kohya, scale 0\.5/);
  await p.evaluate(() => { document.body.dataset.loras = ''; });
  await p.click('#loras button');
  await p.waitForFunction(() => document.body.dataset.loras === '[]', null, { timeout: 60_000 });
  assert.equal(await p.textContent('#lora-status'), 'No LoRA applied.');
  // The compositor shares SwiftShader with the worker's queued LoRA fusions: on a loaded 2-core
  // machine the default 30 s was seen to run out.
  await p.screenshot({ path: join(OUT, 'page-lora.png'), fullPage: true, timeout: 120_000 });
});

// LCM-LoRA: what makes a 25-step SD-1.x model a 4-step one. A kohya-format LCM-LoRA on a
// BK-SDM-Tiny-shaped U-Net (no mid block, one layer per block), LCMScheduler, 4 steps.
test('an LCM-LoRA on a BK-SDM-shaped model: 4 LCM steps like the native CLI and diffusers', async () => {
  const lcm = native('lcm', 'tiny-bk');
  const p = await page();
  const loaded = await p.evaluate(async ({ loras }) => {
    const g = await window.inkstone.load(new URL('models/tiny-bk/', location.href).href, { warmUp: false, loras });
    window.lastGenerator?.dispose();
    window.lastGenerator = g;
    return g.info.loras.map((l) => [l.format, l.scale]);
  }, { loras: [{ url: lora('lcm_kohya'), scale: 1 }] });
  assert.deepEqual(loaded, [['kohya', 1]]);
  check('lora_lcm (tiny-bk, lcm, 4 steps)', await generateIn(p, lcm.c, lcm.latents), lcm);
});
