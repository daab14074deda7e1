//! Properties: no input makes the parser panic, and whatever valid exposition we render from
//! arbitrary families parses back to the same samples.

use proptest::prelude::*;
use std::fmt::Write;

use super::*;

fn limits() -> ParseLimits {
    ParseLimits::default()
}

/// `scan`, lexing every series it hands over, accepts what `parse` accepts, with the same
/// samples, and fails on the same line where `parse` fails.
fn scan_agrees_with_parse(text: &str, format: Format, limits: &ParseLimits) {
    let parsed = parse(text, format, 7, limits);
    let mut scanned = Vec::new();
    let result = scan(text, format, limits, |raw| {
        let series = raw.series()?;
        scanned.push((
            series.to_string(),
            raw.metric_type as u8,
            raw.value.to_bits(),
            raw.timestamp_ms.unwrap_or(7),
        ));
        Ok::<(), ParseError>(())
    });
    match (parsed, result) {
        (Ok(expo), Ok(summary)) => {
            let mut expected: Vec<_> = expo
                .families
                .iter()
                .flat_map(|f| {
                    f.samples.iter().map(move |s| {
                        (
                            s.series.to_string(),
                            f.metric_type as u8,
                            s.value.to_bits(),
                            s.timestamp_ms,
                        )
                    })
                })
                .collect();
            expected.sort();
            scanned.sort();
            assert_eq!(expected, scanned, "{text:?}");
            assert_eq!(summary.samples, scanned.len());
            assert_eq!(summary.created_skipped, expo.created_skipped);
        }
        (Err(a), Err(b)) => assert_eq!(a.line, b.line, "{text:?}: {a} / {b}"),
        (a, b) => panic!("{text:?}: parse {a:?}, scan {b:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
        let _ = parse(&s, Format::PrometheusText, 0, &limits());
        let _ = parse(&s, Format::OpenMetrics, 0, &limits());
    }

    /// Text made of the format's own characters gets far deeper than random Unicode does.
    #[test]
    fn exposition_like_text_never_panics(
        s in proptest::collection::vec(
            prop_oneof![
                Just("# TYPE "), Just("# HELP "), Just("# UNIT "), Just("# EOF"), Just("\n"),
                Just("\r\n"), Just("counter"), Just("histogram"), Just("m"), Just("m_total"),
                Just("m_bucket"), Just("m_created"), Just("{"), Just("}"), Just("="), Just("\""),
                Just(","), Just("\\"), Just(" "), Just("\t"), Just("1"), Just("-1.5e3"),
                Just("NaN"), Just("+Inf"), Just("#"), Just("le"), Just("a"), Just("é"),
                Just("99999999999999999999"), Just("__x"),
            ],
            0..60,
        ).prop_map(|parts| parts.concat())
    ) {
        let tight = ParseLimits {
            max_line_len: 64,
            max_samples: 3,
            max_labels_per_series: 2,
            max_label_value_len: 3,
            max_name_len: 6,
        };
        for format in [Format::PrometheusText, Format::OpenMetrics] {
            let _ = parse(&s, format, 0, &limits());
            let _ = parse(&s, format, 0, &tight);
            scan_agrees_with_parse(&s, format, &limits());
            scan_agrees_with_parse(&s, format, &tight);
        }
    }

    #[test]
    fn scan_agrees_with_parse_on_label_blocks(
        s in proptest::collection::vec(
            prop_oneof![
                Just("m"), Just("{"), Just("}"), Just("a"), Just("b"), Just("="), Just("\""),
                Just("\\"), Just(","), Just(" "), Just("n"), Just("}\""), Just(" 1"), Just(" 2 3"),
                Just("\n"), Just("# TYPE m counter\n"),
            ],
            0..40,
        ).prop_map(|parts| parts.concat())
    ) {
        for format in [Format::PrometheusText, Format::OpenMetrics] {
            scan_agrees_with_parse(&s, format, &limits());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_bytes(&b, Format::PrometheusText, 0, &limits());
        let _ = parse_bytes(&b, Format::OpenMetrics, 0, &limits());
    }

    #[test]
    fn rendered_families_parse_back(
        families in proptest::collection::vec(family(), 0..6),
        openmetrics in any::<bool>(),
    ) {
        let format = if openmetrics { Format::OpenMetrics } else { Format::PrometheusText };
        // A unique prefix keeps families apart whatever suffixes they use.
        let families: Vec<Fam> = families
            .into_iter()
            .enumerate()
            .map(|(i, f)| Fam { name: format!("f{i}_{}", f.name), ..f })
            .collect();
        let text = render(&families, format);
        scan_agrees_with_parse(&text, format, &limits());
        let parsed = parse(&text, format, -1, &limits())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(parsed.families.len(), families.len(), "{}", text);
        for (want, got) in families.iter().zip(&parsed.families) {
            prop_assert_eq!(&got.name, &family_name(want, format));
            prop_assert_eq!(got.metric_type, want.metric_type);
            prop_assert_eq!(&got.help, &want.help);
            prop_assert_eq!(got.samples.len(), want.samples.len(), "{}", text);
            for ((suffix, labels, value, ts), s) in want.samples.iter().zip(&got.samples) {
                let name = format!("{}{suffix}", want.name);
                prop_assert_eq!(&s.series, &Series::new(name, labels.clone()));
                prop_assert!(
                    s.value.to_bits() == value.to_bits() || (s.value.is_nan() && value.is_nan()),
                    "{} != {}", s.value, value
                );
                prop_assert_eq!(s.timestamp_ms, ts.unwrap_or(-1));
                prop_assert_eq!(s.has_timestamp, ts.is_some());
            }
        }
    }
}

/// A family to render: samples are (suffix of the family name, labels, value, timestamp in ms).
#[derive(Debug, Clone)]
struct Fam {
    name: String,
    metric_type: MetricType,
    help: Option<String>,
    samples: Vec<FamSample>,
}

type FamSample = (&'static str, Vec<(String, String)>, f64, Option<i64>);

/// The family's name as its TYPE line writes it: in the text format a counter family is named
/// like its samples.
fn family_name(f: &Fam, format: Format) -> String {
    if format == Format::PrometheusText && f.metric_type == MetricType::Counter {
        format!("{}_total", f.name)
    } else {
        f.name.clone()
    }
}

fn family() -> impl Strategy<Value = Fam> {
    let types = prop_oneof![
        Just(MetricType::Counter),
        Just(MetricType::Gauge),
        Just(MetricType::Histogram),
        Just(MetricType::Summary),
        Just(MetricType::Unknown),
    ];
    let help = proptest::option::of("\\PC{1,20}".prop_filter("no blank edges", |h| {
        h.trim_matches([' ', '\t', '\r']) == h.as_str()
    }));
    (
        "[a-z][a-z0-9_:]{0,12}",
        types,
        help,
        proptest::collection::vec(sample(), 0..5),
    )
        .prop_map(|(name, metric_type, help, raw)| {
            let samples = raw
                .into_iter()
                .enumerate()
                .map(|(i, (labels, value, ts))| {
                    let suffix = match metric_type {
                        MetricType::Counter => "_total",
                        MetricType::Histogram => ["_bucket", "_sum", "_count"][i % 3],
                        MetricType::Summary => ["", "_sum", "_count"][i % 3],
                        _ => "",
                    };
                    (suffix, labels, value, ts)
                })
                .collect();
            Fam {
                name,
                metric_type,
                help,
                samples,
            }
        })
}

type RawSample = (Vec<(String, String)>, f64, Option<i64>);

fn sample() -> impl Strategy<Value = RawSample> {
    let value = prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        any::<i64>().prop_map(|i| i as f64),
    ];
    let label_value = prop_oneof!["\\PC{0,12}", "[\\\\\"\n a]{0,8}"];
    let labels = proptest::collection::btree_map("[a-z][a-z0-9_]{0,6}", label_value, 0..5)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>());
    // Milliseconds that survive OpenMetrics' float seconds exactly.
    let ts = proptest::option::of(-(1i64 << 48)..(1i64 << 48));
    (labels, value, ts)
}

fn render(families: &[Fam], format: Format) -> String {
    let mut out = String::new();
    for f in families {
        let type_name = match (f.metric_type, format) {
            (MetricType::Unknown, Format::PrometheusText) => "untyped",
            (MetricType::Unknown, Format::OpenMetrics) => "unknown",
            (MetricType::Counter, _) => "counter",
            (MetricType::Gauge, _) => "gauge",
            (MetricType::Histogram, _) => "histogram",
            (MetricType::Summary, _) => "summary",
            (other, _) => unreachable!("not generated: {other:?}"),
        };
        let family_name = family_name(f, format);
        let _ = writeln!(out, "# TYPE {family_name} {type_name}");
        if let Some(help) = &f.help {
            let escaped = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(out, "# HELP {family_name} {escaped}");
        }
        for (suffix, labels, value, ts) in &f.samples {
            let _ = write!(out, "{}{suffix}", f.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    let _ = write!(out, "{}{k}=\"{v}\"", if i > 0 { "," } else { "" });
                }
                out.push('}');
            }
            let _ = write!(out, " {}", render_value(*value));
            match (ts, format) {
                (None, _) => {}
                (Some(ms), Format::PrometheusText) => {
                    let _ = write!(out, " {ms}");
                }
                (Some(ms), Format::OpenMetrics) => {
                    let sign = if *ms < 0 { "-" } else { "" };
                    let abs = ms.unsigned_abs();
                    let _ = write!(out, " {sign}{}.{:03}", abs / 1000, abs % 1000);
                }
            }
            out.push('\n');
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn render_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Debug is the shortest text that reads back to the same bits, with an exponent
        // where it is shorter.
        format!("{v:?}")
    }
}
