//! Store-level tests: the public API end to end, durability across reopen, WAL damage, and
//! concurrent appends.

use super::*;
use sonde_common::model::MetricKind;
use sonde_common::wire::{BatchBuilder, BatchHeader};

type Entry<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(i64, f64)]);

fn batch(entries: &[Entry<'_>]) -> Batch {
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "test".into(),
        sequence: 1,
        sent_at_ms: 0,
    });
    for (name, labels, samples) in entries {
        b.push(
            &Series::new(*name, labels.iter().copied()),
            MetricKind::Gauge,
            None,
            samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
        );
    }
    b.build()
}

fn open(dir: &Path) -> Store {
    Store::open(StoreConfig::new(dir)).unwrap()
}

fn open_small_segments(dir: &Path, bytes: u64) -> Store {
    Store::open(StoreConfig {
        wal_segment_bytes: bytes,
        ..StoreConfig::new(dir)
    })
    .unwrap()
}

/// Every sample as (series, timestamp, value bits), for exact comparisons.
fn dump(store: &Store) -> Vec<(String, i64, u64)> {
    store
        .select(&[], i64::MIN, i64::MAX)
        .into_iter()
        .flat_map(|s| {
            let name = s.series.to_string();
            s.samples
                .into_iter()
                .map(move |x| (name.clone(), x.timestamp_ms, x.value.to_bits()))
        })
        .collect()
}

fn stats(appended: u64, duplicates: u64, out_of_order: u64, conflicts: u64) -> AppendStats {
    AppendStats {
        appended,
        duplicates,
        out_of_order,
        conflicts,
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let wal = dir.join("wal");
    wal::list_segments(&wal)
        .unwrap()
        .into_iter()
        .map(|i| wal::segment_path(&wal, i))
        .collect()
}

#[tokio::test]
async fn queries_select_series_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let b = batch(&[
        (
            "up",
            &[("job", "api"), ("zone", "a")],
            &[(1000, 1.0), (2000, 1.0)],
        ),
        ("up", &[("job", "db")], &[(1000, 0.0)]),
        (
            "http_requests_total",
            &[("code", "200"), ("job", "api")],
            &[(1500, 10.0), (2500, 20.0)],
        ),
        (
            "http_requests_total",
            &[("code", "500"), ("job", "api")],
            &[(5000, 1.0)],
        ),
    ]);
    assert_eq!(store.append(&b).await.unwrap(), stats(6, 0, 0, 0));

    let got = store.select(&[Matcher::equal("__name__", "up")], 0, 10_000);
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].series,
        Series::new("up", [("job", "api"), ("zone", "a")])
    );
    assert_eq!(
        got[0].samples,
        [Sample::new(1000, 1.0), Sample::new(2000, 1.0)]
    );
    assert_eq!(got[1].series, Series::new("up", [("job", "db")]));

    // Inclusive bounds, and series without samples in range are left out.
    let got = store.select(&[Matcher::equal("job", "api")], 2000, 2500);
    let names: Vec<String> = got.iter().map(|s| s.series.to_string()).collect();
    assert_eq!(
        names,
        [
            r#"http_requests_total{code="200",job="api"}"#,
            r#"up{job="api",zone="a"}"#
        ]
    );
    assert_eq!(got[0].samples, [Sample::new(2500, 20.0)]);
    assert_eq!(got[1].samples, [Sample::new(2000, 1.0)]);

    let series = store.series(&[Matcher::regex("__name__", "http_.*").unwrap()], 0, 3000);
    assert_eq!(
        series,
        [Series::new(
            "http_requests_total",
            [("code", "200"), ("job", "api")]
        )]
    );
    assert!(
        store
            .series(&[Matcher::equal("job", "db")], 1001, 3000)
            .is_empty()
    );

    assert_eq!(
        store.label_names(&[], 0, 10_000),
        ["__name__", "code", "job", "zone"]
    );
    assert_eq!(
        store.label_names(&[Matcher::equal("job", "db")], 0, 10_000),
        ["__name__", "job"]
    );
    assert_eq!(
        store.label_names(&[], 3000, 10_000),
        ["__name__", "code", "job"]
    );
    assert!(store.label_names(&[], 20_000, 30_000).is_empty());

    assert_eq!(
        store.label_values("__name__", &[], 0, 10_000),
        ["http_requests_total", "up"]
    );
    assert_eq!(store.label_values("job", &[], 0, 10_000), ["api", "db"]);
    assert_eq!(store.label_values("job", &[], 1001, 10_000), ["api"]);
    assert_eq!(
        store.label_values("code", &[Matcher::not_equal("code", "200")], 0, 10_000),
        ["500"]
    );
    assert_eq!(
        store.label_values("zone", &[Matcher::equal("job", "db")], 0, 10_000),
        Vec::<String>::new()
    );
    assert!(store.label_values("nope", &[], 0, 10_000).is_empty());

    let st = store.stats();
    assert_eq!(
        (st.series, st.samples_in_head, st.blocks, st.block_bytes),
        (4, 6, 0, 0)
    );
    assert!(st.head_chunk_bytes > 0 && st.head_label_bytes > 0);
    assert!(store.stats().wal_bytes > 0);
    store.close();
}

#[tokio::test]
async fn reappending_is_idempotent_even_for_older_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let old: Vec<(i64, f64)> = (0..300).map(|i| (i * 1000, i as f64)).collect();
    let new: Vec<(i64, f64)> = (300..400).map(|i| (i * 1000, i as f64)).collect();
    let labels = [("job", "api")];
    let old_batch = batch(&[("m", &labels, &old), ("n", &[], &old[..1])]);
    assert_eq!(store.append(&old_batch).await.unwrap(), stats(301, 0, 0, 0));
    let wal_bytes = store.stats().wal_bytes;

    // A retry of the same batch is a no-op, and costs no WAL space.
    assert_eq!(store.append(&old_batch).await.unwrap(), stats(0, 301, 0, 0));
    assert_eq!(store.stats().wal_bytes, wal_bytes);

    // A newer batch, then a late retry of the old one: still duplicates (found in sealed
    // chunks, not only the newest sample).
    assert_eq!(
        store.append(&batch(&[("m", &labels, &new)])).await.unwrap(),
        stats(100, 0, 0, 0)
    );
    assert_eq!(store.append(&old_batch).await.unwrap(), stats(0, 301, 0, 0));
    assert_eq!(store.stats().samples_in_head, 401);
    assert_eq!(
        store.select(&[Matcher::equal("__name__", "m")], 0, i64::MAX)[0]
            .samples
            .len(),
        400
    );
    store.close();
}

#[tokio::test]
async fn out_of_order_and_conflicts_are_counted_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // Strict order: no out-of-order window.
    let store = Store::open(StoreConfig {
        out_of_order_window: Duration::ZERO,
        ..StoreConfig::new(dir.path())
    })
    .unwrap();
    let s: &[(&str, &str)] = &[("k", "v")];
    assert_eq!(
        store
            .append(&batch(&[("m", s, &[(100, 1.0), (200, 2.0)])]))
            .await
            .unwrap(),
        stats(2, 0, 0, 0)
    );
    let mixed = batch(&[(
        "m",
        s,
        &[
            (50, 0.5),
            (100, 1.0),
            (100, 9.0),
            (200, 2.5),
            (150, 1.5),
            (300, 3.0),
        ],
    )]);
    assert_eq!(store.append(&mixed).await.unwrap(), stats(1, 1, 2, 2));
    // Duplicates inside one batch are caught when applied.
    let twice = batch(&[("m", s, &[(400, 4.0), (400, 4.0), (400, 5.0)])]);
    assert_eq!(store.append(&twice).await.unwrap(), stats(1, 1, 0, 1));
    let kept: Vec<(i64, f64)> = store.select(&[], 0, 1000)[0]
        .samples
        .iter()
        .map(|x| (x.timestamp_ms, x.value))
        .collect();
    assert_eq!(kept, [(100, 1.0), (200, 2.0), (300, 3.0), (400, 4.0)]);
    store.close();
}

#[tokio::test]
async fn nan_and_stale_markers_are_stored_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    {
        let store = open(dir.path());
        let b = batch(&[(
            "m",
            &[],
            &[(1, stale), (2, f64::NAN), (3, f64::INFINITY), (4, -0.0)],
        )]);
        assert_eq!(store.append(&b).await.unwrap(), stats(4, 0, 0, 0));
        assert_eq!(store.append(&b).await.unwrap(), stats(0, 4, 0, 0));
        let nan_conflict = batch(&[("m", &[], &[(1, f64::NAN)])]);
        assert_eq!(
            store.append(&nan_conflict).await.unwrap(),
            stats(0, 0, 0, 1)
        );
        store.close();
    }
    let store = open(dir.path());
    let bits: Vec<u64> = dump(&store).into_iter().map(|(_, _, v)| v).collect();
    assert_eq!(
        bits,
        [
            stale.to_bits(),
            f64::NAN.to_bits(),
            f64::INFINITY.to_bits(),
            (-0.0f64).to_bits()
        ]
    );
    store.close();
}

#[tokio::test]
async fn reopen_after_close_keeps_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = open_small_segments(dir.path(), 4096);
        for round in 0..50i64 {
            let samples: Vec<(i64, f64)> = (0..20)
                .map(|i| (round * 20 + i, (round * i) as f64 / 7.0))
                .collect();
            let b = batch(&[
                ("a", &[("x", "1")], &samples),
                ("b", &[("x", "2")], &samples[..round as usize % 20]),
                ("c", &[], &samples[..1]),
            ]);
            store.append(&b).await.unwrap();
        }
        let dump = dump(&store);
        store.close();
        assert!(matches!(
            store.append(&batch(&[("z", &[], &[(1, 1.0)])])).await,
            Err(StoreError::Closed)
        ));
        dump
    };
    assert!(
        segment_files(dir.path()).len() > 3,
        "small segments were cut"
    );
    let store = open_small_segments(dir.path(), 4096);
    assert_eq!(dump(&store), before);
    let report = store.replay_report();
    assert_eq!(report.samples, before.len() as u64);
    assert_eq!(
        (
            report.damaged_segments,
            report.truncated_bytes,
            report.orphan_samples
        ),
        (0, 0, 0)
    );
    // The replayed head knows what is stored: the last round again is all duplicates.
    let samples: Vec<(i64, f64)> = (0..20)
        .map(|i| (49 * 20 + i, (49 * i) as f64 / 7.0))
        .collect();
    assert_eq!(
        store
            .append(&batch(&[("a", &[("x", "1")], &samples)]))
            .await
            .unwrap(),
        stats(0, 20, 0, 0)
    );
    // New series after a reopen get fresh refs; a second reopen sees both generations.
    store
        .append(&batch(&[("d", &[], &[(5, 5.0)])]))
        .await
        .unwrap();
    let after = dump(&store);
    store.close();
    drop(store);
    let store = open(dir.path());
    assert_eq!(dump(&store), after);
    assert_eq!(store.replay_report().orphan_samples, 0);
    store.close();
}

#[tokio::test]
async fn what_is_on_disk_when_append_returns_is_complete() {
    // Copy the WAL while the store is still running, as a crash right after `append` would
    // leave it: nothing may be waiting in a user-space buffer.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..10 {
        store
            .append(&batch(&[("m", &[("i", &i.to_string())], &[(i, i as f64)])]))
            .await
            .unwrap();
    }
    let expected = dump(&store);
    let crashed = tempfile::tempdir().unwrap();
    std::fs::create_dir(crashed.path().join("wal")).unwrap();
    for f in segment_files(dir.path()) {
        std::fs::copy(&f, crashed.path().join("wal").join(f.file_name().unwrap())).unwrap();
    }
    let recovered = open(crashed.path());
    assert_eq!(dump(&recovered), expected);
    recovered.close();
    store.close();
}

#[tokio::test]
async fn garbage_at_the_tail_is_truncated_and_everything_before_kept() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = open(dir.path());
        for i in 0..5 {
            store
                .append(&batch(&[("m", &[], &[(i, i as f64)])]))
                .await
                .unwrap();
        }
        store.close();
        dump(&store)
    };
    let last = segment_files(dir.path()).pop().unwrap();
    let good_len = std::fs::metadata(&last).unwrap().len();
    // A torn write: a header promising more bytes than follow, then junk.
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    io::Write::write_all(&mut f, b"\x10\x00\x00\x00\xde\xad\xbe\xefpartial").unwrap();
    drop(f);

    let store = open(dir.path());
    assert_eq!(dump(&store), before);
    assert_eq!(store.replay_report().truncated_bytes, 15);
    assert_eq!(std::fs::metadata(&last).unwrap().len(), good_len);
    // Appending resumes cleanly after the cut, and the next open is clean.
    store
        .append(&batch(&[("m", &[], &[(10, 10.0)])]))
        .await
        .unwrap();
    store.close();
    let store = open(dir.path());
    assert_eq!(dump(&store).len(), before.len() + 1);
    assert_eq!(store.replay_report().truncated_bytes, 0);
    store.close();

    // Other torn shapes: a lone partial header, and zero-filled space.
    for tail in [&b"\x05\x00"[..], &[0u8; 64][..]] {
        let expected = {
            let store = open(dir.path());
            store.close();
            dump(&store)
        };
        let last = segment_files(dir.path()).pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        io::Write::write_all(&mut f, tail).unwrap();
        drop(f);
        let store = open(dir.path());
        assert_eq!(dump(&store), expected);
        assert_eq!(store.replay_report().truncated_bytes, tail.len() as u64);
        store.close();
    }
}

#[tokio::test]
async fn a_corrupt_record_in_an_older_segment_is_detected_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        // One-byte segments: each append lands in a segment of its own.
        let store = open_small_segments(dir.path(), 1);
        for i in 0..4 {
            let b = batch(&[
                ("m", &[], &[(i, i as f64)]),
                ("n", &[], &[(i, -(i as f64))]),
            ]);
            assert_eq!(store.append(&b).await.unwrap(), stats(2, 0, 0, 0));
        }
        store.close();
    }
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 4);
    // Flip a byte in the value of the last sample of the second segment's SAMPLES record.
    let mut bytes = std::fs::read(&segments[1]).unwrap();
    let at = bytes.len() - 2;
    bytes[at] ^= 0x40;
    std::fs::write(&segments[1], &bytes).unwrap();

    let store = open(dir.path());
    let report = store.replay_report();
    assert_eq!(report.damaged_segments, 1);
    assert_eq!(report.truncated_bytes, 0);
    let ts: Vec<i64> = store.select(&[Matcher::equal("__name__", "m")], 0, 10)[0]
        .samples
        .iter()
        .map(|s| s.timestamp_ms)
        .collect();
    assert_eq!(
        ts,
        [0, 2, 3],
        "the damaged record is skipped, later segments replayed"
    );
    // The damaged segment is left as it is (no silent rewrite of an older segment).
    assert_eq!(std::fs::read(&segments[1]).unwrap(), bytes);
    store.close();

    // A length field gone wild does not allocate its claim or panic.
    bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&segments[1], &bytes).unwrap();
    let store = open(dir.path());
    assert_eq!(store.replay_report().damaged_segments, 1);
    assert_eq!(dump(&store).len(), 6);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small_segments(dir.path(), 64 << 10);
    const TASKS: i64 = 8;
    const ROUNDS: i64 = 40;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut total = AppendStats::default();
            for round in 0..ROUNDS {
                let own = [("task", task.to_string())];
                let own: Vec<(&str, &str)> = own.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let fresh = format!("r{round}");
                // Its own series, a series new this round shared with every task (created
                // concurrently), and a shared series every task writes the same sample to.
                let b = batch(&[
                    ("own", &own, &[(round, round as f64)]),
                    ("fresh", &[("round", &fresh)], &[(task, task as f64)]),
                    ("shared", &[], &[(round, 1.0)]),
                ]);
                total.add(store.append(&b).await.unwrap());
            }
            total
        }));
    }
    let mut total = AppendStats::default();
    for h in handles {
        total.add(h.await.unwrap());
    }
    let own = (TASKS * ROUNDS) as u64;
    // `fresh` samples arrive in any order: each is stored or dropped as out of order.
    assert_eq!(
        total.appended + total.duplicates + total.out_of_order,
        3 * own
    );
    assert_eq!(total.conflicts, 0);
    let expected = dump(&store);
    assert_eq!(store.stats().samples_in_head, expected.len() as u64);
    assert_eq!(
        expected
            .iter()
            .filter(|(s, _, _)| s.starts_with("own"))
            .count() as u64,
        own
    );
    assert_eq!(
        expected.iter().filter(|(s, _, _)| s == "shared").count() as u64,
        ROUNDS as u64
    );
    store.close();

    let store = open(dir.path());
    assert_eq!(dump(&store), expected);
    assert_eq!(store.replay_report().orphan_samples, 0);
    store.close();
}

#[tokio::test]
async fn a_directory_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(matches!(
        Store::open(StoreConfig::new(dir.path())),
        Err(StoreError::Locked { .. })
    ));
    store.close();
    store.close(); // idempotent
    let again = open(dir.path());
    again.close();
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Store>();
}

#[test]
fn errors_name_the_operation_and_path() {
    let e = StoreError::io(
        "write WAL segment",
        Path::new("/data/wal/00000001"),
        io::Error::new(io::ErrorKind::StorageFull, "no space left on device"),
    );
    assert_eq!(
        e.to_string(),
        "cannot write WAL segment /data/wal/00000001: no space left on device"
    );
    assert_eq!(e.replicate().to_string(), e.to_string());
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = Store::open(StoreConfig::new(file.path())).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot create store directory"),
        "{err}"
    );
}

#[tokio::test]
async fn empty_batches_and_empty_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(
        store.append(&batch(&[])).await.unwrap(),
        AppendStats::default()
    );
    store
        .append(&batch(&[("m", &[], &[(5, 1.0)])]))
        .await
        .unwrap();
    assert!(store.select(&[], 10, 5).is_empty());
    assert!(
        store
            .select(&[Matcher::equal("__name__", "nope")], 0, 10)
            .is_empty()
    );
    assert_eq!(store.select(&[Matcher::equal("job", "")], 0, 10).len(), 1);
    store.close();
}

/// Throughput of the append path (run with `--release -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn append_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let series: Vec<Series> = (0..10_000)
        .map(|i| {
            Series::new(
                "node_metric",
                [("host", format!("h{}", i % 100)), ("id", i.to_string())],
            )
        })
        .collect();
    let batches: Vec<Batch> = (0..100)
        .map(|round| {
            let mut b = BatchBuilder::new(BatchHeader {
                agent_id: "bench".into(),
                sequence: round,
                sent_at_ms: 0,
            });
            for s in &series {
                b.push(
                    s,
                    MetricKind::Gauge,
                    None,
                    vec![Sample::new(round as i64 * 15_000, round as f64)],
                );
            }
            b.build()
        })
        .collect();
    let start = std::time::Instant::now();
    for b in &batches {
        store.append(b).await.unwrap();
    }
    let took = start.elapsed();
    let n = store.stats().samples_in_head;
    println!(
        "appended {n} samples in {took:?}: {:.2} M samples/s (10k series x 1 sample per batch, fsync per batch)",
        n as f64 / took.as_secs_f64() / 1e6
    );
    let mut head = Head::new();
    let slots: Vec<Slot> = series
        .iter()
        .map(|s| {
            let h = head.identity_hash(
                &s.name,
                s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())),
            );
            head.get_or_create(h, &s.name, || {
                s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str()))
            })
            .unwrap()
        })
        .collect();
    let start = std::time::Instant::now();
    for round in 0..300i64 {
        for &slot in &slots {
            head.append(slot, round * 15_000, round as f64 * 1.5);
        }
    }
    let took = start.elapsed();
    println!(
        "head only: {:.2} M samples/s",
        (300 * slots.len()) as f64 / took.as_secs_f64() / 1e6
    );
    store.close();
}

#[tokio::test]
async fn a_senders_repeated_series_land_where_they_belong() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a: &[(&str, &str)] = &[("job", "a")];
    let b: &[(&str, &str)] = &[("job", "b")];
    let c: &[(&str, &str)] = &[("job", "c")];
    // The same series in the same order (slots remembered), then reordered, then one
    // replaced, then the first shape again: every sample in its own series.
    store
        .append(&batch(&[
            ("up", a, &[(1000, 1.0)]),
            ("up", b, &[(1000, 2.0)]),
        ]))
        .await
        .unwrap();
    assert_eq!(store.inner.shapes.len(), 1);
    let later: [[Entry<'_>; 2]; 4] = [
        [("up", a, &[(2000, 1.0)]), ("up", b, &[(2000, 2.0)])],
        [("up", b, &[(3000, 2.0)]), ("up", a, &[(3000, 1.0)])],
        [("up", a, &[(4000, 1.0)]), ("up", c, &[(4000, 3.0)])],
        [("up", a, &[(5000, 1.0)]), ("up", b, &[(5000, 2.0)])],
    ];
    for entries in later {
        store.append(&batch(&entries)).await.unwrap();
    }
    let got = store.select(&[Matcher::equal("__name__", "up")], 0, 10_000);
    let by_job: Vec<(String, Vec<(i64, f64)>)> = got
        .iter()
        .map(|s| {
            (
                s.series.to_string(),
                s.samples
                    .iter()
                    .map(|x| (x.timestamp_ms, x.value))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        by_job,
        [
            (
                r#"up{job="a"}"#.to_owned(),
                (1..=5).map(|i| (i * 1000, 1.0)).collect::<Vec<_>>()
            ),
            (
                r#"up{job="b"}"#.to_owned(),
                vec![(1000, 2.0), (2000, 2.0), (3000, 2.0), (5000, 2.0)]
            ),
            (r#"up{job="c"}"#.to_owned(), vec![(4000, 3.0)]),
        ]
    );
    // Across a restart (new slots), the same sender's series still land right.
    store.close();
    let store = open(dir.path());
    store
        .append(&batch(&[("up", c, &[(6000, 3.0)])]))
        .await
        .unwrap();
    let c_samples = store.select(&[Matcher::equal("job", "c")], 0, 10_000);
    assert_eq!(c_samples.len(), 1);
    assert_eq!(c_samples[0].samples.len(), 2);
}

#[tokio::test]
async fn tenants_are_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).unwrap();
    let batch = |v: f64| {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "a".into(),
            sequence: 1,
            sent_at_ms: 1,
        });
        b.push(
            &Series::new("up", [("Zone", "z"), ("job", "j")]),
            MetricKind::Gauge,
            None,
            vec![Sample::new(1000, v)],
        );
        b.build()
    };
    store.append_tenant("acme", &batch(1.0)).await.unwrap();
    store.append_tenant("globex", &batch(2.0)).await.unwrap();
    store.append(&batch(3.0)).await.unwrap();
    let all = [Matcher::equal("__name__", "up")];
    for (tenant, value) in [("acme", 1.0), ("globex", 2.0), ("", 3.0)] {
        let got = store.select_tenant(tenant, &all, 0, 2000);
        assert_eq!(got.len(), 1, "{tenant}");
        assert_eq!(got[0].samples[0].value, value, "{tenant}");
        assert_eq!(
            got[0].series,
            Series::new("up", [("Zone", "z"), ("job", "j")]),
            "the tenant label is never shown"
        );
        assert_eq!(store.series_tenant(tenant, &all, 0, 2000).len(), 1);
        assert_eq!(
            store.label_names_tenant(tenant, &[], 0, 2000),
            ["Zone", "__name__", "job"]
        );
        assert!(
            store
                .label_values_tenant(tenant, TENANT_LABEL, &[], 0, 2000)
                .is_empty()
        );
    }
    assert!(store.select_tenant("initech", &all, 0, 2000).is_empty());
    // Tenants survive a restart.
    store.close();
    let store = Store::open(StoreConfig::new(dir.path())).unwrap();
    assert_eq!(
        store.select_tenant("globex", &all, 0, 2000)[0].samples[0].value,
        2.0
    );
    assert_eq!(store.select(&all, 0, 2000)[0].samples[0].value, 3.0);
}

// ---------------------------------------------------------------------------------------------
// Blocks, checkpoints, compaction, retention

fn open_with_blocks(dir: &Path, range_ms: u64) -> Store {
    open_with_segments(dir, 512, range_ms)
}

fn open_with_segments(dir: &Path, segment_bytes: u64, range_ms: u64) -> Store {
    Store::open(StoreConfig {
        wal_segment_bytes: segment_bytes,
        block_range: Duration::from_millis(range_ms),
        retention: Duration::ZERO,
        maintenance_interval: Duration::ZERO,
        ..StoreConfig::new(dir)
    })
    .unwrap()
}

/// Appends `a{x="1"}`, `b{x="2"}` (and tenant t1's `a`) every 100 ms over `[from, to)`, ten
/// timestamps per append.
async fn fill(store: &Store, from: i64, to: i64) {
    let ts: Vec<i64> = (from..to).step_by(100).collect();
    for part in ts.chunks(10) {
        let samples: Vec<(i64, f64)> = part.iter().map(|&t| (t, t as f64 / 3.0)).collect();
        store
            .append(&batch(&[
                ("a", &[("x", "1")], &samples),
                ("b", &[("x", "2")], &samples),
            ]))
            .await
            .unwrap();
        store
            .append_tenant("t1", &batch(&[("a", &[("x", "1")], &samples)]))
            .await
            .unwrap();
    }
}

fn wal_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn cut_blocks_answer_queries_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_blocks(dir.path(), 1000);
    store
        .append(&batch(&[(
            "old",
            &[("job", "gone")],
            &[(0, 1.0), (500, 2.0)],
        )]))
        .await
        .unwrap();
    fill(&store, 0, 10_000).await;
    let before = dump(&store);
    let tenant_before = store.select_tenant("t1", &[], i64::MIN, i64::MAX);
    let wal_before = segment_files(dir.path()).len();
    assert!(wal_before > 3);
    let head_before = store.stats().samples_in_head;

    let report = store.maintain().unwrap();
    // The head spans 0..9900: ranges are cut while it still spans 1.5 of them after.
    assert_eq!(report.blocks_cut, 9);
    assert!(report.checkpointed_segments_up_to.is_some());
    let stats = store.stats();
    // Nine blocks cut; the same run already merged the first closed window of three.
    assert_eq!(
        (stats.blocks_cut, stats.blocks, report.compacted),
        (9, 7, 1),
        "{stats:?}"
    );
    assert!(stats.block_bytes > 0 && stats.block_samples > 0);
    // The head counts only what it serves (chunks straddling the cut stay in memory until
    // wholly older): head and blocks together hold every sample once.
    assert!(stats.samples_in_head < head_before);
    assert_eq!(stats.samples_in_head + stats.block_samples, head_before);
    assert_eq!(
        dump(&store),
        before,
        "the same samples, from blocks and head"
    );
    assert_eq!(
        store.select_tenant("t1", &[], i64::MIN, i64::MAX),
        tenant_before,
        "tenants stay apart in blocks"
    );
    assert!(
        store
            .select_tenant("t2", &[], i64::MIN, i64::MAX)
            .is_empty()
    );
    // A series that lives only in blocks is still found by every read path.
    assert_eq!(
        store.series(&[Matcher::equal("job", "gone")], 0, 10_000),
        [Series::new("old", [("job", "gone")])]
    );
    // Counting agrees with listing, for series in blocks, in the head and in both.
    for (tenant, range) in [
        ("", (0, 10_000)),
        ("", (0, 400)),
        ("", (9_000, 9_999)),
        ("t1", (0, 10_000)),
    ] {
        let listed = store.series_tenant(tenant, &[], range.0, range.1).len();
        assert!(listed > 0, "{tenant:?} {range:?}");
        assert_eq!(
            store.count_series_tenant(tenant, &[], range.0, range.1),
            listed,
            "{tenant:?} {range:?}"
        );
    }
    assert!(store.label_names(&[], 0, 600).contains(&"job".to_owned()));
    assert!(
        store
            .label_values("__name__", &[], 0, 600)
            .contains(&"old".to_owned())
    );
    assert_eq!(store.label_values("job", &[], 0, 600), ["gone"]);
    // The WAL gave way to a checkpoint.
    let names = wal_names(dir.path());
    assert!(
        names.iter().any(|n| n.starts_with("checkpoint.")),
        "{names:?}"
    );
    assert!(segment_files(dir.path()).len() < wal_before);
    // Samples in a block's time range are refused (counted), not stored twice.
    let again = store
        .append(&batch(&[(
            "a",
            &[("x", "1")],
            &[(100, 100.0 / 3.0), (150, 9.0)],
        )]))
        .await
        .unwrap();
    assert_eq!(again, self::stats(0, 0, 2, 0));

    // Compaction merges the closed windows of three blocks, one per run.
    let mut compactions = report.compacted;
    while store.maintain().unwrap().compacted > 0 {
        compactions += 1;
        assert_eq!(dump(&store), before);
    }
    assert!(compactions >= 2, "{compactions}");
    assert!(store.stats().blocks < stats.blocks);
    let block_dirs = std::fs::read_dir(dir.path().join("blocks"))
        .unwrap()
        .count() as u64;
    assert_eq!(
        block_dirs,
        store.stats().blocks,
        "replaced blocks are deleted"
    );

    // More data after the cut, then a reopen: blocks + checkpoint + segments give it all back.
    fill(&store, 10_000, 12_000).await;
    let all = dump(&store);
    store.close();
    drop(store);
    let store = open_with_blocks(dir.path(), 1000);
    assert_eq!(dump(&store), all);
    assert_eq!(
        store.select_tenant("t1", &[], i64::MIN, 9_999),
        tenant_before
    );
    let report = store.replay_report();
    assert_eq!((report.damaged_segments, report.orphan_samples), (0, 0));
    assert!(report.blocks > 0);
    store.close();
}

/// Record types and payload bytes of a WAL file.
fn wal_records(path: &Path) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    wal::read_segment(path, |p| out.push((p[0], p.len()))).unwrap();
    out
}

#[tokio::test]
async fn checkpoints_keep_the_head_samples_as_chunks_and_replay_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_segments(dir.path(), 4096, 100_000);
    // Integer counters (packed chunks) and thirds (Gorilla chunks), ten samples per append.
    for part in (0..300_000i64).step_by(1000).collect::<Vec<_>>().chunks(10) {
        let counter: Vec<(i64, f64)> = part.iter().map(|&t| (t, (t / 7) as f64)).collect();
        let thirds: Vec<(i64, f64)> = part.iter().map(|&t| (t, t as f64 / 3.0)).collect();
        store
            .append(&batch(&[
                ("c", &[("x", "1")], &counter),
                ("g", &[("x", "2")], &thirds),
            ]))
            .await
            .unwrap();
    }
    // A conflicting value for a sample the head holds: refused, but in the WAL.
    let conflict = store
        .append(&batch(&[("c", &[("x", "1")], &[(250_000, 1.0)])]))
        .await
        .unwrap();
    assert_eq!(conflict, stats(0, 0, 0, 1));
    let before = dump(&store);
    let wal_before: u64 = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let report = store.maintain().unwrap();
    assert!(report.blocks_cut > 0);
    assert!(report.checkpointed_segments_up_to.is_some());
    let wal = dir.path().join("wal");
    let checkpoint = checkpoint::path(&wal, checkpoint::latest(&wal).unwrap().unwrap());
    let records = wal_records(&checkpoint);
    // SERIES first, then the kept samples as CHUNKS, no SAMPLES.
    assert_eq!(records.first().map(|r| r.0), Some(wal::TYPE_SERIES));
    assert!(records.iter().any(|r| r.0 == wal::TYPE_CHUNKS));
    assert!(records.iter().all(|r| r.0 != wal::TYPE_SAMPLES));
    let series_records = records
        .iter()
        .take_while(|r| r.0 == wal::TYPE_SERIES)
        .count();
    assert!(
        records[series_records..]
            .iter()
            .all(|r| r.0 == wal::TYPE_CHUNKS)
    );
    let kept = store.stats().samples_in_head;
    let checkpoint_bytes = std::fs::metadata(&checkpoint).unwrap().len();
    assert!(kept > 100);
    assert!(
        checkpoint_bytes < wal_before / 4,
        "{checkpoint_bytes} bytes of checkpoint for {kept} samples, from {wal_before}"
    );
    // Replay gives back the same samples: the conflicting value still lost to the first.
    store.close();
    drop(store);
    let store = open_with_segments(dir.path(), 4096, 100_000);
    assert_eq!(dump(&store), before);
    let replay = store.replay_report();
    assert_eq!((replay.damaged_segments, replay.orphan_samples), (0, 0));
    // A second checkpoint reads the first one's chunks and keeps them.
    fill(&store, 300_000, 400_000).await;
    let all = dump(&store);
    store.maintain().unwrap();
    store.close();
    drop(store);
    let store = open_with_blocks(dir.path(), 100_000);
    assert_eq!(dump(&store), all);
    store.close();
}

#[tokio::test]
async fn the_wal_is_checkpointed_when_its_segments_outgrow_the_checkpoint_without_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_segments(dir.path(), 2048, 3_600_000);
    let wal_bytes = || -> u64 {
        std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    for round in 0..3i64 {
        // Integer counters, as hosts report them: a few bytes a sample in SAMPLES records,
        // a bit or two in chunks.
        for t in (round * 20_000..(round + 1) * 20_000).step_by(100) {
            let v = [(t, (t / 100 * 37) as f64)];
            store
                .append(&batch(&[
                    ("a", &[("x", "1")], &v),
                    ("b", &[("x", "2")], &v),
                ]))
                .await
                .unwrap();
        }
        let before = wal_bytes();
        let report = store.maintain().unwrap();
        assert_eq!(report.blocks_cut, 0);
        assert!(
            report.checkpointed_segments_up_to.is_some(),
            "round {round}"
        );
        assert!(
            wal_bytes() < before / 2,
            "round {round}: {} of {before} bytes",
            wal_bytes()
        );
        // Nothing new since: no checkpoint.
        assert!(
            store
                .maintain()
                .unwrap()
                .checkpointed_segments_up_to
                .is_none()
        );
    }
    let all = dump(&store);
    store.close();
    drop(store);
    let store = open_with_blocks(dir.path(), 3_600_000);
    assert_eq!(dump(&store), all);
    store.close();
}

#[tokio::test]
async fn retention_deletes_old_blocks_by_age_and_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let now = sonde_common::model::now_ms();
    let minute = 60_000;
    let start = now - 180 * minute;
    let open = |retention: Duration, bytes: u64| {
        Store::open(StoreConfig {
            block_range: Duration::from_secs(600),
            retention,
            retention_bytes: bytes,
            maintenance_interval: Duration::ZERO,
            ..StoreConfig::new(dir.path())
        })
        .unwrap()
    };
    let store = open(Duration::ZERO, 0);
    for t in (start..now).step_by(minute as usize) {
        store
            .append(&batch(&[("m", &[], &[(t, 1.0)])]))
            .await
            .unwrap();
    }
    store.maintain().unwrap();
    let blocks = store.stats().blocks;
    assert!(blocks >= 15, "{blocks}");
    assert_eq!(
        store.select(&[], start, now)[0].samples.len(),
        180,
        "nothing deleted without a retention"
    );
    store.close();
    drop(store);

    let store = open(Duration::from_secs(3600), 0);
    let report = store.maintain().unwrap();
    assert!(report.deleted > 0);
    let left = store.select(&[], i64::MIN, i64::MAX);
    let oldest = left[0].samples[0].timestamp_ms;
    assert!(
        oldest >= now - 60 * minute - 10 * minute,
        "samples older than the retention (plus one block) are gone: oldest is {} min old",
        (now - oldest) / minute
    );
    assert!(oldest < now - 50 * minute, "younger blocks are kept");
    assert_eq!(store.stats().blocks_deleted_by_retention, report.deleted);
    store.close();
    drop(store);

    // A size limit below what is there deletes the oldest blocks until it fits.
    let store = open(Duration::ZERO, 1);
    let before = store.stats().blocks;
    assert!(before > 0);
    store.maintain().unwrap();
    assert_eq!(store.stats().blocks, 0);
    // The head (not yet cut) keeps serving the newest samples.
    assert!(!store.select(&[], now - 10 * minute, now).is_empty());
    store.close();
}

/// The numbers on the complete (newline-terminated) lines of `path`.
fn complete_lines(path: &Path) -> Vec<i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter_map(|l| l.parse().ok()).collect()
}

/// The crash test's child: appends forever (until killed), with maintenance running all the
/// time, recording each acknowledged append in `acked`.
fn crash_child(dir: &Path, acked: &Path) {
    use std::io::Write;
    let first: i64 = complete_lines(acked).into_iter().max().map_or(0, |i| i + 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(StoreConfig {
            wal_segment_bytes: 2048,
            block_range: Duration::from_millis(2000),
            retention: Duration::ZERO,
            maintenance_interval: Duration::from_millis(5),
            ..StoreConfig::new(dir)
        })
        .unwrap();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(acked)
            .unwrap();
        for i in first.. {
            let t = i * 100;
            let series = format!("s{}", i % 7);
            store
                .append(&batch(&[
                    (&series, &[("k", "v")], &[(t, i as f64)]),
                    ("all", &[], &[(t, i as f64)]),
                ]))
                .await
                .unwrap();
            // One write per line: `writeln!` may write the number and the newline separately,
            // and a kill between the two would glue this line to the next run's first.
            log.write_all(format!("{i}\n").as_bytes()).unwrap();
        }
    });
}

#[test]
fn kill_9_during_cuts_checkpoints_and_compactions_loses_nothing_acknowledged() {
    if let (Ok(dir), Ok(acked)) = (
        std::env::var("SONDE_STORE_CRASH_DIR"),
        std::env::var("SONDE_STORE_CRASH_ACKED"),
    ) {
        crash_child(Path::new(&dir), Path::new(&acked));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let acked = tmp.path().join("acked");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut total = 0usize;
    for round in 0..6u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "--nocapture",
                "store::tests::kill_9_during_cuts_checkpoints_and_compactions_loses_nothing_acknowledged",
            ])
            .env("SONDE_STORE_CRASH_DIR", &dir)
            .env("SONDE_STORE_CRASH_ACKED", &acked)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400 + 137 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = complete_lines(&acked);
        assert!(acks.len() > total, "round {round}: the child made progress");
        total = acks.len();
        let store = Store::open(StoreConfig {
            block_range: Duration::from_millis(2000),
            retention: Duration::ZERO,
            maintenance_interval: Duration::ZERO,
            ..StoreConfig::new(&dir)
        })
        .unwrap();
        let all = store.select(&[Matcher::equal("__name__", "all")], i64::MIN, i64::MAX);
        let stored: std::collections::HashSet<i64> = all
            .iter()
            .flat_map(|s| s.samples.iter().map(|x| x.timestamp_ms))
            .collect();
        let missing: Vec<i64> = acks
            .iter()
            .filter(|&&i| !stored.contains(&(i * 100)))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged samples missing after kill -9, first {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let stats = store.stats();
        if round == 5 {
            assert!(stats.blocks > 0, "the run cut blocks: {stats:?}");
        }
        rt.block_on(async { store.close() });
    }
}

#[tokio::test]
async fn samples_within_the_out_of_order_window_are_stored_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        out_of_order_window: Duration::from_millis(1000),
        block_range: Duration::from_millis(1000),
        retention: Duration::ZERO,
        maintenance_interval: Duration::ZERO,
        ..StoreConfig::new(dir.path())
    };
    let store = Store::open(cfg.clone()).unwrap();
    let s: &[(&str, &str)] = &[("k", "v")];
    let ts = [1000, 3000, 2500, 2000, 2500, 2001, 1999, 3000];
    let got = store
        .append(&batch(&[(
            "m",
            s,
            &ts.iter().map(|&t| (t, t as f64)).collect::<Vec<_>>(),
        )]))
        .await
        .unwrap();
    // 2500, 2000 and 2001 are within 1 s of the newest (3000); 1999 is not; the repeats of
    // 2500 and 3000 are duplicates.
    assert_eq!(got, stats(5, 2, 1, 0));
    let conflict = store
        .append(&batch(&[("m", s, &[(2000, 7.0)])]))
        .await
        .unwrap();
    assert_eq!(
        conflict,
        stats(0, 0, 0, 1),
        "the first value of a timestamp stays"
    );
    let want: Vec<i64> = vec![1000, 2000, 2001, 2500, 3000];
    let times = |store: &Store| -> Vec<i64> {
        store.select(&[], i64::MIN, i64::MAX)[0]
            .samples
            .iter()
            .map(|x| x.timestamp_ms)
            .collect()
    };
    assert_eq!(times(&store), want);
    assert_eq!(
        store.select(&[], 1500, 2600)[0].samples.len(),
        3,
        "range reads merge them too"
    );
    store.close();
    drop(store);
    // Replay makes the same decisions in the same order.
    let store = Store::open(cfg.clone()).unwrap();
    assert_eq!(times(&store), want);
    // Cut into blocks, they stay in order and are not served twice.
    store
        .append(&batch(&[("m", s, &[(6000, 6.0)])]))
        .await
        .unwrap();
    assert!(store.maintain().unwrap().blocks_cut > 0);
    let mut all = want.clone();
    all.push(6000);
    assert_eq!(times(&store), all);
    store.close();
}

#[tokio::test]
async fn repeated_maintenance_over_a_long_history_stores_each_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with_blocks(dir.path(), 1000);
    let mut appended = 0u64;
    let mut t = 0;
    while t < 60_000 {
        let samples: Vec<(i64, f64)> = (0..10).map(|i| (t + i * 100, (t + i) as f64)).collect();
        store
            .append(&batch(&[
                ("a", &[("x", "1")], &samples),
                ("b", &[("x", "2")], &samples),
            ]))
            .await
            .unwrap();
        appended += 20;
        t += 1000;
        if t % 5000 == 0 {
            store.maintain().unwrap();
        }
    }
    while store.maintain().unwrap() != MaintenanceReport::default() {}
    let st = store.stats();
    assert!(st.compactions > 0, "{st:?}");
    assert_eq!(st.block_samples + st.samples_in_head, appended, "{st:?}");
    assert_eq!(dump(&store).len() as u64, appended);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_within_the_commit_delay_share_one_wal_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        commit_delay: Duration::from_millis(300),
        ..StoreConfig::new(dir.path())
    })
    .unwrap();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..6i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Staggered: without the delay each would be written and fsynced on its own.
            tokio::time::sleep(Duration::from_millis(10 * t as u64)).await;
            let name = format!("m{t}");
            store
                .append(&batch(&[(name.as_str(), &[], &[(1000, t as f64)])]))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), stats(1, 0, 0, 0));
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(store.stats().wal_commits, 1);
    assert_eq!(dump(&store).len(), 6);
}

#[tokio::test]
async fn with_interval_fsync_what_was_acknowledged_is_there_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        wal_fsync: crate::queue::FsyncPolicy::Interval(Duration::from_millis(50)),
        commit_delay: Duration::ZERO,
        ..StoreConfig::new(dir.path())
    };
    let store = Store::open(cfg.clone()).unwrap();
    for i in 0..20i64 {
        store
            .append(&batch(&[("up", &[("i", "x")], &[(1000 + i, i as f64)])]))
            .await
            .unwrap();
    }
    let before = dump(&store);
    assert_eq!(before.len(), 20);
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .unwrap();
    drop(store);
    let store = Store::open(cfg).unwrap();
    assert_eq!(dump(&store), before);
}
