//! The router end to end over an in-memory store: every refusal gets its status code and
//! changes nothing; accepted deliveries are persisted before the 200; duplicates count once;
//! reordering never moves a prediction back; rotation overlaps; group commit bounds writes.

mod webhook_common;

use std::sync::Arc;

use axum::http::StatusCode;
use replicate_operator::crd::PredictionCounts;
use replicate_operator::webhook::apply::SidecarStatus;
use replicate_operator::webhook::metrics::DeliveryResult;
use replicate_operator::webhook::secrets::StaticSecrets;
use webhook_common::*;

fn counts(s: i64, f: i64, c: i64, a: i64) -> Option<PredictionCounts> {
    Some(PredictionCounts {
        succeeded: s,
        failed: f,
        canceled: c,
        aborted: a,
    })
}

#[tokio::test]
async fn an_accepted_delivery_is_in_the_status_when_the_200_comes() {
    let k = signing_key(1);
    let (server, store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    let d = Delivery::signed(&k, "msg_1", &prediction("p1", "failed", 0), 0);
    assert_eq!(deliver(&router, &d).await, StatusCode::OK);
    let status = store.status(&key()).unwrap();
    assert_eq!(status.predictions, counts(0, 1, 0, 0));
    let last = status.last_prediction.unwrap();
    assert_eq!((last.id.as_str(), last.status.as_str()), ("p1", "failed"));
    assert_eq!(last.error.as_deref(), Some("out of memory"));
    assert_eq!(last.predict_time, Some(1.5));
    assert_eq!(status.counted_prediction_ids, ["p1"]);
    assert!(status.last_webhook_time.is_some());
    assert_eq!(store.writes(), 1);
    assert_eq!(server.metrics().deliveries(DeliveryResult::Accepted), 1);
}

#[tokio::test]
async fn every_refusal_gets_its_code_and_changes_nothing() {
    let k = signing_key(1);
    let (server, store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    let body = prediction("p1", "succeeded", 0);
    let good = || Delivery::signed(&k, "msg_1", &body, 0);

    let mut cases: Vec<(&str, Delivery, StatusCode, DeliveryResult)> = Vec::new();
    let mut d = good();
    d.body = prediction("p1", "failed", 0).into_bytes();
    cases.push((
        "tampered body",
        d,
        StatusCode::UNAUTHORIZED,
        DeliveryResult::BadSignature,
    ));
    let mut d = good();
    d.signature = Some(signing_key(1).sign("msg_1", "1", b"other"));
    cases.push((
        "tampered signature",
        d,
        StatusCode::UNAUTHORIZED,
        DeliveryResult::BadSignature,
    ));
    cases.push((
        "wrong secret",
        Delivery::signed(&signing_key(2), "msg_1", &body, 0),
        StatusCode::UNAUTHORIZED,
        DeliveryResult::BadSignature,
    ));
    let mut d = good();
    d.id = None;
    cases.push((
        "missing webhook-id",
        d,
        StatusCode::BAD_REQUEST,
        DeliveryResult::Malformed,
    ));
    let mut d = good();
    d.timestamp = None;
    cases.push((
        "missing webhook-timestamp",
        d,
        StatusCode::BAD_REQUEST,
        DeliveryResult::Malformed,
    ));
    let mut d = good();
    d.signature = None;
    cases.push((
        "missing webhook-signature",
        d,
        StatusCode::BAD_REQUEST,
        DeliveryResult::Malformed,
    ));
    cases.push((
        "stale timestamp",
        Delivery::signed(&k, "msg_1", &body, -3600),
        StatusCode::UNAUTHORIZED,
        DeliveryResult::StaleTimestamp,
    ));
    cases.push((
        "future timestamp",
        Delivery::signed(&k, "msg_1", &body, 3600),
        StatusCode::UNAUTHORIZED,
        DeliveryResult::StaleTimestamp,
    ));
    let mut d = good();
    d.signature = Some("g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into());
    cases.push((
        "signature without version",
        d,
        StatusCode::BAD_REQUEST,
        DeliveryResult::Malformed,
    ));
    let mut d = good();
    d.timestamp = Some("soon".into());
    cases.push((
        "timestamp not a number",
        d,
        StatusCode::BAD_REQUEST,
        DeliveryResult::Malformed,
    ));
    let big = format!(
        "{{\"id\":\"p1\",\"status\":\"succeeded\",\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    cases.push((
        "oversized body (declared)",
        Delivery::signed(&k, "msg_1", &big, 0),
        StatusCode::PAYLOAD_TOO_LARGE,
        DeliveryResult::TooLarge,
    ));
    let mut d = Delivery::signed(&k, "msg_1", &big, 0);
    d.content_length = false;
    cases.push((
        "oversized body (streamed)",
        d,
        StatusCode::PAYLOAD_TOO_LARGE,
        DeliveryResult::TooLarge,
    ));
    cases.push((
        "signed body that is not JSON",
        Delivery::signed(&k, "msg_1", "hello", 0),
        StatusCode::BAD_REQUEST,
        DeliveryResult::Malformed,
    ));
    cases.push((
        "signed JSON that is not a prediction",
        Delivery::signed(&k, "msg_1", r#"{"hello":"world"}"#, 0),
        StatusCode::BAD_REQUEST,
        DeliveryResult::Malformed,
    ));
    cases.push((
        "empty body",
        Delivery::signed(&k, "msg_1", "", 0),
        StatusCode::BAD_REQUEST,
        DeliveryResult::Malformed,
    ));

    for (name, delivery, code, _) in &cases {
        assert_eq!(deliver(&router, delivery).await, *code, "{name}");
    }
    // Unknown resource, correctly signed.
    let (code, _) = send(&router, good().request("/webhooks/apps/nope")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "unknown resource");

    assert_eq!(store.writes(), 0);
    assert_eq!(store.status(&key()), Some(SidecarStatus::default()));
    let m = server.metrics();
    for result in [
        DeliveryResult::BadSignature,
        DeliveryResult::StaleTimestamp,
        DeliveryResult::Malformed,
        DeliveryResult::TooLarge,
    ] {
        let expected = cases.iter().filter(|c| c.3 == result).count() as u64;
        assert_eq!(m.deliveries(result), expected, "{result:?}");
    }
    assert_eq!(m.deliveries(DeliveryResult::UnknownResource), 1);
    assert_eq!(m.deliveries(DeliveryResult::Accepted), 0);

    // The untampered delivery still goes through afterwards.
    assert_eq!(deliver(&router, &good()).await, StatusCode::OK);
    assert_eq!(
        store.status(&key()).unwrap().predictions,
        counts(1, 0, 0, 0)
    );
}

#[tokio::test]
async fn duplicate_deliveries_are_counted_once_also_across_restarts() {
    let k = signing_key(1);
    let (server, store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    let body = prediction("p1", "succeeded", 0);
    assert_eq!(
        deliver(&router, &Delivery::signed(&k, "msg_1", &body, 0)).await,
        StatusCode::OK
    );
    // Replicate's retry: same webhook-id, re-signed with a new timestamp. Answered from memory.
    assert_eq!(
        deliver(&router, &Delivery::signed(&k, "msg_1", &body, 5)).await,
        StatusCode::OK
    );
    assert_eq!(store.writes(), 1);
    // The same prediction under another webhook-id: written, not counted again.
    assert_eq!(
        deliver(&router, &Delivery::signed(&k, "msg_2", &body, 6)).await,
        StatusCode::OK
    );
    assert_eq!(
        store.status(&key()).unwrap().predictions,
        counts(1, 0, 0, 0)
    );

    // A new sidecar (empty memory) over the same store: the status remembers.
    let restarted = replicate_operator::webhook::server::WebhookServer::new(
        store.clone(),
        Arc::new(StaticSecrets::new(vec![k.clone()])),
        config(),
    );
    let router = restarted.router();
    assert_eq!(
        deliver(&router, &Delivery::signed(&k, "msg_1", &body, 7)).await,
        StatusCode::OK
    );
    assert_eq!(
        store.status(&key()).unwrap().predictions,
        counts(1, 0, 0, 0)
    );
}

#[tokio::test]
async fn out_of_order_deliveries_never_move_a_prediction_back() {
    let k = signing_key(1);
    let (server, store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    let send_status = |wid: &'static str, id: &'static str, status: &'static str, created: i64| {
        Delivery::signed(&k, wid, &prediction(id, status, created), 0)
    };
    for d in [
        send_status("w1", "new", "succeeded", 100),
        send_status("w2", "new", "processing", 100),
        send_status("w3", "new", "starting", 100),
        send_status("w4", "old", "canceled", 50),
        send_status("w5", "new", "failed", 100),
    ] {
        assert_eq!(deliver(&router, &d).await, StatusCode::OK);
    }
    let status = store.status(&key()).unwrap();
    let last = status.last_prediction.unwrap();
    assert_eq!(
        (last.id.as_str(), last.status.as_str()),
        ("new", "succeeded")
    );
    assert_eq!(status.predictions, counts(1, 0, 1, 0));
}

#[tokio::test]
async fn rotation_accepts_old_and_new_secrets_during_the_overlap() {
    let (old, new, retired) = (signing_key(1), signing_key(2), signing_key(3));
    let secrets =
        StaticSecrets::parse(&format!("{}, {}", old.to_secret(), new.to_secret())).unwrap();
    let (server, store) = server(secrets, config());
    let router = server.router();
    assert_eq!(
        deliver(
            &router,
            &Delivery::signed(&old, "w1", &prediction("p1", "succeeded", 1), 0)
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        deliver(
            &router,
            &Delivery::signed(&new, "w2", &prediction("p2", "succeeded", 2), 0)
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        deliver(
            &router,
            &Delivery::signed(&retired, "w3", &prediction("p3", "succeeded", 3), 0)
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        store.status(&key()).unwrap().predictions,
        counts(2, 0, 0, 0)
    );
}

#[tokio::test]
async fn a_failed_write_answers_503_and_the_retry_is_counted_once() {
    let k = signing_key(1);
    let (server, store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    let body = prediction("p1", "succeeded", 0);
    store.fail_next_writes(1);
    assert_eq!(
        deliver(&router, &Delivery::signed(&k, "msg_1", &body, 0)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(store.status(&key()), Some(SidecarStatus::default()));
    // Replicate retries the terminal webhook with the same webhook-id; it must really be written.
    assert_eq!(
        deliver(&router, &Delivery::signed(&k, "msg_1", &body, 3)).await,
        StatusCode::OK
    );
    assert_eq!(
        store.status(&key()).unwrap().predictions,
        counts(1, 0, 0, 0)
    );
    assert_eq!(
        server.metrics().deliveries(DeliveryResult::PersistFailed),
        1
    );
}

#[tokio::test]
async fn conflicting_writers_are_retried_without_losing_counts() {
    let k = signing_key(1);
    let (server, store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    store.conflict_next_writes(2);
    assert_eq!(
        deliver(
            &router,
            &Delivery::signed(&k, "msg_1", &prediction("p1", "aborted", 0), 0)
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        store.status(&key()).unwrap().predictions,
        counts(0, 0, 0, 1)
    );
    assert_eq!(store.writes(), 1);
}

#[tokio::test]
async fn conflicts_beyond_the_retry_budget_answer_503() {
    let k = signing_key(1);
    let (server, store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    store.conflict_next_writes(100);
    assert_eq!(
        deliver(
            &router,
            &Delivery::signed(&k, "msg_1", &prediction("p1", "aborted", 0), 0)
        )
        .await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(store.writes(), 0);
}

const BURST: usize = 1000;

async fn burst(
    router: &axum::Router,
    k: &replicate_operator::signature::SigningKey,
) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    (0..BURST)
        .map(|i| {
            let router = router.clone();
            let d = Delivery::signed(
                k,
                &format!("msg_{i}"),
                &prediction(&format!("p{i:04}"), "succeeded", i as i64),
                0,
            );
            tokio::spawn(async move { deliver(&router, &d).await })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_turns_a_burst_into_a_bounded_number_of_writes() {
    let k = signing_key(1);
    let (server, store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    let metrics = server.metrics();

    // Hold the first write open until every delivery is verified and waiting, so the count of
    // writes does not depend on timing: one write in progress, everything else in the next.
    store.hold_writes();
    let tasks = burst(&router, &k).await;
    while metrics.awaiting_persist_now() < BURST as i64 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        store.writes(),
        0,
        "nothing is answered while the write is held"
    );
    store.release_writes();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let writes = store.writes();
    println!("{BURST} concurrent webhooks to one resource: {writes} status write(s)");
    assert!(writes <= 2, "{writes} writes for {BURST} webhooks");
    let status = store.status(&key()).unwrap();
    assert_eq!(status.predictions, counts(BURST as i64, 0, 0, 0));
    assert_eq!(status.counted_prediction_ids.len(), 500);
    assert_eq!(
        status.last_prediction.unwrap().id,
        format!("p{:04}", BURST - 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unheld_burst_is_fully_counted() {
    let k = signing_key(1);
    let (server, store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    for t in burst(&router, &k).await {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    println!(
        "{BURST} concurrent webhooks, writes not held: {} status write(s)",
        store.writes()
    );
    assert_eq!(
        store.status(&key()).unwrap().predictions,
        counts(BURST as i64, 0, 0, 0)
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints() {
    let k = signing_key(1);
    let (server, _store) = server(StaticSecrets::new(vec![k.clone()]), config());
    let router = server.router();
    let get = |p: &str| {
        axum::http::Request::get(p)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    assert_eq!(send(&router, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(send(&router, get("/readyz")).await.0, StatusCode::OK);
    assert_eq!(
        deliver(
            &router,
            &Delivery::signed(&k, "w1", &prediction("p1", "succeeded", 0), 0)
        )
        .await,
        StatusCode::OK
    );
    let (code, text) = send(&router, get("/metrics")).await;
    assert_eq!(code, StatusCode::OK);
    for line in [
        r#"replicate_webhook_deliveries_total{result="accepted"} 1"#,
        r#"replicate_webhook_status_writes_total{outcome="ok"} 1"#,
        "replicate_webhook_verification_seconds_count 1",
        "replicate_webhook_batch_size_count 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}
