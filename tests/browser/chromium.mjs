// The suite's one way to start Debian chromium (and its one set of paths): every test file
// launches through here, so the flags, the profile location and the clean-up exist once.
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const WWW = join(ROOT, 'www');
export const OUT = join(ROOT, 'tests/output');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** The native CLI the browser images are compared with (test.sh builds and exports it). */
export const INKSTONE_BIN = process.env.INKSTONE_BIN
  ?? join(process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, '.cache/inkstone-target'), 'debug/inkstone');

/** No background traffic (the request logs count the page's own), a fresh profile each launch. */
const ARGS = ['--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run', '--disable-quic', '--no-sandbox'];

/** Profiles live on the repo's volume, not in the OS temp dir: Chromium sizes an origin's quota
 *  from the volume its profile is on, and a small tmpfs /tmp would leave the service worker's
 *  precache (the 14 MB wasm) and the model cache without room. */
const PROFILES = join(OUT, 'profiles');

/** A persistent context with a fresh profile; `close()` also removes the profile. `webgpu`
 *  adds `--enable-unsafe-webgpu` (SwiftShader's adapter); `args` adds flags. */
export async function launchChromium({ webgpu = true, args = [], ...options } = {}) {
  mkdirSync(PROFILES, { recursive: true });
  const dir = mkdtempSync(join(PROFILES, 'chromium-'));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM, headless: true, ...options,
    args: [...ARGS, ...(webgpu ? ['--enable-unsafe-webgpu'] : []), ...args],
  });
  const close = ctx.close.bind(ctx);
  // Chromium writes its caches until the context is closed: close it before removing them.
  ctx.close = async () => { await close(); rmSync(dir, { recursive: true, force: true, maxRetries: 5 }); };
  ctx.profileDir = dir;
  return ctx;
}

/**
 * A module worker for `load(url, { workerUrl })` that imports the suite's one GPU-counting hook
 * (gpu-hooks.mjs; with `limits`, default-limits.mjs before it, that URL query appended) and then
 * the package's worker.js, static imports in that order (shared/README.md). Written under
 * www/test/ as `name`; returns its path below the server root. Files are written to a
 * temporary name and renamed, so a test file running beside another never serves a half-written
 * hook.
 */
export function writeHookedWorker(name, { limits = null } = {}) {
  const dir = join(WWW, 'test');
  mkdirSync(dir, { recursive: true });
  const put = (file, text) => {
    const tmp = join(dir, `.${file}.${process.pid}`);
    writeFileSync(tmp, text);
    renameSync(tmp, join(dir, file));
  };
  put('gpu-hooks.mjs', readFileSync(join(ROOT, 'tests/browser/gpu-hooks.mjs')));
  if (limits !== null) put('default-limits.mjs', readFileSync(join(ROOT, 'tests/browser/default-limits.mjs')));
  const imports = [...(limits !== null ? [`./default-limits.mjs${limits}`] : []), './gpu-hooks.mjs', '../pkg/worker.js'];
  put(name, imports.map((m) => `import '${m}';\n`).join(''));
  return `/test/${name}`;
}
