//! The collector run in-process on port 0 by tests that need no other process.

#![allow(dead_code)]

use clap::Parser;
use sonde_collector::cli::Cli;
use sonde_collector::config::Config;
use tokio_util::sync::CancellationToken;

use sonde_common::model::{MetricKind, Sample, Series};
use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression};

use super::support::{http_get, http_request};

pub struct Server {
    pub port: u16,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "sonde-collector",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let config = Config::try_from(Cli::try_parse_from(args).unwrap()).unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                sonde_collector::run(config, listener, token).await.unwrap();
            });
        });
        super::support::wait_until(std::time::Duration::from_secs(10), "ready", || {
            http_get(port, "/readyz")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
        Server {
            port,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every batch gets its own sequence number, as an agent's do.
static NEXT_SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn batch_bytes(
    series: &[(&str, &[(&str, &str)])],
    ts: i64,
    compression: Compression,
) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "t".into(),
        sequence: NEXT_SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        sent_at_ms: ts,
    });
    for (name, labels) in series {
        let s = Series::new(*name, labels.iter().copied());
        b.push(&s, MetricKind::Gauge, None, vec![Sample::new(ts, 42.0)]);
    }
    wire::encode(&b.build(), compression).unwrap()
}

pub fn push(port: u16, body: &[u8], ctype: &str, encoding: &str) -> (u16, String) {
    http_request(
        port,
        "POST",
        "/api/v1/push",
        &[("Content-Type", ctype), ("Content-Encoding", encoding)],
        body,
    )
    .unwrap()
}
