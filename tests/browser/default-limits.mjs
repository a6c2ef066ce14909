// Worker hooks (imported before pkg/worker.js) that make the adapter offer, and the device be
// granted, only WebGPU's default buffer limits (128 MiB per binding, 256 MiB per buffer), as on
// many phones and Windows adapters, on any adapter (SwiftShader offers 1 GiB). Import it before
// gpu-hooks.mjs, which records the largest buffer and binding created. Used by the browser suite
// and scripts/scale-check.
//
// `?binding=N&buffer=N` on this module's URL reports smaller limits still: the tiny test models
// then take the same split/tile/chunk paths as real-size ones under 128 MiB. WebGPU grants no
// device less than its defaults, so the smaller grant is enforced here instead: every buffer
// created over the reported `maxBufferSize` and every range bound over the reported
// `maxStorageBufferBindingSize` (what a device granted those limits would reject) is recorded
// in `self.limitViolations`, which the tests require to stay empty.
const DEFAULTS = { maxStorageBufferBindingSize: 128 * 2 ** 20, maxBufferSize: 256 * 2 ** 20 };
const query = new URL(import.meta.url).searchParams;
const CLAMP = {
  maxStorageBufferBindingSize: Number(query.get('binding') ?? DEFAULTS.maxStorageBufferBindingSize),
  maxBufferSize: Number(query.get('buffer') ?? DEFAULTS.maxBufferSize),
};
const clamp = (real) => new Proxy(real, {
  get: (t, k) => (k in CLAMP ? Math.min(CLAMP[k], t[k]) : typeof t[k] === 'function' ? t[k].bind(t) : t[k]),
});
for (const proto of [GPUAdapter.prototype, GPUDevice.prototype]) {
  const get = Object.getOwnPropertyDescriptor(proto, 'limits').get;
  Object.defineProperty(proto, 'limits', { get() { return clamp(get.call(this)); } });
}
const request = GPUAdapter.prototype.requestDevice;
GPUAdapter.prototype.requestDevice = function (d = {}) {
  const limits = { ...(d.requiredLimits ?? {}) };
  for (const k of Object.keys(CLAMP)) if (k in limits) limits[k] = Math.min(limits[k], Math.max(CLAMP[k], DEFAULTS[k]));
  return request.call(this, { ...d, requiredLimits: limits });
};

self.limitViolations = [];
const violation = (what) => { if (self.limitViolations.length < 20) self.limitViolations.push(what); };
const create = GPUDevice.prototype.createBuffer;
GPUDevice.prototype.createBuffer = function (d) {
  if (d.size > CLAMP.maxBufferSize) violation(`a ${d.size}-byte buffer (maxBufferSize ${CLAMP.maxBufferSize})`);
  return create.call(this, d);
};
const bind = GPUDevice.prototype.createBindGroup;
GPUDevice.prototype.createBindGroup = function (d) {
  for (const { resource } of d.entries ?? []) {
    const buffer = resource?.buffer;
    const size = buffer ? resource.size ?? buffer.size - (resource.offset ?? 0) : 0;
    if (size > CLAMP.maxStorageBufferBindingSize) violation(`a ${size}-byte binding (maxStorageBufferBindingSize ${CLAMP.maxStorageBufferBindingSize})`);
  }
  return bind.call(this, d);
};
