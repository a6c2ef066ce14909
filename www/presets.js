// Hub presets for the model picker (the page adds its two bundled demo models itself).
//
// Facts and sources: docs/models.md. `bytes` is what Inkstone downloads for a load in that dtype:
// the `.fp16` variant when the repo has one (else the full file, converted on the fly) for f16; the
// full-precision file (else the `.fp16` one) for f32. Weight sizes are tensor-data bytes computed
// from parameter counts (checked against the hub's rounded file sizes; file headers add a few
// hundred kB), plus configs/tokenizer files at their listed sizes. Figures that rest on an
// assumption are flagged in docs/models.md (sdxs-512-0.9's text encoder, segmind/tiny-sd's text
// encoder dtype). segmind/small-sd is left out: its weight sizes could not be found.
//
// On `main`, segmind/tiny-sd and Taiyi ship pickled `.bin` weights only, and sdxs-512-0.9's
// text_encoder appears to be `.bin`-only too (docs/models.md); Inkstone reads safetensors only, so
// those presets point at the hub revision (a PR branch) that adds the safetensors files.

const hub = (repo, revision = 'main') => `https://huggingface.co/${repo}/resolve/${encodeURIComponent(revision)}/`;

export const PRESETS = [
  {
    id: 'sdxs-512-0.9',
    name: 'SDXS-512 0.9',
    repo: 'IDKiro/sdxs-512-0.9',
    url: hub('IDKiro/sdxs-512-0.9', 'refs/pr/2'), // main: text_encoder .bin only
    bytes: { f16: 2682920889, f32: 2682920889 },
    defaults: { steps: 1, guidance: 0, width: 512, height: 512 },
    note: 'One-step SD-2.1-base distillate (≈0.33B U-Net, OpenCLIP-H text tower, TAESD decoder) run with a single step and CFG 0, English prompts; all weights are f32 on disk.',
  },
  {
    id: 'sdxs-512-dreamshaper',
    name: 'SDXS-512 DreamShaper',
    repo: 'IDKiro/sdxs-512-dreamshaper',
    url: hub('IDKiro/sdxs-512-dreamshaper'),
    bytes: { f16: 1766596969, f32: 1766596969 },
    defaults: { steps: 1, guidance: 0, width: 512, height: 512 },
    note: 'One-step SD-1.5/DreamShaper distillate (0.32B U-Net, CLIP ViT-L text tower, TAESD decoder) run with a single step and CFG 0, English prompts; all weights are f32 on disk.',
  },
  {
    id: 'bk-sdm-tiny',
    name: 'BK-SDM-Tiny',
    repo: 'nota-ai/bk-sdm-tiny',
    url: hub('nota-ai/bk-sdm-tiny'),
    bytes: { f16: 1061788046, f32: 2121986660 },
    defaults: { steps: 25, guidance: 7.5, width: 512, height: 512 },
    note: 'Block-removed, distilled SD-1.4 (0.32B U-Net without mid block, CLIP ViT-L, KL VAE) sampled with PNDM, 25 steps, CFG 7.5, English prompts.',
  },
  {
    id: 'bk-sdm-small',
    name: 'BK-SDM-Small',
    repo: 'nota-ai/bk-sdm-small',
    url: hub('nota-ai/bk-sdm-small'),
    bytes: { f16: 1379712239, f32: 2757834693 },
    defaults: { steps: 25, guidance: 7.5, width: 512, height: 512 },
    note: 'Block-removed, distilled SD-1.4 (0.48B U-Net without mid block, CLIP ViT-L, KL VAE) sampled with PNDM, 25 steps, CFG 7.5, English prompts.',
  },
  {
    id: 'segmind-tiny-sd',
    name: 'Segmind Tiny-SD',
    repo: 'segmind/tiny-sd',
    url: hub('segmind/tiny-sd', 'refs/pr/3'), // main: .bin only
    bytes: { f16: 1061785712, f32: 1061785712 },
    defaults: { steps: 25, guidance: 7.5, width: 512, height: 512 },
    note: 'BK-SDM-Tiny-style distilled SD-1.5 (0.32B U-Net, CLIP ViT-L, KL VAE, f16 weights; the safetensors of PR 3) with a standard SD-1.x multi-step sampler, English prompts; the card gives no step/CFG numbers.',
  },
  {
    id: 'sd-turbo',
    name: 'SD-Turbo',
    repo: 'stabilityai/sd-turbo',
    url: hub('stabilityai/sd-turbo'),
    bytes: { f16: 2581495595, f32: 5161400449 },
    defaults: { steps: 1, guidance: 0, width: 512, height: 512 },
    note: 'Adversarially distilled SD 2.1 (0.87B U-Net, OpenCLIP-H text tower, KL VAE) sampled with Euler on trailing timesteps, 1–4 steps at CFG 0, English prompts.',
  },
  {
    id: 'taiyi-1b-chinese',
    name: 'Taiyi 1B Chinese',
    repo: 'IDEA-CCNL/Taiyi-Stable-Diffusion-1B-Chinese-v0.1',
    url: hub('IDEA-CCNL/Taiyi-Stable-Diffusion-1B-Chinese-v0.1', 'refs/pr/37'), // main: .bin only
    bytes: { f16: 4181882857, f32: 4181882857 },
    defaults: { steps: 20, guidance: 7.5, width: 512, height: 512 },
    note: 'SD-1.4 with its text tower replaced by a Chinese BERT (RoBERTa-wwm, 102M) and a full 0.86B U-Net, standard SD-1.x multi-step sampling at CFG 7.5, Chinese prompts; f32 weights (the safetensors of PR 37).',
  },
];
