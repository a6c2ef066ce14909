
const c = self.gpuCounts = { liveBytes: 0, peakBytes: 0, buffers: 0, dispatches: 0, submits: 0 };
const sizes = new WeakMap();
const create = GPUDevice.prototype.createBuffer;
GPUDevice.prototype.createBuffer = function (d) {
  const b = create.call(this, d);
  sizes.set(b, d.size);
  c.liveBytes += d.size; c.buffers += 1; c.peakBytes = Math.max(c.peakBytes, c.liveBytes);
  return b;
};
const destroy = GPUBuffer.prototype.destroy;
GPUBuffer.prototype.destroy = function () {
  if (sizes.has(this)) { c.liveBytes -= sizes.get(this); c.buffers -= 1; sizes.delete(this); }
  return destroy.call(this);
};
const dispatch = GPUComputePassEncoder.prototype.dispatchWorkgroups;
GPUComputePassEncoder.prototype.dispatchWorkgroups = function (...a) { c.dispatches += 1; return dispatch.apply(this, a); };
const submit = GPUQueue.prototype.submit;
GPUQueue.prototype.submit = function (...a) { c.submits += 1; return submit.apply(this, a); };
