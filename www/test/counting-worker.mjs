import './gpu-hooks.mjs';
import '../pkg/worker.js';
