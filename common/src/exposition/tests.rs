use super::*;
use crate::model::Label;

const NOW: i64 = 1_700_000_000_000;

fn text(s: &str) -> Result<Exposition, ParseError> {
    parse(s, Format::PrometheusText, NOW, &ParseLimits::default())
}

fn om(s: &str) -> Result<Exposition, ParseError> {
    parse(s, Format::OpenMetrics, NOW, &ParseLimits::default())
}

/// (family, type, series as Prometheus writes it, value, timestamp) for every sample.
fn flat(e: &Exposition) -> Vec<(String, MetricType, String, f64, i64)> {
    e.samples()
        .map(|(f, s)| {
            let series = s.series.to_string();
            (
                f.name.clone(),
                f.metric_type,
                series,
                s.value,
                s.timestamp_ms,
            )
        })
        .collect()
}

fn err(r: Result<Exposition, ParseError>) -> (usize, ParseErrorKind) {
    let e = r.expect_err("must be refused");
    (e.line, e.kind)
}

/// The example of https://prometheus.io/docs/instrumenting/exposition_formats/ as published
/// (including its run of blanks before `3`).
const PROMETHEUS_DOCS_EXAMPLE: &str = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="0.2"} 100392
http_request_duration_seconds_bucket{le="0.5"} 129389
http_request_duration_seconds_bucket{le="1"} 133988
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

# Finally a summary, which has a complex representation, too:
# HELP rpc_duration_seconds A summary of the RPC duration in seconds.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.01"} 3102
rpc_duration_seconds{quantile="0.05"} 3272
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.9"} 9001
rpc_duration_seconds{quantile="0.99"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"#;

#[test]
fn prometheus_docs_example() {
    let e = text(PROMETHEUS_DOCS_EXAMPLE).unwrap();
    let names: Vec<_> = e
        .families
        .iter()
        .map(|f| (f.name.as_str(), f.kind()))
        .collect();
    assert_eq!(
        names,
        [
            ("http_requests_total", MetricKind::Counter),
            ("msdos_file_access_time_seconds", MetricKind::Unknown),
            ("metric_without_timestamp_and_labels", MetricKind::Unknown),
            ("something_weird", MetricKind::Unknown),
            ("http_request_duration_seconds", MetricKind::Histogram),
            ("rpc_duration_seconds", MetricKind::Summary),
        ]
    );
    assert_eq!(e.sample_count(), 2 + 1 + 1 + 1 + 8 + 7);
    assert_eq!(
        e.families[0].help.as_deref(),
        Some("The total number of HTTP requests.")
    );
    let samples = flat(&e);
    let c = MetricType::Counter;
    assert_eq!(
        samples[0],
        (
            "http_requests_total".into(),
            c,
            r#"http_requests_total{code="200",method="post"}"#.into(),
            1027.0,
            1395066363000
        )
    );
    assert_eq!(samples[1].3, 3.0);

    let msdos = &e.families[1].samples[0];
    assert_eq!(msdos.series.label("path"), Some(r"C:\DIR\FILE.TXT"));
    assert_eq!(
        msdos.series.label("error"),
        Some("Cannot find file:\n\"FILE.TXT\"")
    );
    assert_eq!(msdos.value, 1.458255915e9);
    assert_eq!((msdos.timestamp_ms, msdos.has_timestamp), (NOW, false));

    let weird = &e.families[3].samples[0];
    assert_eq!(weird.value, f64::INFINITY);
    assert_eq!((weird.timestamp_ms, weird.has_timestamp), (-3982045, true));

    let histogram = &e.families[4];
    assert_eq!(histogram.samples.len(), 8);
    assert_eq!(histogram.samples[5].series.label("le"), Some("+Inf"));
    assert_eq!(histogram.samples[5].value, 144320.0);
    assert_eq!(
        histogram.samples[6].series.name,
        "http_request_duration_seconds_sum"
    );
    assert_eq!(
        histogram.samples[7].series.name,
        "http_request_duration_seconds_count"
    );
    let summary = &e.families[5];
    assert_eq!(summary.samples[0].series.label("quantile"), Some("0.01"));
    assert_eq!(summary.samples[5].value, 1.7560473e7);
}

/// The complete exposition of the OpenMetrics 1.0 specification, "Overall Structure".
const OPENMETRICS_SPEC_EXAMPLE: &str = r#"# TYPE acme_http_router_request_seconds summary
# UNIT acme_http_router_request_seconds seconds
# HELP acme_http_router_request_seconds Latency though all of ACME's HTTP request router.
acme_http_router_request_seconds_sum{path="/api/v1",method="GET"} 9036.32
acme_http_router_request_seconds_count{path="/api/v1",method="GET"} 807283.0
acme_http_router_request_seconds_created{path="/api/v1",method="GET"} 1605281325.0
acme_http_router_request_seconds_sum{path="/api/v2",method="POST"} 479.3
acme_http_router_request_seconds_count{path="/api/v2",method="POST"} 34.0
acme_http_router_request_seconds_created{path="/api/v2",method="POST"} 1605281325.0
# TYPE go_goroutines gauge
# HELP go_goroutines Number of goroutines that currently exist.
go_goroutines 69
# TYPE process_cpu_seconds counter
# UNIT process_cpu_seconds seconds
# HELP process_cpu_seconds Total user and system CPU time spent in seconds.
process_cpu_seconds_total 4.20072246e+06
# EOF
"#;

#[test]
fn openmetrics_spec_example() {
    let e = om(OPENMETRICS_SPEC_EXAMPLE).unwrap();
    assert_eq!(e.families.len(), 3);
    let summary = &e.families[0];
    assert_eq!(summary.metric_type, MetricType::Summary);
    assert_eq!(summary.unit.as_deref(), Some("seconds"));
    assert_eq!(
        summary.help.as_deref(),
        Some("Latency though all of ACME's HTTP request router.")
    );
    assert_eq!(summary.samples.len(), 4, "the _created samples are skipped");
    assert_eq!(e.created_skipped, 2);
    assert_eq!(
        summary.samples[1].series.to_string(),
        r#"acme_http_router_request_seconds_count{method="GET",path="/api/v1"}"#
    );
    assert_eq!(e.families[1].samples[0].value, 69.0);
    let counter = &e.families[2];
    assert_eq!(
        (counter.name.as_str(), counter.kind()),
        ("process_cpu_seconds", MetricKind::Counter)
    );
    assert_eq!(counter.samples[0].series.name, "process_cpu_seconds_total");
    assert_eq!(counter.samples[0].value, 4.20072246e6);
}

#[test]
fn openmetrics_types_from_the_spec() {
    let e = om(r#"# TYPE foo histogram
foo_bucket{le="0.01"} 0
foo_bucket{le="0.1"} 8 # {} 0.054
foo_bucket{le="1"} 11 # {trace_id="KOO5S4vxi0o"} 0.67
foo_bucket{le="10"} 17 # {trace_id="oHg5SJYRHA0"} 9.8 1520879607.789
foo_bucket{le="+Inf"} 17
foo_count 17
foo_sum 324789.3
foo_created  1520430000.123
# TYPE gh gaugehistogram
gh_bucket{le="0.01"} 20.0
gh_bucket{le="+Inf"} 42.0
gh_gcount 42.0
gh_gsum 3289.3
# TYPE ss stateset
ss{entity="controller",ss="a"} 1.0
ss{entity="controller",ss="bb"} 0.0
# TYPE build info
build_info{name="pretty name",version="8.2.7"} 1
# TYPE c counter
c_total 17.0 1520879607.789
c_created 1520430000.123 1520879607.789
# TYPE u unknown
u 42.23
# EOF"#)
    .unwrap();
    let kinds: Vec<_> = e
        .families
        .iter()
        .map(|f| (f.name.as_str(), f.metric_type, f.kind(), f.samples.len()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("foo", MetricType::Histogram, MetricKind::Histogram, 7),
            ("gh", MetricType::GaugeHistogram, MetricKind::Gauge, 4),
            ("ss", MetricType::StateSet, MetricKind::Gauge, 2),
            ("build", MetricType::Info, MetricKind::Gauge, 1),
            ("c", MetricType::Counter, MetricKind::Counter, 1),
            ("u", MetricType::Unknown, MetricKind::Unknown, 1),
        ]
    );
    assert_eq!(e.created_skipped, 2);
    // The exemplar's timestamp is not the sample's.
    assert!(!e.families[0].samples[3].has_timestamp);
    // OpenMetrics timestamps are seconds.
    let c = &e.families[4].samples[0];
    assert_eq!((c.timestamp_ms, c.has_timestamp), (1520879607789, true));
}

#[test]
fn special_floats_any_case() {
    let e =
        text("a NaN\nb +Inf\nc -Inf\nd nan\ne inf\nf -infinity\ng 1e-3\nh -0.5\ni .5\nj 0042\n")
            .unwrap();
    let v: Vec<f64> = e.samples().map(|(_, s)| s.value).collect();
    assert!(v[0].is_nan() && v[3].is_nan());
    assert_eq!(&v[1..3], [f64::INFINITY, f64::NEG_INFINITY]);
    assert_eq!(
        &v[4..],
        [f64::INFINITY, f64::NEG_INFINITY, 0.001, -0.5, 0.5, 42.0]
    );
}

#[test]
fn timestamps_in_each_format() {
    let e = text("a 1 -5\nb 1 1395066363000\n").unwrap();
    let ts: Vec<_> = e.samples().map(|(_, s)| s.timestamp_ms).collect();
    assert_eq!(ts, [-5, 1395066363000]);
    assert_eq!(
        err(text("a 1 1.5\n")),
        (1, ParseErrorKind::InvalidTimestampMs)
    );
    assert_eq!(
        err(text("a 1 x\n")),
        (1, ParseErrorKind::InvalidTimestampMs)
    );

    let e = om("a 1 1520879607\nb 1 1.5e3\nc 1 -0.0015\n# EOF\n").unwrap();
    let ts: Vec<_> = e.samples().map(|(_, s)| s.timestamp_ms).collect();
    assert_eq!(ts, [1520879607000, 1_500_000, -2]);
    assert_eq!(
        err(om("a 1 NaN\n# EOF\n")),
        (1, ParseErrorKind::InvalidTimestampSeconds)
    );
}

#[test]
fn comments_blank_lines_crlf_and_blanks() {
    let e = text("# just a comment\r\n\r\n  \t\n#HELP m  help with  spaces \r\n# TYPE m gauge\r\nm{a=\"x\"} 1\r\n# EOF is only a comment here\r\nn 2")
        .unwrap();
    assert_eq!(flat(&e).len(), 2);
    assert_eq!(
        e.families[0].help.as_deref(),
        Some("help with  spaces"),
        "trailing blanks are ignored"
    );
    assert_eq!(e.families[0].samples[0].series.label("a"), Some("x"));
    assert_eq!(e.families[1].samples[0].value, 2.0);
}

#[test]
fn help_is_unescaped_and_untyped_is_unknown() {
    let e = text("# HELP m a \\\\ b\\nc\n# TYPE m UNTYPED\nm 1\n").unwrap();
    assert_eq!(e.families[0].help.as_deref(), Some("a \\ b\nc"));
    assert_eq!(e.families[0].kind(), MetricKind::Unknown);
}

#[test]
fn labels_empty_set_trailing_comma_and_empty_values() {
    let e = text("a{} 1\nb{x=\"1\",} 2\nc{x=\"\",y=\"2\"} 3\n").unwrap();
    let s: Vec<_> = e.samples().map(|(_, s)| s.series.clone()).collect();
    assert_eq!(s[0], Series::new("a", Vec::<(&str, &str)>::new()));
    assert_eq!(s[1].labels, [Label::new("x", "1")]);
    assert_eq!(
        s[2].labels,
        [Label::new("y", "2")],
        "empty value means no label"
    );
}

#[test]
fn escapes_in_label_values() {
    let e = text(
        r#"m{a="\\",b="\"",c="\n",d="\\n",e="x\y",f="€ \u{1F600}"} 1
"#,
    )
    .unwrap();
    let s = &e.families[0].samples[0].series;
    assert_eq!(s.label("a"), Some("\\"));
    assert_eq!(s.label("b"), Some("\""));
    assert_eq!(s.label("c"), Some("\n"));
    assert_eq!(s.label("d"), Some("\\n"));
    assert_eq!(
        s.label("e"),
        Some("x\\y"),
        "unknown escapes stand for themselves"
    );
    assert_eq!(s.label("f"), Some("€ \\u{1F600}"));
}

#[test]
fn malformed_lines_are_refused_with_their_line() {
    use ParseErrorKind::*;
    let cases: &[(&str, ParseErrorKind)] = &[
        ("m\n", MissingValue),
        ("m{a=\"1\"}\n", MissingValue),
        ("m x\n", InvalidValue),
        ("m 1e\n", InvalidValue),
        ("m{a=1} 1\n", ExpectedQuote),
        ("m{a} 1\n", ExpectedEquals),
        ("m{a=\"1\" b=\"2\"} 1\n", ExpectedCommaOrBrace),
        ("m{a=\"1\" 1\n", ExpectedCommaOrBrace),
        ("m{a=\"1} 1\n", UnterminatedLabelValue),
        ("m{a=\"1\\\"} 1\n", UnterminatedLabelValue),
        ("m{a=\"1\",a=\"2\"} 1\n", DuplicateLabel),
        ("m{,} 1\n", InvalidLabelName),
        ("m 1 2 3\n", TrailingText),
        ("m 1 # no exemplar\n", InvalidExemplar),
        ("1m 1\n", InvalidMetricName),
        ("m.x 1\n", InvalidMetricName),
        ("{a=\"1\"} 1\n", InvalidMetricName),
        ("# TYPE m\n", MalformedMetadata("TYPE")),
        ("# TYPE m gauge extra\n", MalformedMetadata("TYPE")),
        ("# TYPE m flux\n", UnknownType),
        ("# HELP\n", MalformedMetadata("HELP")),
        ("# TYPE 1m gauge\n", InvalidMetricName),
        (
            "# TYPE m gauge\n# TYPE m counter\n",
            DuplicateMetadata("TYPE"),
        ),
        ("# HELP m a\n# HELP m b\n", DuplicateMetadata("HELP")),
        ("m 1\n# TYPE m gauge\n", TypeAfterSamples),
    ];
    for (input, kind) in cases {
        let prefixed = format!("ok 1\n{input}");
        let got = err(text(&prefixed));
        let line = if *kind == DuplicateMetadata("TYPE")
            || *kind == DuplicateMetadata("HELP")
            || *kind == TypeAfterSamples
        {
            3
        } else {
            2
        };
        assert_eq!(got, (line, *kind), "input {input:?}");
        let message = text(&prefixed).unwrap_err().to_string();
        assert!(message.starts_with(&format!("line {line}: ")), "{message}");
    }
}

#[test]
fn openmetrics_eof_rules() {
    assert_eq!(err(om("a 1\n")), (1, ParseErrorKind::MissingEof));
    assert_eq!(err(om("")), (1, ParseErrorKind::MissingEof));
    assert_eq!(err(om("# EOF\na 1\n")), (2, ParseErrorKind::TextAfterEof));
    assert_eq!(
        err(om("a 1\n# EOF junk\n")),
        (2, ParseErrorKind::MalformedMetadata("EOF"))
    );
    assert_eq!(
        err(om("# UNIT a s\n# UNIT a s\n# EOF\n")),
        (2, ParseErrorKind::DuplicateMetadata("UNIT"))
    );
    assert!(om("a 1\n# EOF").is_ok());
    assert!(om("a 1\n# EOF\n\n").is_ok());
    // An empty UNIT or HELP counts as none.
    let e = om("# UNIT a \n# HELP a\na 1\n# EOF\n").unwrap();
    assert_eq!(
        (e.families[0].unit.as_ref(), e.families[0].help.as_ref()),
        (None, None)
    );
}

#[test]
fn limits_are_enforced() {
    use ParseErrorKind::*;
    let limits = ParseLimits {
        max_line_len: 40,
        max_samples: 2,
        max_labels_per_series: 2,
        max_label_value_len: 4,
        max_name_len: 8,
    };
    let p = |s: &str| parse(s, Format::PrometheusText, 0, &limits).map_err(|e| (e.line, e.kind));
    assert_eq!(
        p(&format!("a 1\nb{{x=\"{}\"}} 1\n", "y".repeat(40))),
        Err((2, LineTooLong { len: 49, max: 40 }))
    );
    assert_eq!(p("a 1\nb 2\nc 3\n"), Err((3, TooManySamples { max: 2 })));
    assert_eq!(
        p("a{x=\"1\",y=\"2\",z=\"3\"} 1\n"),
        Err((1, TooManyLabels { max: 2 }))
    );
    assert_eq!(
        p("a{x=\"12345\"} 1\n"),
        Err((1, LabelValueTooLong { len: 5, max: 4 }))
    );
    // The limit applies to the unescaped value: four escaped characters fit.
    assert!(p(r#"a{x="\\\"\n\\"} 1"#).is_ok());
    assert_eq!(p("abcdefghi 1\n"), Err((1, NameTooLong { len: 9, max: 8 })));
    assert_eq!(
        p("a{abcdefghi=\"1\"} 1\n"),
        Err((1, NameTooLong { len: 9, max: 8 }))
    );
    // Skipped _created samples do not count against the sample limit.
    let om_text = "# TYPE a counter\na_total 1\na_created 1\nb 2\n# EOF\n";
    let two = ParseLimits {
        max_samples: 2,
        ..ParseLimits::default()
    };
    assert_eq!(
        parse(om_text, Format::OpenMetrics, 0, &two)
            .unwrap()
            .sample_count(),
        2
    );
}

#[test]
fn invalid_utf8_is_reported_on_its_line() {
    let e = parse_bytes(
        b"a 1\nb{x=\"\xff\"} 1\n",
        Format::PrometheusText,
        0,
        &ParseLimits::default(),
    );
    assert_eq!(
        e.unwrap_err(),
        ParseError {
            line: 2,
            kind: ParseErrorKind::InvalidUtf8
        }
    );
}

#[test]
fn samples_find_their_family_by_suffix() {
    // A sample's family follows from its name even when families interleave.
    let e = om("# TYPE h histogram\n# TYPE c counter\nh_bucket{le=\"1\"} 1\nc_total 2\nh_sum 3\nc_total{a=\"b\"} 4\nh 5\n# EOF\n")
        .unwrap();
    let got: Vec<_> = e
        .families
        .iter()
        .map(|f| (f.name.as_str(), f.samples.len()))
        .collect();
    assert_eq!(got, [("h", 3), ("c", 2)]);
    // Suffixes a type does not allow start families of their own.
    let e = text("# TYPE g gauge\ng_total 1\ng_bucket 2\n").unwrap();
    let got: Vec<_> = e
        .families
        .iter()
        .map(|f| (f.name.as_str(), f.kind()))
        .collect();
    assert_eq!(
        got,
        [
            ("g", MetricKind::Gauge),
            ("g_total", MetricKind::Unknown),
            ("g_bucket", MetricKind::Unknown)
        ]
    );
}

#[test]
fn format_from_content_type() {
    use Format::*;
    let f = Format::from_content_type;
    assert_eq!(
        f(Some(
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        )),
        OpenMetrics
    );
    assert_eq!(f(Some("Application/OpenMetrics-Text")), OpenMetrics);
    assert_eq!(f(Some("text/plain; version=0.0.4")), PrometheusText);
    assert_eq!(f(Some("application/json")), PrometheusText);
    assert_eq!(f(None), PrometheusText);
}

#[test]
fn our_own_telemetry_output_parses() {
    use crate::telemetry::{Counter, Histogram, LabeledCounter, TextEncoder};
    let c = Counter::default();
    c.add(7);
    let lc = LabeledCounter::new("reason");
    lc.add("too \"big\"", 2);
    let h = Histogram::new(&[0.1, 1.0]);
    h.observe(0.5);
    let mut enc = TextEncoder::new();
    enc.counter("x_total", "Things.", &c);
    enc.labeled_counter("y_total", "Other things.", &lc);
    enc.gauge("z", "A level.", f64::NAN);
    enc.histogram("d_seconds", "Durations.", &h);
    let e = text(&enc.finish()).unwrap();
    let kinds: Vec<_> = e
        .families
        .iter()
        .map(|f| (f.name.as_str(), f.kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("x_total", MetricKind::Counter),
            ("y_total", MetricKind::Counter),
            ("z", MetricKind::Gauge),
            ("d_seconds", MetricKind::Histogram)
        ]
    );
    assert_eq!(
        e.families[1].samples[0].series.label("reason"),
        Some("too \"big\"")
    );
    assert_eq!(e.families[3].samples.len(), 5);
}
