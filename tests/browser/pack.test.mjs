// `npm pack` of pkg/ gives a tarball that a plain HTML page can use after
// `npm install ./inkstone-*.tgz`: installs offline, loads the tiny model in Chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launchChromium, ROOT } from './chromium.mjs';
import { startServer } from './server.mjs';


test('npm pack tarball installs and works from a plain HTML page', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'inkstone-pack-'));
  let srv, ctx;
  try {
    execFileSync('npm', ['pack', join(ROOT, 'pkg'), '--pack-destination', dir], { stdio: 'pipe' });
    const tgz = readdirSync(dir).find((f) => /^inkstone-.*\.tgz$/.test(f));
    assert.ok(tgz, 'tarball');
    const app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), '{"name":"plain-page","private":true}');
    execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', join(dir, tgz)], { cwd: app, stdio: 'pipe' });
    const files = readdirSync(join(app, 'node_modules/inkstone')).sort();
    for (const f of ['index.js', 'index.d.ts', 'worker.js', 'inkstone_core.js', 'inkstone_core_bg.wasm', 'package.json']) {
      assert.ok(files.includes(f), `${f} in ${files}`);
    }
    cpSync(join(ROOT, 'tests/fixtures/tiny-sd'), join(app, 'tiny-sd'), { recursive: true });
    writeFileSync(join(app, 'index.html'), '<!doctype html><script type="module" src="main.js"></script>');
    writeFileSync(join(app, 'main.js'), `import { load } from './node_modules/inkstone/index.js';
      load(new URL('tiny-sd/', location.href).href).then(
        (g) => { document.body.dataset.result = JSON.stringify(g.info.components); },
        (e) => { document.body.dataset.result = 'error: ' + e.message; });`);
    srv = await startServer(app);
    ctx = await launchChromium();
    const page = await ctx.newPage();
    await page.goto(`${srv.origin}/index.html`);
    await page.waitForFunction(() => document.body?.dataset.result, null, { timeout: 90_000 });
    const result = await page.evaluate(() => document.body.dataset.result);
    assert.doesNotMatch(result, /^error/, result);
    assert.deepEqual(Object.keys(JSON.parse(result)).sort(), ['text_encoder', 'unet', 'vae']);
  } finally {
    await ctx?.close();
    await srv?.close();
    rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
  }
});
