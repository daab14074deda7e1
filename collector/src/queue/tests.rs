use super::*;
use format::POSITION_FILE;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::time::Instant;

fn config(dir: &Path) -> QueueConfig {
    QueueConfig {
        dir: dir.to_path_buf(),
        max_bytes: 4 << 20,
        segment_bytes: 1 << 16,
        fsync: FsyncPolicy::Always,
        position_sync: Duration::from_millis(20),
        commit_delay: Duration::ZERO,
    }
}

fn open(cfg: QueueConfig) -> (DiskQueue, OpenReport) {
    DiskQueue::open(cfg).expect("open queue")
}

fn rec(i: usize) -> Bytes {
    Bytes::from(format!("record {i:05} {}", "x".repeat(i % 17)))
}

/// Every record readable now, acked.
async fn take_all(q: &DiskQueue) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(r) = q.try_next().await {
        q.ack(r.id);
        out.push(r.data);
    }
    out
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| format::parse_segment_name(n).is_some())
        .collect();
    names.sort();
    names
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    format::encode_record(&mut out, payload);
    out
}

#[tokio::test]
async fn records_round_trip_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (q, report) = open(config(dir.path()));
    assert_eq!(report.records, 0);
    assert_eq!(report.position, PositionStatus::Missing);
    q.push(&[rec(1), rec(2)]).await.unwrap();
    q.push(&[Bytes::new()]).await.unwrap();
    q.push(&[]).await.unwrap();
    let stats = q.stats();
    assert_eq!((stats.records, stats.pushed_records), (3, 3));
    assert_eq!(
        stats.bytes,
        (3 * format::HEADER_LEN + rec(1).len() + rec(2).len()) as u64
    );
    let a = q.next().await.unwrap();
    let b = q.next().await.unwrap();
    let c = q.next().await.unwrap();
    assert_eq!((a.data, b.data, c.data.len()), (rec(1), rec(2), 0));
    assert!(q.try_next().await.is_none());
    assert_eq!(q.stats().in_flight, 3);
    for id in [a.id, b.id, c.id, c.id] {
        q.ack(id);
    }
    let stats = q.stats();
    assert_eq!((stats.records, stats.bytes, stats.in_flight), (0, 0, 0));
    assert_eq!(stats.acked_records, 3);
    q.close();
    assert!(matches!(q.push(&[rec(4)]).await, Err(QueueError::Closed)));
    assert!(q.next().await.is_none());
}

#[tokio::test]
async fn next_waits_for_a_push_and_close_wakes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = open(config(dir.path()));
    let reader = tokio::spawn({
        let q = q.clone();
        async move { q.next().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!reader.is_finished());
    q.push(&[rec(7)]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.unwrap().data, rec(7));

    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.next().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let closer = q.clone();
    tokio::task::spawn_blocking(move || closer.close())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cancelled_midway_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = open(config(dir.path()));
    q.push(&[rec(1), rec(2)]).await.unwrap();
    // Polled once (which starts a read from disk), then dropped.
    let mut got = Vec::new();
    {
        let first = q.next();
        tokio::pin!(first);
        tokio::select! {
            biased;
            r = &mut first => got.extend(r.map(|r| r.data)),
            () = std::future::ready(()) => {}
        }
    }
    got.extend(take_all(&q).await);
    assert_eq!(got, [rec(1), rec(2)]);
    let q2 = q.clone();
    tokio::task::spawn_blocking(move || q2.close())
        .await
        .unwrap();
}

#[tokio::test]
async fn order_holds_across_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        segment_bytes: 200,
        ..config(dir.path())
    };
    let mut next = 0;
    let mut push_some = async |q: &DiskQueue, n: usize| {
        let end = next + n;
        while next < end {
            let k = (next % 3 + 1).min(end - next);
            let batch: Vec<Bytes> = (next..next + k).map(rec).collect();
            q.push(&batch).await.unwrap();
            next += k;
        }
    };

    let (q, _) = open(cfg.clone());
    push_some(&q, 50).await;
    assert!(q.stats().segments > 3, "{:?}", q.stats());
    q.close();

    let (q, report) = open(cfg.clone());
    assert_eq!(report.records, 50);
    push_some(&q, 50).await;
    for i in 0..30 {
        let r = q.next().await.unwrap();
        assert_eq!(r.data, rec(i));
        q.ack(r.id);
    }
    q.close();

    let (q, report) = open(cfg);
    assert_eq!(report.records, 70);
    assert!(report.removed_segments > 0 || report.segments < 20);
    let got = take_all(&q).await;
    let want: Vec<Bytes> = (30..100).map(rec).collect();
    assert_eq!(got, want);
    q.close();
}

#[tokio::test]
async fn a_full_queue_refuses_pushes_until_records_are_acked() {
    let dir = tempfile::tempdir().unwrap();
    let payload = Bytes::from(vec![b'p'; 88]);
    let cfg = QueueConfig {
        max_bytes: 1000,
        ..config(dir.path())
    };
    let (q, _) = open(cfg);
    for _ in 0..10 {
        q.push(std::slice::from_ref(&payload)).await.unwrap();
    }
    let err = q.push(std::slice::from_ref(&payload)).await.unwrap_err();
    assert!(err.is_full(), "{err}");
    assert!((q.fill_ratio() - 1.0).abs() < 0.01, "{}", q.fill_ratio());
    let err = q.push(&[Bytes::from(vec![0; 2000])]).await.unwrap_err();
    assert!(matches!(err, QueueError::TooLarge { .. }), "{err}");
    assert!(!err.is_full());

    // Delivered but not acked still counts; acked frees the space.
    let r = q.next().await.unwrap();
    assert!(
        q.push(std::slice::from_ref(&payload))
            .await
            .unwrap_err()
            .is_full()
    );
    q.ack(r.id);
    q.push(std::slice::from_ref(&payload)).await.unwrap();
    assert_eq!(q.stats().records, 10);
    q.close();
}

#[tokio::test]
async fn acks_persist_across_reopen_and_unacked_records_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (q, _) = open(cfg.clone());
    for i in 0..10 {
        q.push(&[rec(i)]).await.unwrap();
    }
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(q.next().await.unwrap().id);
    }
    // Out of order: 7 and 9 are not acked, so 7 and everything after it come back.
    for i in [0, 1, 2, 3, 4, 5, 6, 8] {
        q.ack(ids[i]);
    }
    q.close();

    let (q, report) = open(cfg.clone());
    assert!(matches!(report.position, PositionStatus::Loaded(_)));
    assert_eq!(report.records, 3);
    assert_eq!(take_all(&q).await, [rec(7), rec(8), rec(9)]);
    q.close();

    let (q, report) = open(cfg);
    assert_eq!(report.records, 0);
    assert_eq!(report.bytes, 0);
    assert!(q.try_next().await.is_none());
    q.close();
}

#[tokio::test]
async fn acked_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        segment_bytes: 100,
        position_sync: Duration::from_secs(3600),
        ..config(dir.path())
    };
    let (q, _) = open(cfg);
    for i in 0..40 {
        q.push(&[rec(i)]).await.unwrap();
    }
    assert!(segment_files(dir.path()).len() >= 10);
    assert_eq!(take_all(&q).await.len(), 40);
    // The segment-crossing acks nudge the writer, without waiting for position_sync.
    let deadline = Instant::now() + Duration::from_secs(5);
    while segment_files(dir.path()).len() > 1 {
        assert!(Instant::now() < deadline, "{:?}", segment_files(dir.path()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(q.stats().segments, 1);
    q.close();
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (q, _) = open(cfg.clone());
    for i in 0..5 {
        q.push(&[rec(i)]).await.unwrap();
    }
    q.close();
    let seg = dir.path().join(format::segment_name(1));
    let whole = std::fs::read(&seg).unwrap();
    let torn = framed(b"a record the crash cut short");
    for cut in [1, 5, format::HEADER_LEN, torn.len() - 1] {
        let mut bytes = whole.clone();
        bytes.extend_from_slice(&torn[..cut]);
        std::fs::write(&seg, &bytes).unwrap();
        let (q, report) = open(cfg.clone());
        assert_eq!(report.truncated_bytes, cut as u64, "cut {cut}");
        assert_eq!(report.damaged_regions, 0);
        assert_eq!(report.records, 5);
        assert_eq!(std::fs::read(&seg).unwrap(), whole);
        let got: Vec<Bytes> = {
            let mut v = Vec::new();
            while let Some(r) = q.try_next().await {
                v.push(r.data);
            }
            v
        };
        assert_eq!(got, (0..5).map(rec).collect::<Vec<_>>());
        q.close();
        for name in segment_files(dir.path()) {
            if name != format::segment_name(1) {
                std::fs::remove_file(dir.path().join(name)).unwrap();
            }
        }
    }
    // Writing continues (in a new segment) after the cut.
    let (q, _) = open(cfg.clone());
    q.push(&[rec(5)]).await.unwrap();
    assert_eq!(take_all(&q).await, (0..6).map(rec).collect::<Vec<_>>());
    q.close();
}

/// Pushes `n` records one per push into segments of `segment_bytes`, closes, and returns the
/// (segment index, offset, framed length) of each record.
async fn build(dir: &Path, n: usize, segment_bytes: u64) -> Vec<(u64, u64, u64)> {
    let (q, _) = open(QueueConfig {
        segment_bytes,
        ..config(dir)
    });
    for i in 0..n {
        q.push(&[rec(i)]).await.unwrap();
    }
    let mut places = Vec::new();
    while let Some(r) = q.try_next().await {
        let p = r.id.position();
        places.push((p.segment, p.offset, format::framed_len(r.data.len())));
    }
    q.close();
    places
}

fn flip(dir: &Path, segment: u64, offset: u64) {
    let path = dir.join(format::segment_name(segment));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test]
async fn a_damaged_record_is_skipped_and_everything_after_it_delivered() {
    // Byte 2 is in the magic, 6 in the length, 10 in the checksum, 20 in the payload.
    for at in [2u64, 6, 10, 20] {
        let dir = tempfile::tempdir().unwrap();
        let places = build(dir.path(), 30, 300).await;
        let segments: BTreeSet<u64> = places.iter().map(|p| p.0).collect();
        assert!(segments.len() >= 4);
        let middle = *segments.iter().nth(1).unwrap();
        let (victim, _) = places
            .iter()
            .enumerate()
            .filter(|(_, p)| p.0 == middle)
            .nth(1)
            .unwrap();
        let (seg, off, len) = places[victim];
        flip(dir.path(), seg, off + at);

        let (q, report) = open(config(dir.path()));
        assert_eq!(report.damaged_regions, 1, "flip at {at}");
        assert_eq!(report.damaged_bytes, len, "flip at {at}");
        assert_eq!(report.records, 29);
        let got = take_all(&q).await;
        let want: Vec<Bytes> = (0..30).filter(|&i| i != victim).map(rec).collect();
        assert_eq!(got, want, "flip at {at}");
        assert_eq!(q.stats().damaged_bytes_skipped, len);
        q.close();
    }
}

#[tokio::test]
async fn foreign_files_are_ignored_and_a_bad_position_file_redelivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (q, _) = open(cfg.clone());
    for i in 0..6 {
        q.push(&[rec(i)]).await.unwrap();
    }
    for _ in 0..4 {
        let r = q.next().await.unwrap();
        q.ack(r.id);
    }
    q.close();

    std::fs::write(dir.path().join("notes.txt"), "not a segment").unwrap();
    std::fs::write(dir.path().join("1.seg"), "short name").unwrap();
    std::fs::create_dir(dir.path().join("0000000000000050.seg")).unwrap();
    std::fs::write(dir.path().join("0000000000000000.seg"), "").unwrap();
    std::fs::write(dir.path().join(POSITION_FILE), b"garbage position").unwrap();

    let (q, report) = open(cfg.clone());
    assert!(
        matches!(report.position, PositionStatus::Unreadable(ref r) if r == "wrong size"),
        "{report:?}"
    );
    assert_eq!(
        report.foreign_files,
        ["0000000000000050.seg", "1.seg", "notes.txt"]
    );
    assert_eq!(report.records, 6);
    assert_eq!(take_all(&q).await, (0..6).map(rec).collect::<Vec<_>>());
    q.push(&[rec(6)]).await.unwrap();
    assert_eq!(take_all(&q).await, [rec(6)]);
    q.close();
    // The new segment went after the foreign directory's number.
    assert!(dir.path().join(format::segment_name(51)).exists());

    let (q, report) = open(cfg.clone());
    assert!(matches!(report.position, PositionStatus::Loaded(_)));
    assert_eq!(report.records, 0);
    q.close();

    std::fs::remove_file(dir.path().join(POSITION_FILE)).unwrap();
    let (q, report) = open(cfg);
    assert_eq!(report.position, PositionStatus::Missing);
    assert_eq!(
        report.records, 1,
        "only the newest segment is left: {report:?}"
    );
    assert_eq!(take_all(&q).await, [rec(6)]);
    q.close();
}

#[tokio::test]
async fn a_second_queue_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = open(config(dir.path()));
    assert!(matches!(
        DiskQueue::open(config(dir.path())),
        Err(QueueError::Locked { .. })
    ));
    q.close();
    open(config(dir.path())).0.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushers_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (q, _) = open(cfg.clone());
    let mut tasks = Vec::new();
    for t in 0..8 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                q.push(&[Bytes::from(format!("{t}-{i}"))]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = q.stats();
    assert_eq!(stats.pushed_records, 400);
    // Group commit: never more fsyncs than pushes (usually far fewer).
    assert!(stats.fsyncs <= 400, "{stats:?}");
    let q2 = q.clone();
    tokio::task::spawn_blocking(move || q2.close())
        .await
        .unwrap();

    let (q, report) = open(cfg);
    assert_eq!(report.records, 400);
    let got: BTreeSet<Bytes> = take_all(&q).await.into_iter().collect();
    let want: BTreeSet<Bytes> = (0..8)
        .flat_map(|t| (0..50).map(move |i| Bytes::from(format!("{t}-{i}"))))
        .collect();
    assert_eq!(got, want);
    tokio::task::spawn_blocking(move || q.close())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_within_the_commit_delay_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = open(QueueConfig {
        commit_delay: Duration::from_millis(300),
        ..config(dir.path())
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            // Staggered: without the delay each would be written and fsynced on its own.
            tokio::time::sleep(Duration::from_millis(10 * t)).await;
            q.push(&[Bytes::from(format!("p{t}"))]).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    let stats = q.stats();
    assert_eq!(stats.pushed_records, 6);
    assert_eq!(stats.fsyncs, 1, "{stats:?}");
    assert_eq!(take_all(&q).await.len(), 6);
}

#[tokio::test]
async fn interval_policy_fsyncs_after_the_push_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = open(QueueConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(50)),
        ..config(dir.path())
    });
    q.push(&[rec(1)]).await.unwrap();
    assert_eq!(q.stats().fsyncs, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while q.stats().fsyncs == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(take_all(&q).await, [rec(1)]);
    q.close();
}

#[tokio::test]
async fn verify_reports_what_a_damaged_queue_holds() {
    let dir = tempfile::tempdir().unwrap();
    let places = build(dir.path(), 20, 250).await;
    let segments: BTreeSet<u64> = places.iter().map(|p| p.0).collect();
    let newest = *segments.last().unwrap();

    let clean = verify(dir.path()).unwrap();
    assert!(clean.is_clean(), "{clean}");
    assert_eq!(clean.records(), 20);
    assert_eq!(clean.pending_records(), 20);
    assert_eq!(clean.in_use, Some(false));
    assert!(clean.to_string().ends_with("result:    OK"), "{clean}");

    // Ack the first five, then damage the queue three ways.
    let (q, _) = open(config(dir.path()));
    for _ in 0..5 {
        let r = q.next().await.unwrap();
        q.ack(r.id);
    }
    q.close();
    let (seg, off, len) = places[12];
    flip(dir.path(), seg, off + 15);
    let tail = dir.path().join(format::segment_name(newest));
    let mut bytes = std::fs::read(&tail).unwrap();
    bytes.extend_from_slice(&framed(b"torn")[..7]);
    std::fs::write(&tail, &bytes).unwrap();
    std::fs::write(dir.path().join("stray.tmp"), "x").unwrap();

    let before: Vec<Vec<u8>> = segment_files(dir.path())
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect();
    let report = verify(dir.path()).unwrap();
    let after: Vec<Vec<u8>> = segment_files(dir.path())
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect();
    assert_eq!(before, after, "verify must not change anything");

    assert!(!report.is_clean());
    assert_eq!(report.records(), 19);
    assert_eq!(report.pending_records(), 14);
    assert_eq!(report.damaged_regions(), 1);
    assert_eq!(report.damaged_bytes(), len);
    let damaged = report.segments.iter().find(|s| s.index == seg).unwrap();
    assert_eq!(damaged.damaged[0].offset, off);
    assert_eq!(damaged.damaged[0].reason, "checksum mismatch");
    let last = report.segments.last().unwrap();
    assert_eq!(last.torn_tail.as_ref().map(|d| d.len), Some(7));
    assert_eq!(report.foreign_files, ["stray.tmp"]);
    assert!(
        matches!(report.position, PositionStatus::Loaded(p) if p == Position { segment: places[5].0, offset: places[5].1 })
    );

    let text = report.to_string();
    println!("{text}");
    for want in [
        format!("damaged at offset {off}: {len} bytes (checksum mismatch)"),
        "torn tail at offset".to_owned(),
        "records:   19 (14 pending".to_owned(),
        "ignored:   stray.tmp".to_owned(),
        "result:    DAMAGED".to_owned(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }

    // Open agrees, cuts the tail, and a running queue shows as in use.
    let (q, report) = open(config(dir.path()));
    assert_eq!((report.records, report.damaged_regions), (14, 1));
    assert_eq!(report.truncated_bytes, 7);
    assert_eq!(verify(dir.path()).unwrap().in_use, Some(true));
    q.close();
    assert!(verify(&dir.path().join("missing")).is_err());
}

/// Runs in a child process with RLIMIT_FSIZE set (see the test below): writes past the limit
/// fail with EFBIG, like a full disk.
fn disk_full_child(dir: &Path, out: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (q, _) = open(QueueConfig {
            segment_bytes: 1 << 20,
            ..config(dir)
        });
        let payload = Bytes::from(vec![b'd'; 1000]);
        let mut ok = 0u64;
        let err = loop {
            match q.push(std::slice::from_ref(&payload)).await {
                Ok(()) => ok += 1,
                Err(e) => break e,
            }
            assert!(ok < 1000, "the file size limit did not apply");
        };
        assert!(matches!(err, QueueError::Io { .. }), "{err}");
        // The partial record was cut off, so the writer keeps working (and keeps refusing).
        let again = q.push(std::slice::from_ref(&payload)).await.unwrap_err();
        assert!(matches!(again, QueueError::Io { .. }), "{again}");
        let len = std::fs::metadata(dir.join(format::segment_name(1)))
            .unwrap()
            .len();
        assert_eq!(len, ok * format::framed_len(1000));
        q.close();
        std::fs::write(out, ok.to_string()).unwrap();
    });
}

#[test]
fn a_failed_write_fails_the_push_and_is_cut_off() {
    if let (Ok(dir), Ok(out)) = (
        std::env::var("SONDE_QUEUE_TEST_FSIZE_DIR"),
        std::env::var("SONDE_QUEUE_TEST_FSIZE_OUT"),
    ) {
        disk_full_child(Path::new(&dir), Path::new(&out));
        return;
    }
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let queue_dir = dir.path().join("q");
    let out = dir.path().join("ok");
    // SIGXFSZ would kill the child; ignored, the write fails with EFBIG instead.
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=65536 -- \"$0\" --exact --nocapture queue::tests::a_failed_write_fails_the_push_and_is_cut_off")
        .arg(std::env::current_exe().unwrap())
        .env("SONDE_QUEUE_TEST_FSIZE_DIR", &queue_dir)
        .env("SONDE_QUEUE_TEST_FSIZE_OUT", &out)
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "child test failed ({}):\n{}\n{}",
        child.status,
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    let ok: u64 = std::fs::read_to_string(&out).unwrap().parse().unwrap();
    assert!(ok > 10);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (q, report) = open(config(&queue_dir));
        assert_eq!(report.records, ok);
        assert_eq!((report.damaged_regions, report.truncated_bytes), (0, 0));
        assert_eq!(take_all(&q).await.len() as u64, ok);
        q.close();
    });
}

/// One segment file's content in the property test: valid records and garbage.
#[derive(Debug, Clone)]
enum Chunk {
    Record(Vec<u8>),
    Garbage(Vec<u8>),
    /// The first bytes of a valid record.
    Cut(Vec<u8>, usize),
}

fn chunk() -> impl Strategy<Value = Chunk> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Chunk::Record),
        proptest::collection::vec(any::<u8>(), 1..60).prop_map(Chunk::Garbage),
        (proptest::collection::vec(any::<u8>(), 0..40), 1usize..50)
            .prop_map(|(r, cut)| Chunk::Cut(r, cut)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn garbage_segments_never_stop_open_and_valid_records_survive(
        files in proptest::collection::btree_map(0u64..6, proptest::collection::vec(chunk(), 0..6), 0..4),
        position in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        junk in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        for (index, chunks) in &files {
            let mut bytes = Vec::new();
            let mut cuts = Vec::new();
            for c in chunks {
                match c {
                    Chunk::Record(p) => {
                        bytes.extend(framed(p));
                        want.push(Bytes::from(p.clone()));
                    }
                    Chunk::Garbage(g) => bytes.extend_from_slice(g),
                    Chunk::Cut(p, cut) => {
                        let f = framed(p);
                        cuts.push((bytes.len(), f.clone()));
                        bytes.extend_from_slice(&f[..(*cut).min(f.len() - 1)]);
                    }
                }
            }
            // A cut record whose missing tail happens to be exactly the bytes that follow
            // it (a payload ending in "S" cut before its last byte, then a frame starting
            // with the magic "SNQ\x01") is a whole, valid record on disk: not a cut at all.
            for (at, f) in &cuts {
                prop_assume!(bytes.get(*at..*at + f.len()) != Some(f.as_slice()));
            }
            std::fs::write(dir.path().join(format::segment_name(*index)), bytes).unwrap();
        }
        if let Some(p) = &position {
            std::fs::write(dir.path().join(POSITION_FILE), p).unwrap();
        }
        std::fs::write(dir.path().join("0000000000000003.seg.bak"), &junk).unwrap();

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(async {
            let (q, report) = open(config(dir.path()));
            let got = take_all(&q).await;
            q.close();
            assert_eq!(report.records, got.len() as u64);
            got
        });
        // Random bytes never make a valid position file, so everything is delivered.
        prop_assert_eq!(got, want);
    }
}

/// Throughput, for BENCHMARKS.md: `cargo test --release -p sonde-collector --lib
/// queue::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    const PUSHERS: usize = 16;
    const PER_PUSHER: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = open(QueueConfig {
        max_bytes: 1 << 30,
        segment_bytes: 32 << 20,
        ..config(dir.path())
    });
    let payload = Bytes::from(vec![b'r'; 1024]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PUSHERS {
        let (q, payload) = (q.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_PUSHER {
                q.push(std::slice::from_ref(&payload)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let pushed = started.elapsed();
    let n = (PUSHERS * PER_PUSHER) as f64;
    let fsyncs = q.stats().fsyncs;
    let started = Instant::now();
    let mut read = 0;
    while let Some(r) = q.try_next().await {
        q.ack(r.id);
        read += 1;
    }
    let drained = started.elapsed();
    assert_eq!(read, PUSHERS * PER_PUSHER);
    println!(
        "push (fsync always, {PUSHERS} pushers, 1 KiB records): {:.0} records/s, {:.1} MB/s, \
         {fsyncs} fsyncs ({:.1} pushes per fsync); read+ack: {:.0} records/s",
        n / pushed.as_secs_f64(),
        n * 1036.0 / pushed.as_secs_f64() / 1e6,
        n / fsyncs as f64,
        n / drained.as_secs_f64()
    );
    let q2 = q.clone();
    tokio::task::spawn_blocking(move || q2.close())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_caught_up_reader_gets_records_with_companions_from_memory_and_from_disk_without() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = open(config(dir.path()));
    let with = |i: usize| (rec(i), Some(Bytes::from(format!("companion {i}"))));
    // Nothing read yet: the reader is at the start, so the first push is handed over.
    q.push_with(&[with(1), with(2)]).await.unwrap();
    let a = q.try_next().await.unwrap();
    let b = q.try_next().await.unwrap();
    assert_eq!((a.data.clone(), a.companion.clone()), with(1));
    assert_eq!((b.data.clone(), b.companion.clone()), with(2));
    assert!(q.try_next().await.is_none());
    // A reader that does not keep up gets records from memory only up to a bound; past it they
    // stay on disk and are read back, in order, without their companions.
    q.push_with(&[with(3)]).await.unwrap();
    q.push_with(&[with(4)]).await.unwrap();
    let c = q.try_next().await.unwrap();
    assert_eq!(c.companion.as_deref(), Some(&b"companion 3"[..]));
    let d = q.try_next().await.unwrap();
    assert_eq!((d.data.clone(), d.companion.clone()), with(4));
    let bound = writer::MAX_HANDED_AHEAD;
    for i in 0..bound + 2 {
        q.push_with(&[with(100 + i)]).await.unwrap();
    }
    for i in 0..bound + 2 {
        let r = q.try_next().await.unwrap();
        assert_eq!(r.data, rec(100 + i));
        assert_eq!(r.companion.is_some(), i < bound, "record {i}");
        if i <= bound {
            q.ack(r.id);
        }
    }
    // Handed-over records are acked and counted like any other: after a restart only the
    // unacked ones come back, from disk, in order.
    for r in [&a, &b, &c, &d] {
        q.ack(r.id);
    }
    assert_eq!(q.stats().records, 1);
    q.close();
    drop(q);
    let (q, report) = open(config(dir.path()));
    assert_eq!(report.records, 1);
    let again = q.try_next().await.unwrap();
    assert_eq!((again.data, again.companion), (rec(100 + bound + 1), None));
    assert!(q.try_next().await.is_none());
    // Reading on after a hand-over continues at the right place in the segment.
    q.push_with(&[with(5)]).await.unwrap();
    q.push(&[rec(6)]).await.unwrap();
    let mut rest = Vec::new();
    while let Some(r) = q.try_next().await {
        rest.push(r.data);
    }
    assert_eq!(rest, [rec(5), rec(6)]);
}
