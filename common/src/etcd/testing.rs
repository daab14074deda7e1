//! A throwaway etcd for tests: the real `etcd` binary on free loopback ports, with its data
//! in a temporary directory, killed (by PID) and cleaned up on drop, even when a test fails.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's etcd-server installs the binary; `SONDE_ETCD` overrides it.
pub const DEFAULT_BINARY: &str = "/usr/bin/etcd";

pub struct EtcdServer {
    child: Child,
    binary: String,
    dir: PathBuf,
    peer_url: String,
    /// `http://127.0.0.1:<port>`
    pub url: String,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd and waits until it serves; `None` (after printing why) when the binary is
    /// not installed. Panics if it is installed but does not come up.
    pub fn start() -> Option<EtcdServer> {
        let binary = std::env::var("SONDE_ETCD").unwrap_or_else(|_| DEFAULT_BINARY.to_owned());
        if !std::path::Path::new(&binary).exists() {
            eprintln!("SKIPPED: {binary} is not installed (apt-get install etcd-server)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "sonde-etcd-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("create the etcd data dir");
        let client = free_port().expect("free port");
        let peer = free_port().expect("free port");
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut server = EtcdServer {
            child: spawn(&binary, &dir, &url, &peer_url),
            binary,
            dir,
            url,
            peer_url,
        };
        server.wait_ready();
        Some(server)
    }

    /// Kills etcd and starts it again on the same ports and data (a crash and restart).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.binary, &self.dir, &self.url, &self.peer_url);
        self.wait_ready();
    }

    /// Kills etcd and waits for it; [`EtcdServer::restart`] brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Polls `/health` until etcd is up (at most 20 s).
    fn wait_ready(&mut self) {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "etcd exited with {status}: {}",
                    std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
                );
            }
            if health(&addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not become healthy at {}", self.url);
    }

    /// The client URL as a URI.
    pub fn uri(&self) -> hyper::Uri {
        self.url.parse().expect("etcd URL")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn spawn(binary: &str, dir: &std::path::Path, url: &str, peer_url: &str) -> Child {
    Command::new(binary)
        .arg("--name=default")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("etcd.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("start etcd")
}

fn health(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
