// Helpers every browser test file uses: opening the app, comparing images with the native CLI.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { INKSTONE_BIN, OUT } from './chromium.mjs';
import { readSafetensors } from './safetensors.mjs';

/** Largest absolute difference of two equally long arrays. */
export const maxAbs = (a, b) => {
  assert.equal(a.length, b.length, 'length');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

/** The native CLI's image (float [3, H, W]) for `model` with CLI `args`; its tensor file is
 *  tests/output/native-`name`.safetensors. */
export function nativeImage(model, args, name) {
  assert.ok(existsSync(INKSTONE_BIN), `native CLI not built at ${INKSTONE_BIN} (run cargo build first)`);
  const outTensor = join(OUT, `native-${name}.safetensors`);
  execFileSync(INKSTONE_BIN, ['generate', '--model', model, ...args, '--out-tensor', outTensor], { stdio: 'pipe' });
  return readSafetensors(outTensor).tensor('image').data;
}

const logged = new WeakSet();
/** Sends the page's console errors and warnings to the test log, once per page. */
export function logConsole(page) {
  if (logged.has(page)) return page;
  logged.add(page);
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') console.log(`  [page ${m.type()}] ${m.text()}`); });
  return page;
}

/** The app (index.html of `origin`) in the first page of `context`, ready or saying there is no
 *  WebGPU; the page's console errors and warnings go to the test log. */
export async function openApp(context, origin) {
  const page = logConsole(context.pages()[0] ?? (await context.newPage()));
  // In front of any page a test keeps open beside it: a file picker (setInputFiles on a
  // folder input) only opens in the active tab.
  await page.bringToFront();
  await page.goto(`${origin}/index.html`);
  await page.waitForFunction(() => ['ready', 'no-webgpu'].includes(document.body.dataset.state), null, { timeout: 60_000 });
  return page;
}
