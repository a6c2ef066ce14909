// GPU work budgets (docs/performance.md, "GPU efficiency"): dispatches, submits, read-backs and
// pipeline compilations of whole generations, per U-Net step and per component, counted inside
// the package's worker (shared/README.md). Counts are deterministic, so these are real tests
// (not timings): a change that adds kernels, submits or read-backs fails here.
//   cd tests/browser && node --test --test-concurrency=1 gpu.test.mjs
// GPU_COUNTS_OUT=path writes the measured figures as JSON.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { launchChromium, WWW, writeHookedWorker } from './chromium.mjs';
import { logConsole, maxAbs } from './common.mjs';
import { startServer } from './server.mjs';
import { MID_VARIANTS, unetVariant } from './variants.mjs';


if (!existsSync(join(WWW, 'pkg/inkstone_core_bg.wasm'))) throw new Error('www/ is not built: run ./build.sh first');

/**
 * Budgets per model at SIDE × SIDE with the model's default guidance (CFG on, batch 2). `step`:
 * one U-Net step (dispatches, submits, read-backs); `rest`: everything of a 1-step generation
 * that is not the step (prompt encoding, scheduler, decode, finiteness checks, image read-back);
 * `encode` and `decode`: the dispatches before the first step (text encoder + scheduler set-up)
 * and after the last (decoder + checks). tiny-flow's TAESD gives a preview per step: one
 * read-back per step is asked for there.
 *
 * These are the counts reached (burn fusion plus our kernels of src/gpu: GroupNorm+SiLU in two
 * dispatches with the ResNet's time embedding added inside, LayerNorm in one, flash attention in
 * one, channels-last convolution weights; fused matmuls on the unit tile matmul, vendor/; an
 * attention's projections of one input as one stacked matmul; cross-attention keys and values
 * projected once per generation, at its first step — which is why `encode`, the dispatches
 * before the first step minus one later step, counts them), so any regression fails. The
 * issue's goal, a step within 1.5× a fully fused one (~150: ≤ 225 for tiny-sd), is met;
 * docs/performance.md has the before/after table and where the rest goes.
 */
const BUDGETS = {
  'tiny-sd': { step: { dispatches: 187, submits: 1, reads: 0 }, rest: { dispatches: 186, submits: 7, reads: 3 }, encode: 69, decode: 117 },
  'tiny-flow': { step: { dispatches: 227, submits: 3, reads: 1 }, rest: { dispatches: 124, submits: 7, reads: 3 }, encode: 69, decode: 55 },
};

let srv, ctx, countingWorker;
const figures = {};

before(async () => {
  srv = await startServer(WWW);
  ctx = await launchChromium();
  // The suite's one counting hook (tests/browser/gpu-hooks.mjs), installed before worker.js.
  countingWorker = `${srv.origin}${writeHookedWorker('counting-worker-budget.mjs')}`;
});

after(async () => {
  if (process.env.GPU_COUNTS_OUT) writeFileSync(process.env.GPU_COUNTS_OUT, JSON.stringify(figures, null, 1));
  if (tinySd) await (await tinySd).close();
  await ctx?.close();
  await srv?.close();
});


/** Image side of the counted generations: both tiny models' default size (8 px × 8 latents),
 *  which is what load()'s warm-up generation runs at. */
const SIDE = 64;
/** Another size: what a first image there still compiles is reported (kernels chosen by extent).
 *  A figure, not a check, and two 128 px images cost about a minute per model on SwiftShader:
 *  measured only when the figures are asked for (GPU_COUNTS_OUT). */
const OTHER_SIDE = process.env.GPU_COUNTS_OUT ? 128 : null;

const KEYS = ['dispatches', 'submits', 'reads', 'pipelines'];
const diff = (a, b) => Object.fromEntries(KEYS.map((k) => [k, b[k] - a[k]]));
const kernelDiff = (a, b) => Object.fromEntries(Object.entries(b.kernels).map(([k, n]) => [k, n - (a.kernels[k] ?? 0)]).filter(([, n]) => n > 0));

/**
 * A page with `model` loaded through the counting worker. `gen(steps, seed, side)` runs one
 * generation and returns its time, the counters before and after, the worker's snapshots and
 * the difference; `close()` disposes of the generator and the page.
 */
async function openCounting(model, { warmUp = true, reuse = null } = {}) {
  let page = reuse?.page;
  if (!page) {
    page = logConsole(await ctx.newPage());
    await page.goto(`${srv.origin}/index.html`);
    await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 60_000 });
  }
  const t0 = Date.now();
  // `reuse`: into the worker of that handle's generator (load({ reuse })), its pipelines kept.
  await page.evaluate(async ({ url, workerUrl, warmUp, reuse }) => {
    window.budgetGen = await window.inkstone.load(url, reuse ? { reuse: window.budgetGen, warmUp } : { workerUrl, warmUp });
  }, { url: `${srv.origin}/models/${model}/`, workerUrl: countingWorker, warmUp, reuse: !!reuse });
  const loadMs = Date.now() - t0;
  const worker = page.workers().at(-1);
  const counts = () => worker.evaluate(() => ({ ...self.gpuCounts, kernels: { ...self.gpuCounts.kernels } }));
  const gen = async (steps, seed, side = SIDE) => {
    const start = await counts();
    const ms = await page.evaluate(({ steps, seed, side }) => window.budgetGen.generate({ prompt: 'a lighthouse', steps, seed, width: side, height: side })
      .then((o) => o.ms), { steps, seed, side });
    const end = await counts();
    const snaps = await worker.evaluate(() => self.gpuSnaps.splice(0));
    return { ms, start, end, snaps, total: diff(start, end) };
  };
  const close = async () => {
    await page.evaluate(() => window.budgetGen.dispose());
    await page.close();
  };
  return { page, worker, loadMs, counts, gen, close };
}

/** tiny-sd through the counting worker, loaded once (with its warm-up) for the budget test and
 *  the per-block test's full mid block: one worker, one compilation of its pipelines. */
let tinySd = null;
const countingTinySd = () => (tinySd ??= openCounting('tiny-sd'));

for (const model of Object.keys(BUDGETS)) {
  test(`${model}: GPU work per U-Net step and per generation stays within budget; the first image compiles nothing`, async () => {
    const budget = BUDGETS[model];
    const shared = model === 'tiny-sd';
    const { worker, loadMs, counts, gen, close } = await (shared ? countingTinySd() : openCounting(model));
    const afterLoad = await counts();
    const [warmStart] = await worker.evaluate(() => self.gpuSnaps.splice(0));
    const first = await gen(1, 1);
    const next = await gen(1, 2);
    const two = await gen(2, 3);
    const other = OTHER_SIDE && await gen(1, 4, OTHER_SIDE);
    const otherNext = OTHER_SIDE && await gen(1, 5, OTHER_SIDE);
    if (!shared) await close();

    // Exact per-step cost: a 2-step generation minus a 1-step one (same shapes, same kernels).
    const step = Object.fromEntries(KEYS.map((k) => [k, two.total[k] - next.total[k]]));
    const rest = Object.fromEntries(KEYS.map((k) => [k, next.total[k] - step[k]]));
    // Split of the rest at the worker's step messages: what ran before the first step was
    // reported (prompt encoding + step 1) and after the last (decode + read-back).
    const [s1, s2, done] = two.snaps;
    const encode = diff(two.start, s1).dispatches - diff(s1, s2).dispatches;
    const decode = diff(s2, done).dispatches;
    const oneKernels = kernelDiff(next.start, next.end);
    const hot = Object.entries(kernelDiff(two.start, two.end)).map(([k, n]) => [k, n - (oneKernels[k] ?? 0)])
      .filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    const f = { loadMs, loadPipelines: afterLoad.pipelines, first: { ms: first.ms, ...first.total }, next: { ms: next.ms, ...next.total },
      ...(other && { otherSize: { side: OTHER_SIDE, ms: other.ms, ...other.total }, otherSizeNext: { ms: otherNext.ms, ...otherNext.total } }),
      twoSteps: two.total, step, rest, encodeDispatches: encode, decodeDispatches: decode, stepKernels: Object.fromEntries(hot) };
    figures[model] = f;
    console.log(`  ${model}: load ${loadMs} ms (${afterLoad.pipelines} pipelines); first image ${first.ms.toFixed(0)} ms `
      + `(${first.total.pipelines} pipelines compiled), next ${next.ms.toFixed(0)} ms; `
      + (other ? `first at ${OTHER_SIDE} px ${other.ms.toFixed(0)} ms (${other.total.pipelines} pipelines compiled), next there ${otherNext.ms.toFixed(0)} ms; ` : '')
      + `1-step generation ${JSON.stringify(next.total)}; `
      + `per U-Net step ${JSON.stringify(step)}; rest ${JSON.stringify(rest)} (text encoder ~${encode}, decoder + read-back ${decode} dispatches)`);
    console.log(`  ${model}: kernels per U-Net step: ${hot.map(([k, n]) => `${k} ${n}`).join(', ')}`);

    // Same work every time: a warm generation compiles no pipeline and repeats the counts. The
    // control: the warm-up itself compiled pipelines, so the hook sees compilations and a 0
    // below means the warm-up took them, not that nothing was counted.
    assert.equal(warmStart?.what, 'warm-up', 'the load reported its warm-up phase');
    const warmUpPipelines = afterLoad.pipelines - warmStart.pipelines;
    console.log(`  ${model}: the warm-up compiled ${warmUpPipelines} pipelines`);
    assert.ok(warmUpPipelines > 0, 'the warm-up compiled no pipeline: nothing would show a missed one');
    assert.equal(first.total.pipelines, 0, 'the first image at the default size compiled pipelines: the warm-up missed them');
    assert.equal(next.total.pipelines, 0, 'the second image compiled pipelines');
    assert.equal(two.snaps.length, 3, 'a 2-step generation posts two steps and a result');
    assert.ok(step.dispatches > 0, JSON.stringify(step));
    for (const k of ['dispatches', 'submits', 'reads']) assert.equal(first.total[k], next.total[k], `${k}: the first image did other GPU work than the next`);
    assert.ok(encode <= budget.encode, `${model}: prompt encoding ${encode} dispatches, over the budget ${budget.encode}`);
    assert.ok(decode <= budget.decode, `${model}: decode ${decode} dispatches, over the budget ${budget.decode}`);
    // The one timing check, with a wide margin (SwiftShader on a shared CPU is noisy): without
    // the warm-up the first image took 3.7× the next (tiny-sd: 29.7 s vs 8.1 s).
    assert.ok(first.ms <= 2 * next.ms, `first image ${first.ms} ms vs next ${next.ms} ms: the warm-up did not take`);
    for (const [part, got] of [['step', step], ['rest', rest]]) {
      for (const k of ['dispatches', 'submits', 'reads']) {
        assert.ok(got[k] <= budget[part][k], `${model}: ${part} ${k} ${got[k]} over the budget ${budget[part][k]}`);
      }
    }
  });
}

/**
 * Per block kind: models a block apart (tests/browser/variants.mjs: the tiny-sd fixture without
 * a mid block, with `UNetMidBlock2D`'s one ResNet, and with its own ResNet → transformer →
 * ResNet) give one block's dispatches per U-Net step as the difference of their step counts
 * (CFG's batch of 2 runs in the same dispatches). The budgets are the counts reached, so one
 * kernel more fails; the issue's ceilings are a ResNet ≤ 8 and a transformer block ≤ 25. The positive control adds one
 * (empty) dispatch after every GroupNorm-statistics kernel in the worker (gpu-hooks.mjs
 * `gpuInject`), as a kernel added to the block would, and the same checks must then fail.
 */
const BLOCK_BUDGETS = { resnet: 8, transformer: 24 };
const INJECT = 'group_?norm_?stats';

test('per block kind: a ResNet and a transformer block stay within their dispatch budgets (a kernel more fails)', async () => {
  const base = join(WWW, 'models/tiny-sd');
  for (const [name, v] of Object.entries(MID_VARIANTS)) unetVariant(base, join(WWW, `models/tiny-sd-${name}`), v);
  const perStep = {};
  const injected = {};
  // The fixture itself (its own mid block) is the budget test's tiny-sd, already loaded; the
  // variants go into its worker (load({ reuse })), so they compile only what is new to them,
  // and tiny-sd goes back in last. Dispatch counts do not depend on what is compiled.
  let shared = await countingTinySd();
  for (const name of ['mid-none', 'mid-resnet', 'mid-crossattn']) {
    const model = name === 'mid-crossattn' ? 'tiny-sd' : `tiny-sd-${name}`;
    shared = await openCounting(model, { warmUp: false, reuse: shared });
    const { worker, gen } = shared;
    const step = async () => -(await gen(1, 1)).total.dispatches + (await gen(2, 1)).total.dispatches;
    // A first generation does one-time work (without the warm-up): not part of a step.
    await gen(1, 1);
    perStep[name] = await step();
    await worker.evaluate((re) => { self.gpuInject = new RegExp(re, 'i'); }, INJECT);
    try {
      injected[name] = await step();
    } finally {
      await worker.evaluate(() => { self.gpuInject = null; });
    }
  }
  tinySd = Promise.resolve(shared);
  const blocks = (n) => {
    const resnet = n['mid-resnet'] - n['mid-none'];
    return { resnet, transformer: n['mid-crossattn'] - n['mid-resnet'] - resnet };
  };
  const got = blocks(perStep);
  const control = blocks(injected);
  figures.blocks = { perStep, ...got, control };
  console.log(`  per U-Net step ${JSON.stringify(perStep)}: a ResNet ${got.resnet}, a transformer block ${got.transformer} dispatches; `
    + `with an empty dispatch after each GroupNorm statistics kernel: ${JSON.stringify(control)}`);
  const within = (kind, n) => n > 0 && n <= BLOCK_BUDGETS[kind];
  for (const kind of ['resnet', 'transformer']) {
    assert.ok(within(kind, got[kind]), `a ${kind} block takes ${got[kind]} dispatches, budget ${BLOCK_BUDGETS[kind]}`);
  }
  // The control: each ResNet runs two GroupNorms, a transformer block one.
  assert.deepEqual(control, { resnet: got.resnet + 2, transformer: got.transformer + 1 }, 'the injected dispatches were counted in their blocks');
  for (const kind of ['resnet', 'transformer']) {
    assert.ok(!within(kind, control[kind]), `the ${kind} budget let a block with a kernel more pass`);
  }
});

/**
 * load({ reuse }): a model loaded into another generator's worker keeps its device and its
 * compiled pipelines. tiny-flow into tiny-sd's worker compiles only its own new kernels (the
 * control: the hook sees compilations in a reused worker), tiny-sd back in compiles none and
 * gives the same pixels; the replaced generator rejects, a busy one is refused, and one whose
 * replacement failed reloads its model at its next call.
 */
test('load({ reuse }) keeps the worker\'s compiled pipelines; the replaced generator rejects; a failed reuse loses nothing', async () => {
  const sd = await countingTinySd();
  const { page } = sd;
  const pixels = () => page.evaluate(() => window.budgetGen.generate({ prompt: 'a lighthouse', steps: 1, seed: 9, width: 64, height: 64 })
    .then((o) => Array.from(o.pixels)));
  const before = await pixels();
  const flow = await openCounting('tiny-flow', { warmUp: false, reuse: sd });
  const flowFirst = await flow.gen(1, 1);
  const sdAgain = await openCounting('tiny-sd', { warmUp: false, reuse: flow });
  const c0 = await sdAgain.counts();
  const after = await pixels();
  const c1 = await sdAgain.counts();
  console.log(`  reuse: tiny-flow into tiny-sd's worker compiled ${flowFirst.total.pipelines} pipelines at its first image `
    + `(load ${flow.loadMs} ms); tiny-sd back: load ${sdAgain.loadMs} ms, ${c1.pipelines - c0.pipelines} pipelines at its first image`);
  assert.ok(flowFirst.total.pipelines > 0, 'tiny-flow compiled nothing of its own: the count would not show a recompile');
  assert.equal(c1.pipelines - c0.pipelines, 0, 'tiny-sd in the reused worker compiled pipelines again');
  assert.equal(maxAbs(after, before), 0, 'the reloaded model gave other pixels');

  const r = await page.evaluate(async ({ url, bad }) => {
    const msg = (p) => p.then(() => 'resolved', (e) => e.message);
    const g = window.budgetGen;
    const next = await window.inkstone.load(url, { reuse: g, warmUp: false });
    const replacedCall = await msg(g.generate({ prompt: 'x', steps: 1, width: 64, height: 64 }));
    const replacedLoras = await msg(g.setLoras([]));
    g.dispose(); // does nothing: the worker is `next`'s
    const running = next.generate({ prompt: 'x', steps: 2, seed: 1, width: 64, height: 64 });
    const busy = await msg(window.inkstone.load(url, { reuse: next, warmUp: false }));
    const ran = await msg(running);
    const twice = await msg(window.inkstone.load(url, { reuse: g }));
    const failed = await msg(window.inkstone.load(bad, { reuse: next, warmUp: false }));
    // setLoras([]) needs the model loaded: it reloads it first (on a new worker, from the cache).
    const recovered = await msg(next.setLoras([]));
    window.budgetGen = next;
    return { replacedCall, replacedLoras, busy, ran, twice, failed, recovered, recoveries: next.info.recoveries, model: next.info.model };
  }, { url: `${srv.origin}/models/tiny-sd/`, bad: `${srv.origin}/models/no-such-model/` });
  console.log(`  reuse: ${JSON.stringify(r)}`);
  assert.match(r.replacedCall, /replaced by load\(\{ reuse \}\)/);
  assert.match(r.replacedLoras, /replaced by load\(\{ reuse \}\)/);
  assert.match(r.busy, /busy/);
  assert.equal(r.ran, 'resolved', 'the generation in flight finished after the refused reuse');
  assert.match(r.twice, /already replaced/);
  assert.match(r.failed, /\/no-such-model\/model_index\.json: not found/);
  assert.equal(r.recovered, 'resolved', 'the generator whose replacement failed did not come back');
  assert.equal(r.recoveries, 1, 'it reloaded its model on a new worker');
  assert.match(r.model, /tiny-sd/);
  tinySd = null; // its page now holds `next`, on a new worker: closed with the context
});
