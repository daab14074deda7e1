//! Evaluator tests over in-memory series: lookback and staleness, offsets and `@`, vector
//! matching errors, limits, refusals, and untrusted query strings never panicking.

use super::*;
use proptest::prelude::*;

/// Series held in memory, selected like the store does.
pub(super) struct Mem(pub(super) Vec<SeriesSamples>);

impl SeriesSource for Mem {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
        self.0
            .iter()
            .filter(|s| {
                let labels = Labels::from_series(&s.series);
                matchers.iter().all(|m| m.matches(labels.get(&m.name)))
            })
            .map(|s| SeriesSamples {
                series: s.series.clone(),
                samples: s
                    .samples
                    .iter()
                    .copied()
                    .filter(|p| p.timestamp_ms >= start_ms && p.timestamp_ms <= end_ms)
                    .collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect()
    }
}

type TestSeries<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(i64, f64)]);

fn mem(series: &[TestSeries<'_>]) -> Mem {
    Mem(series
        .iter()
        .map(|(name, labels, samples)| SeriesSamples {
            series: Series::new(*name, labels.iter().copied()),
            samples: samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
        })
        .collect())
}

const LOOKBACK: i64 = 300_000;

fn instant(src: &Mem, q: &str, t: i64) -> Result<Value, EvalError> {
    instant_query(src, q, t, LOOKBACK, QueryLimits::default())
}

fn values(v: Value) -> Vec<(String, f64)> {
    let Value::Vector(mut v) = v else {
        panic!("not a vector: {v:?}")
    };
    v.sort_by(|a, b| a.labels.cmp(&b.labels));
    v.into_iter()
        .map(|e| (e.labels.to_string(), e.value))
        .collect()
}

fn stale() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

#[test]
fn lookback_and_stale_markers_bound_instant_selection() {
    let src = mem(&[
        (
            "g",
            &[("i", "a")],
            &[(0, 1.0), (60_000, 2.0), (120_000, stale())],
        ),
        ("g", &[("i", "b")], &[(0, 5.0)]),
    ]);
    assert_eq!(
        values(instant(&src, "g", 60_000).unwrap()),
        [
            (r#"{__name__="g", i="a"}"#.into(), 2.0),
            (r#"{__name__="g", i="b"}"#.into(), 5.0)
        ]
    );
    // After the stale marker `a` is gone; `b` lasts until its lookback ends (inclusive).
    assert_eq!(
        values(instant(&src, "g", 300_000).unwrap()),
        [(r#"{__name__="g", i="b"}"#.into(), 5.0)]
    );
    assert!(values(instant(&src, "g", 300_001).unwrap()).is_empty());
    // The stale marker is not a sample of a range.
    assert_eq!(
        values(instant(&src, r#"count_over_time(g{i="a"}[5m])"#, 150_000).unwrap()),
        [("{i=\"a\"}".into(), 2.0)]
    );
}

#[test]
fn offset_and_at_move_the_read_time() {
    let src = mem(&[("g", &[], &[(0, 1.0), (60_000, 2.0), (120_000, 3.0)])]);
    assert_eq!(
        values(instant(&src, "g offset 1m", 120_000).unwrap())[0].1,
        2.0
    );
    assert_eq!(values(instant(&src, "g @ 0", 120_000).unwrap())[0].1, 1.0);
    let r = range_query(
        &src,
        "g @ start()",
        60_000,
        120_000,
        30_000,
        LOOKBACK,
        QueryLimits::default(),
    )
    .unwrap();
    assert_eq!(r.len(), 1);
    assert!(r[0].points.iter().all(|p| p.value == 2.0));
    assert_eq!(r[0].points.len(), 3);
    let r = range_query(
        &src,
        "g @ end()",
        60_000,
        120_000,
        30_000,
        LOOKBACK,
        QueryLimits::default(),
    )
    .unwrap();
    assert!(r[0].points.iter().all(|p| p.value == 3.0));
}

#[test]
fn functions_drop_the_metric_name_and_duplicates_fail() {
    let src = mem(&[
        ("a", &[("i", "x")], &[(0, 1.0), (60_000, 4.0)]),
        ("b", &[("i", "x")], &[(0, 1.0), (60_000, 4.0)]),
    ]);
    assert_eq!(
        values(instant(&src, "last_over_time(a[5m])", 60_000).unwrap())[0].0,
        r#"{__name__="a", i="x"}"#
    );
    assert_eq!(
        values(instant(&src, "abs(a)", 60_000).unwrap())[0].0,
        r#"{i="x"}"#
    );
    let err = instant(&src, r#"abs({__name__=~"a|b"})"#, 60_000).unwrap_err();
    assert_eq!(
        err,
        EvalError::Execution("vector cannot contain metrics with the same labelset".into())
    );
}

#[test]
fn matching_errors_are_prometheus_errors() {
    let src = mem(&[
        ("l", &[("i", "a"), ("j", "1")], &[(0, 1.0)]),
        ("l", &[("i", "a"), ("j", "2")], &[(0, 2.0)]),
        ("r", &[("i", "a")], &[(0, 10.0)]),
    ]);
    let err = instant(&src, "l + on(i) r", 0).unwrap_err();
    assert!(
        matches!(&err, EvalError::Execution(m) if m.contains("many-to-one matching must be explicit")),
        "{err:?}"
    );
    let err = instant(&src, "r + on(i) l", 0).unwrap_err();
    assert!(
        matches!(&err, EvalError::Execution(m) if m.starts_with(r#"found duplicate series for the match group {i="a"} on the right hand-side"#)),
        "{err:?}"
    );
    assert_eq!(
        values(instant(&src, "l + on(i) group_left r", 0).unwrap()),
        [
            (r#"{i="a", j="1"}"#.into(), 11.0),
            (r#"{i="a", j="2"}"#.into(), 12.0)
        ]
    );
    assert_eq!(
        values(instant(&src, "r - on(i) group_right l", 0).unwrap()),
        [
            (r#"{i="a", j="1"}"#.into(), 9.0),
            (r#"{i="a", j="2"}"#.into(), 8.0)
        ]
    );
    // Comparisons keep the left value and the name; `bool` drops the name.
    assert_eq!(
        values(instant(&src, "l > 1", 0).unwrap()),
        [(r#"{__name__="l", i="a", j="2"}"#.into(), 2.0)]
    );
    assert_eq!(
        values(instant(&src, "1 < bool l", 0).unwrap()),
        [
            (r#"{i="a", j="1"}"#.into(), 0.0),
            (r#"{i="a", j="2"}"#.into(), 1.0)
        ]
    );
}

#[test]
fn unsupported_constructs_are_refused_by_name() {
    let src = mem(&[]);
    for (q, word) in [
        ("rate(x[5m:1m])", "subquer"),
        ("holt_winters(x[5m], 0.1, 0.1)", "holt_winters"),
        ("x atan2 x", "atan2"),
        ("day_of_month()", "day_of_month"),
    ] {
        match instant(&src, q, 0) {
            Err(EvalError::BadData(m)) => assert!(m.contains(word), "{q}: {m}"),
            other => panic!("{q}: {other:?}"),
        }
    }
    assert!(matches!(
        instant(&src, "sum(", 0),
        Err(EvalError::BadData(_))
    ));
    assert!(matches!(
        range_query(&src, "x[5m]", 0, 10, 1, LOOKBACK, QueryLimits::default()),
        Err(EvalError::BadData(m)) if m.contains("range vector")
    ));
}

#[test]
fn limits_stop_a_query() {
    let samples: Vec<(i64, f64)> = (0..100).map(|i| (i * 1000, i as f64)).collect();
    let src = mem(&[
        ("g", &[("i", "a")], &samples),
        ("g", &[("i", "b")], &samples),
    ]);
    let few_series = QueryLimits {
        max_series: 1,
        ..QueryLimits::default()
    };
    assert!(matches!(
        instant_query(&src, "g", 50_000, LOOKBACK, few_series),
        Err(EvalError::Execution(m)) if m.contains("--query-max-series")
    ));
    let few_samples = QueryLimits {
        max_samples: 150,
        ..QueryLimits::default()
    };
    assert!(matches!(
        instant_query(&src, "count_over_time(g[200s])", 99_000, LOOKBACK, few_samples),
        Err(EvalError::Execution(m)) if m.contains("too many samples")
    ));
    let no_time = QueryLimits {
        timeout: Duration::ZERO,
        ..QueryLimits::default()
    };
    assert!(matches!(
        range_query(&src, "g", 0, 99_000, 1000, LOOKBACK, no_time),
        Err(EvalError::Timeout(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Untrusted query strings give an answer or an error, never a panic.
    #[test]
    fn arbitrary_queries_never_panic(q in "[a-z_(){}\\[\\]0-9=~!\",.:@+*/%^<> -]{0,40}") {
        let src = mem(&[("up", &[("job", "a")], &[(0, 1.0)])]);
        let _ = instant(&src, &q, 0);
        let _ = range_query(&src, &q, 0, 60_000, 15_000, LOOKBACK, QueryLimits::default());
    }

    /// Fragments of valid PromQL glued together at random, closer to real queries.
    #[test]
    fn glued_fragments_never_panic(parts in proptest::collection::vec(0usize..24, 1..8)) {
        const FRAGMENTS: [&str; 24] = [
            "up", "rate(", "up[5m]", ")", "sum by (job) (", " + ", " / on(job) group_left ",
            "topk(", "2, ", "histogram_quantile(0.9, ", "offset 1m", " @ 10", "-", "(",
            "label_replace(up, \"a\", \"$1\", \"job\", \"(.*)\")", " and ", "scalar(", "1",
            "count_values(\"v\", ", " > bool ", "absent(", "quantile(0.5, ", "time()", "[1m:]",
        ];
        let q: String = parts.iter().map(|&i| FRAGMENTS[i]).collect();
        let src = mem(&[("up", &[("job", "a")], &[(0, 1.0), (5000, 2.0)])]);
        let _ = instant(&src, &q, 10_000);
        let _ = range_query(&src, &q, 0, 60_000, 15_000, LOOKBACK, QueryLimits::default());
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowing() {
    // Run on a thread with the blocking pool's 2 MiB stack.
    let r = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let src = mem(&[]);
            let ok = format!("{}1{}", "(".repeat(100), ")".repeat(100));
            assert_eq!(instant(&src, &ok, 0), Ok(Value::Scalar(1.0)));
            for q in [
                format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000)),
                format!("1{}", "+1".repeat(100_000)),
                format!("up{}", " and up".repeat(10_000)),
                format!("{}up{}", "sum(".repeat(5_000), ")".repeat(5_000)),
            ] {
                assert!(
                    matches!(instant(&src, &q, 0), Err(EvalError::BadData(m)) if m.contains("nested too deeply"))
                );
            }
            // Operators inside strings do not count.
            let q = format!(r#"up{{a="{}"}}"#, "(+".repeat(1000));
            assert!(instant(&src, &q, 0).is_ok());
        })
        .unwrap()
        .join();
    assert!(r.is_ok());
}

/// Counts the reads that reach the source.
struct Counting<'a>(&'a Mem, std::cell::Cell<usize>);

impl SeriesSource for Counting<'_> {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
        self.1.set(self.1.get() + 1);
        self.0.select(matchers, start_ms, end_ms)
    }

    fn count(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> usize {
        self.0.select(matchers, start_ms, end_ms).len()
    }
}

#[test]
fn slices_grow_for_few_series_up_to_a_day() {
    use super::select::{FETCH_SLICE_MS, slice_ms};
    assert_eq!(slice_ms(20_000), FETCH_SLICE_MS);
    assert_eq!(slice_ms(10_000), FETCH_SLICE_MS);
    assert_eq!(slice_ms(2_500), 4 * FETCH_SLICE_MS);
    assert_eq!(slice_ms(2), 12 * FETCH_SLICE_MS);
    assert_eq!(slice_ms(0), 12 * FETCH_SLICE_MS);
}

#[test]
fn long_windows_are_read_in_slices_within_the_budget() {
    // Five days of one sample every ten minutes, in two series (one starts after the first
    // slice). Two series read in slices of a day.
    let day = 24 * 3_600_000;
    let every = 600_000;
    let a: Vec<(i64, f64)> = (0..720).map(|i| (i * every, i as f64)).collect();
    let b: Vec<(i64, f64)> = (200..720).map(|i| (i * every, -(i as f64))).collect();
    let src = mem(&[("g", &[("s", "a")], &a), ("g", &[("s", "b")], &b)]);
    let counting = Counting(&src, std::cell::Cell::new(0));
    let r = instant_query(
        &counting,
        "count_over_time(g[5d])",
        5 * day - every,
        LOOKBACK,
        QueryLimits::default(),
    )
    .unwrap();
    assert_eq!(
        values(r),
        [("{s=\"a\"}".into(), 720.0), ("{s=\"b\"}".into(), 520.0)]
    );
    // The closed window [t - 5d, t] is one millisecond longer than five one-day slices.
    assert_eq!(counting.1.get(), 6);
    // Samples in order across slice boundaries: the last value is the newest.
    let r = instant_query(
        &src,
        "last_over_time(g[5d])",
        5 * day,
        LOOKBACK,
        QueryLimits::default(),
    )
    .unwrap();
    assert_eq!(values(r)[0].1, 719.0);
    // Over the budget: the read stops after the first slice.
    let counting = Counting(&src, std::cell::Cell::new(0));
    let small = QueryLimits {
        max_samples: 100,
        ..QueryLimits::default()
    };
    assert!(matches!(
        instant_query(
            &counting,
            "count_over_time(g[5d])",
            5 * day - every,
            LOOKBACK,
            small
        ),
        Err(EvalError::Execution(_))
    ));
    assert_eq!(counting.1.get(), 1);
}
