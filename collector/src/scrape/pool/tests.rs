use super::*;
use sonde_common::etcd::testing::EtcdServer;
use std::collections::BTreeMap;

fn members(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("http://collector-{i}:9470"))
        .collect()
}

fn keys() -> Vec<String> {
    (0..300)
        .map(|i| format!("http://10.0.{}.{}:9100/metrics", i / 250, i % 250))
        .collect()
}

#[test]
fn owners_are_deterministic_and_stable_across_versions() {
    let m = members(3);
    for k in keys() {
        assert_eq!(owners(&m, &k, 1), owners(&m, &k, 1));
        let mut reversed = m.clone();
        reversed.reverse();
        assert_eq!(
            owners(&m, &k, 1),
            owners(&reversed, &k, 1),
            "order of members does not matter"
        );
    }
    // Pinned values: a change of hash would reshuffle every pool on upgrade.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(mix(0), 0);
    assert_eq!(mix(1), 0x5692_161d_100b_05e5);
    let pinned: Vec<String> = (0..5)
        .map(|i| owners(&m, &format!("target-{i}"), 1)[0].clone())
        .collect();
    assert_eq!(pinned, PINNED.map(|i| m[i].clone()));
}

/// The owner index among `members(3)` of `target-0` .. `target-4`, as computed when the hash
/// was chosen.
const PINNED: [usize; 5] = [2, 1, 2, 0, 1];

#[test]
fn keys_spread_evenly() {
    let m = members(3);
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for k in keys() {
        *count.entry(owners(&m, &k, 1).remove(0)).or_default() += 1;
    }
    assert_eq!(count.len(), 3);
    for (member, n) in &count {
        assert!(
            (60..=140).contains(n),
            "{member} owns {n} of 300 keys: {count:?}"
        );
    }
}

#[test]
fn a_joining_member_takes_a_fair_share_and_nothing_else_moves() {
    let old = members(3);
    let new = members(4);
    let mut moved = 0;
    for k in keys() {
        let before = owners(&old, &k, 1).remove(0);
        let after = owners(&new, &k, 1).remove(0);
        if before != after {
            moved += 1;
            assert_eq!(
                after, new[3],
                "{k} moved between old members: {before} -> {after}"
            );
        }
    }
    assert!((45..=105).contains(&moved), "{moved} of 300 keys moved");
}

#[test]
fn replicas_are_distinct_and_bounded_by_the_pool() {
    let m = members(3);
    for k in keys() {
        let two = owners(&m, &k, 2);
        assert_eq!(two.len(), 2);
        assert_ne!(two[0], two[1]);
        assert_eq!(
            two[0],
            owners(&m, &k, 1)[0],
            "the first replica is the single owner"
        );
        assert!(owns(&m, &two[1], &k, 2) && !owns(&m, &two[1], &k, 1));
    }
    assert_eq!(owners(&m, "k", 5).len(), 3);
    assert!(owners(&[], "k", 2).is_empty());
    let dup = vec!["http://a".to_owned(), "http://a".to_owned()];
    assert_eq!(owners(&dup, "k", 2), ["http://a"]);
}

#[test]
fn static_pool_includes_me_once() {
    let s = Static::new(
        "http://b:1",
        [
            "http://c:1".into(),
            " ".into(),
            "http://b:1".into(),
            "http://a:1".into(),
        ],
    );
    assert_eq!(s.me(), "http://b:1");
    assert_eq!(
        *s.members().borrow(),
        ["http://a:1", "http://b:1", "http://c:1"]
    );
    assert_eq!(
        *Static::new("http://me", Vec::new()).members().borrow(),
        ["http://me"]
    );
}

#[test]
fn member_values_that_are_not_urls_are_ignored() {
    let mut s = Snapshot::default();
    for (k, v) in [
        ("/p/1", &b"http://a:1"[..]),
        ("/p/2", b"\xff\xfe"),
        ("/p/3", b"not a url"),
        ("/p/4", b"http://b:1 "),
    ] {
        s.kvs.insert(
            k.into(),
            sonde_common::etcd::KeyValue {
                key: k.into(),
                value: v.to_vec(),
                mod_revision: 1,
                lease: 0,
            },
        );
    }
    assert_eq!(
        member_list(&s, "http://c:1"),
        ["http://a:1", "http://b:1", "http://c:1"]
    );
}

async fn wait_for_members(m: &EtcdMembership, want: &[&str]) -> bool {
    let mut rx = m.members();
    tokio::time::timeout(
        Duration::from_secs(3),
        rx.wait_for(|l| l.iter().map(String::as_str).eq(want.iter().copied())),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

#[tokio::test]
async fn etcd_members_converge_and_see_a_leaver_go() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let client = EtcdClient::new(vec![etcd.uri()]);
    let cancel = CancellationToken::new();
    let ttl = Duration::from_secs(2);
    let urls = ["http://c1:9470", "http://c2:9470", "http://c3:9470"];
    let mut pool: Vec<EtcdMembership> = urls
        .iter()
        .map(|u| {
            EtcdMembership::start(
                client.clone(),
                "/sonde/collectors/",
                *u,
                ttl,
                cancel.clone(),
            )
        })
        .collect();
    for m in &pool {
        assert!(
            wait_for_members(m, &urls).await,
            "{} sees {:?}",
            m.me(),
            *m.members().borrow()
        );
    }
    let (kvs, _) = client.range_prefix("/sonde/collectors/").await.unwrap();
    assert_eq!(kvs.len(), 3);
    assert!(
        kvs.iter().all(|kv| kv.lease != 0),
        "members are bound to leases"
    );

    // One leaves cleanly: the others see it gone well within its TTL.
    let leaver = pool.remove(1);
    let started = std::time::Instant::now();
    leaver.stop().await;
    for m in &pool {
        assert!(
            wait_for_members(m, &[urls[0], urls[2]]).await,
            "{} still sees {:?}",
            m.me(),
            *m.members().borrow()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );

    // One crashes: the others see it gone after its TTL.
    let crashed = pool.remove(1);
    let started = std::time::Instant::now();
    crashed.abandon();
    let mut rx = pool[0].members();
    tokio::time::timeout(Duration::from_secs(4), rx.wait_for(|l| l.len() == 1))
        .await
        .expect("a crashed member leaves within TTL + 1 s")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "left too early"
    );

    // Its own key deleted by hand: the member puts it back.
    let deleted = client
        .delete(&member_key("/sonde/collectors/", urls[0]))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let mut back = false;
    for _ in 0..100 {
        if client
            .range_prefix("/sonde/collectors/")
            .await
            .unwrap()
            .0
            .len()
            == 1
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "the deleted member key was put back");
    cancel.cancel();
}

#[tokio::test]
async fn dns_peers_are_every_address_of_the_name_plus_me() {
    let cancel = CancellationToken::new();
    let peers = DnsPeers::start(
        "http://10.0.0.9:9470",
        "localhost:9470".into(),
        Duration::from_secs(60),
        cancel.clone(),
    );
    let mut rx = peers.members();
    let list = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let l = rx.borrow_and_update().clone();
            if l.len() > 1 {
                return l;
            }
            let _ = rx.changed().await;
        }
    })
    .await
    .expect("localhost resolves");
    assert!(
        list.contains(&"http://127.0.0.1:9470".to_owned()),
        "{list:?}"
    );
    assert!(
        list.contains(&"http://10.0.0.9:9470".to_owned()),
        "{list:?}"
    );
    let mut sorted = list.clone();
    sorted.sort();
    assert_eq!(list, sorted);
    cancel.cancel();
}
