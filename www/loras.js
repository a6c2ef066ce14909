// The page's LoRA list: add an adapter by URL or a local .safetensors file, a scale slider per
// adapter, remove. Every change calls the loaded model's setLoras (pkg/index.js), which fuses on
// the GPU; a scale change makes no network request (the adapter is already in the worker).
const $ = (id) => document.getElementById(id);

/** `{ spec: { url } | { file }, scale, label }`, in the order added. */
const entries = [];
let generator = null;
/** A setLoras in flight: changes made meanwhile are applied after it, the latest set only. */
let busy = null;
let again = false;

const status = (text, error = false) => { $('lora-status').textContent = text; $('lora-status').classList.toggle('error', error); };

/** What `load(..., { loras })` and `setLoras` take. */
export const lorasForLoad = () => entries.map((e) => ({ ...e.spec, scale: e.scale }));

const describe = (applied) => applied.map((a) => `${a.file.split('/').pop()} (${a.format}, scale ${a.scale}: ${a.unetModules} U-Net + ${a.textEncoderModules} text-encoder modules)`).join('; ');

/** After a load: the model the list now applies to, and what the load fused. */
export function attach(gen) {
  generator = gen;
  const applied = gen?.info.loras ?? [];
  status(applied.length ? `Fused: ${describe(applied)}.` : entries.length ? '' : 'No LoRA applied.');
}

async function apply() {
  if (!generator) return render();
  if (busy) { again = true; return; }
  busy = (async () => {
    do {
      again = false;
      status('Fusing…');
      try {
        const applied = await generator.setLoras(lorasForLoad());
        status(applied.length ? `Fused: ${describe(applied)}.` : 'No LoRA applied.');
        document.body.dataset.loras = JSON.stringify(applied);
      } catch (e) {
        // The model stays as it was; the entry that failed is the user's to remove.
        status(e.message, true);
        document.body.dataset.loras = 'error';
      }
    } while (again);
  })();
  await busy;
  busy = null;
}

function render() {
  const ul = $('loras');
  ul.replaceChildren();
  for (const [i, e] of entries.entries()) {
    const li = document.createElement('li');
    const slider = Object.assign(document.createElement('input'), { type: 'range', min: -2, max: 2, step: 0.05, value: e.scale, title: 'scale' });
    slider.setAttribute('aria-label', `scale of ${e.label}`);
    const value = Object.assign(document.createElement('span'), { textContent: e.scale.toFixed(2) });
    slider.oninput = () => { value.textContent = Number(slider.value).toFixed(2); };
    // On release only: each change re-fuses the weights on the GPU.
    slider.onchange = () => { e.scale = Number(slider.value); apply(); };
    const remove = Object.assign(document.createElement('button'), { textContent: 'Remove', className: 'secondary' });
    remove.onclick = () => { entries.splice(i, 1); render(); apply(); };
    li.append(`${e.label} `, slider, value, remove);
    ul.append(li);
  }
}

function add(spec, label) {
  entries.push({ spec, scale: 1, label });
  render();
  apply();
}

$('lora-add-url').onclick = () => {
  const url = $('lora-url').value.trim();
  if (!url) return;
  $('lora-url').value = '';
  add({ url }, url.split('/').pop());
};
$('lora-file').onchange = () => {
  for (const file of $('lora-file').files) add({ file }, file.name);
  $('lora-file').value = '';
};
render();
