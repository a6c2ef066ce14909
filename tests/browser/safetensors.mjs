// Reading safetensors files in node, for the browser tests (fixtures, references, the native
// CLI's --out-tensor output): one reader for every test file.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';

/** The file's tensor keys, each tensor's header entry and raw bytes, F32 tensors by name
 *  (`tensor`: `{ shape, data }`; `f32`: the data alone), and the JSON `note` metadata. */
export function readSafetensors(path) {
  const b = readFileSync(path);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString());
  const raw = (key) => {
    const [s, e] = header[key].data_offsets;
    return b.subarray(8 + n + s, 8 + n + e);
  };
  const tensor = (key) => {
    const { dtype, shape } = header[key];
    assert.equal(dtype, 'F32', `${path}: ${key}`);
    const r = raw(key);
    return { shape, data: new Float32Array(r.buffer.slice(r.byteOffset, r.byteOffset + r.length)) };
  };
  const keys = Object.keys(header).filter((k) => k !== '__metadata__');
  return { header, keys, raw, tensor, f32: (key) => tensor(key).data, dataSize: b.length - 8 - n, note: JSON.parse(header.__metadata__?.note ?? 'null') };
}

/** Writes a safetensors file of `tensors` (`{ key: { dtype, shape, bytes } }`), offsets in key
 *  order, as the format's writers do: for fixtures derived from another file. */
export function writeSafetensors(path, tensors) {
  const header = {};
  let offset = 0;
  for (const [key, { dtype, shape, bytes }] of Object.entries(tensors)) {
    header[key] = { dtype, shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
  }
  let json = Buffer.from(JSON.stringify(header));
  // The data starts 8-byte aligned (the header is padded with spaces, as safetensors does).
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, ' ')]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, json, ...Object.values(tensors).map((t) => t.bytes)]));
}
