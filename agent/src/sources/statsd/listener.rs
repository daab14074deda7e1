//! The StatsD sockets: UDP (and optionally a Unix datagram socket, whose senders see
//! back-pressure instead of silent drops) read by dedicated threads that never wait on
//! flushing or pushing: each packet is parsed outside the aggregator's lock and recorded under
//! it in one short critical section. The socket asks for a large kernel receive buffer, and the
//! kernel's own drop count for it (from /proc/net/udp) is exported as a self-metric, since
//! that is where StatsD loses data under bursts.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;

use super::parser::{self, BadLine, Line};
use crate::aggregate::{Aggregator, Refused};
use crate::events::Events;

/// How long a reading thread blocks before checking whether it should stop: the longest a
/// shutdown waits for it, and its only wake-up while no packet comes (an idle agent should
/// cost next to nothing).
const IDLE_WAKE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct StatsdConfig {
    pub udp: Option<SocketAddr>,
    pub unix: Option<PathBuf>,
    /// Requested SO_RCVBUF in bytes.
    pub recv_buffer: usize,
    /// Threads reading the UDP socket.
    pub threads: usize,
}

#[derive(Debug, Error)]
pub enum ListenError {
    #[error("cannot listen for StatsD on udp {addr}: {cause}")]
    Udp { addr: SocketAddr, cause: io::Error },
    #[error("cannot listen for StatsD on unix socket {}: {cause}", path.display())]
    Unix { path: PathBuf, cause: io::Error },
    #[error("cannot start a StatsD thread: {0}")]
    Thread(io::Error),
}

/// The running listener: its bound address and threads.
pub struct Listener {
    pub local_udp: Option<SocketAddr>,
    pub recv_buffer: usize,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Listener {
    /// Stops the threads (they notice within their read timeout, [`IDLE_WAKE`]) and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Packets the kernel dropped for our UDP socket because its buffer was full.
    pub fn kernel_drops(&self) -> Option<u64> {
        let addr = self.local_udp?;
        let file = if addr.is_ipv4() {
            "/proc/net/udp"
        } else {
            "/proc/net/udp6"
        };
        udp_drops(&std::fs::read_to_string(file).ok()?, addr.port())
    }
}

/// Sums the `drops` column of /proc/net/udp lines whose local port is `port`.
pub fn udp_drops(table: &str, port: u16) -> Option<u64> {
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

pub fn start(
    cfg: &StatsdConfig,
    aggregator: Arc<Mutex<Aggregator>>,
    events: Arc<Events>,
) -> Result<Listener, ListenError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut local_udp = None;
    let mut recv_buffer = 0;
    if let Some(addr) = cfg.udp {
        let socket = UdpSocket::bind(addr).map_err(|cause| ListenError::Udp { addr, cause })?;
        // SO_RCVBUFFORCE passes rmem_max when we may (root, CAP_NET_ADMIN); else ask normally.
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, cfg.recv_buffer)
            .is_err()
        {
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, cfg.recv_buffer);
        }
        recv_buffer = rustix::net::sockopt::socket_recv_buffer_size(&socket).unwrap_or(0);
        socket
            .set_read_timeout(Some(IDLE_WAKE))
            .map_err(|cause| ListenError::Udp { addr, cause })?;
        local_udp = socket.local_addr().ok();
        tracing::info!(listen = ?local_udp, recv_buffer, "StatsD listening on UDP");
        let socket = Arc::new(socket);
        for i in 0..cfg.threads.max(1) {
            let (socket, agg, events, stop) = (
                socket.clone(),
                aggregator.clone(),
                events.clone(),
                stop.clone(),
            );
            let t = std::thread::Builder::new()
                .name(format!("statsd-udp-{i}"))
                .spawn(move || receive_loop(|buf| socket.recv(buf), &agg, &events, &stop))
                .map_err(ListenError::Thread)?;
            threads.push(t);
        }
    }
    if let Some(path) = &cfg.unix {
        let socket = bind_unix(path).map_err(|cause| ListenError::Unix {
            path: path.clone(),
            cause,
        })?;
        tracing::info!(path = %path.display(), "StatsD listening on a Unix datagram socket");
        let (agg, events, stop) = (aggregator.clone(), events.clone(), stop.clone());
        let t = std::thread::Builder::new()
            .name("statsd-unix".into())
            .spawn(move || receive_loop(|buf| socket.recv(buf), &agg, &events, &stop))
            .map_err(ListenError::Thread)?;
        threads.push(t);
    }
    Ok(Listener {
        local_udp,
        recv_buffer,
        stop,
        threads,
    })
}

fn bind_unix(path: &Path) -> io::Result<UnixDatagram> {
    // A socket file left by a previous run would make bind fail; remove only sockets.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let s = UnixDatagram::bind(path)?;
    s.set_read_timeout(Some(IDLE_WAKE))?;
    Ok(s)
}

fn receive_loop(
    mut recv: impl FnMut(&mut [u8]) -> io::Result<usize>,
    agg: &Mutex<Aggregator>,
    events: &Events,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let n = match recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!("StatsD receive error: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        events.statsd_packets.inc();
        let Ok(packet) = std::str::from_utf8(&buf[..n]) else {
            events.statsd_bad_line("invalid_utf8", "packet is not UTF-8");
            continue;
        };
        handle_packet(packet, agg, events);
    }
}

/// Parses a packet's lines (outside the lock), then records them (inside it).
pub fn handle_packet(packet: &str, agg: &Mutex<Aggregator>, events: &Events) {
    let lines: Vec<Result<Line<'_>, BadLine>> =
        parser::lines(packet).map(parser::parse_line).collect();
    let now = sonde_common::model::now_ms();
    let mut refused: Vec<(Refused, &str)> = Vec::new();
    {
        let mut agg = agg.lock().unwrap_or_else(|e| e.into_inner());
        for (line, raw) in lines.iter().zip(parser::lines(packet)) {
            let result = match line {
                Ok(l) => agg.record(l, now),
                Err(b) => Err(Refused::Parse(*b)),
            };
            if let Err(r) = result {
                refused.push((r, raw));
            }
        }
    }
    events.statsd_lines.add(lines.len() as u64);
    for (r, raw) in refused {
        events.statsd_bad_line(r.reason(), raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drop_column() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  123: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
  124: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 5\n";
        assert_eq!(udp_drops(table, 8125), Some(17));
        assert_eq!(udp_drops(table, 53), Some(5));
        assert_eq!(udp_drops(table, 9999), None);
    }
}
