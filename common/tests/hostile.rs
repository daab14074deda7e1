//! Round-trip properties over arbitrary valid batches, and hostile input: random, truncated,
//! bit-flipped and oversized envelopes are rejected with an error, never a panic or a huge
//! allocation.

use proptest::prelude::*;
use sonde_common::model::{Limits, MetricKind, Sample, Series};
use sonde_common::wire::{
    self, Batch, BatchBuilder, BatchHeader, Compression, DecodeError, WireLimits,
};

fn arb_kind() -> impl Strategy<Value = MetricKind> {
    prop_oneof![
        Just(MetricKind::Unknown),
        Just(MetricKind::Counter),
        Just(MetricKind::Gauge),
        Just(MetricKind::Histogram),
        Just(MetricKind::Summary),
    ]
}

fn arb_series() -> impl Strategy<Value = (Series, MetricKind, Option<i64>, Vec<Sample>)> {
    (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
        proptest::collection::btree_map("[a-zA-Z][a-zA-Z0-9_]{0,10}", "\\PC{1,16}", 0..6),
        arb_kind(),
        proptest::option::of(any::<i64>()),
        proptest::collection::vec((any::<i64>(), any::<f64>()), 1..8),
    )
        .prop_map(|(name, labels, kind, start, samples)| {
            let series = Series::new(name, labels);
            let samples = samples
                .into_iter()
                .map(|(t, v)| Sample::new(t, v))
                .collect();
            (series, kind, start, samples)
        })
}

fn arb_batch() -> impl Strategy<Value = Batch> {
    (
        "\\PC{0,24}",
        any::<u64>(),
        any::<i64>(),
        proptest::collection::vec(arb_series(), 0..20),
    )
        .prop_map(|(agent_id, sequence, sent_at_ms, series)| {
            let mut b = BatchBuilder::new(BatchHeader {
                agent_id,
                sequence,
                sent_at_ms,
            });
            for (s, kind, start, samples) in series {
                b.push(&s, kind, start, samples);
            }
            b.build()
        })
}

fn arb_compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd)
    ]
}

/// Bitwise equality, so NaN payloads and -0.0 count.
fn same(a: &Batch, b: &Batch) -> bool {
    a.header == b.header
        && a.strings == b.strings
        && a.series.len() == b.series.len()
        && a.series.iter().zip(&b.series).all(|(x, y)| {
            x.kind == y.kind
                && x.name == y.name
                && x.labels == y.labels
                && x.start_ms == y.start_ms
                && x.samples.len() == y.samples.len()
                && x.samples.iter().zip(&y.samples).all(|(p, q)| {
                    p.timestamp_ms == q.timestamp_ms && p.value.to_bits() == q.value.to_bits()
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_batches_round_trip(batch in arb_batch(), c in arb_compression()) {
        prop_assert!(batch.validate(&Limits::default()).is_ok());
        let bytes = wire::encode(&batch, c).unwrap();
        let back = wire::decode(&bytes, &WireLimits::default()).unwrap();
        prop_assert!(same(&batch, &back));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode(&bytes, &WireLimits::default());
    }

    #[test]
    fn random_payload_behind_a_valid_header_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        c in arb_compression(),
        claimed in 0u32..(1 << 20),
    ) {
        let code = match c { Compression::None => 0u8, Compression::Lz4 => 1, Compression::Zstd => 2 };
        let mut bytes = b"SNDB".to_vec();
        bytes.extend_from_slice(&[1, code, 0, 0]);
        bytes.extend_from_slice(&claimed.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        if let Ok(batch) = wire::decode(&bytes, &WireLimits::default()) {
            // Whatever decodes must still be checked before use; it must not panic either.
            let _ = batch.validate(&Limits::default());
        }
    }

    #[test]
    fn truncations_and_bit_flips_are_rejected(batch in arb_batch(), c in arb_compression(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
        let bytes = wire::encode(&batch, c).unwrap();
        let at = cut.index(bytes.len());
        prop_assert!(wire::decode(&bytes[..at], &WireLimits::default()).is_err());
        let mut flipped = bytes.clone();
        let i = flip.index(flipped.len());
        flipped[i] ^= 0x01;
        // A flipped bit is caught by the header checks or the checksum, except in the
        // reserved-free fields that still decode identically (none in v1).
        prop_assert!(wire::decode(&flipped, &WireLimits::default()).is_err());
    }
}

/// A postcard payload whose first length prefix claims 2^60 strings: decoding must fail on the
/// missing bytes without first allocating for the claim.
#[test]
fn forged_length_prefix_does_not_allocate_the_claim() {
    let mut payload = Vec::new();
    payload.push(0); // empty agent id
    payload.push(0); // sequence 0
    payload.push(0); // sent_at 0
    // varint 2^60 as the string-table length
    let mut n: u64 = 1 << 60;
    while n >= 0x80 {
        payload.push((n as u8) | 0x80);
        n >>= 7;
    }
    payload.push(n as u8);
    let mut bytes = b"SNDB\x01\x00\x00\x00".to_vec();
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let err = wire::decode(&bytes, &WireLimits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Deserialize(_)), "{err}");
}

#[test]
fn zstd_bomb_is_refused_by_the_decoded_limit() {
    // 64 MiB of zeros compresses to a few KiB; with an 8 MiB decoded limit the header's claim
    // is refused before decompressing, and a lying header fails decompression into the cap.
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "x".repeat(64 << 20),
        sequence: 0,
        sent_at_ms: 0,
    });
    b.push(
        &Series::new("m", [("a", "b")]),
        MetricKind::Gauge,
        None,
        vec![Sample::new(0, 0.0)],
    );
    let bytes = wire::encode(&b.build(), Compression::Zstd).unwrap();
    assert!(bytes.len() < 1 << 20);
    let limits = WireLimits {
        max_encoded_bytes: 1 << 20,
        max_decoded_bytes: 8 << 20,
    };
    assert!(wire::decode(&bytes, &limits).unwrap_err().is_too_large());
    let mut lying = bytes.clone();
    lying[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes());
    let err = wire::decode(&lying, &limits).unwrap_err();
    assert!(matches!(err, DecodeError::Decompress(_)), "{err}");
}
