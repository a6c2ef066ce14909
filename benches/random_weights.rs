//! Seeded random weights for full-size models without a checkpoint (the benchmarks and the
//! tests of this helper include this file).

use burn::tensor::Device;
use inkstone::weights::Weights;

/// A component whose every requested tensor is uniform in ±1/√fan-in, deterministic per
/// (seed, key).
pub fn random_weights(name: &str, seed: u64, device: &Device) -> Weights {
    Weights::generated(name, Box::new(move |key, shape| random_values(seed, key, shape)), device)
}

/// Uniform values in ±1/√fan-in (fan-in = all dims but the first) from a splitmix64 stream
/// seeded by `seed` and the key's FNV-1a hash.
pub fn random_values(seed: u64, key: &str, shape: &[usize]) -> Vec<f32> {
    let mut state = key.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let fan_in: usize = shape.iter().skip(1).product();
    let scale = 1.0 / (fan_in.max(1) as f32).sqrt();
    let n: usize = shape.iter().product();
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

