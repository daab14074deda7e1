//! The collector pool end to end, with real processes on 127.0.0.1: a real etcd, three (then
//! four) `sonde-collector`s sharing scrape targets found in etcd, and 300 small targets in this
//! process serving /metrics, each noting which collector scraped it and when (collectors name
//! themselves in their User-Agent).
//!
//! Checked: in steady state each target is scraped by exactly one collector, once per
//! interval; when a collector is killed its targets are taken over and no target goes
//! unscraped for more than two intervals; when a fourth collector joins, between 15% and 35% of the targets move and none is
//! dropped; a target that deregisters is no longer scraped and its series are marked stale.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Proc, free_port, http_get, http_request, query, sonde_bin, wait_until};

const TARGETS: usize = 300;
const INTERVAL: Duration = Duration::from_secs(3);

/// Scrapes seen: per target, (collector, when).
type Seen = Arc<Mutex<Vec<Vec<(String, Instant)>>>>;

/// The 300 targets: one listener each, served by a few threads.
struct Targets {
    ports: Vec<u16>,
    seen: Seen,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Targets {
    fn start(n: usize) -> Targets {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let seen: Seen = Arc::new(Mutex::new(vec![Vec::new(); n]));
        let stop = Arc::new(AtomicBool::new(false));
        let listeners = Arc::new(listeners);
        let threads = (0..4)
            .map(|t| {
                let (listeners, seen, stop) = (listeners.clone(), seen.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let mut idle = true;
                        for i in (t..listeners.len()).step_by(4) {
                            if let Ok((stream, _)) = listeners[i].accept() {
                                idle = false;
                                serve(i, stream, &seen);
                            }
                        }
                        if idle {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                })
            })
            .collect();
        Targets {
            ports,
            seen,
            stop,
            threads,
        }
    }

    fn seen(&self) -> Vec<Vec<(String, Instant)>> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Answers one scrape and notes the scraper (the URL in its User-Agent's parentheses).
fn serve(i: usize, mut stream: std::net::TcpStream, seen: &Seen) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let scraper = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("user-agent:"))
        .and_then(|l| {
            l.split_once('(')
                .map(|(_, r)| r.trim_end_matches(')').trim_start_matches('+').to_owned())
        })
        .unwrap_or_default();
    seen.lock().unwrap()[i].push((scraper, Instant::now()));
    let body = format!(
        "# TYPE pool_target_info gauge\npool_target_info{{target=\"{i}\"}} 1\n# TYPE pool_requests_total counter\npool_requests_total {}\n",
        i * 10
    );
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// Standard base64 (etcd's JSON gateway carries keys and values so).
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn etcd_post(port: u16, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let (status, resp) = http_request(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "etcd {path}: {resp}");
    serde_json::from_str(&resp).unwrap()
}

/// etcd on free ports with its data in `dir`.
fn start_etcd(dir: &Path) -> (Proc, u16) {
    let client = free_port();
    let peer = free_port();
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data_dir = dir.join("etcd");
    let proc = Proc::spawn(
        "etcd",
        std::path::PathBuf::from("/usr/bin/etcd"),
        &[
            "--name",
            "default",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("default={peer_url}"),
            "--log-level",
            "error",
        ],
    );
    wait_until(Duration::from_secs(20), "etcd ready", || {
        http_get(client, "/health")
            .map(|(s, b)| s == 200 && b.contains("true"))
            .unwrap_or(false)
    });
    (proc, client)
}

struct Collector {
    port: u16,
    proc: Proc,
    _dir: tempfile::TempDir,
}

fn start_collector(etcd: u16, config: &Path) -> Collector {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let proc = Proc::spawn(
        "collector",
        sonde_bin("sonde-collector"),
        &[
            "--listen",
            &listen,
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--scrape-config",
            config.to_str().unwrap(),
            "--etcd",
            &format!("http://127.0.0.1:{etcd}"),
            "--advertise-url",
            &format!("http://{listen}"),
            "--pool-ttl",
            "2s",
        ],
    );
    wait_until(Duration::from_secs(20), "collector ready", || {
        http_get(port, "/readyz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    Collector {
        port,
        proc,
        _dir: dir,
    }
}

/// Per target, the collectors that scraped it within (from, to].
fn scrapers(seen: &[Vec<(String, Instant)>], from: Instant, to: Instant) -> Vec<Vec<String>> {
    seen.iter()
        .map(|v| {
            v.iter()
                .filter(|(_, t)| *t > from && *t <= to)
                .map(|(s, _)| s.clone())
                .collect()
        })
        .collect()
}

/// The owner of each target in steady state: the one collector that scraped it over `window`.
fn owners(targets: &Targets, window: Duration) -> Vec<String> {
    let from = Instant::now();
    std::thread::sleep(window);
    let by = scrapers(&targets.seen(), from, Instant::now());
    by.iter()
        .enumerate()
        .map(|(i, s)| {
            let distinct: HashSet<&String> = s.iter().collect();
            assert_eq!(
                distinct.len(),
                1,
                "target {i} was scraped by {distinct:?} over {window:?}"
            );
            s[0].clone()
        })
        .collect()
}

#[test]
fn three_collectors_share_targets_take_over_and_rebalance() {
    if !Path::new("/usr/bin/etcd").exists() {
        eprintln!("skipped: /usr/bin/etcd is absent (apt-get install etcd-server)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, etcd) = start_etcd(dir.path());
    let targets = Targets::start(TARGETS);
    // Every target registers under /sonde/targets/ with one long lease.
    let lease = etcd_post(etcd, "/v3/lease/grant", &serde_json::json!({"TTL": 600}))["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    for (i, port) in targets.ports.iter().enumerate() {
        etcd_post(
            etcd,
            "/v3/kv/put",
            &serde_json::json!({
                "key": b64(format!("/sonde/targets/t{i:03}").as_bytes()),
                "value": b64(format!("127.0.0.1:{port}").as_bytes()),
                "lease": lease,
            }),
        );
    }
    let config = dir.path().join("scrape.yml");
    std::fs::write(
        &config,
        format!(
            "scrape_configs:\n  - job_name: pool\n    scrape_interval: {}s\n    scrape_timeout: 2s\n    etcd_sd_configs:\n      - prefix: /sonde/targets/\n",
            INTERVAL.as_secs()
        ),
    )
    .unwrap();
    let mut collectors: Vec<Collector> = (0..3).map(|_| start_collector(etcd, &config)).collect();
    let urls: Vec<String> = collectors
        .iter()
        .map(|c| format!("http://127.0.0.1:{}", c.port))
        .collect();

    // Steady state: every target scraped, each by exactly one collector, once per interval.
    wait_until(Duration::from_secs(30), "every target scraped", || {
        targets.seen().iter().all(|v| !v.is_empty())
    });
    std::thread::sleep(INTERVAL * 2);
    let from = Instant::now();
    std::thread::sleep(INTERVAL * 3);
    let window = scrapers(&targets.seen(), from, Instant::now());
    for (i, s) in window.iter().enumerate() {
        let distinct: HashSet<&String> = s.iter().collect();
        assert_eq!(distinct.len(), 1, "target {i}: scraped by {distinct:?}");
        assert!(
            urls.contains(&s[0]),
            "target {i}: scraper {:?} unknown",
            s[0]
        );
        assert!(
            (2..=4).contains(&s.len()),
            "target {i}: {} scrapes in three intervals",
            s.len()
        );
    }
    let before = owners(&targets, INTERVAL * 2);
    let mut load: BTreeMap<&String, usize> = BTreeMap::new();
    for o in &before {
        *load.entry(o).or_default() += 1;
    }
    assert_eq!(load.len(), 3, "all three collectors scrape: {load:?}");
    // /api/v1/targets shows every target with its owner, on every collector.
    let (status, body) = http_get(collectors[0].port, "/api/v1/targets").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let active = v["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), TARGETS, "{body}");
    let listed: HashMap<String, String> = active
        .iter()
        .map(|t| {
            (
                t["labels"]["instance"].as_str().unwrap().to_owned(),
                t["owner"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (i, port) in targets.ports.iter().enumerate() {
        assert_eq!(
            listed.get(&format!("127.0.0.1:{port}")),
            Some(&before[i]),
            "target {i}'s owner in /api/v1/targets"
        );
    }

    // One collector dies: its targets move to the others, none unscraped for long.
    let killed = urls[0].clone();
    collectors[0].proc.kill();
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    let seen = targets.seen();
    for (i, v) in seen.iter().enumerate() {
        let times: Vec<Instant> = v
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t > killed_at - INTERVAL)
            .collect();
        let mut last = killed_at - INTERVAL;
        let mut worst = Duration::ZERO;
        for t in times.iter().chain(std::iter::once(&Instant::now())) {
            worst = worst.max(t.duration_since(last));
            last = *t;
        }
        // Two intervals: the dead member's lease (2 s) expires within the first.
        assert!(
            worst <= INTERVAL * 2 + Duration::from_millis(500),
            "target {i} went unscraped for {worst:?} after the kill"
        );
    }
    let after_kill = owners(&targets, INTERVAL * 2);
    assert!(
        !after_kill.contains(&killed),
        "the dead collector still owns targets"
    );
    for (i, (b, a)) in before.iter().zip(&after_kill).enumerate() {
        if *b != killed {
            assert_eq!(a, b, "target {i} moved between surviving collectors");
        }
    }

    // A replacement brings the pool back to three; then a fourth collector joins: 15% to 35%
    // of the targets move, all of them to the newcomer, none is dropped.
    collectors.push(start_collector(etcd, &config));
    std::thread::sleep(INTERVAL * 4);
    let three = owners(&targets, INTERVAL * 2);
    let live: HashSet<&String> = three.iter().collect();
    assert_eq!(live.len(), 3, "three collectors scrape again: {live:?}");
    let fourth = start_collector(etcd, &config);
    let fourth_url = format!("http://127.0.0.1:{}", fourth.port);
    collectors.push(fourth);
    std::thread::sleep(INTERVAL * 4);
    let after_join = owners(&targets, INTERVAL * 2);
    let mut moves: BTreeMap<(&String, &String), usize> = BTreeMap::new();
    for (a, b) in three.iter().zip(&after_join).filter(|(a, b)| a != b) {
        *moves.entry((a, b)).or_default() += 1;
    }
    let moved: usize = moves.values().sum();
    assert!(
        (TARGETS * 15 / 100..=TARGETS * 35 / 100).contains(&moved),
        "{moved} of {TARGETS} targets moved when the fourth collector joined: {moves:?}"
    );
    assert!(
        moves.keys().all(|(_, to)| **to == fourth_url),
        "targets moved between the members that stayed: {moves:?}"
    );

    // A target deregisters: no more scrapes, and its series are marked stale.
    let gone = 7;
    let owner = after_join[gone].clone();
    let owner_port: u16 = owner.rsplit(':').next().unwrap().parse().unwrap();
    let instance = format!("127.0.0.1:{}", targets.ports[gone]);
    let up = format!("up{{instance=\"{instance}\"}}");
    assert_eq!(
        query(owner_port, &up, None)["result"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "up of the target before it leaves"
    );
    etcd_post(
        etcd,
        "/v3/kv/deleterange",
        &serde_json::json!({"key": b64(format!("/sonde/targets/t{gone:03}").as_bytes())}),
    );
    let removed_at = Instant::now();
    std::thread::sleep(INTERVAL * 3);
    let late: Vec<_> = targets.seen()[gone]
        .iter()
        .filter(|(_, t)| *t > removed_at + INTERVAL + Duration::from_secs(1))
        .cloned()
        .collect();
    assert!(
        late.is_empty(),
        "a deregistered target is still scraped: {late:?}"
    );
    // Staleness markers end its series at once (not after the 5-minute lookback).
    assert!(
        query(owner_port, &up, None)["result"]
            .as_array()
            .unwrap()
            .is_empty(),
        "up of a deregistered target is not stale"
    );
    let info = format!("pool_target_info{{instance=\"{instance}\"}}");
    assert!(
        query(owner_port, &info, None)["result"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
