//! The queue record of the remote-write sink: one validated batch, kept in the native wire
//! encoding (zstd: a third the size of the remote-write protobuf), with the tenant it belongs
//! to.
//!
//! ```text
//! [u8 version = 1][u8 tenant length, 0 = none][tenant bytes][wire envelope]
//! ```

use bytes::Bytes;
use sonde_common::wire::{self, Batch, Compression, WireLimits};

use super::SinkError;

const VERSION: u8 = 1;
/// Mimir's limit on tenant IDs; Cortex and VictoriaMetrics (vmauth) accept these too.
pub(crate) const MAX_TENANT_LEN: usize = 150;

/// Why a stored record cannot be sent (counted as dropped: retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("record version {0} is not known to this build")]
    Version(u8),
    #[error("record ends inside its tenant")]
    Truncated,
    #[error("tenant is not UTF-8")]
    Tenant,
    #[error("{0}")]
    Batch(#[from] wire::DecodeError),
}

/// A tenant ID usable as `X-Scope-OrgID` everywhere: 1 to 150 characters out of
/// `[A-Za-z0-9!-_.*'()]` (Mimir's rule, the strictest of the common storages).
pub(crate) fn validate_tenant(tenant: &str) -> Result<(), SinkError> {
    let bad = |reason| SinkError::BadTenant {
        tenant: tenant.chars().take(64).collect(),
        reason,
    };
    if tenant.is_empty() {
        return Err(bad("empty"));
    }
    if tenant.len() > MAX_TENANT_LEN {
        return Err(bad("longer than 150 characters"));
    }
    if tenant == "." || tenant == ".." {
        return Err(bad("'.' and '..' are not tenant IDs"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"!-_.*'()".contains(&b);
    if !tenant.bytes().all(allowed) {
        return Err(bad("only letters, digits and !-_.*'() are allowed"));
    }
    Ok(())
}

/// Encodes a batch and its (already validated) tenant as a queue record.
pub(crate) fn encode(batch: &Batch, tenant: Option<&str>) -> Result<Bytes, SinkError> {
    let envelope = wire::encode(batch, Compression::Zstd)?;
    Ok(encode_envelope(&envelope, tenant))
}

/// A queue record around an envelope that is already encoded (a native push's body, validated:
/// storing it as is saves re-encoding every batch), for a tenant already validated
/// ([`validate_tenant`]: at most [`MAX_TENANT_LEN`] bytes).
pub(crate) fn encode_envelope(envelope: &[u8], tenant: Option<&str>) -> Bytes {
    let tenant = tenant.unwrap_or_default().as_bytes();
    let tenant = &tenant[..tenant.len().min(MAX_TENANT_LEN)];
    let mut out = Vec::with_capacity(2 + tenant.len() + envelope.len());
    out.push(VERSION);
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant);
    out.extend_from_slice(envelope);
    Bytes::from(out)
}

/// Decodes a queue record. The queue checksummed it, and so does the envelope; limits are
/// generous since this process wrote it, but a forged size still cannot allocate without
/// bound.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Option<String>, Batch), RecordError> {
    let (tenant, envelope) = split(bytes)?;
    let limits = WireLimits {
        max_encoded_bytes: crate::queue::MAX_RECORD_BYTES,
        max_decoded_bytes: 1 << 30,
    };
    Ok((tenant, wire::decode(envelope, &limits)?))
}

/// A record's tenant and its batch's envelope, not decoded.
pub(crate) fn split(bytes: &[u8]) -> Result<(Option<String>, &[u8]), RecordError> {
    let (&version, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let (&len, rest) = rest.split_first().ok_or(RecordError::Truncated)?;
    let (tenant, envelope) = rest
        .split_at_checked(len as usize)
        .ok_or(RecordError::Truncated)?;
    let tenant = match tenant {
        [] => None,
        t => Some(
            std::str::from_utf8(t)
                .map_err(|_| RecordError::Tenant)?
                .to_owned(),
        ),
    };
    Ok((tenant, envelope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{MetricKind, Sample, Series};
    use sonde_common::wire::{BatchBuilder, BatchHeader};

    fn batch() -> Batch {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "h".into(),
            sequence: 1,
            sent_at_ms: 1,
        });
        b.push(
            &Series::new("up", [("job", "a")]),
            MetricKind::Gauge,
            None,
            vec![Sample::new(1000, 1.0)],
        );
        b.build()
    }

    #[test]
    fn records_round_trip_with_and_without_tenant() {
        for tenant in [None, Some("team-a"), Some("x".repeat(150).as_str())] {
            let bytes = encode(&batch(), tenant).unwrap();
            let (t, b) = decode(&bytes).unwrap();
            assert_eq!(t.as_deref(), tenant);
            assert_eq!(b, batch());
        }
    }

    #[test]
    fn bad_records_are_errors() {
        assert!(matches!(decode(b""), Err(RecordError::Empty)));
        assert!(matches!(decode(b"\x02"), Err(RecordError::Version(2))));
        assert!(matches!(decode(b"\x01\x05ab"), Err(RecordError::Truncated)));
        assert!(matches!(
            decode(b"\x01\x00SNDB"),
            Err(RecordError::Batch(_))
        ));
    }

    #[test]
    fn tenants_are_checked() {
        for ok in ["a", "team-1", "A_b.c!*'()", &"t".repeat(150)] {
            validate_tenant(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "a|b",
            "é",
            &"t".repeat(151),
            "a\nb",
        ] {
            assert!(validate_tenant(bad).is_err(), "{bad:?}");
        }
    }
}
