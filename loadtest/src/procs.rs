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

    fn start(&mut self) -> anyhow::Result<()> {
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
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let args = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--log".into(),
        "warn".into(),
    ];
    let mut s = Server::spawn(name, port, sibling("sonde-collector")?, args, Some(dir))?;
    s.wait_ready("/readyz", Duration::from_secs(30)).await?;
    Ok(s)
}

/// VictoriaMetrics single-node from Debian's archive, data in a temporary directory.
pub async fn victoria_metrics() -> anyhow::Result<Server> {
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let args = vec![
        format!("-storageDataPath={}", dir.path().display()),
        format!("-httpListenAddr=127.0.0.1:{port}"),
        "-retentionPeriod=1".into(),
        "-search.latencyOffset=0s".into(),
        "-loggerLevel=ERROR".into(),
    ];
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
