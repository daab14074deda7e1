//! Access control: bearer tokens from a token file, each carrying a tenant and scopes.
//!
//! Token file (`--token-file`), one token per line, `#` comments:
//! ```text
//! # token                               tenant   scopes
//! 9f1c2e7a4b8d40f3a1e6c5d2b7f80912      acme     write
//! 0d3b5a7c9e1f42b6a8c0e2d4f6a8b0c2      acme     read
//! 5e7f9a1b3c5d47e9f1a3b5c7d9e1f3a5      acme     read,write,admin
//! ```
//! Tokens are at least 16 characters. The file is re-read when it changes (checked every few
//! seconds) and on SIGHUP; a broken file is refused with the line and reason, and the tokens
//! already loaded stay in force. Tokens are compared in constant time, and every loaded token is
//! compared on every request, so timing tells nothing about which one (if any) matched.
//!
//! Without a token file every request acts for the default tenant ("") with every scope; the
//! collector then listens on loopback addresses only (see `config`).

use hyper::header::HeaderValue;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;
use thiserror::Error;

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Push samples.
    Write,
    /// Query, list, read self-metrics.
    Read,
    /// Change things (silences, reloads).
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Write => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Write => "write",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// Who a request acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    scopes: u8,
}

impl Principal {
    /// The default tenant with every scope (no token file).
    pub fn anonymous() -> Self {
        Principal {
            tenant: String::new(),
            scopes: 7,
        }
    }

    /// The same scopes, acting for `tenant` (a trusted forwarder's samples).
    pub fn for_tenant(&self, tenant: &str) -> Principal {
        Principal {
            tenant: tenant.to_owned(),
            scopes: self.scopes,
        }
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Denied {
    #[error("authentication required: send 'Authorization: Bearer <token>'")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
    #[error("this token lacks the '{}' scope", .0.name())]
    Forbidden(Scope),
    /// The request names a tenant (`X-Scope-OrgID`) the token does not belong to.
    #[error("this token belongs to tenant '{token}' and cannot act for tenant '{named}'")]
    OtherTenant { token: String, named: String },
}

impl Denied {
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Missing => "unauthenticated",
            Denied::Invalid => "invalid_token",
            Denied::Forbidden(_) => "forbidden",
            Denied::OtherTenant { .. } => "other_tenant",
        }
    }
}

#[derive(Debug, Error)]
pub enum TokenFileError {
    #[error("cannot read token file {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("token file {}, line {line}: {reason}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

struct Entry {
    token: Vec<u8>,
    principal: Principal,
}

struct Loaded {
    entries: Vec<Entry>,
    modified: Option<SystemTime>,
}

/// The token table, or its absence.
pub struct Auth {
    path: Option<PathBuf>,
    loaded: RwLock<Loaded>,
}

const MIN_TOKEN_LEN: usize = 16;

fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, TokenFileError> {
    let err = |line: usize, reason: String| TokenFileError::Syntax {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut entries: Vec<Entry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [token, tenant, scopes] = fields[..] else {
            return Err(err(
                i + 1,
                format!(
                    "expected 'TOKEN TENANT SCOPES', found {} fields",
                    fields.len()
                ),
            ));
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(err(
                i + 1,
                format!(
                    "token is {} characters; use at least {MIN_TOKEN_LEN}",
                    token.len()
                ),
            ));
        }
        if !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(err(
                i + 1,
                format!("tenant '{tenant}' may contain only letters, digits, '-', '_' and '.'"),
            ));
        }
        let mut bits = 0u8;
        for s in scopes.split(',') {
            bits |= match s {
                "write" => Scope::Write.bit(),
                "read" => Scope::Read.bit(),
                "admin" => Scope::Admin.bit(),
                other => {
                    return Err(err(
                        i + 1,
                        format!("unknown scope '{other}': use write, read, admin"),
                    ));
                }
            };
        }
        if entries.iter().any(|e| e.token == token.as_bytes()) {
            return Err(err(i + 1, "the same token appears twice".into()));
        }
        entries.push(Entry {
            token: token.as_bytes().to_vec(),
            principal: Principal {
                tenant: tenant.to_owned(),
                scopes: bits,
            },
        });
    }
    Ok(entries)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Equal-length comparison whose time does not depend on where the bytes differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// No token file: every request is the anonymous principal.
    pub fn disabled() -> Auth {
        Auth {
            path: None,
            loaded: RwLock::new(Loaded {
                entries: Vec::new(),
                modified: None,
            }),
        }
    }

    pub fn load(path: &Path) -> Result<Auth, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|cause| TokenFileError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let entries = parse(path, &text)?;
        Ok(Auth {
            path: Some(path.to_owned()),
            loaded: RwLock::new(Loaded {
                entries,
                modified: modified(path),
            }),
        })
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Re-reads the file if it changed (or if `force`). Ok(true) when new tokens took effect.
    pub fn reload(&self, force: bool) -> Result<bool, TokenFileError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let now = modified(path);
        if !force
            && now
                == self
                    .loaded
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .modified
        {
            return Ok(false);
        }
        let text = std::fs::read_to_string(path).map_err(|cause| TokenFileError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let entries = parse(path, &text)?;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Loaded {
            entries,
            modified: now,
        };
        Ok(true)
    }

    /// Who an `Authorization` header stands for, if it allows `scope`.
    pub fn check(&self, header: Option<&HeaderValue>, scope: Scope) -> Result<Principal, Denied> {
        if self.path.is_none() {
            return Ok(Principal::anonymous());
        }
        let value = header.map(HeaderValue::as_bytes).ok_or(Denied::Missing)?;
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or(Denied::Missing)?;
        let token = token.trim_ascii();
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        let mut found: Option<&Principal> = None;
        for e in &loaded.entries {
            // No early exit: every token is compared.
            if ct_eq(&e.token, token) {
                found = Some(&e.principal);
            }
        }
        let p = found.ok_or(Denied::Invalid)?;
        if !p.has(scope) {
            return Err(Denied::Forbidden(scope));
        }
        Ok(p.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\nwrite-token-0123456789 acme write\nread-token-0123456789 acme read # trailing\n\nops-token-0123456789abc globex read,write,admin\n";

    fn auth(text: &str) -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        let a = Auth::load(&path).unwrap();
        (dir, a)
    }

    fn bearer(t: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
    }

    #[test]
    fn tokens_carry_tenant_and_scopes() {
        let (_d, a) = auth(FILE);
        let p = a
            .check(Some(&bearer("write-token-0123456789")), Scope::Write)
            .unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(
            a.check(Some(&bearer("write-token-0123456789")), Scope::Read),
            Err(Denied::Forbidden(Scope::Read))
        );
        assert_eq!(
            a.check(Some(&bearer("read-token-0123456789")), Scope::Read)
                .unwrap()
                .tenant,
            "acme"
        );
        assert_eq!(
            a.check(Some(&bearer("ops-token-0123456789abc")), Scope::Admin)
                .unwrap()
                .tenant,
            "globex"
        );
        assert_eq!(
            a.check(Some(&bearer("nope-nope-nope-nope")), Scope::Read),
            Err(Denied::Invalid)
        );
        assert_eq!(
            a.check(Some(&bearer("write-token-012345678")), Scope::Write),
            Err(Denied::Invalid),
            "a prefix is not a match"
        );
        assert_eq!(a.check(None, Scope::Read), Err(Denied::Missing));
        assert_eq!(
            a.check(Some(&HeaderValue::from_static("Basic abc")), Scope::Read),
            Err(Denied::Missing)
        );
        assert!(
            Auth::disabled()
                .check(None, Scope::Admin)
                .unwrap()
                .has(Scope::Admin)
        );
    }

    #[test]
    fn broken_files_name_the_line_and_keep_the_old_tokens() {
        for (text, needle) in [
            ("short acme write\n", "at least 16"),
            (
                "a-long-enough-token-1 acme\n",
                "expected 'TOKEN TENANT SCOPES'",
            ),
            ("a-long-enough-token-1 acme fly\n", "unknown scope 'fly'"),
            ("a-long-enough-token-1 ac/me read\n", "tenant 'ac/me'"),
            (
                "a-long-enough-token-1 a read\na-long-enough-token-1 b read\n",
                "line 2: the same token",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t");
            std::fs::write(&path, text).unwrap();
            let err = Auth::load(&path).err().expect(text).to_string();
            assert!(err.contains(needle), "{err}");
        }
        let (dir, a) = auth(FILE);
        std::fs::write(dir.path().join("tokens"), "garbage\n").unwrap();
        assert!(a.reload(true).is_err());
        assert!(
            a.check(Some(&bearer("read-token-0123456789")), Scope::Read)
                .is_ok(),
            "old tokens stay"
        );
        std::fs::write(
            dir.path().join("tokens"),
            "fresh-token-0123456789 neu read\n",
        )
        .unwrap();
        assert!(a.reload(true).unwrap());
        assert_eq!(
            a.check(Some(&bearer("read-token-0123456789")), Scope::Read),
            Err(Denied::Invalid)
        );
        assert_eq!(
            a.check(Some(&bearer("fresh-token-0123456789")), Scope::Read)
                .unwrap()
                .tenant,
            "neu"
        );
    }
}
