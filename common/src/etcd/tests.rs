//! Unit tests of the pure parts, and tests against a real etcd ([`super::testing`]).

use super::testing::EtcdServer;
use super::*;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[test]
fn prefix_end_increments_the_last_byte() {
    assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b""), vec![0]);
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
}

#[test]
fn gateway_answers_parse_leniently() {
    let r: wire::Range = serde_json::from_str(
        r#"{"header":{"revision":"7"},"kvs":[{"key":"L2Ev","value":"eA==","mod_revision":"5","lease":"12"}],"count":"1"}"#,
    )
    .unwrap();
    assert_eq!(r.header.revision, 7);
    let kv = r.kvs.into_iter().next().unwrap().decode().unwrap();
    assert_eq!(
        (
            kv.key.as_str(),
            kv.value.as_slice(),
            kv.mod_revision,
            kv.lease
        ),
        ("/a/", &b"x"[..], 5, 12)
    );
    let empty: wire::Range = serde_json::from_str(r#"{"header":{}}"#).unwrap();
    assert!(empty.kvs.is_empty() && empty.header.revision == 0);
    assert!(serde_json::from_str::<wire::Range>(r#"{"header":{"revision":"x"}}"#).is_err());
    let bad = wire::Kv {
        key: "!!".into(),
        value: String::new(),
        mod_revision: 0,
        lease: 0,
    };
    assert!(bad.decode().is_err());
}

fn client(etcd: &EtcdServer) -> EtcdClient {
    EtcdClient::new(vec![etcd.uri()])
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A loopback port nothing listens on.
fn dead_uri() -> hyper::Uri {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}").parse().unwrap()
}

#[tokio::test]
async fn put_range_delete_and_failover() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    // A dead endpoint first: the client moves on to the live one.
    let c = EtcdClient::new(vec![dead_uri(), etcd.uri()]);
    let r1 = c.put("/t/a", b"1", None).await.unwrap();
    let r2 = c.put("/t/b", b"two", None).await.unwrap();
    c.put("/u/c", b"other prefix", None).await.unwrap();
    assert!(r2 > r1);
    let (kvs, rev) = c.range_prefix("/t/").await.unwrap();
    assert!(rev >= r2);
    let got: Vec<(&str, &[u8])> = kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    assert_eq!(got, [("/t/a", &b"1"[..]), ("/t/b", &b"two"[..])]);
    assert_eq!(c.delete("/t/a").await.unwrap(), 1);
    assert_eq!(c.delete("/t/a").await.unwrap(), 0);
    let (kvs, _) = c.range_prefix("/t/").await.unwrap();
    assert_eq!(kvs.len(), 1);
    assert!(c.range_prefix("/nothing/").await.unwrap().0.is_empty());
    // A watch starting on the dead endpoint moves on to the live one.
    let cancel = CancellationToken::new();
    let fresh = EtcdClient::new(vec![dead_uri(), etcd.uri()]);
    let mut events = fresh.watch_prefix("/t/", 0, cancel.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.put("/t/w", b"w", None).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event through the live endpoint");
    assert!(matches!(ev, Some(WatchEvent::Put(kv)) if kv.key == "/t/w"));
    cancel.cancel();
    // No endpoint answering is an error, not a hang or a panic.
    let nobody = EtcdClient::new(vec!["http://127.0.0.1:1".parse().unwrap()]);
    assert!(matches!(
        nobody.put("/x", b"", None).await,
        Err(EtcdError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn leases_keep_keys_alive_and_revoke_deletes_them() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let c = client(&etcd);
    let lease = c.grant(5).await.unwrap();
    c.put("/l/k", b"v", Some(lease)).await.unwrap();
    let (kvs, _) = c.range_prefix("/l/").await.unwrap();
    assert_eq!(kvs[0].lease, lease);
    assert!(c.keepalive(lease).await.unwrap() > 0);
    c.revoke(lease).await.unwrap();
    assert!(c.range_prefix("/l/").await.unwrap().0.is_empty());
    assert!(matches!(c.keepalive(lease).await, Err(EtcdError::LeaseLost(l)) if l == lease));
    // Revoking a lease etcd no longer knows is not an error.
    c.revoke(lease).await.unwrap();
}

#[tokio::test]
async fn watch_streams_puts_and_deletes_in_order() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let c = client(&etcd);
    let (_, rev) = c.range_prefix("/w/").await.unwrap();
    let cancel = CancellationToken::new();
    let mut events = c.watch_prefix("/w/", rev + 1, cancel.clone());
    c.put("/w/a", b"1", None).await.unwrap();
    c.put("/elsewhere", b"x", None).await.unwrap();
    c.put("/w/a", b"2", None).await.unwrap();
    let del_rev = {
        c.delete("/w/a").await.unwrap();
        c.range_prefix("/w/").await.unwrap().1
    };
    let mut got = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .expect("an event within 2 s")
            .expect("channel open");
        got.push(ev);
    }
    match &got[..] {
        [
            WatchEvent::Put(a),
            WatchEvent::Put(b),
            WatchEvent::Delete { key, mod_revision },
        ] => {
            assert_eq!((a.key.as_str(), a.value.as_slice()), ("/w/a", &b"1"[..]));
            assert_eq!(b.value, b"2");
            assert!(b.mod_revision > a.mod_revision);
            assert_eq!(key, "/w/a");
            assert_eq!(*mod_revision, del_rev);
        }
        other => panic!("unexpected events {other:?}"),
    }
    cancel.cancel();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .unwrap()
            .is_none(),
        "the channel closes on cancel"
    );
}

#[tokio::test]
async fn mirror_follows_changes_and_a_compacted_watch_lists_again() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let c = client(&etcd);
    let cancel = CancellationToken::new();
    let mut mirror = c.mirror_prefix("/m/", cancel.clone());
    c.put("/m/a", b"1", None).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || {
            let ok = mirror.borrow().kvs.contains_key("/m/a");
            async move { ok }
        })
        .await
        .is_some()
    );
    // A watch from a compacted revision: the consumer gets the full state instead.
    c.put("/m/b", b"2", None).await.unwrap();
    let (_, rev) = c.range_prefix("/m/").await.unwrap();
    compact(&c, rev).await;
    let mut events = c.watch_prefix("/m/", 1, cancel.clone());
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Reset { kvs, revision } => {
            assert_eq!(kvs.len(), 2);
            assert!(revision >= rev);
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    mirror.changed().await.ok();
    assert_eq!(mirror.borrow().kvs.len(), 2);
    cancel.cancel();
}

async fn compact(c: &EtcdClient, revision: i64) {
    c.call_raw(
        "/v3/kv/compaction",
        &serde_json::json!({ "revision": revision.to_string(), "physical": true }),
        false,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn registration_revokes_on_stop_and_expires_when_abandoned() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let c = client(&etcd);
    let cancel = CancellationToken::new();
    let reg = Registration::start(
        c.clone(),
        "/r/one".into(),
        b"v1".to_vec(),
        Duration::from_secs(2),
        cancel.clone(),
    );
    let lease = tokio::time::timeout(Duration::from_secs(5), reg.registered())
        .await
        .unwrap()
        .unwrap();
    let (kvs, _) = c.range_prefix("/r/").await.unwrap();
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].lease, lease);
    // Kept alive past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.range_prefix("/r/").await.unwrap().0.len(),
        1,
        "kept alive past the TTL"
    );
    // Deleted by someone else: put again on refresh, with the same lease.
    c.delete("/r/one").await.unwrap();
    reg.refresh();
    let c2 = c.clone();
    assert!(
        wait_until(Duration::from_secs(2), || {
            let c2 = c2.clone();
            async move { c2.range_prefix("/r/").await.unwrap().0.len() == 1 }
        })
        .await
        .is_some()
    );
    // Lease revoked behind its back: registers again with a new lease.
    c.revoke(lease).await.unwrap();
    let c2 = c.clone();
    assert!(
        wait_until(Duration::from_secs(4), || {
            let c2 = c2.clone();
            async move {
                c2.range_prefix("/r/")
                    .await
                    .unwrap()
                    .0
                    .first()
                    .is_some_and(|kv| kv.lease != lease && kv.lease != 0)
            }
        })
        .await
        .is_some(),
        "re-registered after losing its lease"
    );
    // Clean stop: the key is gone at once.
    reg.stop().await;
    assert!(
        c.range_prefix("/r/").await.unwrap().0.is_empty(),
        "revoked on stop"
    );

    // A crash: the key expires within TTL + 1 s.
    let reg = Registration::start(
        c.clone(),
        "/r/two".into(),
        b"v2".to_vec(),
        Duration::from_secs(2),
        cancel.clone(),
    );
    reg.registered().await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    reg.abandon();
    let c2 = c.clone();
    let gone = wait_until(Duration::from_secs(4), || {
        let c2 = c2.clone();
        async move { c2.range_prefix("/r/").await.unwrap().0.is_empty() }
    })
    .await
    .expect("the abandoned key expires");
    assert!(gone <= Duration::from_secs(3), "expired after {gone:?}");
    assert!(
        gone >= Duration::from_millis(500),
        "expired too early ({gone:?}): was it revoked?"
    );
}

#[tokio::test]
async fn watch_resumes_after_an_etcd_restart_without_losing_events() {
    let Some(mut etcd) = EtcdServer::start() else {
        return;
    };
    let c = client(&etcd);
    let cancel = CancellationToken::new();
    let mut events = c.watch_prefix("/rs/", 0, cancel.clone());
    // Let the watch be created before the first put.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.put("/rs/a", b"1", None).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(&first, WatchEvent::Put(kv) if kv.key == "/rs/a"));
    etcd.kill();
    etcd.restart();
    // Written while the watch was reconnecting: still delivered, in order, once.
    c.put("/rs/b", b"2", None).await.unwrap();
    c.put("/rs/c", b"3", None).await.unwrap();
    let mut keys = Vec::new();
    while keys.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(WatchEvent::Put(kv))) => keys.push(kv.key),
            other => panic!("unexpected {other:?} after {keys:?}"),
        }
    }
    assert_eq!(keys, ["/rs/b", "/rs/c"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.recv())
            .await
            .is_err(),
        "no event repeated"
    );
    cancel.cancel();
}
