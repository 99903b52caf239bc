//! Secret sources: the cached, rate-limited refetch used for Replicate's per-account secret,
//! and the Replicate API call itself against a local stand-in for the API.

mod webhook_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use replicate_operator::signature::SigningKey;
use replicate_operator::webhook::secrets::{
    ApiToken, CachedSecrets, FixedToken, ReplicateApiLoader, SecretSource, SecretSourceError,
    fetch_default_webhook_secret,
};
use replicate_operator::webhook::store::{ResourceInfo, ResourceKey};
use webhook_common::*;

/// A stand-in for Replicate's `GET /v1/webhooks/default/secret`: answers the current secret to
/// the right bearer token and counts the calls.
#[derive(Clone)]
struct FakeReplicate {
    secret: Arc<Mutex<SigningKey>>,
    calls: Arc<AtomicUsize>,
    base_url: String,
}

const TOKEN: &str = "r8_test_token_do_not_log";

async fn fake_replicate(initial: SigningKey) -> FakeReplicate {
    let secret = Arc::new(Mutex::new(initial));
    let calls = Arc::new(AtomicUsize::new(0));
    let state = (secret.clone(), calls.clone());
    let app = axum::Router::new()
        .route(
            "/v1/webhooks/default/secret",
            get(
                |State((secret, calls)): State<(Arc<Mutex<SigningKey>>, Arc<AtomicUsize>)>,
                 headers: HeaderMap| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some(&format!("Bearer {TOKEN}"))
                    {
                        return Err(StatusCode::UNAUTHORIZED);
                    }
                    Ok(axum::Json(
                        serde_json::json!({ "key": secret.lock().unwrap().to_secret() }),
                    ))
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeReplicate {
        secret,
        calls,
        base_url,
    }
}

fn api_secrets(
    fake: &FakeReplicate,
    min_refetch: Duration,
) -> CachedSecrets<ReplicateApiLoader<FixedToken>> {
    let loader = ReplicateApiLoader {
        replicate: replicate_client(&fake.base_url),
        tokens: FixedToken(ApiToken::new(TOKEN)),
    };
    CachedSecrets::new(loader, min_refetch)
}

/// The shared Replicate client aimed at the stand-in.
fn replicate_client(base_url: &str) -> replicate_operator::replicate::ReplicateClient {
    let config = replicate_operator::replicate::ClientConfig::default()
        .with_base_url(base_url)
        .unwrap();
    replicate_operator::replicate::ReplicateClient::new(config).unwrap()
}

fn resource() -> ResourceInfo {
    ResourceInfo {
        key: ResourceKey::new(NS, NAME),
        credentials: None,
    }
}

#[tokio::test]
async fn the_api_call_sends_the_token_and_never_echoes_it() {
    let fake = fake_replicate(signing_key(7)).await;
    let http = replicate_client(&fake.base_url);
    let key = fetch_default_webhook_secret(&http, &ApiToken::new(TOKEN))
        .await
        .unwrap();
    assert_eq!(key, signing_key(7));
    let refused = fetch_default_webhook_secret(&http, &ApiToken::new("wrong"))
        .await
        .unwrap_err();
    assert_eq!(refused, SecretSourceError::Http { status: 401 });
    assert!(!format!("{refused} {refused:?} {:?}", ApiToken::new(TOKEN)).contains(TOKEN));
}

#[tokio::test]
async fn keys_are_cached_and_refetched_only_when_allowed() {
    let fake = fake_replicate(signing_key(1)).await;
    let cached = api_secrets(&fake, Duration::from_secs(3600));
    for _ in 0..5 {
        assert_eq!(
            &*cached.secrets_for(&resource()).await.unwrap(),
            &[signing_key(1)]
        );
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    // Within the rate limit a failing signature does not refetch.
    assert_eq!(cached.refresh(&resource()).await.unwrap(), None);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);

    let eager = api_secrets(&fake, Duration::ZERO);
    eager.secrets_for(&resource()).await.unwrap();
    // Unchanged on Replicate: a refetch happens but yields nothing new.
    assert_eq!(eager.refresh(&resource()).await.unwrap(), None);
    // Rotated: the new key comes first and the previous one is kept for the overlap.
    *fake.secret.lock().unwrap() = signing_key(2);
    let keys = eager.refresh(&resource()).await.unwrap().expect("new keys");
    assert_eq!(&*keys, &[signing_key(2), signing_key(1)]);
    assert_eq!(
        &*eager.secrets_for(&resource()).await.unwrap(),
        &[signing_key(2), signing_key(1)]
    );
    // Rotated again: the oldest generation is dropped.
    *fake.secret.lock().unwrap() = signing_key(3);
    let keys = eager.refresh(&resource()).await.unwrap().expect("new keys");
    assert_eq!(&*keys, &[signing_key(3), signing_key(2)]);
}

#[tokio::test]
async fn the_server_refetches_a_rotated_secret_once_and_accepts_the_delivery() {
    let fake = fake_replicate(signing_key(1)).await;
    let (server, store) = server(api_secrets(&fake, Duration::ZERO), config());
    let router = server.router();
    let d = Delivery::signed(&signing_key(1), "w1", &prediction("p1", "succeeded", 1), 0);
    assert_eq!(deliver(&router, &d).await, StatusCode::OK);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);

    *fake.secret.lock().unwrap() = signing_key(2);
    let d = Delivery::signed(&signing_key(2), "w2", &prediction("p2", "succeeded", 2), 0);
    assert_eq!(deliver(&router, &d).await, StatusCode::OK);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    // A retry still signed with the previous secret is accepted without another fetch.
    let d = Delivery::signed(&signing_key(1), "w3", &prediction("p3", "succeeded", 3), 0);
    assert_eq!(deliver(&router, &d).await, StatusCode::OK);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        store
            .status(&ResourceKey::new(NS, NAME))
            .unwrap()
            .predictions
            .unwrap()
            .succeeded,
        3
    );
}

#[tokio::test]
async fn forged_deliveries_cannot_make_the_server_hammer_replicate() {
    let fake = fake_replicate(signing_key(1)).await;
    let (server, store) = server(api_secrets(&fake, Duration::from_secs(3600)), config());
    let router = server.router();
    for i in 0..20 {
        let d = Delivery::signed(
            &signing_key(9),
            &format!("w{i}"),
            &prediction("p1", "succeeded", 1),
            0,
        );
        assert_eq!(deliver(&router, &d).await, StatusCode::UNAUTHORIZED);
    }
    // The first fill, then no refetch within the rate limit.
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    assert_eq!(store.writes(), 0);
}

#[tokio::test]
async fn an_unreachable_secret_source_answers_503() {
    let fake = fake_replicate(signing_key(1)).await;
    let loader = ReplicateApiLoader {
        replicate: replicate_client(&fake.base_url),
        tokens: FixedToken(ApiToken::new("revoked")),
    };
    let (server, store) = server(CachedSecrets::new(loader, Duration::ZERO), config());
    let d = Delivery::signed(&signing_key(1), "w1", &prediction("p1", "succeeded", 1), 0);
    assert_eq!(
        deliver(&server.router(), &d).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(store.writes(), 0);
}

#[tokio::test]
async fn a_failing_first_fetch_is_not_retried_within_the_rate_limit() {
    let fake = fake_replicate(signing_key(1)).await;
    let loader = ReplicateApiLoader {
        replicate: replicate_client(&fake.base_url),
        tokens: FixedToken(ApiToken::new("revoked")),
    };
    let (server, _store) = server(
        CachedSecrets::new(loader, Duration::from_secs(3600)),
        config(),
    );
    let router = server.router();
    for i in 0..5 {
        let d = Delivery::signed(
            &signing_key(1),
            &format!("w{i}"),
            &prediction("p1", "succeeded", 1),
            0,
        );
        assert_eq!(deliver(&router, &d).await, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
}
