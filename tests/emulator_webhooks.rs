//! Webhooks sent by the emulator: signing, event filters, retries, secret rotation; and the
//! control endpoints.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use replicate_operator::emulator::config::versions;
use replicate_operator::emulator::{DEMO_USERNAME, Emulator, EmulatorConfig};
use replicate_operator::replicate::{
    AccountClient, CreateDeployment, PredictionRequest, PredictionStatus, ReplicateClient,
    UpdateDeployment, WebhookEvent,
};
use replicate_operator::signature::SigningKey;
use serde_json::Value;

#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver on loopback that records every request and answers from a script
/// (200 once the script is empty).
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

async fn receiver(script: &[u16]) -> Receiver {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(
        script.iter().copied().collect::<VecDeque<u16>>(),
    ));
    let (sink, answers2) = (seen.clone(), answers.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (sink, answers) = (sink.clone(), answers2.clone());
            async move {
                let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
                sink.lock().unwrap().push(Received {
                    id: header("webhook-id"),
                    timestamp: header("webhook-timestamp"),
                    signature: header("webhook-signature"),
                    body,
                });
                StatusCode::from_u16(answers.lock().unwrap().pop_front().unwrap_or(200)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{addr}/hook?customId=42"),
        seen,
    }
}

async fn setup() -> (Emulator, AccountClient) {
    let emu = Emulator::start(EmulatorConfig::fast()).await.unwrap();
    let client = ReplicateClient::new(emu.client_config())
        .unwrap()
        .account(emu.demo_token());
    let request = CreateDeployment {
        name: "app".into(),
        model: "replicate/hello-world".into(),
        version: versions::HELLO_WORLD_V1.into(),
        hardware: "cpu".into(),
        min_instances: 0,
        max_instances: 1,
    };
    client.create_deployment(&request).await.unwrap();
    (emu, client)
}

fn request(input: Value, hook: &Receiver, filter: Option<Vec<WebhookEvent>>) -> PredictionRequest {
    PredictionRequest {
        input,
        webhook: Some(hook.url.clone()),
        webhook_events_filter: filter,
    }
}

/// The entries of a `webhook-signature` header that this secret produced.
fn verifies(secret: &str, received: &Received) -> bool {
    let expected = SigningKey::from_secret(secret).unwrap().sign(
        &received.id,
        &received.timestamp,
        &received.body,
    );
    received.signature.split(' ').any(|entry| entry == expected)
}

#[tokio::test]
async fn default_events_are_signed_and_carry_the_prediction() {
    let (emu, client) = setup().await;
    let hook = receiver(&[]).await;
    let secret = client.default_webhook_secret().await.unwrap().key;
    let created = client
        .create_deployment_prediction(
            DEMO_USERNAME,
            "app",
            &request(serde_json::json!({"text": "hi"}), &hook, None),
            None,
        )
        .await
        .unwrap();
    assert!(
        emu.wait_until(Duration::from_secs(10), |e| e.webhook_deliveries().len()
            == 2)
            .await
    );
    let seen = hook.seen.lock().unwrap().clone();
    let events: Vec<WebhookEvent> = emu
        .webhook_deliveries()
        .iter()
        .map(|d| d.event.clone())
        .collect();
    assert_eq!(events, [WebhookEvent::Output, WebhookEvent::Completed]);
    assert_eq!(seen[0].json()["status"], "processing");
    assert_eq!(
        seen[0].json()["output"],
        serde_json::json!({"echo": {"text": "hi"}})
    );
    let last = seen[1].json();
    assert_eq!(last["status"], "succeeded");
    assert_ne!(seen[0].id, seen[1].id, "each event is its own message");
    for received in &seen {
        assert!(
            verifies(&secret, received),
            "signature {} does not verify",
            received.signature
        );
        assert!(received.id.starts_with("msg_"));
    }
    // The body is the prediction exactly as GET /v1/predictions/{id} returns it.
    let polled = client.get_prediction(&created.id).await.unwrap();
    assert_eq!(last, serde_json::to_value(&polled).unwrap());
    let http = reqwest::Client::new();
    let raw: Value = http
        .get(&polled.urls.get)
        .bearer_auth(emu.demo_token().expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(last, raw);
}

#[tokio::test]
async fn only_the_terminal_webhook_is_retried_with_the_same_id() {
    let (emu, client) = setup().await;
    // start fails (never retried), logs succeeds, completed fails twice then succeeds.
    let hook = receiver(&[500, 200, 500, 503]).await;
    let filter = Some(vec![
        WebhookEvent::Start,
        WebhookEvent::Logs,
        WebhookEvent::Completed,
    ]);
    let input = serde_json::json!({"fail": true});
    client
        .create_deployment_prediction(DEMO_USERNAME, "app", &request(input, &hook, filter), None)
        .await
        .unwrap();
    let delivered = |e: &Emulator| {
        e.webhook_deliveries()
            .iter()
            .any(|d| d.event == WebhookEvent::Completed && d.response_status == Some(200))
    };
    assert!(emu.wait_until(Duration::from_secs(10), delivered).await);
    let log = emu.webhook_deliveries();
    let attempts = |event: WebhookEvent| log.iter().filter(|d| d.event == event).count();
    assert_eq!(attempts(WebhookEvent::Start), 1);
    assert_eq!(attempts(WebhookEvent::Logs), 1);
    assert_eq!(
        attempts(WebhookEvent::Output),
        0,
        "not in the filter, and a failed prediction has no output"
    );
    let completed: Vec<_> = log
        .iter()
        .filter(|d| d.event == WebhookEvent::Completed)
        .collect();
    assert_eq!(
        completed.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        completed
            .iter()
            .all(|d| d.webhook_id == completed[0].webhook_id)
    );
    assert!(
        completed
            .iter()
            .all(|d| d.status == PredictionStatus::Failed)
    );
    let secret = emu.webhook_secret(DEMO_USERNAME).unwrap();
    assert!(
        hook.seen
            .lock()
            .unwrap()
            .iter()
            .all(|r| verifies(&secret, r))
    );
}

#[tokio::test]
async fn terminal_retries_are_bounded() {
    let (emu, client) = setup().await;
    let hook = receiver(&[500; 20]).await;
    let filter = Some(vec![WebhookEvent::Completed]);
    client
        .create_deployment_prediction(
            DEMO_USERNAME,
            "app",
            &request(serde_json::json!({}), &hook, filter),
            None,
        )
        .await
        .unwrap();
    let attempts = EmulatorConfig::fast().webhooks.max_attempts as usize;
    assert!(
        emu.wait_until(Duration::from_secs(10), |e| e.webhook_deliveries().len()
            == attempts)
            .await
    );
    assert!(
        emu.webhook_deliveries()
            .iter()
            .all(|d| d.response_status == Some(500))
    );
}

#[tokio::test]
async fn rotated_secrets_sign_twice_during_the_overlap() {
    let (emu, client) = setup().await;
    let old = emu.webhook_secret(DEMO_USERNAME).unwrap();
    let new = emu
        .rotate_webhook_secret(DEMO_USERNAME, Duration::from_secs(3600))
        .unwrap();
    assert_ne!(old, new);
    assert_eq!(client.default_webhook_secret().await.unwrap().key, new);
    let hook = receiver(&[]).await;
    let filter = Some(vec![WebhookEvent::Completed]);
    client
        .create_deployment_prediction(
            DEMO_USERNAME,
            "app",
            &request(serde_json::json!({}), &hook, filter.clone()),
            None,
        )
        .await
        .unwrap();
    assert!(
        emu.wait_until(Duration::from_secs(10), |e| e.webhook_deliveries().len()
            == 1)
            .await
    );
    let first = hook.seen.lock().unwrap()[0].clone();
    assert_eq!(first.signature.split(' ').count(), 2);
    assert!(verifies(&old, &first) && verifies(&new, &first));

    // Without overlap the old secret stops signing at once.
    let newest = emu
        .rotate_webhook_secret(DEMO_USERNAME, Duration::ZERO)
        .unwrap();
    client
        .create_deployment_prediction(
            DEMO_USERNAME,
            "app",
            &request(serde_json::json!({}), &hook, filter),
            None,
        )
        .await
        .unwrap();
    assert!(
        emu.wait_until(Duration::from_secs(10), |e| e.webhook_deliveries().len()
            == 2)
            .await
    );
    let second = hook.seen.lock().unwrap()[1].clone();
    assert!(verifies(&newest, &second));
    assert!(!verifies(&new, &second) && !verifies(&old, &second));
}

#[tokio::test]
async fn disabling_a_deployment_cancels_in_flight_predictions() {
    let mut config = EmulatorConfig::fast();
    config.predictions.starting = Duration::from_secs(30);
    let emu = Emulator::start(config).await.unwrap();
    let client = ReplicateClient::new(emu.client_config())
        .unwrap()
        .account(emu.demo_token());
    let create = CreateDeployment {
        name: "slow".into(),
        model: "replicate/hello-world".into(),
        version: versions::HELLO_WORLD_V1.into(),
        hardware: "cpu".into(),
        min_instances: 1,
        max_instances: 1,
    };
    client.create_deployment(&create).await.unwrap();
    let hook = receiver(&[]).await;
    let created = client
        .create_deployment_prediction(
            DEMO_USERNAME,
            "slow",
            &request(serde_json::json!({}), &hook, None),
            None,
        )
        .await
        .unwrap();
    let off = UpdateDeployment {
        min_instances: Some(0),
        max_instances: Some(0),
        ..Default::default()
    };
    client
        .update_deployment(DEMO_USERNAME, "slow", &off)
        .await
        .unwrap();
    // The prediction would sit 30 s in `starting`; disabling ends it at once (the wait
    // below is a generous bound on a condition, not a timing assertion).
    let canceled = |e: &Emulator| {
        e.predictions()
            .iter()
            .any(|p| p.status == PredictionStatus::Canceled)
    };
    assert!(emu.wait_until(Duration::from_secs(20), canceled).await);
    assert_eq!(
        client.get_prediction(&created.id).await.unwrap().status,
        PredictionStatus::Canceled
    );
}

#[tokio::test]
async fn webhook_urls_must_be_https_or_loopback() {
    let (_emu, client) = setup().await;
    let remote = PredictionRequest {
        input: serde_json::json!({}),
        webhook: Some("http://example.com/hook".into()),
        webhook_events_filter: None,
    };
    let err = client
        .create_deployment_prediction(DEMO_USERNAME, "app", &remote, None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(err.detail().unwrap().contains("https"));
}

#[tokio::test]
async fn control_endpoints_set_faults_and_report_counters_and_state() {
    let (emu, _client) = setup().await;
    let http = reqwest::Client::new();
    let control = format!("http://{}/_emulator", emu.addr());
    let faults = serde_json::json!({"rules": [{"method": "GET", "route": "/v1/hardware",
        "action": {"kind": "status", "status": 503}, "count": 1}]});
    let put = http
        .put(format!("{control}/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let hardware = format!("{}/hardware", emu.base_url());
    let token = emu.demo_token();
    let first = http
        .get(&hardware)
        .bearer_auth(token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 503);
    assert_eq!(first.headers()["content-type"], "application/problem+json");
    assert_eq!(
        http.get(&hardware)
            .bearer_auth(token.expose())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let counters: Value = http
        .get(format!("{control}/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = counters.as_array().unwrap();
    let hardware_rows: Vec<_> = rows
        .iter()
        .filter(|r| r["route"] == "/v1/hardware")
        .collect();
    assert_eq!(hardware_rows.len(), 2, "{counters}");
    let state: Value = http
        .get(format!("{control}/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["deployments"][0]["name"], "app");
    assert!(
        !state.to_string().contains("whsec_"),
        "the dump carries no secrets"
    );
    assert!(
        !state.to_string().contains(token.expose()),
        "the dump carries no tokens"
    );
}
