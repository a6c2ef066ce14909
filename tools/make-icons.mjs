// Draws the app icons (an ink drop on an inkstone) as PNGs with no dependencies: node's zlib
// for DEFLATE and a CRC table. Run: node tools/make-icons.mjs (writes www/icons/).
import { deflateSync } from 'node:zlib';
import { writeFileSync } from 'node:fs';

const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc = (buf) => {
  let c = 0xffffffff;
  for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
};
const chunk = (type, data) => {
  const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type), data]);
  const c = Buffer.alloc(4); c.writeUInt32BE(crc(td));
  return Buffer.concat([len, td, c]);
};

function icon(size) {
  const raw = Buffer.alloc(size * (size * 4 + 1));
  for (let y = 0; y < size; y++) {
    raw[y * (size * 4 + 1)] = 0; // filter: none
    for (let x = 0; x < size; x++) {
      const u = (x + 0.5) / size, v = (y + 0.5) / size;
      let rgb = [0x1d, 0x23, 0x30]; // background
      // Inkstone: a rounded slab in the lower half.
      const dx = Math.max(Math.abs(u - 0.5) - 0.28, 0), dy = Math.max(Math.abs(v - 0.7) - 0.08, 0);
      if (Math.hypot(dx, dy) < 0.06) rgb = [0x55, 0x5d, 0x70];
      // Ink drop: a circle with a pointed top.
      const r = Math.hypot(u - 0.5, v - 0.48);
      const tip = v < 0.48 && Math.abs(u - 0.5) < (v - 0.16) * 0.55;
      if (r < 0.17 || tip) rgb = [0x3b, 0x6f, 0xd8];
      if (Math.hypot(u - 0.45, v - 0.45) < 0.04) rgb = [0xb8, 0xcc, 0xf4]; // highlight
      raw.set([...rgb, 255], y * (size * 4 + 1) + 1 + x * 4);
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0); ihdr.writeUInt32BE(size, 4);
  ihdr[8] = 8; ihdr[9] = 6; // 8-bit RGBA
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 9 })), chunk('IEND', Buffer.alloc(0))]);
}

for (const s of [192, 512]) writeFileSync(new URL(`../www/icons/icon-${s}.png`, import.meta.url), icon(s));
