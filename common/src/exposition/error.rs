//! Why a text exposition was refused: the line (counting from 1) and a short, fixed reason.
//! Errors never echo the input, so a hostile target cannot flood the logs through them.

use thiserror::Error;

/// A refused exposition. One bad line refuses the whole text, as Prometheus fails the whole
/// scrape and as OpenMetrics requires ("partial or invalid expositions MUST be considered
/// erroneous in their entirety").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number; for [`ParseErrorKind::MissingEof`], the last line.
    pub line: usize,
    pub kind: ParseErrorKind,
}

impl ParseError {
    /// A short stable name for the `reason` label of error counters.
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }
}

/// What is wrong with a line. Limits name the limit and the size seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    #[error("the text is not valid UTF-8")]
    InvalidUtf8,
    #[error("line is {len} bytes long, more than the limit of {max}")]
    LineTooLong { len: usize, max: usize },
    #[error("more than {max} samples, the limit")]
    TooManySamples { max: usize },
    #[error("series has more than {max} labels, the limit")]
    TooManyLabels { max: usize },
    #[error("label value is {len} bytes long, more than the limit of {max}")]
    LabelValueTooLong { len: usize, max: usize },
    #[error("name is {len} bytes long, more than the limit of {max}")]
    NameTooLong { len: usize, max: usize },
    #[error("invalid metric name: must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName,
    #[error("quoted (UTF-8) metric and label names are not supported")]
    QuotedName,
    #[error("invalid label name: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidLabelName,
    #[error("label names starting with '__' are reserved")]
    ReservedLabelName,
    #[error("a label name is repeated in one series")]
    DuplicateLabel,
    #[error("expected '=' after a label name")]
    ExpectedEquals,
    #[error("expected '\"' to open a label value")]
    ExpectedQuote,
    #[error("a label value has no closing '\"'")]
    UnterminatedLabelValue,
    #[error("expected ',' or '}}' after a label value")]
    ExpectedCommaOrBrace,
    #[error("the sample has no value")]
    MissingValue,
    #[error("the sample's value is not a number")]
    InvalidValue,
    #[error("the timestamp is not an integer number of milliseconds")]
    InvalidTimestampMs,
    #[error("the timestamp is not a finite number of seconds")]
    InvalidTimestampSeconds,
    #[error("unexpected text after the sample's value and timestamp")]
    TrailingText,
    #[error("malformed exemplar: expected '# {{labels}} value [timestamp]'")]
    InvalidExemplar,
    #[error("malformed {0} line")]
    MalformedMetadata(&'static str),
    #[error("unknown metric type in TYPE line")]
    UnknownType,
    #[error("second {0} line for the same metric family")]
    DuplicateMetadata(&'static str),
    #[error("TYPE line after samples of its metric family")]
    TypeAfterSamples,
    #[error("OpenMetrics text does not end with '# EOF'")]
    MissingEof,
    #[error("text after '# EOF'")]
    TextAfterEof,
}

impl ParseErrorKind {
    /// A short stable name for the `reason` label of error counters.
    pub fn reason(&self) -> &'static str {
        use ParseErrorKind::*;
        match self {
            InvalidUtf8 => "invalid_utf8",
            LineTooLong { .. } => "line_too_long",
            TooManySamples { .. } => "too_many_samples",
            TooManyLabels { .. } => "too_many_labels",
            LabelValueTooLong { .. } => "label_value_too_long",
            NameTooLong { .. } => "name_too_long",
            InvalidMetricName | QuotedName => "invalid_metric_name",
            InvalidLabelName | ReservedLabelName | DuplicateLabel => "invalid_label_name",
            ExpectedEquals | ExpectedQuote | UnterminatedLabelValue | ExpectedCommaOrBrace => {
                "invalid_labels"
            }
            MissingValue | InvalidValue => "invalid_value",
            InvalidTimestampMs | InvalidTimestampSeconds => "invalid_timestamp",
            TrailingText | InvalidExemplar => "trailing_text",
            MalformedMetadata(_) | UnknownType | DuplicateMetadata(_) | TypeAfterSamples => {
                "invalid_metadata"
            }
            MissingEof | TextAfterEof => "invalid_eof",
        }
    }
}
