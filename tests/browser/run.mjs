// `npm test`: the browser suite, two test files at a time. A file's Chromium leaves a core idle
// much of the time (SwiftShader compiles each GPU pipeline on one thread; the page and the
// worker wait on each other), so a second file fills it. Longest file first, so that both
// lanes end near the same time. node's CLI runner sorts the files by name; run() keeps the
// order given.
//   node run.mjs                 every *.test.mjs here
//   node run.mjs gpu web         those files only
// BROWSER_TEST_CONCURRENCY=1 runs the files one after another.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { run } from 'node:test';
import { tap } from 'node:test/reporters';

const DIR = new URL('.', import.meta.url).pathname;
/** Longest first (one at a time on an idle 2-core machine, Dec 7: web 9.5 min, limits 4.3, gpu 3.5,
 *  lora 3.2, img2img 2.4, the rest ~2.5 together). */
const ORDER = ['web', 'limits', 'gpu', 'lora', 'img2img', 'glue', 'pack', 'cpu'];
const rank = (f) => { const i = ORDER.indexOf(f.replace(/\.test\.mjs$/, '')); return i < 0 ? ORDER.length : i; };

const asked = process.argv.slice(2).map((a) => (a.endsWith('.test.mjs') ? a : `${a}.test.mjs`));
const files = (asked.length ? asked : readdirSync(DIR).filter((f) => f.endsWith('.test.mjs')))
  .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
  .map((f) => join(DIR, f));

const stream = run({ files, concurrency: Number(process.env.BROWSER_TEST_CONCURRENCY ?? 2), timeout: 30 * 60_000 });
stream.on('test:fail', () => { process.exitCode = 1; });
stream.compose(tap).pipe(process.stdout);
