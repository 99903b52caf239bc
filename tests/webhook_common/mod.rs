//! Helpers shared by the webhook HTTP tests: signed requests and a server over a memory store.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use replicate_operator::signature::SigningKey;
use replicate_operator::webhook::commit::CommitConfig;
use replicate_operator::webhook::secrets::SecretSource;
use replicate_operator::webhook::server::{WebhookConfig, WebhookServer};
use replicate_operator::webhook::store::{MemoryStore, ResourceKey};
use tower::ServiceExt;

pub const NS: &str = "apps";
pub const NAME: &str = "sdxl";

pub fn key() -> ResourceKey {
    ResourceKey::new(NS, NAME)
}

pub fn path() -> String {
    format!("/webhooks/{NS}/{NAME}")
}

pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(vec![seed; 24])
}

pub fn config() -> WebhookConfig {
    WebhookConfig {
        max_body_bytes: 64 * 1024,
        persist_timeout: Duration::from_secs(60),
        commit: CommitConfig {
            flush_interval: Duration::from_millis(20),
            ..CommitConfig::default()
        },
        ..WebhookConfig::default()
    }
}

/// A server over a memory store holding the one resource `apps/sdxl`.
pub fn server(
    secrets: impl SecretSource,
    config: WebhookConfig,
) -> (WebhookServer, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    store.insert(key(), None);
    let server = WebhookServer::new(store.clone(), Arc::new(secrets), config);
    (server, store)
}

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A prediction body.
pub fn prediction(id: &str, status: &str, created_secs_after_epoch_2024: i64) -> String {
    let created =
        jiff::Timestamp::from_second(1_704_067_200 + created_secs_after_epoch_2024).unwrap();
    serde_json::json!({
        "id": id, "model": "acme/sdxl", "version": "hidden", "status": status, "input": {},
        "output": null, "error": if status == "failed" { serde_json::json!("out of memory") } else { serde_json::Value::Null },
        "created_at": created.to_string(), "urls": {"get": "https://example.invalid"},
        "metrics": {"predict_time": 1.5},
    })
    .to_string()
}

/// Headers of one delivery; `None` leaves a header out.
pub struct Delivery {
    pub id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub body: Vec<u8>,
    pub content_length: bool,
}

impl Delivery {
    /// Correctly signed by `key` at `now() + offset`.
    pub fn signed(key: &SigningKey, webhook_id: &str, body: &str, offset: i64) -> Self {
        let ts = (now() + offset).to_string();
        let signature = key.sign(webhook_id, &ts, body.as_bytes());
        Self {
            id: Some(webhook_id.into()),
            timestamp: Some(ts),
            signature: Some(signature),
            body: body.as_bytes().to_vec(),
            content_length: true,
        }
    }

    pub fn request(&self, path: &str) -> Request<Body> {
        // Mixed-case names: HTTP header names are case-insensitive.
        let mut r = Request::post(path).header("Content-Type", "application/json");
        if let Some(v) = &self.id {
            r = r.header("Webhook-Id", v);
        }
        if let Some(v) = &self.timestamp {
            r = r.header("webhook-timestamp", v);
        }
        if let Some(v) = &self.signature {
            r = r.header("WEBHOOK-SIGNATURE", v);
        }
        if self.content_length {
            r = r.header("content-length", self.body.len());
        }
        r.body(Body::from(self.body.clone())).unwrap()
    }
}

pub async fn send(router: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

pub async fn deliver(router: &Router, delivery: &Delivery) -> StatusCode {
    send(router, delivery.request(&path())).await.0
}
