// The page: model picker + cache list, prompt form, progress, preview, result, gallery.
// All model work happens in the package's worker (pkg/index.js); this file is only UI.
import { load, gpuInfo, cachedModels, clearCache } from './pkg/index.js';
import { PRESETS as HUB_PRESETS } from './presets.js';
import { attach as attachLoras, lorasForLoad } from './loras.js';

const $ = (id) => document.getElementById(id);
/** The bundled demo models, then the hub presets (www/presets.js; figures in docs/models.md). */
const PRESETS = [
  { name: 'Tiny demo model (bundled, random weights)', url: new URL('models/tiny-sd/', location.href).href,
    defaults: { steps: 4, guidance: 7.5, width: 64, height: 64 },
    note: 'About 6.6 MB, served with this page: works offline. CLIP + KL decoder + Euler. Its weights are random, so images are noise.' },
  { name: 'Tiny Chinese flow-matching demo (bundled, random weights)', url: new URL('models/tiny-flow/', location.href).href,
    defaults: { steps: 28, guidance: 4.5, width: 64, height: 64 },
    note: 'About 3.3 MB, served with this page: works offline. BERT-Chinese text tower + tiny decoder (live preview) + rectified flow, 28 steps. Random weights.' },
  ...HUB_PRESETS.map((p) => ({ ...p, name: `${p.name} (${p.repo})` })),
];
/** The dtype a load with the Precision picker's value would run in ('auto': wasm's choice for
 *  this adapter, from gpuInfo(); f32 until it is known, or without WebGPU). */
const chosenDtype = () => ($('dtype').value === 'auto' ? (JSON.parse(document.body.dataset.gpu ?? '{}').autoDtype ?? 'f32') : $('dtype').value);

let generator = null;
let controller = null;
const setState = (s) => { document.body.dataset.state = s; };
const fmt = (n) => (n >= 1 << 30 ? `${(n / 2 ** 30).toFixed(2)} GB` : n >= 1 << 20 ? `${(n / 2 ** 20).toFixed(1)} MB` : `${(n / 1024).toFixed(0)} KB`);
const status = (el, text, error = false) => { el.textContent = text; el.classList.toggle('error', error); };

for (const [i, p] of PRESETS.entries()) $('preset').add(new Option(p.name, i));
/** The preset's note with its real download size for the dtype the load would use. */
const showNote = () => {
  const p = PRESETS[$('preset').value];
  const dtype = chosenDtype();
  const size = p.bytes ? ` Download at ${dtype}: ${fmt(p.bytes[dtype])}${p.bytes.f16 === p.bytes.f32 ? '' : ` (${dtype === 'f16' ? 'f32' : 'f16'}: ${fmt(p.bytes[dtype === 'f16' ? 'f32' : 'f16'])})`}.` : '';
  const d = p.defaults;
  $('preset-note').textContent = `${p.note}${size} Recommended: ${d.steps} step${d.steps > 1 ? 's' : ''}, guidance ${d.guidance}, ${d.width}×${d.height}.`;
};
/** A picked preset brings its recommended settings (SDXS and SD-Turbo: 1 step, guidance 0). */
const applyDefaults = () => {
  const d = PRESETS[$('preset').value].defaults;
  $('steps').value = d.steps;
  $('guidance').value = d.guidance;
  if ([...$('size').options].some((o) => Number(o.value) === d.width)) $('size').value = String(d.width);
};
$('preset').onchange = () => { $('model-url').value = ''; showNote(); applyDefaults(); };
$('dtype').onchange = showNote;
showNote();
applyDefaults();

async function refreshCache() {
  const list = await cachedModels().catch(() => []);
  const ul = $('cached');
  ul.replaceChildren();
  if (!list.length) ul.append(Object.assign(document.createElement('li'), { textContent: 'none' }));
  for (const m of list) {
    const li = document.createElement('li');
    const name = PRESETS.find((p) => p.url === m.model)?.name ?? m.model;
    li.append(`${name}: ${fmt(m.bytes)}${m.complete ? '' : ' (partial)'}`);
    const del = Object.assign(document.createElement('button'), { textContent: 'Delete', className: 'secondary' });
    del.onclick = async () => { await clearCache(m.model); refreshCache(); };
    li.append(del);
    ul.append(li);
  }
}
$('clear-cache').onclick = async () => { await clearCache(); refreshCache(); };

async function loadModel() {
  const files = $('model-dir').files;
  const source = files?.length ? files : ($('model-url').value.trim() || PRESETS[$('preset').value].url);
  // The new model goes into the old one's worker (its GPU device and compiled pipelines kept)
  // when it can: same backend, not lost.
  const backendWanted = $('backend').value;
  const reuse = generator && (backendWanted === 'auto' || backendWanted === generator.info.backend) ? generator : undefined;
  if (!reuse) generator?.dispose();
  generator = null;
  $('generate').disabled = true;
  $('load').disabled = true;
  const bar = $('load-progress');
  bar.hidden = false;
  setState('loading');
  try {
    generator = await load(source, {
      reuse,
      dtype: $('dtype').value,
      loras: lorasForLoad(),
      backend: $('backend').value,
      onDeviceLost: ({ reason, message }) => {
        status($('gen-status'), `The GPU device was lost (${reason}${message ? `: ${message}` : ''}). Generate again: `
          + 'WebGPU restarts and the model is reloaded from the cache, with no download.', true);
        setState('device-lost');
      },
      onProgress: (p) => {
        if (p.warning) console.warn(p.warning);
        bar.max = p.totalBytes || 1;
        bar.value = p.bytes;
        // No adapter report (gpuInfo failed) means 'auto' runs on the CPU build.
        const upload = $('backend').value === 'cpu' || !document.body.dataset.gpu ? 'Loading the weights' : 'Uploading to the GPU';
        const what = { resolve: 'Reading model_index.json', download: 'Downloading', upload, lora: 'Downloading LoRA', 'warm-up': 'Compiling GPU kernels', ready: 'Ready' }[p.phase];
        status($('load-status'), `${what}${p.file ? ` ${p.file}` : ''}: ${fmt(p.bytes)} of ${fmt(p.totalBytes)}, file ${Math.min(p.files + 1, p.totalFiles)} of ${p.totalFiles}${p.warning ? ` (${p.warning})` : ''}`);
      },
    });
    const i = generator.info;
    const where = i.backend === 'cpu' ? 'in this tab\'s memory' : 'on the GPU';
    status($('load-status'), `Loaded ${i.model} (${fmt(i.bytes)}, ${i.files.length} files${i.cached ? ', from the cache' : ''}; running in ${i.dtype}, ${fmt(Object.values(i.gpuBytes ?? {}).reduce((a, b) => a + b, 0))} of weights ${where}).${i.warnings.length ? ' ' + i.warnings.join(' ') : ''}`);
    $('backend-status').textContent = i.backend === 'cpu'
      ? `Running on the CPU (WebAssembly${i.gpu.simd128 ? ' SIMD128' : ''}, ${i.threads} thread${i.threads === 1 ? '' : 's'}): no GPU is used, so each step takes many times longer than on WebGPU; the time left is shown from the first step on.`
      : `Running on WebGPU (${i.gpu.adapter || i.gpu.architecture || 'adapter'}).`;
    document.body.dataset.backend = i.backend;
    $('generate').disabled = false;
    attachLoras(generator);
    await refreshCache();
    setState('loaded');
  } catch (e) {
    reuse?.dispose(); // the page offers no way back to the model it was replacing
    status($('load-status'), e.message, true);
    setState('load-error');
  } finally {
    $('load').disabled = false;
    bar.hidden = true;
    refreshCache();
  }
}
$('load').onclick = loadModel;

function draw({ width, height, rgba }) {
  const c = $('canvas');
  c.width = width;
  c.height = height;
  c.getContext('2d').putImageData(new ImageData(rgba, width, height), 0, 0);
}

// Image-to-image: the input picture (a Blob: a dropped or picked file, or a gallery image).
let initImage = null;
const setInitImage = (blob) => {
  initImage = blob;
  const img = $('init-preview');
  if (img.src) URL.revokeObjectURL(img.src);
  img.hidden = !blob;
  if (blob) img.src = URL.createObjectURL(blob);
  else img.removeAttribute('src');
  $('init-clear').disabled = !blob;
  if (blob) $('img2img').open = true;
  document.body.dataset.initImage = blob ? 'set' : 'none';
};
$('init-file').onchange = () => setInitImage($('init-file').files[0] ?? null);
$('init-clear').onclick = () => { $('init-file').value = ''; setInitImage(null); };
$('init-drop').ondragover = (e) => { e.preventDefault(); $('init-drop').classList.add('over'); };
$('init-drop').ondragleave = () => $('init-drop').classList.remove('over');
$('init-drop').ondrop = (e) => {
  e.preventDefault();
  $('init-drop').classList.remove('over');
  const file = [...(e.dataTransfer?.files ?? [])].find((f) => f.type.startsWith('image/'));
  if (file) setInitImage(file);
};
$('strength').oninput = () => { $('strength-value').value = Number($('strength').value).toFixed(2); };
/** A gallery entry: the image and its "Use as input" button. */
function galleryItem(url, blob, title) {
  const fig = document.createElement('figure');
  fig.append(Object.assign(document.createElement('img'), { src: url, alt: $('prompt').value, title }));
  const use = Object.assign(document.createElement('button'), { textContent: 'Use as input', className: 'secondary use-as-input' });
  use.onclick = () => setInitImage(blob);
  fig.append(use);
  return fig;
}

$('randomize').onclick = () => { $('seed').value = Math.floor(Math.random() * 2 ** 32); };
$('cancel').onclick = () => controller?.abort();
$('generate').onclick = async () => {
  controller = new AbortController();
  $('generate').disabled = true;
  $('cancel').disabled = false;
  const size = Number($('size').value);
  const bar = $('step-progress');
  bar.hidden = false;
  bar.value = 0;
  setState('generating');
  status($('gen-status'), 'Starting…');
  const t0 = performance.now();
  try {
    // Custom timesteps set the step count themselves; the sampler picker's '' is the model's own.
    const timesteps = $('timesteps').value.trim() ? $('timesteps').value.split(',').map(Number) : undefined;
    const out = await generator.generate({
      prompt: $('prompt').value, negativePrompt: $('negative').value,
      steps: timesteps ? undefined : Number($('steps').value), guidance: Number($('guidance').value), seed: Number($('seed').value),
      width: size, height: size, scheduler: $('scheduler').value || undefined, timesteps, signal: controller.signal,
      ...(initImage ? { image: initImage, strength: Number($('strength').value) } : {}),
      onStep: (step, total, preview) => {
        bar.max = total;
        bar.value = step;
        // An estimate from this generation's own steps so far (the decode adds about a step).
        const left = ((performance.now() - t0) / step) * (total - step) / 1000;
        status($('gen-status'), `Step ${step} of ${total}${step < total ? `, about ${left < 10 ? left.toFixed(1) : Math.round(left)} s left` : ', decoding'}`);
        if (preview) draw(preview);
      },
    });
    draw(out);
    const blob = await new Promise((r) => $('canvas').toBlob(r, 'image/png'));
    const url = URL.createObjectURL(blob);
    Object.assign($('download'), { href: url, hidden: false, download: `inkstone-${out.seed}.png` });
    $('gallery').prepend(galleryItem(url, blob, `seed ${out.seed}`));
    status($('gen-status'), `Done in ${(out.ms / 1000).toFixed(1)} s (seed ${out.seed}).${out.warnings.length ? ` Note: ${out.warnings.join('; ')}.` : ''}`);
    setState('generated');
  } catch (e) {
    if (e.name === 'DeviceLostError') return; // onDeviceLost said what happened
    status($('gen-status'), e.name === 'AbortError' ? 'Cancelled.' : e.message, e.name !== 'AbortError');
    setState(e.name === 'AbortError' ? 'cancelled' : 'generate-error');
  } finally {
    $('generate').disabled = false;
    $('cancel').disabled = true;
    bar.hidden = true;
  }
};

// For tests and the console.
window.inkstone = { load, gpuInfo, cachedModels, clearCache, setInitImage, get generator() { return generator; } };

(async () => {
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('sw.js').catch((e) => console.warn('service worker:', e));
  refreshCache();
  try {
    const g = await gpuInfo();
    $('gpu').textContent = `WebGPU: ${g.adapter || g.architecture || 'adapter'} (${g.backend}); shader-f16 ${g.shaderF16 ? 'yes' : 'no'}; max buffer ${fmt(g.maxBufferSize)}, max storage binding ${fmt(g.maxStorageBufferBindingSize)}`;
    document.body.dataset.gpu = JSON.stringify(g);
    showNote(); // 'auto' precision now knows whether the GPU has shader-f16
    setState('ready');
  } catch (e) {
    // Still usable: load() falls back to the WebAssembly CPU build (pkg/index.js, backend 'auto').
    const why = navigator.gpu ? 'WebGPU is present but no GPU adapter was granted' : 'this browser has no WebGPU';
    $('gpu').textContent = `No WebGPU here (${why}). Models run on the WebAssembly CPU build instead: it works, but each step takes many times longer than on a GPU.`;
    $('gpu').title = e.message;
    $('backend').value = 'auto';
    setState('no-webgpu');
  }
})();
