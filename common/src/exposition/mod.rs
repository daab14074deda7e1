//! Parsing of the Prometheus text exposition format 0.0.4 and the OpenMetrics 1.0 text format,
//! what `/metrics` endpoints serve, into our model's [`Series`] and [`MetricKind`].
//!
//! Our own parser, not a crate: `prometheus-parse` does not unescape label values and
//! `openmetrics-parser` is LGPL-3.0 (see DEPENDENCIES.md).
//!
//! ## What it does
//! - Lines are split on `\n`; a trailing `\r` is dropped (CRLF tolerated), and so are leading
//!   and trailing blanks. Blank lines and `#` lines other than metadata are ignored (OpenMetrics
//!   forbids them; being lenient here costs nothing).
//! - A sample is `name{label="value",...} value [timestamp] [# exemplar]`. Label values are
//!   unescaped (`\\`, `\"`, `\n`; any other backslash stands for itself, as in Prometheus). A
//!   trailing comma in the label set is allowed. Values are decimal or exponent numbers, `NaN`,
//!   `+Inf`, `-Inf` (any case). Timestamps are integer milliseconds in the text format and
//!   (fractional) seconds in OpenMetrics, both returned as milliseconds; a sample without one
//!   gets the caller's default. Exemplars are skipped.
//! - Metadata: `# TYPE`, `# HELP` (both formats) and `# UNIT` (OpenMetrics). A sample belongs to
//!   the family whose name it has, or whose name plus a suffix its type allows (`_total` and
//!   `_created` for counters; `_bucket`, `_sum`, `_count`, `_created` for histograms; `_sum`,
//!   `_count`, `_created` for summaries; `_bucket`, `_gsum`, `_gcount` for gauge histograms;
//!   `_info` for infos). A sample of no declared family starts an untyped one of its own name.
//! - Kinds ([`MetricType::kind`]): counter, gauge, histogram, summary map to ours; untyped and
//!   unknown to [`MetricKind::Unknown`]; OpenMetrics gaugehistogram, stateset and info to
//!   [`MetricKind::Gauge`]: each of their series is a current value (bucket counts now, 0/1
//!   state flags, a constant 1), never a cumulative one, which is what the kind tells
//!   aggregation and queries.
//! - `_created` series of counters, histograms and summaries (OpenMetrics' creation time of the
//!   series, a timestamp rather than a measurement) are skipped and counted in
//!   [`Exposition::created_skipped`], as Prometheus does unless told to ingest them.
//! - OpenMetrics text must end with `# EOF`; only blank lines may follow it. In the text format
//!   `# EOF` is an ordinary comment.
//!
//! ## Errors and limits
//! One bad line fails the whole exposition with its line number and a short reason
//! ([`ParseError`]), as Prometheus fails the whole scrape and OpenMetrics requires. Wrong syntax
//! anywhere, a repeated label name, a label name starting with `__` (reserved), an unknown TYPE,
//! a second TYPE/HELP/UNIT line for a family, or a TYPE line after the family's samples are
//! errors. [`ParseLimits`] bound every line, label and name and the sample count; each is checked
//! on the borrowed text before the parser allocates for it.
//!
//! Not checked, as Prometheus's scrape parser does not check them either: the order of families
//! and samples, repeated series, that buckets carry `le` and quantiles `quantile`. Not
//! supported: quoted UTF-8 names (`{"my.metric"}`, an error), Go's hexadecimal float values.

mod error;
mod line;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

pub use error::{ParseError, ParseErrorKind};

use crate::model::{Limits, MetricKind, Series};
use line::{Labels, Line, SampleLine};

/// Which of the two text formats a body is in; HTTP tells by its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: timestamps in milliseconds, no `# EOF`.
    PrometheusText,
    /// `application/openmetrics-text; version=1.0.0`: timestamps in seconds, ends with `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The format a `Content-Type` header names: OpenMetrics for
    /// `application/openmetrics-text`, the Prometheus text format for anything else (as
    /// Prometheus falls back to it), including a missing header.
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        let media_type = content_type
            .and_then(|ct| ct.split(';').next())
            .map(str::trim)
            .unwrap_or("");
        if media_type.eq_ignore_ascii_case("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }
}

/// A family's declared type, as written in its `# TYPE` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    /// OpenMetrics only.
    GaugeHistogram,
    /// OpenMetrics only.
    StateSet,
    /// OpenMetrics only.
    Info,
    /// `untyped` in the text format, `unknown` in OpenMetrics, or no TYPE line.
    #[default]
    Unknown,
}

impl MetricType {
    /// A TYPE line's type word, in any case. Both formats' words are accepted in both.
    pub fn from_name(name: &str) -> Option<MetricType> {
        const NAMES: [(&str, MetricType); 9] = [
            ("counter", MetricType::Counter),
            ("gauge", MetricType::Gauge),
            ("histogram", MetricType::Histogram),
            ("summary", MetricType::Summary),
            ("gaugehistogram", MetricType::GaugeHistogram),
            ("stateset", MetricType::StateSet),
            ("info", MetricType::Info),
            ("untyped", MetricType::Unknown),
            ("unknown", MetricType::Unknown),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, t)| t)
    }

    /// The kind our model gives the family's series (the module doc says why for the
    /// OpenMetrics-only types).
    pub fn kind(self) -> MetricKind {
        match self {
            MetricType::Counter => MetricKind::Counter,
            MetricType::Gauge
            | MetricType::GaugeHistogram
            | MetricType::StateSet
            | MetricType::Info => MetricKind::Gauge,
            MetricType::Histogram => MetricKind::Histogram,
            MetricType::Summary => MetricKind::Summary,
            MetricType::Unknown => MetricKind::Unknown,
        }
    }

    /// Suffixes a sample name may add to the family name, besides none.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            MetricType::Counter => &["_total", "_created"],
            MetricType::Histogram => &["_bucket", "_sum", "_count", "_created"],
            MetricType::Summary => &["_sum", "_count", "_created"],
            MetricType::GaugeHistogram => &["_bucket", "_gsum", "_gcount"],
            MetricType::Info => &["_info"],
            MetricType::Gauge | MetricType::StateSet | MetricType::Unknown => &[],
        }
    }
}

/// Bounds on what a scraped target controls. Defaults fit our model's [`Limits`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Bytes in one line, without its line feed.
    pub max_line_len: usize,
    /// Samples kept in one exposition (skipped `_created` samples do not count).
    pub max_samples: usize,
    /// Labels in one sample's label set.
    pub max_labels_per_series: usize,
    /// Bytes in a label value, once unescaped.
    pub max_label_value_len: usize,
    /// Bytes in a metric or label name.
    pub max_name_len: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        let model = Limits::default();
        Self {
            max_line_len: 128 * 1024,
            max_samples: model.max_series_per_batch,
            max_labels_per_series: model.max_labels_per_series,
            max_label_value_len: model.max_label_value_len,
            max_name_len: model.max_name_len,
        }
    }
}

/// One parsed sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name (with its suffix, e.g. `_bucket`) and labels.
    pub series: Series,
    pub value: f64,
    /// Milliseconds since the Unix epoch: the line's own timestamp, or the default given to
    /// [`parse`] when it had none.
    pub timestamp_ms: i64,
    /// Whether the line carried a timestamp.
    pub has_timestamp: bool,
}

/// A metric family: its metadata and its samples, in the order they came.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family {
    pub name: String,
    pub metric_type: MetricType,
    /// Unescaped; `None` if absent or empty.
    pub help: Option<String>,
    /// OpenMetrics `# UNIT`; `None` if absent or empty.
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
    /// Whether a TYPE line named the family.
    type_declared: bool,
    /// Whether a sample of the family came yet (a TYPE line after one is an error).
    sampled: bool,
}

impl Family {
    pub fn kind(&self) -> MetricKind {
        self.metric_type.kind()
    }
}

/// A parsed exposition: families in order of first appearance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
    /// OpenMetrics `_created` samples skipped (see the module doc).
    pub created_skipped: usize,
}

impl Exposition {
    /// Every sample with its family.
    pub fn samples(&self) -> impl Iterator<Item = (&Family, &Sample)> {
        self.families
            .iter()
            .flat_map(|f| f.samples.iter().map(move |s| (f, s)))
    }

    pub fn sample_count(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }
}

/// Parses a whole exposition. Samples without a timestamp get `default_timestamp_ms`.
pub fn parse(
    text: &str,
    format: Format,
    default_timestamp_ms: i64,
    limits: &ParseLimits,
) -> Result<Exposition, ParseError> {
    let mut builder = Builder::new(limits);
    drive(
        text,
        format,
        Labels::Lex,
        &mut builder,
        |b, index, sample, _| {
            b.out.families[index].samples.push(Sample {
                series: Series::new(sample.name, sample.labels),
                value: sample.value,
                timestamp_ms: sample.timestamp_ms.unwrap_or(default_timestamp_ms),
                has_timestamp: sample.timestamp_ms.is_some(),
            });
            Ok(())
        },
    )?;
    Ok(builder.out)
}

/// One sample line as [`scan`] hands it over: the series as written, its family's type, its
/// value and timestamp. The label block is only skipped over; [`RawSample::series`] lexes and
/// checks it, for a caller that has not seen this `series_text` before.
#[derive(Debug)]
pub struct RawSample<'a> {
    /// The metric name and label block as written (blanks included), e.g. `m{a="1"}`: two
    /// lines with the same text are the same series.
    pub series_text: &'a str,
    pub metric_type: MetricType,
    pub value: f64,
    /// The line's own timestamp, in milliseconds.
    pub timestamp_ms: Option<i64>,
    /// 1-based, for errors.
    pub line: usize,
    limits: &'a ParseLimits,
}

impl RawSample<'_> {
    /// The series, with every check [`parse`] makes on names and labels.
    pub fn series(&self) -> Result<Series, ParseError> {
        let (name, labels) =
            line::lex_series(self.series_text, self.limits).map_err(|kind| ParseError {
                line: self.line,
                kind,
            })?;
        Ok(Series::new(name, labels))
    }
}

/// What [`scan`] saw besides the samples it handed over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Samples handed over.
    pub samples: usize,
    /// OpenMetrics `_created` samples skipped.
    pub created_skipped: usize,
}

/// Reads an exposition as [`parse`] does, with the same errors and limits, but hands each
/// sample to `visit` as a [`RawSample`] instead of building the series: for a scraper that
/// keeps what each series text became, so a series is lexed only the first time it is seen.
/// `visit` may stop the scan with its own error.
pub fn scan<E: From<ParseError>>(
    text: &str,
    format: Format,
    limits: &ParseLimits,
    mut visit: impl FnMut(RawSample<'_>) -> Result<(), E>,
) -> Result<Scanned, E> {
    let mut builder = Builder::new(limits);
    drive(
        text,
        format,
        Labels::Skip,
        &mut builder,
        |b, index, sample, line| {
            visit(RawSample {
                series_text: sample.series_text,
                metric_type: b.out.families[index].metric_type,
                value: sample.value,
                timestamp_ms: sample.timestamp_ms,
                line,
                limits,
            })
        },
    )?;
    Ok(Scanned {
        samples: builder.samples,
        created_skipped: builder.out.created_skipped,
    })
}

/// [`scan`] over bytes, which must be UTF-8 (see [`parse_bytes`]).
pub fn scan_bytes<E: From<ParseError>>(
    bytes: &[u8],
    format: Format,
    limits: &ParseLimits,
    visit: impl FnMut(RawSample<'_>) -> Result<(), E>,
) -> Result<Scanned, E> {
    scan(utf8(bytes)?, format, limits, visit)
}

/// The line loop both [`parse`] and [`scan`] run: lexes every line, keeps the families in
/// `builder`, and hands each sample kept (not a skipped `_created` one) to `on_sample` with its
/// family's index and line number.
fn drive<'t, E: From<ParseError>>(
    text: &'t str,
    format: Format,
    labels: Labels,
    builder: &mut Builder<'_>,
    mut on_sample: impl FnMut(&mut Builder<'_>, usize, SampleLine<'t>, usize) -> Result<(), E>,
) -> Result<(), E> {
    let limits = builder.limits;
    let mut eof_line = None;
    let mut line_no = 0;
    for line in text.split('\n') {
        line_no += 1;
        let lexed = line::lex(line, format, limits, labels).map_err(|kind| ParseError {
            line: line_no,
            kind,
        })?;
        if eof_line.is_some() {
            if lexed == Line::Blank {
                continue;
            }
            return Err(ParseError {
                line: line_no,
                kind: ParseErrorKind::TextAfterEof,
            }
            .into());
        }
        if lexed == Line::Eof {
            eof_line = Some(line_no);
            continue;
        }
        let at = |kind| ParseError {
            line: line_no,
            kind,
        };
        match lexed {
            Line::Sample(sample) => {
                if let Some(index) = builder.add_sample(sample.name).map_err(at)? {
                    on_sample(builder, index, sample, line_no)?;
                }
            }
            other => builder.add(other).map_err(at)?,
        }
    }
    if format == Format::OpenMetrics && eof_line.is_none() {
        // A final '\n' makes an empty last piece: report the last line that had text.
        let line = if text.ends_with('\n') {
            line_no - 1
        } else {
            line_no
        };
        return Err(ParseError {
            line: line.max(1),
            kind: ParseErrorKind::MissingEof,
        }
        .into());
    }
    Ok(())
}

/// Parses bytes, which must be UTF-8; an invalid sequence is reported on its line.
pub fn parse_bytes(
    bytes: &[u8],
    format: Format,
    default_timestamp_ms: i64,
    limits: &ParseLimits,
) -> Result<Exposition, ParseError> {
    parse(utf8(bytes)?, format, default_timestamp_ms, limits)
}

fn utf8(bytes: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(bytes).map_err(|err| {
        let valid = &bytes[..err.valid_up_to()];
        ParseError {
            line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
            kind: ParseErrorKind::InvalidUtf8,
        }
    })
}

/// Assembles lexed lines into families.
struct Builder<'l> {
    limits: &'l ParseLimits,
    out: Exposition,
    /// Family name -> index in `out.families`.
    by_name: HashMap<String, usize>,
    samples: usize,
    /// The family of the previous sample: the next one is most likely of it too.
    last: Option<usize>,
}

impl<'l> Builder<'l> {
    fn new(limits: &'l ParseLimits) -> Self {
        Builder {
            limits,
            out: Exposition::default(),
            by_name: HashMap::new(),
            samples: 0,
            last: None,
        }
    }

    /// A metadata (or blank) line; samples go to [`Builder::add_sample`].
    fn add(&mut self, line: Line<'_>) -> Result<(), ParseErrorKind> {
        match line {
            Line::Blank | Line::Comment | Line::Eof => Ok(()),
            Line::Help { name, text } => {
                let family = self.family_mut(name);
                if family.help.is_some() {
                    return Err(ParseErrorKind::DuplicateMetadata("HELP"));
                }
                family.help = Some(text.into_owned()).filter(|t| !t.is_empty());
                Ok(())
            }
            Line::Unit { name, unit } => {
                let family = self.family_mut(name);
                if family.unit.is_some() {
                    return Err(ParseErrorKind::DuplicateMetadata("UNIT"));
                }
                family.unit = Some(unit.to_owned()).filter(|u| !u.is_empty());
                Ok(())
            }
            Line::Type { name, metric_type } => {
                let family = self.family_mut(name);
                if family.type_declared {
                    return Err(ParseErrorKind::DuplicateMetadata("TYPE"));
                }
                if family.sampled {
                    return Err(ParseErrorKind::TypeAfterSamples);
                }
                family.metric_type = metric_type;
                family.type_declared = true;
                Ok(())
            }
            Line::Sample(sample) => self.add_sample(sample.name).map(|_| ()),
        }
    }

    /// The family of a sample named `name`, counted against the limit; `None` for a skipped
    /// `_created` sample.
    fn add_sample(&mut self, name: &str) -> Result<Option<usize>, ParseErrorKind> {
        let (index, suffix) = self.resolve(name);
        let family = &mut self.out.families[index];
        self.last = Some(index);
        if suffix == "_created" {
            self.out.created_skipped += 1;
            return Ok(None);
        }
        family.sampled = true;
        if self.samples >= self.limits.max_samples {
            return Err(ParseErrorKind::TooManySamples {
                max: self.limits.max_samples,
            });
        }
        self.samples += 1;
        Ok(Some(index))
    }

    /// The family a sample name belongs to, and the suffix it adds; creates an untyped family
    /// named after the sample if none fits.
    fn resolve(&mut self, name: &str) -> (usize, &'static str) {
        if let Some(index) = self.last
            && let Some(suffix) = fits(&self.out.families[index], name)
        {
            return (index, suffix);
        }
        if let Some(&index) = self.by_name.get(name) {
            return (index, "");
        }
        for suffix in [
            "_total", "_created", "_bucket", "_sum", "_count", "_gsum", "_gcount", "_info",
        ] {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some(&index) = self.by_name.get(base)
                && self.out.families[index]
                    .metric_type
                    .suffixes()
                    .contains(&suffix)
            {
                return (index, suffix);
            }
        }
        (self.new_family(name), "")
    }

    /// The family named exactly `name`, created (untyped, no samples) if there is none.
    fn family_mut(&mut self, name: &str) -> &mut Family {
        let index = match self.by_name.get(name) {
            Some(&index) => index,
            None => self.new_family(name),
        };
        &mut self.out.families[index]
    }

    fn new_family(&mut self, name: &str) -> usize {
        let index = self.out.families.len();
        self.out.families.push(Family {
            name: name.to_owned(),
            ..Family::default()
        });
        self.by_name.insert(name.to_owned(), index);
        index
    }
}

/// The suffix `name` adds to `family`'s name, if the family's type allows it.
fn fits(family: &Family, name: &str) -> Option<&'static str> {
    let rest = name.strip_prefix(family.name.as_str())?;
    if rest.is_empty() {
        return Some("");
    }
    family
        .metric_type
        .suffixes()
        .iter()
        .find(|s| **s == rest)
        .copied()
}
