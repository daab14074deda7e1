//! TLS end to end, real processes: a collector serving HTTPS that requires client certificates
//! (mutual TLS), and an agent that verifies the collector against a private CA and presents its
//! own certificate. A client without a certificate is refused at the handshake.
//!
//! Certificates are made for the test with rcgen.

mod support;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::{Proc, free_port, sonde_bin, wait_until};

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["agent.example".into()]);
    Pki {
        ca: ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// GET over TLS with an optional client certificate: (status, body), or the handshake error.
fn https_get(
    port: u16,
    path: &str,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<(u16, String), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // Servers may close without close_notify after an HTTP/1.0 response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        body.to_owned(),
    ))
}

#[test]
fn mutual_tls_between_agent_and_collector() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let file = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let (ca, scert, skey, ccert, ckey) = (
        file("ca.pem", &p.ca),
        file("server.pem", &p.server_cert),
        file("server.key", &p.server_key),
        file("client.pem", &p.client_cert),
        file("client.key", &p.client_key),
    );
    let (port, agent_port) = (free_port(), free_port());
    let data = dir.path().join("data");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let _collector = Proc::spawn(
        "collector",
        sonde_bin("sonde-collector"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &s(&data),
            "--tls-cert",
            &s(&scert),
            "--tls-key",
            &s(&skey),
            "--tls-client-ca",
            &s(&ca),
        ],
    );
    wait_until(Duration::from_secs(20), "collector serving TLS", || {
        https_get(port, "/readyz", &ca, Some((&ccert, &ckey)))
            .map(|(st, _)| st == 200)
            .unwrap_or(false)
    });

    // No client certificate: refused at the handshake.
    let refused = https_get(port, "/healthz", &ca, None);
    assert!(refused.is_err(), "{refused:?}");

    let host = format!("tls-{}", std::process::id());
    let _agent = Proc::spawn(
        "agent",
        sonde_bin("sonde-agent"),
        &[
            "--collector",
            &format!("https://127.0.0.1:{port}"),
            "--ca",
            &s(&ca),
            "--tls-cert",
            &s(&ccert),
            "--tls-key",
            &s(&ckey),
            "--interval",
            "300ms",
            "--flush-jitter",
            "0s",
            "--hostname",
            &host,
            "--http-listen",
            &format!("127.0.0.1:{agent_port}"),
            "--statsd-listen",
            "",
        ],
    );
    let q = format!(
        "/api/v1/query?query={}",
        support::encode(&format!("node_load1{{host=\"{host}\"}}"))
    );
    wait_until(
        Duration::from_secs(20),
        "the agent's samples arrive over TLS",
        || {
            https_get(port, &q, &ca, Some((&ccert, &ckey)))
                .map(|(_, body)| body.contains("node_load1"))
                .unwrap_or(false)
        },
    );
}
