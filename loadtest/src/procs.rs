//! Processes a scenario starts on 127.0.0.1: our collector, VictoriaMetrics, haproxy. Each
//! keeps its data in a temporary directory, is stopped by its PID (SIGTERM, then SIGKILL) when
//! dropped, and reports its CPU time and peak memory from /proc.

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::ProcessUsage;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A binary next to this one (the workspace's target directory).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found: build all binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// A binary from the system (Debian packages), by name.
pub fn system_binary(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found: install it with `apt-get install {package}`")
}

pub struct Server {
    pub name: String,
    pub port: u16,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// CPU seconds and peak RSS of earlier incarnations (before a kill and restart).
    past_cpu: f64,
    past_rss: u64,
    _dir: Option<tempfile::TempDir>,
}

fn clock_ticks() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// (utime + stime) in seconds, and VmHWM in bytes, of a live process.
fn usage(pid: u32) -> (f64, u64) {
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(
                (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / clock_ticks(),
            )
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}

impl Server {
    fn spawn(
        name: &str,
        port: u16,
        program: PathBuf,
        args: Vec<String>,
        dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Server> {
        let mut s = Server {
            name: name.to_owned(),
            port,
            program,
            args,
            child: None,
            past_cpu: 0.0,
            past_rss: 0,
            _dir: dir,
        };
        s.start()?;
        Ok(s)
    }

    /// Starts the command (again): same program, arguments, port and data directory.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::env::var_os("SONDE_LOADTEST_SERVER_LOGS").is_some();
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until `GET path` answers 200 (or, with `path` empty, until the port accepts).
    pub async fn wait_ready(&mut self, path: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("{} exited during start-up: {status}", self.name);
            }
            if probe(self.port, path).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready on 127.0.0.1:{} within {timeout:?}",
                    self.name,
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, without warning (the outage scenario).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let (cpu, rss) = usage(c.id());
            self.past_cpu += cpu;
            self.past_rss = self.past_rss.max(rss);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same command again (same port and data directory).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.start()
    }

    pub fn usage(&self) -> ProcessUsage {
        let (cpu, rss) = self.pid().map(usage).unwrap_or((0.0, 0));
        ProcessUsage {
            name: self.name.clone(),
            cpu_seconds: self.past_cpu + cpu,
            peak_rss_bytes: self.past_rss.max(rss),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = Pid::from_raw(c.id() as i32) {
                let _ = kill_process(pid, Signal::TERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Waits until `GET path` on `port` answers 200; false after `timeout`.
pub async fn wait_port_ready(port: u16, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if probe(port, path).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn probe(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if path.is_empty() {
        return true;
    }
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await, Ok(Ok(n)) if n >= 12 && &buf[9..12] == b"200")
}

/// Our collector with its embedded store in a temporary directory.
pub async fn collector(name: &str) -> anyhow::Result<Server> {
    collector_with(name, &[]).await
}

/// Our collector with extra flags (e.g. `--remote-write URL`), data in a temporary directory.
pub async fn collector_with(name: &str, extra: &[String]) -> anyhow::Result<Server> {
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let mut args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--log".into(),
        "warn".into(),
    ];
    args.extend(extra.iter().cloned());
    let mut s = Server::spawn(name, port, sibling("sonde-collector")?, args, Some(dir))?;
    s.wait_ready("/readyz", Duration::from_secs(30)).await?;
    Ok(s)
}

/// VictoriaMetrics single-node from Debian's archive, data in a temporary directory.
pub async fn victoria_metrics() -> anyhow::Result<Server> {
    victoria_metrics_with(&[]).await
}

/// VictoriaMetrics with extra flags (e.g. `-dedup.minScrapeInterval=1ms`).
pub async fn victoria_metrics_with(extra: &[&str]) -> anyhow::Result<Server> {
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let args = vec![
        format!("-storageDataPath={}", dir.path().display()),
        format!("-httpListenAddr=127.0.0.1:{port}"),
        "-retentionPeriod=1".into(),
        "-search.latencyOffset=0s".into(),
        "-loggerLevel=ERROR".into(),
    ];
    let mut args = args;
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut s = Server::spawn(
        "victoria-metrics",
        port,
        system_binary("victoria-metrics", "victoria-metrics")?,
        args,
        Some(dir),
    )?;
    s.wait_ready("/health", Duration::from_secs(30)).await?;
    Ok(s)
}

/// haproxy from Debian's archive, round-robin over `backends` with health checks on /readyz.
pub async fn haproxy(backends: &[u16]) -> anyhow::Result<Server> {
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let mut cfg = String::from(
        "global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  retries 2\n  option redispatch\n",
    );
    cfg.push_str(&format!(
        "frontend ingest\n  bind 127.0.0.1:{port}\n  default_backend collectors\n"
    ));
    cfg.push_str("backend collectors\n  balance roundrobin\n  option httpchk GET /readyz\n");
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!(
            "  server c{i} 127.0.0.1:{b} check inter 500ms fall 2 rise 1\n"
        ));
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let args = vec!["-db".into(), "-f".into(), path.display().to_string()];
    let mut s = Server::spawn(
        "haproxy",
        port,
        system_binary("haproxy", "haproxy")?,
        args,
        Some(dir),
    )?;
    s.wait_ready("", Duration::from_secs(15)).await?;
    Ok(s)
}

/// A UDP port that was free a moment ago on 127.0.0.1.
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `program` with `args` as a [`Server`] named `name`, answering on `port` (for
/// [`Server::wait_ready`]); it keeps `dir` (if any) alive and is stopped by its PID when
/// dropped.
pub fn spawn_server(
    name: &str,
    port: u16,
    program: PathBuf,
    args: Vec<String>,
    dir: Option<tempfile::TempDir>,
) -> anyhow::Result<Server> {
    Server::spawn(name, port, program, args, dir)
}

/// One reading of a live process from /proc: CPU time (utime + stime, all threads), resident
/// memory (VmRSS) and peak resident memory (VmHWM).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
}

/// Reads [`ProcSample`] for `pid`; `None` once the process is gone.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let (cpu_seconds, _) = usage(pid);
    Some(ProcSample {
        cpu_seconds,
        rss_bytes: kib("VmRSS:"),
        hwm_bytes: kib("VmHWM:"),
    })
}

/// The kernel's drop count (the `drops` column of /proc/net/udp) summed over the IPv4 UDP
/// sockets bound to local port `port`; `None` when no such socket exists.
pub fn udp_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let want = format!(":{port:04X}");
    let mut found = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 13 && f[1].ends_with(&want) {
            *found.get_or_insert(0) += f[12].parse::<u64>().unwrap_or(0);
        }
    }
    found
}

/// Time on CPU, in nanoseconds, of each live thread of `pid` (the first field of
/// `/proc/<pid>/task/<tid>/schedstat`), as (thread id, nanoseconds). Unlike utime + stime in
/// `/proc/<pid>/stat`, which count whole clock ticks (10 ms at 100 Hz), this is exact enough to
/// measure a process that works for a millisecond per second; but a thread's time leaves it
/// when the thread exits, so callers sample it often.
pub fn thread_cpu_ns(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: u32 = e.file_name().to_str()?.parse().ok()?;
        let s = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
        Some((tid, s.split_whitespace().next()?.parse().ok()?))
    })
    .collect()
}
