//! `sonde-agent --register`: the real binary registers its /metrics endpoint in a real etcd,
//! and the key disappears at once when the agent stops on SIGTERM (the lease is revoked, long
//! before its TTL would expire it).
//!
//! Needs `/usr/bin/etcd` (Debian's etcd-server), or the path in `SONDE_ETCD`; skipped with a
//! notice otherwise.

use sonde_common::etcd::EtcdClient;
use sonde_common::etcd::testing::EtcdServer;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the agent (by PID) if the test ends before it exited.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_until(within: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

#[tokio::test]
async fn registers_its_metrics_endpoint_and_leaves_on_sigterm() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let client = EtcdClient::new(vec![etcd.uri()]);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
            .args(["--register", &etcd.url, "--http-listen", &listen])
            .args(["--register-ttl", "10s", "--hostname", "register-test"])
            .args(["--collector", "http://127.0.0.1:1", "--statsd-listen", ""])
            .args([
                "--interval",
                "1s",
                "--shutdown-timeout",
                "1s",
                "--log",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start sonde-agent"),
    );
    let key = format!("/sonde/targets/{listen}");
    let registered = wait_until(Duration::from_secs(10), async || {
        client
            .range_prefix("/sonde/targets/")
            .await
            .is_ok_and(|(kvs, _)| kvs.iter().any(|kv| kv.key == key))
    })
    .await;
    assert!(registered.is_some(), "{key} never appeared");
    let (kvs, _) = client.range_prefix("/sonde/targets/").await.unwrap();
    assert_eq!(kvs.len(), 1);
    assert_ne!(kvs[0].lease, 0, "bound to a lease");
    let value: serde_json::Value = serde_json::from_slice(&kvs[0].value).unwrap();
    assert_eq!(value["address"], listen.as_str());
    assert_eq!(value["labels"]["__meta_sonde_agent_host"], "register-test");
    // What collectors would scrape is really there.
    let metrics = std::net::TcpStream::connect(&listen);
    assert!(metrics.is_ok(), "the registered address serves");

    let pid = rustix::process::Pid::from_raw(agent.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let gone = wait_until(Duration::from_secs(5), async || {
        client
            .range_prefix("/sonde/targets/")
            .await
            .is_ok_and(|(kvs, _)| kvs.is_empty())
    })
    .await;
    let gone = gone.expect("the key is removed when the agent stops");
    assert!(
        gone < Duration::from_secs(5),
        "removed by revoke, not by the 10s TTL"
    );
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = agent.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
    .await
    .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "agent exit: {status:?}"
    );
}
