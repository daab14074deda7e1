//! The StatsD sender: one datagram per line, at a fixed packet rate for a fixed time, over a few
//! UDP sockets (one thread each, each connected to the daemon). Datagrams go out in
//! `sendmmsg` batches of up to 64, paced against the clock: each thread sends what is due at
//! its share of the rate and sleeps when nothing is; a thread that cannot keep up simply sends
//! fewer, which shows as an achieved rate below the target.

use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, sendmmsg};
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const BATCH: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// Datagrams the kernel accepted from the sender (each one counter increment).
    pub packets: u64,
    pub elapsed: Duration,
    /// Send calls that failed (not counted in `packets`).
    pub errors: u64,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `payload` as `rate * duration` separate datagrams to `target`, paced at `rate`
/// packets/s, split over `sockets` sockets and threads; blocks until done. A sender that falls
/// behind keeps going up to a quarter beyond `duration`, then stops: its achieved rate
/// ([`Sent::rate`]) shows it.
pub fn send(
    target: SocketAddr,
    payload: &[u8],
    rate: u64,
    duration: Duration,
    sockets: usize,
) -> std::io::Result<Sent> {
    let sockets = sockets.clamp(1, 64);
    let mut conns = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.connect(target)?;
        conns.push(s);
    }
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let n = sockets as u64;
    let start = Instant::now();
    let results: Vec<(u64, Duration, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .iter()
            .enumerate()
            .map(|(i, socket)| {
                let share = total / n + u64::from((i as u64) < total % n);
                scope.spawn(move || paced(socket, payload, share, start, duration))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, Duration::ZERO, 1)))
            .collect()
    });
    Ok(Sent {
        packets: results.iter().map(|r| r.0).sum(),
        elapsed: results
            .iter()
            .map(|r| r.1)
            .max()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(1)),
        errors: results.iter().map(|r| r.2).sum(),
    })
}

/// One socket's share: `total` datagrams spread evenly over `duration`. Returns (packets
/// sent, time taken, failed send calls).
fn paced(
    socket: &UdpSocket,
    payload: &[u8],
    total: u64,
    start: Instant,
    duration: Duration,
) -> (u64, Duration, u64) {
    if total == 0 {
        return (0, Duration::ZERO, 0);
    }
    let rate = total as f64 / duration.as_secs_f64().max(1e-9);
    let hard_stop = duration + duration / 4;
    let iov = [IoSlice::new(payload)];
    // Wake up when about a millisecond's worth (at least one, at most a batch) is due.
    let wake_batch = ((rate / 1000.0) as u64).clamp(1, BATCH as u64);
    let (mut sent, mut errors) = (0u64, 0u64);
    while sent < total {
        let elapsed = start.elapsed();
        if elapsed >= hard_stop {
            break;
        }
        let due = ((elapsed.as_secs_f64() * rate) as u64).min(total);
        let owed = due.saturating_sub(sent);
        if owed < wake_batch && due < total {
            let next = (sent + wake_batch) as f64 / rate;
            let wait = Duration::from_secs_f64(next).saturating_sub(elapsed);
            std::thread::sleep(wait.max(Duration::from_micros(20)));
            continue;
        }
        let n = (owed as usize).clamp(1, BATCH);
        let mut control: [SendAncillaryBuffer<'_, '_, '_>; BATCH] =
            std::array::from_fn(|_| SendAncillaryBuffer::default());
        let mut control = control.iter_mut();
        let mut msgs: [MMsgHdr<'_>; BATCH] = std::array::from_fn(|_| {
            MMsgHdr::new(
                &iov,
                control.next().expect("one control buffer per message"),
            )
        });
        let mut done = 0;
        while done < n {
            match sendmmsg(socket, &mut msgs[done..n], SendFlags::empty()) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if e == rustix::io::Errno::INTR => {}
                Err(_) => {
                    // A refused send (the daemon's port closed; ICMP reported) or no buffer:
                    // the datagram was not sent, so it is not counted.
                    errors += 1;
                    break;
                }
            }
        }
        sent += done as u64;
        if errors > 10_000 {
            break;
        }
    }
    (sent, start.elapsed(), errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_exactly_the_rate_times_the_duration() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let addr = receiver.local_addr().unwrap();
        let counter = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut n = 0u64;
            while let Ok(len) = receiver.recv(&mut buf) {
                assert_eq!(&buf[..len], b"t:1|c");
                n += 1;
            }
            n
        });
        let sent = send(addr, b"t:1|c", 2_000, Duration::from_millis(500), 3).unwrap();
        assert_eq!(sent.packets, 1_000);
        assert_eq!(sent.errors, 0);
        assert!(sent.elapsed >= Duration::from_millis(450), "{sent:?}");
        assert_eq!(counter.join().unwrap(), 1_000);
    }
}
