export interface LoadProgress {
  /** `warm-up`: one small generation that compiles the GPU pipelines, so the first image is not slower. */
  /** `lora`: a LoRA file being downloaded (once; later loads read it from the cache). */
  phase: 'resolve' | 'download' | 'upload' | 'lora' | 'warm-up' | 'ready';
  /** Bytes done in this phase, and the total when known. */
  bytes: number;
  totalBytes: number;
  files: number;
  totalFiles: number;
  /** The file being processed, e.g. `unet/diffusion_pytorch_model.safetensors`. */
  file: string | null;
  warning?: string;
}

/** What the WebGPU adapter offers (`gpuInfo()`, `info.gpu` of a WebGPU load). */
export interface GpuInfo {
  adapter: string;
  vendor: number;
  architecture: string;
  /** wgpu's API name (`BrowserWebGpu`). */
  backend: string;
  shaderF16: boolean;
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  /** The float type a load with `dtype: 'auto'` runs in on this adapter. */
  autoDtype: 'f16' | 'f32';
  jsFeatures: string[];
}

/** `info.gpu` of a load on the WebAssembly CPU build (no GPU is used). */
export interface CpuInfo {
  adapter: 'CPU (WebAssembly)';
  /** burn's CPU backend. */
  backend: 'flex';
  /** Built with WebAssembly SIMD128. */
  simd128: boolean;
  /** Threads it computes on (1: the build is single-threaded, see docs/performance.md). */
  threads: number;
  shaderF16: false;
  /** The wasm32 memory cap (4 GiB): weights and working memory must fit in it. */
  maxMemoryBytes: number;
  /** The float type a load with `dtype: 'auto'` runs in (f32: CPUs gain nothing from f16). */
  autoDtype: 'f32';
  /** Why WebGPU was not used under `backend: 'auto'`, e.g. "this browser has no WebGPU". */
  fallback: string;
}

/** One file of the load plan (decided by the Rust core's model-folder rules). */
export interface ModelFile {
  path: string;
  /** `unet`, `text_encoder`, ...; the file path for files loaded on their own (original TAESD). */
  component: string;
  kind: 'file' | 'weights';
  /** Bytes (null when the server did not say before the download). */
  size: number | null;
}

export interface LoadInfo {
  model: string;
  /** Where the model runs: WebGPU, or the WebAssembly CPU build. */
  backend: 'webgpu' | 'cpu';
  /** Threads the CPU build computes on (1); null on WebGPU. */
  threads: number | null;
  gpu: GpuInfo | CpuInfo;
  /** The float type the model runs in on this device (the CPU build: f32 unless asked). */
  dtype: 'f16' | 'f32';
  /** True when every file came from the cache (no network request). */
  cached: boolean;
  warnings: string[];
  /** Components model_index.json lists that the pipeline never runs, so never downloaded
   *  (`safety_checker`, `feature_extractor`, ...). */
  skipped: string[];
  files: ModelFile[];
  /** Size of the wasm heap after the load (wasm memory only grows: the peak so far). */
  wasmHeapBytes: number;
  /** How many times the model was reloaded onto a new GPU device after a lost one. */
  recoveries: number;
  /** Tensor count per component (those held off the GPU, `deferred`, included). */
  components: Record<string, number>;
  /** Bytes each component's weights take on the GPU (in the load's dtype; on the CPU build,
   *  in the wasm memory). The vae's encoder (`vae.encoder`) appears only after the first
   *  image-to-image `generate({ image })`: until then its tensors stay off the device
   *  (text-to-image never runs them). */
  gpuBytes: Record<string, number>;
  /** Tensor counts kept off the GPU until needed: `{ 'vae.encoder': n }` before the first
   *  image-to-image call, `{}` when the model has no encoder. */
  deferred: Record<string, number>;
  bytes: number;
  /** The LoRA adapters fused into the weights now (`load`'s `loras`, then `setLoras`). */
  loras: LoraInfo[];
}

/** A LoRA adapter (`.safetensors`: diffusers/PEFT, older diffusers or kohya/A1111 keys,
 *  LCM-LoRA included) and its scale (default 1). */
export type LoraSpec = { url: string | URL; scale?: number } | { file: File; scale?: number };

/** What a fused adapter did. */
export interface LoraInfo {
  /** The URL, or the picked file's name. */
  file: string;
  format: 'peft' | 'diffusers-old' | 'kohya';
  scale: number;
  /** Weights adapted in all, in the U-Net and in the text encoder. */
  modules: number;
  unetModules: number;
  textEncoderModules: number;
}

export interface LoadOptions {
  /** LoRA adapters fused into the U-Net and text encoder after the upload (downloaded once,
   *  then read from the IndexedDB cache). */
  loras?: LoraSpec[];
  onProgress?: (p: LoadProgress) => void;
  /** Called when the GPU device is lost (driver reset, tab sent to the background, iOS
   *  out-of-memory). A generation in flight rejects with a `DeviceLostError`; the next
   *  `generate()` starts a new device and reloads the model from the cache (no re-download). */
  onDeviceLost?: (lost: { reason: string; message: string }) => void;
  /** IndexedDB chunk size in bytes (default 16 MiB). */
  chunkSize?: number;
  /** Where worker.js is served, if not next to this module. */
  workerUrl?: string | URL;
  /** Load into the worker of this Generator instead of a new one: the same WebGPU device, so
   *  the GPU kernels it compiled are kept (switching models then skips most of the compiling
   *  that makes a fresh load slow; reloading the same model skips all of it). That Generator
   *  is replaced: its calls reject and its `dispose()` does nothing. It must be idle (no
   *  `generate()` or `setLoras()` in flight). If this load fails, the old Generator stays
   *  usable and reloads its model (from the cache) at its next call. Not with `workerUrl`
   *  (the worker is the reused one's), nor with a `backend` other than the one it runs on. */
  reuse?: Generator;
  /** Where the model runs. `'auto'` (default): WebGPU when an adapter is granted, else the
   *  WebAssembly CPU build (`inkstone_cpu_bg.wasm`, fetched only then; single-threaded, many
   *  times slower than a GPU). `'webgpu'` rejects at once where there is no WebGPU; `'cpu'`
   *  always takes the CPU build. On the CPU build a model whose weights exceed the wasm32
   *  memory (4 GiB, or `maxGpuBytes`) is refused before its download. */
  backend?: 'auto' | 'webgpu' | 'cpu';
  /** Float type of weights and activations. `'auto'` (default): f16 when the adapter has
   *  `shader-f16` (half the GPU memory), else f32. `'f16'` on an adapter without it rejects
   *  before anything is downloaded. */
  dtype?: 'auto' | 'f16' | 'f32';
  /** Refuse the model, before anything is uploaded to the GPU, when its weights would take
   *  more GPU memory than this (bytes; computed from the files' headers: a local folder is
   *  refused before it is read, a URL after the download). WebGPU reports no memory size, so
   *  only the caller can know the budget (e.g. 1.5e9 on phones). */
  maxGpuBytes?: number;
  /** Run the `warm-up` phase (default true): one 1-step generation at the model's default size,
   *  capped at 64 px for SD decoders (8 latent pixels a side), that compiles the GPU pipelines,
   *  so the first image is about as fast as the next. `false`
   *  makes the load shorter and the first image pay the compilation instead. The CPU build
   *  compiles nothing and skips it. */
  warmUp?: boolean;
}

export interface Preview {
  width: number;
  height: number;
  rgba: Uint8ClampedArray;
}

/** Samplers by name, built from the model's own scheduler config (betas, prediction type,
 *  spacing, offsets) like diffusers' `from_config`. `flow-euler` fits flow-matching models
 *  only, every other name the rest: the wrong family rejects. */
export type SchedulerName =
  | 'euler' | 'euler-a'
  | 'dpm++2m' | 'dpm++2m-karras' | 'dpm++2m-sde' | 'dpm++2m-sde-karras'
  | 'ddim' | 'pndm' | 'lcm' | 'ddpm' | 'flow-euler';

/** Options are strict: an unknown name, a wrong type, a non-integer or out-of-range `steps`,
 *  `width`, `height` or `seed`, or a non-finite `guidance` rejects with an error naming it. */
export interface GenerateOptions {
  prompt: string;
  negativePrompt?: string;
  /** A positive integer (default: the sampler's usual count). Omit it with `timesteps`. */
  steps?: number;
  guidance?: number;
  /** Random when omitted; returned in the output. */
  seed?: number;
  /** Default: the model's own size, `unet` `sample_size` × the decoder's scale (512 for
   *  SD-1.x-class and SDXS-512, 768 for a `sample_size` of 96), as diffusers and the CLI; with
   *  `image`, the image's size rounded down to a multiple of the scale. */
  width?: number;
  height?: number;
  /** Initial latents, [1, C, height/8, width/8] (with `image`: the noise added to it). */
  latents?: Float32Array;
  /** A sampler instead of the model's own (default). */
  scheduler?: SchedulerName;
  /** Explicit descending timesteps, e.g. `[999]` for one-step SDXS or `[999, 749, 499, 249]`;
   *  for the samplers whose diffusers `set_timesteps` takes them: euler, lcm, ddpm, dpm++2m
   *  (not the Karras ones), flow-euler. */
  timesteps?: number[];
  /** Explicit descending noise levels: for euler the final one included (`[14.6, 3, 0]` is two
   *  steps), for flow-euler one per step. Not together with `timesteps`. */
  sigmas?: number[];
  /** Image-to-image (diffusers' img2img): the picture to start from. A `Float32Array` is
   *  RGB [3, height, width] in [0, 1] (`width`/`height` then required: its size); any other
   *  kind is read as 8-bit RGBA, alpha dropped. Without `width`/`height` the output has the
   *  image's size rounded down to a multiple of 8; an image of another size is resized
   *  (nearest) with a warning. `latents` then gives the noise added to the encoded image. */
  image?: ImageData | ImageBitmap | HTMLImageElement | HTMLCanvasElement | Blob | Float32Array;
  /** With `image`: how much of the schedule runs, in (0, 1] (default 0.8): the last
   *  `floor(steps × strength)` steps (at least one, else it rejects). */
  strength?: number;
  /** Cancels between steps; the promise rejects with an AbortError. */
  signal?: AbortSignal;
  onStep?: (step: number, total: number, preview: Preview | null) => void;
}

export interface GenerateOutput {
  width: number;
  height: number;
  rgba: Uint8ClampedArray;
  /** [3, H, W] in [0, 1]. */
  pixels: Float32Array;
  seed: number;
  ms: number;
  /** Size of the wasm heap after this generation (the peak so far). */
  wasmHeapBytes: number;
  /** E.g. a prompt longer than the text encoder's limit, cut as diffusers does. */
  warnings: string[];
}

export declare class Generator {
  readonly info: LoadInfo;
  generate(options: GenerateOptions): Promise<GenerateOutput>;
  /** Fuses exactly `loras` (`[]` removes them all), replacing the set before; an adapter
   *  already added is not fetched again, so a change of scales makes no network request. On
   *  an error the model stays as it was. */
  setLoras(loras: LoraSpec[], options?: { onProgress?: (p: LoadProgress) => void }): Promise<LoraInfo[]>;
  dispose(): void;
}

/** Rejects (never stays pending) when the model, the device or the worker fails: no WebGPU under
 *  `backend: 'webgpu'`, a CPU build that is not deployed, a worker that fails to start. */
export declare function load(source: string | URL | FileList | File[], options?: LoadOptions): Promise<Generator>;
export declare function gpuInfo(options?: { workerUrl?: string | URL }): Promise<GpuInfo>;
export declare function cachedModels(): Promise<{ model: string; bytes: number; complete: boolean }[]>;
export declare function clearCache(model?: string): Promise<void>;
