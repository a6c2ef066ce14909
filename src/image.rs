//! Turning the pipeline's `[3, H, W]` floats in [0, 1] into bytes people can look at.

use crate::error::{Error, Result};

/// 8-bit interleaved RGB (or RGBA with `alpha`), rounding as diffusers' `numpy_to_pil` does:
/// `(x * 255).round()`.
pub fn to_interleaved_u8(planar: &[f32], width: usize, height: usize, alpha: bool) -> Vec<u8> {
    let plane = width * height;
    assert_eq!(planar.len(), 3 * plane, "expected [3, {height}, {width}] pixels");
    let channels = if alpha { 4 } else { 3 };
    let mut out = Vec::with_capacity(plane * channels);
    for i in 0..plane {
        for c in 0..3 {
            out.push((planar[c * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8);
        }
        if alpha {
            out.push(255);
        }
    }
    out
}

/// A standard 8-bit RGB PNG.
pub fn encode_png(planar: &[f32], width: usize, height: usize) -> Result<Vec<u8>> {
    let rgb = to_interleaved_u8(planar, width, height, false);
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| Error::InvalidArgument(format!("png: {e}")))?;
    writer.write_image_data(&rgb).map_err(|e| Error::InvalidArgument(format!("png: {e}")))?;
    writer.finish().map_err(|e| Error::InvalidArgument(format!("png: {e}")))?;
    Ok(bytes)
}
