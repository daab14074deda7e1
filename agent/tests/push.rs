//! The push stage against a scripted HTTP server on 127.0.0.1: the shared retry rule (retry
//! 5xx, 429 and network errors, honouring Retry-After; drop and count other 4xx), fail-over
//! between collector URLs, and delivery in order.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sonde_agent::batch::EncodedBatch;
use sonde_agent::buffer::Buffer;
use sonde_agent::config::PushConfig;
use sonde_agent::events::Events;
use sonde_agent::push::Pusher;
use sonde_common::wire::Compression;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the server saw: (sequence-bearing body, arrival time).
type Seen = Arc<Mutex<Vec<(Bytes, Instant)>>>;

/// Serves the scripted responses in order (then 200s), recording each request body.
async fn scripted(script: Vec<(u16, Option<&'static str>)>) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/push", listener.local_addr().unwrap());
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (script, seen) = (script.clone(), seen2.clone());
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (script, seen) = (script.clone(), seen.clone());
                async move {
                    assert_eq!(req.headers()["content-type"], "application/x-sonde-batch");
                    assert_eq!(req.headers()["content-encoding"], "zstd");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    seen.lock().unwrap().push((body, Instant::now()));
                    let (status, retry_after) =
                        script.lock().unwrap().pop_front().unwrap_or((200, None));
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"scripted reason")));
                    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                    if let Some(ra) = retry_after {
                        resp.headers_mut()
                            .insert("retry-after", ra.parse().unwrap());
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned(),
            );
        }
    });
    (url, seen)
}

fn batch(sequence: u64) -> EncodedBatch {
    EncodedBatch {
        sequence,
        samples: 10,
        bytes: Bytes::from(sequence.to_le_bytes().to_vec()),
    }
}

fn config(urls: &[&str]) -> PushConfig {
    PushConfig {
        urls: urls.iter().map(|u| u.parse().unwrap()).collect(),
        timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        compression: Compression::Zstd,
        token: None,
        tls: Default::default(),
    }
}

/// Runs the pusher until the buffer is empty (or 10 s pass).
async fn deliver(cfg: PushConfig, batches: &[u64]) -> Arc<Events> {
    let events = Arc::new(Events::default());
    let buffer = Arc::new(Buffer::new(1 << 20));
    for &s in batches {
        buffer.push(batch(s));
    }
    let drain = CancellationToken::new();
    drain.cancel(); // return as soon as the buffer is empty
    let hard_stop = CancellationToken::new();
    let run =
        Pusher::new(cfg, events.clone())
            .unwrap()
            .run(buffer.clone(), drain, hard_stop.clone());
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("pusher finished");
    assert_eq!(buffer.usage(), (0, 0));
    events
}

fn sequences(seen: &Seen) -> Vec<u64> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(b, _)| u64::from_le_bytes(b[..8].try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried_in_order() {
    let (url, seen) = scripted(vec![
        (503, None),
        (500, None),
        (429, Some("1")),
        (200, None),
        (200, None),
    ])
    .await;
    let events = deliver(config(&[&url]), &[1, 2]).await;
    assert_eq!(
        sequences(&seen),
        [1, 1, 1, 1, 2],
        "batch 1 retried until accepted, then batch 2"
    );
    let times: Vec<Instant> = seen.lock().unwrap().iter().map(|(_, t)| *t).collect();
    assert!(
        times[3] - times[2] >= Duration::from_millis(190),
        "Retry-After: 1 is honoured up to the 200 ms backoff cap"
    );
    assert_eq!(events.batches_sent.get(), 2);
    assert_eq!(events.samples_sent.get(), 20);
    assert_eq!(events.push_retries.get("server_error"), 2);
    assert_eq!(events.push_retries.get("throttled"), 1);
    assert_eq!(events.dropped_samples.total(), 0);
}

#[tokio::test]
async fn client_errors_drop_the_batch_and_count_it() {
    let (url, seen) = scripted(vec![(400, None), (200, None)]).await;
    let events = deliver(config(&[&url]), &[7, 8]).await;
    assert_eq!(sequences(&seen), [7, 8], "a 400 is not retried");
    assert_eq!(events.dropped_samples.get("rejected"), 10);
    assert_eq!(events.batches_sent.get(), 1);
}

#[tokio::test]
async fn unreachable_collector_fails_over_to_the_next() {
    // A port nobody listens on: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/api/v1/push", dead.local_addr().unwrap());
    drop(dead);
    let (url, seen) = scripted(vec![]).await;
    let events = deliver(config(&[&dead_url, &url]), &[3]).await;
    assert_eq!(sequences(&seen), [3]);
    assert_eq!(events.push_retries.get("network"), 1);
    assert_eq!(events.batches_sent.get(), 1);
}
