//! Turning the pipeline's `[3, H, W]` floats in [0, 1] into bytes people can look at.

use crate::error::{Error, Result};

/// 8-bit interleaved RGB (or RGBA with `alpha`), rounding as diffusers' `numpy_to_pil` does:
/// `(x * 255).round()` on float32, and numpy rounds halves to even.
pub fn to_interleaved_u8(planar: &[f32], width: usize, height: usize, alpha: bool) -> Vec<u8> {
    let plane = width * height;
    assert_eq!(planar.len(), 3 * plane, "expected [3, {height}, {width}] pixels");
    let channels = if alpha { 4 } else { 3 };
    let mut out = Vec::with_capacity(plane * channels);
    for i in 0..plane {
        for c in 0..3 {
            out.push((planar[c * plane + i].clamp(0.0, 1.0) * 255.0).round_ties_even() as u8);
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

/// Reads an init image (img2img) from PNG or JPEG bytes, named `name` in errors. Conversions,
/// as PIL's `convert("RGB")` where it has one: grayscale is copied to R, G and B; an alpha
/// channel (RGBA, gray + alpha, a palette's transparency) is dropped, not composited;
/// palettes and 1/2/4-bit samples are expanded. 16-bit PNG samples keep their precision
/// (`v / 65535`; PIL would cut them to 8 bits or clip them). CMYK JPEGs are converted to RGB by
/// the decoder.
pub fn decode_init_image(name: &str, bytes: &[u8]) -> Result<crate::img2img::InitImage> {
    let bad = |what: String| Error::InvalidArgument(format!("{name}: {what}"));
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes).map_err(|e| bad(format!("not a readable PNG image ({e})")))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes).map_err(|e| bad(format!("not a readable JPEG image ({e})")))
    } else {
        Err(bad("not a PNG or JPEG image".into()))
    }
}

fn decode_png(bytes: &[u8]) -> std::result::Result<crate::img2img::InitImage, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let (color, depth) = reader.output_color_type();
    let channels = color.samples();
    let (w, h) = (frame.width as usize, frame.height as usize);
    let samples: Vec<f32> = match depth {
        png::BitDepth::Sixteen => {
            buf[..frame.buffer_size()].chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as f32 / 65535.0).collect()
        }
        png::BitDepth::Eight => buf[..frame.buffer_size()].iter().map(|&v| v as f32 / 255.0).collect(),
        other => return Err(format!("bit depth {other:?} after expansion")),
    };
    planar_rgb(w, h, channels, &samples)
}

fn decode_jpeg(bytes: &[u8]) -> std::result::Result<crate::img2img::InitImage, String> {
    use zune_core::colorspace::ColorSpace;
    let options = zune_core::options::DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| format!("{e:?}"))?;
    let (w, h) = decoder.dimensions().ok_or("no dimensions")?;
    let channels = decoder.output_colorspace().ok_or("no colour space")?.num_components();
    let samples: Vec<f32> = pixels.iter().map(|&v| v as f32 / 255.0).collect();
    planar_rgb(w, h, channels, &samples)
}

/// Interleaved samples with 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels →
/// planar RGB.
fn planar_rgb(w: usize, h: usize, channels: usize, samples: &[f32]) -> std::result::Result<crate::img2img::InitImage, String> {
    let plane = w * h;
    if samples.len() != plane * channels {
        return Err(format!("{} samples for {w}x{h} with {channels} channels", samples.len()));
    }
    let mut pixels = vec![0f32; 3 * plane];
    for (i, px) in samples.chunks_exact(channels).enumerate() {
        for c in 0..3 {
            pixels[c * plane + i] = match channels {
                1 | 2 => px[0],
                3 | 4 => px[c],
                n => return Err(format!("{n} channels")),
            };
        }
    }
    crate::img2img::InitImage::new(w, h, pixels).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::to_interleaved_u8;

    /// The float32 value nearest `(k + 0.5) / 255` whose float32 product with 255 is exactly
    /// `k + 0.5`, the case where the rounding rule shows.
    fn exact_half(k: u8) -> f32 {
        let mut v = (k as f32 + 0.5) / 255.0;
        for _ in 0..64 {
            let p = v * 255.0;
            if p == k as f32 + 0.5 {
                return v;
            }
            v = if p < k as f32 + 0.5 { v.next_up() } else { v.next_down() };
        }
        panic!("no float32 x with x * 255 = {k}.5");
    }

    #[test]
    fn halves_round_to_even_as_numpy() {
        // [3, 1, 2]: R, G, B planes of two pixels.
        let planar = [exact_half(2), exact_half(3), 1.5, -0.2, 0.0, 1.0];
        assert_eq!(to_interleaved_u8(&planar, 2, 1, true), [2, 255, 0, 255, 4, 0, 255, 255]);
    }
}
