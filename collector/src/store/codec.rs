//! The chunk forms a store writes, behind a small public face for benchmarks and tools:
//! packed (what blocks and sealed head chunks use for short decimals) and Gorilla
//! (Prometheus's XOR chunk, the fallback for other values).

use sonde_common::model::Sample;

use super::chunk::Chunk;

/// `samples` (oldest first, 1 to 65,535) as a packed chunk, if every value is a short decimal.
pub fn encode_packed(samples: &[Sample]) -> Option<Vec<u8>> {
    super::packed::encode(samples)
}

/// `samples` (oldest first, at most 65,535) as a Gorilla chunk.
pub fn encode_gorilla(samples: &[Sample]) -> Vec<u8> {
    Chunk::of(samples.iter().copied()).bytes().to_vec()
}

/// Appends the samples of a chunk in any form to `out` (of a malformed chunk, what could be
/// read of it).
pub fn decode(bytes: &[u8], out: &mut Vec<Sample>) {
    super::decimal::decode_into(bytes, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_round_trip_through_decode() {
        let samples: Vec<Sample> = (0..480)
            .map(|i| Sample::new(1_700_000_000_000 + i * 10_000, (i * i % 977) as f64 / 100.0))
            .collect();
        for bytes in [encode_packed(&samples).unwrap(), encode_gorilla(&samples)] {
            let mut out = Vec::new();
            decode(&bytes, &mut out);
            assert_eq!(out, samples);
        }
    }
}
