// Model folders derived from a fixture by changing its U-Net config and keeping the weights
// the new config asks for: models that differ from the fixture by exactly one block, whose
// per-step GPU counts differ by exactly that block's (gpu.test.mjs, per block kind).
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readSafetensors, writeSafetensors } from './safetensors.mjs';

const UNET_WEIGHTS = 'unet/diffusion_pytorch_model.safetensors';

/** Copies model folder `src` to `dst` with `config` merged into unet/config.json and the U-Net
 *  tensors whose key starts with one of `drop` left out. */
export function unetVariant(src, dst, { config = {}, drop = [] }) {
  rmSync(dst, { recursive: true, force: true });
  cpSync(src, dst, { recursive: true, dereference: true });
  const cfgPath = join(dst, 'unet/config.json');
  writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(readFileSync(cfgPath, 'utf8')), ...config }, null, 2));
  const st = readSafetensors(join(src, UNET_WEIGHTS));
  const kept = st.keys.filter((k) => !drop.some((p) => k.startsWith(p)));
  writeSafetensors(join(dst, UNET_WEIGHTS), Object.fromEntries(kept.map((k) => [k, { ...st.header[k], bytes: st.raw(k) }])));
}

/** The tiny-sd fixture's mid block three ways, each a block away from the next:
 *  `mid-none` (no mid block), `mid-resnet` (`UNetMidBlock2D`: one ResNet) and the fixture's own
 *  `UNetMidBlock2DCrossAttn` (ResNet, transformer, ResNet). */
export const MID_VARIANTS = {
  'mid-none': { config: { mid_block_type: null }, drop: ['mid_block.'] },
  'mid-resnet': { config: { mid_block_type: 'UNetMidBlock2D' }, drop: ['mid_block.attentions.', 'mid_block.resnets.1.'] },
};
