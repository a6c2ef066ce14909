// Seconds per U-Net step of the WebAssembly CPU build (pkg/inkstone_cpu_bg.wasm) in Chromium and
// Firefox ESR, next to the native CPU CLI (burn-flex) on the same model, size and prompt: a
// benchmark, not a test (figures go to docs/performance.md).
//   node scripts/bench-cpu-wasm.mjs [MODEL_DIR] [SIZE] [STEPS] [GUIDANCE]
// Defaults: tests/fixtures/tiny-sd, 64, 21, 7.5 (CFG: batch 2; 0 runs batch 1, as SDXS does). Needs ./build.sh (www/ with the CPU build), the CLI
// ($INKSTONE_BIN) and tests/browser's npm deps. A step is timed as (t(STEPS) - t(1)) / (STEPS - 1)
// over whole generations, so load, text encoder and decode cancel out, the same way for both.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const require = createRequire(join(ROOT, 'tests/browser/package.json'));
const { chromium } = require('playwright-core');
const puppeteer = (await import(require.resolve('puppeteer-core'))).default;
const { startServer } = await import(join(ROOT, 'tests/browser/server.mjs'));

const model = resolve(process.argv[2] ?? join(ROOT, 'tests/fixtures/tiny-sd'));
const size = Number(process.argv[3] ?? 64);
const steps = Number(process.argv[4] ?? 21);
const BIN = process.env.INKSTONE_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, '.cache/inkstone-target'), 'debug/inkstone');
const opts = { prompt: 'a lighthouse at dawn', guidance: Number(process.argv[5] ?? 7.5), seed: 1, width: size, height: size };
const perStep = (t1, tn) => (tn - t1) / (steps - 1);

function native(threads) {
  const run = (n) => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(BIN, ['generate', '--model', model, '--prompt', opts.prompt, '--guidance', String(opts.guidance),
      '--seed', '1', '--width', String(size), '--height', String(size), '--steps', String(n), '--out', join(tmpdir(), 'bench-cpu.png')],
    { env: { ...process.env, ...(threads ? { RAYON_NUM_THREADS: String(threads) } : {}) }, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`native CLI: ${r.stderr}`);
    // The process's wall time (the CLI prints tenths only): load and decode cancel out below.
    return Number(process.hrtime.bigint() - t0) / 1e9;
  };
  run(1); // warm the page cache
  return perStep(run(1), run(steps));
}

/** In the page: one load on the CPU build, then generations of 1 and `steps` steps. */
const inPage = (url, o, steps) => (async () => {
  const { load } = await import('/pkg/index.js');
  const g = await load(url, { backend: 'cpu' });
  const time = async (n) => (await g.generate({ ...o, steps: n })).ms / 1000;
  await time(1);
  const r = { t1: await time(1), tn: await time(steps), info: g.info };
  g.dispose();
  return r;
})();

const srv = await startServer(join(ROOT, 'www'));
// The model is served from www/models/bench (a link to MODEL_DIR).
const link = join(ROOT, 'www/models/bench');
rmSync(link, { force: true, recursive: true });
symlinkSync(model, link);
const url = `${srv.origin}/models/bench/`;
const rows = [];
// Each figure as soon as it is measured (a big model takes minutes per runtime).
const add = (name, secs) => { rows.push([name, secs]); console.log(`${name}: ${secs.toFixed(3)} s / step`); };
try {
  add('native CLI (burn-flex), 1 thread', native(1));
  add(`native CLI (burn-flex), ${cpus().length} threads`, native(0));
  const fn = `(${inPage})(${JSON.stringify(url)}, ${JSON.stringify(opts)}, ${steps})`;

  const user = mkdtempSync(join(tmpdir(), 'bench-chromium-'));
  const ctx = await chromium.launchPersistentContext(user, { executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true,
    args: ['--disable-background-networking', '--disable-component-update', '--no-first-run', '--no-sandbox'] });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  await page.goto(`${srv.origin}/index.html`);
  const c = await page.evaluate(fn);
  add(`Chromium ${ctx.browser()?.version() ?? ''}, CPU build, ${c.info.threads} thread`, perStep(c.t1, c.tn));
  await ctx.close();
  rmSync(user, { recursive: true, force: true });

  const ff = await puppeteer.launch({ browser: 'firefox', executablePath: process.env.FIREFOX ?? '/usr/bin/firefox-esr', headless: true, protocolTimeout: 0 });
  const fp = await ff.newPage();
  await fp.goto(`${srv.origin}/index.html`);
  const f = await fp.evaluate(fn);
  add(`Firefox ${await ff.version()}, CPU build, ${f.info.threads} thread`, perStep(f.t1, f.tn));
  await ff.close();
} finally {
  await srv.close();
  rmSync(link, { force: true });
}
const base = rows[0][1];
console.log(`${model}, ${size}x${size}, guidance ${opts.guidance}, s per U-Net step over ${steps} vs 1 steps:`);
console.log('| runtime | s / step | vs native 1 thread |\n|---|---|---|');
for (const [name, s] of rows) console.log(`| ${name} | ${s.toFixed(3)} | ${(s / base).toFixed(2)}× |`);
