//! The emulator's HTTP surface: `/v1` routes, the fault/auth/rate-limit middleware, and the
//! loopback-only `/_emulator` control routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::RngExt;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::faults::{FaultAction, Faults};
use super::world::{ApiProblem, Bucket, RateInfo};
use super::{AccountDump, DeploymentDump, JournalEntry, NO_ANSWER, Shared, StateDump, lifecycle};

/// The caller's account, set by the middleware for handlers.
#[derive(Clone)]
struct Caller(String);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/v1/account", get(account))
        .route(
            "/v1/deployments",
            get(list_deployments).post(create_deployment),
        )
        .route(
            "/v1/deployments/{owner}/{name}",
            get(get_deployment)
                .patch(update_deployment)
                .delete(delete_deployment),
        )
        .route(
            "/v1/deployments/{owner}/{name}/predictions",
            axum::routing::post(create_prediction),
        )
        .route("/v1/hardware", get(hardware))
        .route(
            "/v1/models/{owner}/{model}/versions/{id}",
            get(model_version),
        )
        .route("/v1/predictions/{id}", get(get_prediction))
        .route("/v1/webhooks/default/secret", get(webhook_secret))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            api_middleware,
        ));
    let control = Router::new()
        .route("/_emulator/state", get(state))
        .route("/_emulator/counters", get(counters).delete(reset_counters))
        .route(
            "/_emulator/faults",
            get(get_faults).put(put_faults).delete(clear_faults),
        )
        .route_layer(middleware::from_fn(loopback_only));
    api.merge(control)
        .fallback(|| async { problem(ApiProblem::not_found()) })
        .with_state(shared)
}

/// Unwinds out of the connection's task so the socket closes without an answer. Used for the
/// "dropped connection" and "lost response" faults; `resume_unwind` skips the panic hook, so
/// nothing is printed, and tokio contains the unwind to this one connection.
fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("emulator fault: connection dropped"))
}

async fn api_middleware(
    State(shared): State<Arc<Shared>>,
    matched: MatchedPath,
    mut request: Request,
    next: Next,
) -> Response {
    let route = matched.as_str().to_owned();
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    tracing::debug!(%method, %route, %path, "emulator request");
    // Keep a copy of JSON bodies for the journal (they are small; the limit guards the rest).
    let mut body_json = None;
    if matches!(
        request.method(),
        &axum::http::Method::POST | &axum::http::Method::PATCH
    ) {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        body_json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        request = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    let arrived = std::time::Instant::now();
    let verdict = shared
        .faults()
        .decide(&method, &route, || rand::rng().random::<f64>());
    if verdict.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(verdict.delay_ms)).await;
    }
    let record = |status: u16| {
        shared.counters().record(&route, &method, status);
        shared.journal().push(JournalEntry {
            at: arrived,
            method: method.clone(),
            route: route.clone(),
            path: path.clone(),
            status,
            body: body_json.clone(),
        });
    };
    match verdict.action {
        Some(FaultAction::Drop) => {
            record(NO_ANSWER);
            drop_connection();
        }
        Some(FaultAction::Status { status }) => {
            record(status);
            let title = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            return problem(ApiProblem::new(
                status,
                title,
                format!("Injected fault: HTTP {status}"),
            ));
        }
        Some(FaultAction::Throttle { retry_after_secs }) => {
            record(429);
            let info = RateInfo {
                limit: 0,
                remaining: 0,
                reset_secs: retry_after_secs,
            };
            return throttled(info, retry_after_secs);
        }
        _ => {}
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let username = match shared.world().authenticate(authorization) {
        Ok(username) => username,
        Err(p) => {
            record(p.status);
            return problem(p);
        }
    };
    let bucket = if method == "POST" && route.ends_with("/predictions") {
        Bucket::Predictions
    } else {
        Bucket::General
    };
    let budget = shared
        .world()
        .take_budget(&username, bucket, Instant::now());
    let info = match budget {
        Ok(info) => info,
        Err(info) => {
            record(429);
            return throttled(info, info.reset_secs);
        }
    };
    request.extensions_mut().insert(Caller(username));
    let mut response = next.run(request).await;
    if verdict.action == Some(FaultAction::LoseResponse) && response.status().is_success() {
        record(NO_ANSWER);
        drop_connection();
    }
    record(response.status().as_u16());
    rate_headers(response.headers_mut(), info);
    response
}

fn rate_headers(headers: &mut HeaderMap, info: RateInfo) {
    headers.insert("ratelimit-limit", HeaderValue::from(info.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(info.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(info.reset_secs));
}

fn throttled(info: RateInfo, retry_after_secs: u64) -> Response {
    let detail = format!(
        "Request was throttled. Your rate limit resets in ~{}s.",
        info.reset_secs
    );
    let body = serde_json::json!({"detail": detail, "status": 429});
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        problem_headers(),
        body.to_string(),
    )
        .into_response();
    rate_headers(response.headers_mut(), info);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

fn problem_headers() -> [(header::HeaderName, &'static str); 1] {
    [(header::CONTENT_TYPE, "application/problem+json")]
}

pub(crate) fn problem(p: ApiProblem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({"title": p.title, "detail": p.detail, "status": p.status});
    (status, problem_headers(), body.to_string()).into_response()
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_string(value).expect("emulator objects serialise");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn answer<T: Serialize>(result: Result<T, ApiProblem>) -> Response {
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err(p) => problem(p),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiProblem> {
    if body.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiProblem::bad_request(format!("The body is not valid JSON: {e}")))
}

async fn account(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
) -> Response {
    let world = shared.world();
    answer(
        world
            .account(&user)
            .map(|a| a.account.clone())
            .ok_or_else(ApiProblem::unauthenticated),
    )
}

#[derive(serde::Deserialize)]
struct ListQuery {
    cursor: Option<String>,
}

async fn list_deployments(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
    Query(query): Query<ListQuery>,
) -> Response {
    let list_url = format!("{}/deployments", shared.api_base());
    answer(
        shared
            .world()
            .list_deployments(&user, query.cursor.as_deref(), &list_url),
    )
}

async fn create_deployment(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
    body: Bytes,
) -> Response {
    let result = parse_body(&body).and_then(|v| {
        shared
            .world()
            .create_deployment_json(&user, &v, Instant::now())
    });
    answer(result)
}

async fn get_deployment(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    answer(shared.world().get_deployment(&user, &owner, &name))
}

async fn update_deployment(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let result = parse_body(&body).and_then(|v| {
        shared
            .world()
            .update_deployment_json(&user, &owner, &name, &v, Instant::now())
    });
    // Disabling may have asked in-flight predictions to stop.
    shared.changed();
    answer(result)
}

async fn delete_deployment(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    match shared
        .world()
        .delete_deployment(&user, &owner, &name, Instant::now())
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => problem(p),
    }
}

async fn hardware(State(shared): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &shared.world().hardware)
}

async fn model_version(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
    Path((owner, model, id)): Path<(String, String, String)>,
) -> Response {
    answer(shared.world().model_version(&user, &owner, &model, &id))
}

async fn webhook_secret(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
) -> Response {
    match shared.world().current_secret(&user) {
        Some(key) => json(StatusCode::OK, &serde_json::json!({"key": key.to_secret()})),
        None => problem(ApiProblem::not_found()),
    }
}

async fn get_prediction(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    answer(shared.world().get_prediction(&user, &id))
}

/// `Prefer: wait` (60 s) or `Prefer: wait=N` (1–60).
fn parse_prefer(headers: &HeaderMap) -> Result<Option<u64>, ApiProblem> {
    let Some(value) = headers.get("prefer") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "wait" {
        return Ok(Some(60));
    }
    match text
        .strip_prefix("wait=")
        .and_then(|n| n.parse::<u64>().ok())
    {
        Some(n @ 1..=60) => Ok(Some(n)),
        _ => Err(ApiProblem::bad_request(format!(
            "Invalid Prefer header {text:?}: expected wait or wait=N with N from 1 to 60"
        ))),
    }
}

async fn create_prediction(
    State(shared): State<Arc<Shared>>,
    axum::Extension(Caller(user)): axum::Extension<Caller>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let wait = match parse_prefer(&headers) {
        Ok(wait) => wait,
        Err(p) => return problem(p),
    };
    let api_base = shared.api_base();
    let allow_http = shared.config.webhooks.allow_http_anywhere;
    let created = parse_body(&body).and_then(|v| {
        shared
            .world()
            .create_prediction_json(&user, &owner, &name, &v, &api_base, allow_http)
    });
    let prediction = match created {
        Ok(p) => p,
        Err(p) => return problem(p),
    };
    let id = prediction.id.clone();
    let location = prediction.urls.get.clone();
    tokio::spawn(lifecycle::run(shared.clone(), id.clone()));
    let mut prediction = prediction;
    if let Some(secs) = wait {
        let mut changes = shared.changes.subscribe();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            changes.mark_unchanged();
            prediction = shared
                .world()
                .get_prediction(&user, &id)
                .unwrap_or(prediction);
            if prediction.status.is_terminal() {
                break;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                prediction = shared
                    .world()
                    .get_prediction(&user, &id)
                    .unwrap_or(prediction);
                break;
            }
        }
    }
    let mut response = json(StatusCode::CREATED, &prediction);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if let Some(secs) = wait {
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_str(&format!("wait={secs}")).unwrap(),
        );
    }
    response
}

async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if peer.ip().is_loopback() {
        next.run(request).await
    } else {
        problem(ApiProblem::new(
            403,
            "Forbidden",
            "The emulator control API only answers loopback callers",
        ))
    }
}

pub(crate) fn state_dump(shared: &Shared) -> StateDump {
    let faults = shared.faults().clone();
    let world = shared.world();
    let now = Instant::now();
    StateDump {
        accounts: world
            .accounts
            .values()
            .map(|a| AccountDump {
                username: a.account.username.clone(),
                kind: a.account.kind.to_string(),
                caps: a.caps,
                rate_limit: a.rate_limit,
            })
            .collect(),
        deployments: world
            .deployments
            .values()
            .map(|d| DeploymentDump {
                deployment: d.deployment.clone(),
                offline_for_ms: d
                    .offline_since
                    .map(|s| now.saturating_duration_since(s).as_millis() as u64),
            })
            .collect(),
        predictions: world
            .prediction_order
            .iter()
            .filter_map(|id| world.predictions.get(id))
            .map(|p| p.prediction.clone())
            .collect(),
        webhook_deliveries: world.deliveries.clone(),
        faults,
    }
}

async fn state(State(shared): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &state_dump(&shared))
}

async fn counters(State(shared): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &shared.counters().rows())
}

async fn reset_counters(State(shared): State<Arc<Shared>>) -> Response {
    *shared.counters() = Default::default();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &*shared.faults())
}

async fn put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            *shared.faults() = faults;
            json(StatusCode::OK, &*shared.faults())
        }
        Err(e) => problem(ApiProblem::bad_request(format!("Invalid faults: {e}"))),
    }
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.faults().rules.clear();
    StatusCode::NO_CONTENT.into_response()
}
