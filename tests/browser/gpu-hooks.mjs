// The one GPU-counting hook of the browser suite, imported by a test worker before
// pkg/worker.js (static imports, in order: shared/README.md): it wraps the WebGPU calls the
// package's worker makes and counts them in `self.gpuCounts`:
//   dispatches (and per kernel: the pipeline label cubecl gives), submits, read-backs (buffer
//   maps), pipeline compilations, live/peak GPU bytes and buffers,
// plus the largest buffer created (`self.largestBuffer`) and the largest range bound to one
// kernel (`self.largestBinding`: a pool buffer may exceed a binding limit, a binding may not),
// and snapshots of the counters (`self.gpuSnaps`) when the worker reports its warm-up, a step or
// a result. Tests read them with `page.workers()[i].evaluate(...)`. `self.gpuInject` (a RegExp
// over kernel labels) adds an empty dispatch after each matching kernel: a budget test's control.
const c = self.gpuCounts = { dispatches: 0, submits: 0, reads: 0, pipelines: 0, kernels: {}, liveBytes: 0, peakBytes: 0, buffers: 0 };
const snaps = self.gpuSnaps = [];
const snap = (what) => snaps.push({ what, t: performance.now(), dispatches: c.dispatches, submits: c.submits, reads: c.reads, pipelines: c.pipelines, kernels: { ...c.kernels } });
self.largestBuffer = 0;
self.largestBinding = 0;

const sizes = new WeakMap();
const create = GPUDevice.prototype.createBuffer;
GPUDevice.prototype.createBuffer = function (d) {
  const b = create.call(this, d);
  sizes.set(b, d.size);
  c.liveBytes += d.size; c.buffers += 1; c.peakBytes = Math.max(c.peakBytes, c.liveBytes);
  self.largestBuffer = Math.max(self.largestBuffer, d.size);
  return b;
};
const destroy = GPUBuffer.prototype.destroy;
GPUBuffer.prototype.destroy = function () {
  if (sizes.has(this)) { c.liveBytes -= sizes.get(this); c.buffers -= 1; sizes.delete(this); }
  return destroy.call(this);
};
const bind = GPUDevice.prototype.createBindGroup;
GPUDevice.prototype.createBindGroup = function (d) {
  for (const { resource } of d.entries ?? []) {
    const buffer = resource?.buffer;
    if (buffer) self.largestBinding = Math.max(self.largestBinding, resource.size ?? buffer.size - (resource.offset ?? 0));
  }
  return bind.call(this, d);
};

const labels = new WeakMap();
for (const name of ['createComputePipeline', 'createComputePipelineAsync']) {
  const f = GPUDevice.prototype[name];
  GPUDevice.prototype[name] = function (d) {
    c.pipelines += 1;
    const p = f.call(this, d);
    const label = (d.label || '?').replace(/_[0-9a-f]{6,}.*$/, '');
    if (p instanceof Promise) return p.then((q) => (labels.set(q, label), q));
    labels.set(p, label);
    return p;
  };
}
let current = '?';
const setPipeline = GPUComputePassEncoder.prototype.setPipeline;
GPUComputePassEncoder.prototype.setPipeline = function (p) { current = labels.get(p) ?? '?'; return setPipeline.call(this, p); };
for (const name of ['dispatchWorkgroups', 'dispatchWorkgroupsIndirect']) {
  const f = GPUComputePassEncoder.prototype[name];
  GPUComputePassEncoder.prototype[name] = function (...a) {
    c.dispatches += 1;
    c.kernels[current] = (c.kernels[current] ?? 0) + 1;
    const r = f.apply(this, a);
    // The budget tests' positive control: one more (empty) dispatch after each kernel whose
    // label matches `self.gpuInject`, as a kernel added to the model would be.
    if (self.gpuInject?.test(current) && name === 'dispatchWorkgroups') {
      c.dispatches += 1;
      f.call(this, 0);
    }
    return r;
  };
}
const submit = GPUQueue.prototype.submit;
GPUQueue.prototype.submit = function (...a) { c.submits += 1; return submit.apply(this, a); };
const map = GPUBuffer.prototype.mapAsync;
GPUBuffer.prototype.mapAsync = function (...a) { c.reads += 1; return map.apply(this, a); };

const post = self.postMessage.bind(self);
self.postMessage = (m, ...rest) => {
  if (m?.type === 'progress' && m.progress?.phase === 'warm-up' && !snaps.some((s) => s.what === 'warm-up')) snap('warm-up');
  if (m?.type === 'step') snap('step');
  if (m?.type === 'done') snap('done');
  return post(m, ...rest);
};
