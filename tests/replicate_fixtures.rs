//! The documented example payloads round-trip through the client types, and the emulator's
//! answers satisfy Replicate's published OpenAPI document (required fields, property types,
//! enums, documented status codes).

use std::path::PathBuf;

use replicate_operator::emulator::config::versions;
use replicate_operator::emulator::{DEMO_TOKEN, DEMO_USERNAME, Emulator, EmulatorConfig};
use replicate_operator::replicate::{
    Account, ApiError, Deployment, Hardware, ModelVersion, Page, Prediction, PredictionStatus,
    WebhookSecret,
    error::{WaitHints, classify},
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/replicate")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn openapi() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/docs/replicate-openapi.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the OpenAPI document must be at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Every non-null leaf of `original` is present, unchanged, in `reserialised`.
fn assert_preserved(original: &Value, reserialised: &Value, path: &str) {
    match original {
        Value::Null => {}
        Value::Object(fields) => {
            for (key, value) in fields {
                let other = reserialised.get(key).unwrap_or(&Value::Null);
                assert_preserved(value, other, &format!("{path}.{key}"));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_preserved(
                    item,
                    reserialised.get(i).unwrap_or(&Value::Null),
                    &format!("{path}[{i}]"),
                );
            }
        }
        leaf => assert_eq!(leaf, reserialised, "{path} changed in the round trip"),
    }
}

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(name: &str) -> T {
    let original = fixture(name);
    let typed: T =
        serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reserialised = serde_json::to_value(&typed).unwrap();
    assert_preserved(&original, &reserialised, name);
    assert_eq!(serde_json::from_value::<T>(reserialised).unwrap(), typed);
    typed
}

#[test]
fn documented_payloads_round_trip() {
    let deployment: Deployment = round_trip("deployment.json");
    assert_eq!(deployment.configuration().unwrap().max_instances, Some(5));
    let page: Page<Deployment> = round_trip("deployments_page.json");
    assert_eq!(page.results.len(), 1);
    let hardware: Vec<Hardware> = round_trip("hardware.json");
    assert_eq!(hardware[1].sku, "gpu-t4");
    let prediction: Prediction = round_trip("prediction.json");
    assert_eq!(prediction.status, PredictionStatus::Succeeded);
    let aborted: Prediction = round_trip("prediction_aborted.json");
    assert!(aborted.status.is_terminal());
    assert_eq!(aborted.version, "hidden");
    let _: Account = round_trip("account.json");
    let _: ModelVersion = round_trip("model_version.json");
    let secret: WebhookSecret = round_trip("webhook_secret.json");
    assert!(secret.key.starts_with("whsec_"));
}

#[test]
fn documented_problems_classify() {
    let now = std::time::SystemTime::now();
    let body = |name: &str| serde_json::to_vec(&fixture(name)).unwrap();
    let unauthenticated = classify(401, &WaitHints::default(), &body("problem_401.json"), now);
    assert_eq!(
        unauthenticated,
        ApiError::Unauthenticated {
            detail: Some("You did not pass a valid authentication token".into())
        }
    );
    let missing = classify(404, &WaitHints::default(), &body("problem_404.json"), now);
    assert_eq!(
        missing.detail(),
        Some("The specified training destination does not exist")
    );
    let throttled = classify(429, &WaitHints::default(), &body("problem_429.json"), now);
    assert!(throttled.detail().unwrap().contains("resets in ~30s"));
}

/// A small validator for the parts of OpenAPI 3 schemas the document uses.
fn check(value: &Value, schema: &Value, doc: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = reference
            .trim_start_matches("#/")
            .split('/')
            .fold(doc, |node, key| &node[key]);
        return check(value, target, doc, path, errors);
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let fits = options.iter().any(|option| {
            let mut scratch = Vec::new();
            check(value, option, doc, path, &mut scratch);
            scratch.is_empty()
        });
        if !fits {
            errors.push(format!("{path}: matches no oneOf option"));
        }
        return;
    }
    if value.is_null() {
        if schema.get("type").is_some() && schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{path}: null but not nullable"));
        }
        return;
    }
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        None => true,
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some(other) => panic!("unhandled schema type {other}"),
    };
    if !type_ok {
        errors.push(format!("{path}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(fields) = value.as_object() {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !fields.contains_key(required.as_str().unwrap()) {
                errors.push(format!("{path}: required field {required} missing"));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, field) in fields {
                if let Some(property) = properties.get(key) {
                    check(field, property, doc, &format!("{path}.{key}"), errors);
                }
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(item, schema, doc, &format!("{path}[{i}]"), errors);
        }
    }
}

/// Checks an answer against the operation's documented responses.
fn conforms(doc: &Value, path: &str, method: &str, status: u16, body: &Value) -> Vec<String> {
    let operation = &doc["paths"][path][method];
    assert!(
        operation.is_object(),
        "{method} {path} is not in the OpenAPI document"
    );
    let response = &operation["responses"][status.to_string()];
    if !response.is_object() {
        return vec![format!(
            "{method} {path}: status {status} is not documented"
        )];
    }
    let mut errors = Vec::new();
    if let Some(schema) = response.pointer("/content/application~1json/schema") {
        check(body, schema, doc, &format!("{method} {path}"), &mut errors);
    }
    errors
}

#[test]
fn fixtures_conform_to_the_openapi_document() {
    let doc = openapi();
    let mut errors = Vec::new();
    errors.extend(conforms(
        &doc,
        "/deployments",
        "get",
        200,
        &fixture("deployments_page.json"),
    ));
    errors.extend(conforms(
        &doc,
        "/deployments/{deployment_owner}/{deployment_name}",
        "get",
        200,
        &fixture("deployment.json"),
    ));
    errors.extend(conforms(
        &doc,
        "/hardware",
        "get",
        200,
        &fixture("hardware.json"),
    ));
    errors.extend(conforms(
        &doc,
        "/predictions/{prediction_id}",
        "get",
        200,
        &fixture("prediction.json"),
    ));
    errors.extend(conforms(
        &doc,
        "/predictions/{prediction_id}",
        "get",
        200,
        &fixture("prediction_aborted.json"),
    ));
    errors.extend(conforms(
        &doc,
        "/account",
        "get",
        200,
        &fixture("account.json"),
    ));
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test]
async fn emulator_answers_conform_to_the_openapi_document() {
    let doc = openapi();
    let emu = Emulator::start(EmulatorConfig {
        page_size: 1,
        ..EmulatorConfig::fast()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let base = emu.base_url();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(DEMO_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (
                status,
                if text.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).unwrap()
                },
            )
        }
    };
    let deployment_path = "/deployments/{deployment_owner}/{deployment_name}";
    let mut errors = Vec::new();
    for name in ["first", "second"] {
        let body = serde_json::json!({"name": name, "model": "replicate/hello-world",
            "version": versions::HELLO_WORLD_V1, "hardware": "cpu", "min_instances": 0, "max_instances": 1});
        let (status, body) = call(reqwest::Method::POST, "/deployments", Some(body)).await;
        errors.extend(conforms(&doc, "/deployments", "post", status, &body));
    }
    let (status, page) = call(reqwest::Method::GET, "/deployments", None).await;
    assert!(
        page["next"].is_string(),
        "two deployments, page size 1: {page}"
    );
    errors.extend(conforms(&doc, "/deployments", "get", status, &page));
    let (status, body) = call(
        reqwest::Method::GET,
        &format!("/deployments/{DEMO_USERNAME}/first"),
        None,
    )
    .await;
    errors.extend(conforms(&doc, deployment_path, "get", status, &body));
    let patch = serde_json::json!({"min_instances": 0, "max_instances": 0});
    let (status, body) = call(
        reqwest::Method::PATCH,
        &format!("/deployments/{DEMO_USERNAME}/second"),
        Some(patch),
    )
    .await;
    errors.extend(conforms(&doc, deployment_path, "patch", status, &body));
    let (status, _) = call(
        reqwest::Method::DELETE,
        &format!("/deployments/{DEMO_USERNAME}/second"),
        None,
    )
    .await;
    errors.extend(conforms(
        &doc,
        deployment_path,
        "delete",
        status,
        &Value::Null,
    ));
    for path in ["/hardware", "/account", "/webhooks/default/secret"] {
        let (status, body) = call(reqwest::Method::GET, path, None).await;
        errors.extend(conforms(&doc, path, "get", status, &body));
    }
    let version_path = format!(
        "/models/replicate/hello-world/versions/{}",
        versions::HELLO_WORLD_V1
    );
    let (status, body) = call(reqwest::Method::GET, &version_path, None).await;
    errors.extend(conforms(
        &doc,
        "/models/{model_owner}/{model_name}/versions/{version_id}",
        "get",
        status,
        &body,
    ));
    let input = serde_json::json!({"input": {"text": "Alice"}});
    let (status, created) = call(
        reqwest::Method::POST,
        &format!("/deployments/{DEMO_USERNAME}/first/predictions"),
        Some(input),
    )
    .await;
    errors.extend(conforms(
        &doc,
        "/deployments/{deployment_owner}/{deployment_name}/predictions",
        "post",
        status,
        &created,
    ));
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        emu.wait_until(std::time::Duration::from_secs(10), |e| e.predictions()[0]
            .status
            .is_terminal())
            .await
    );
    let (status, done) = call(reqwest::Method::GET, &format!("/predictions/{id}"), None).await;
    errors.extend(conforms(
        &doc,
        "/predictions/{prediction_id}",
        "get",
        status,
        &done,
    ));
    assert_eq!(done["status"], "succeeded");
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_conformance_check_catches_violations() {
    let doc = openapi();
    let mut broken = fixture("prediction.json");
    broken.as_object_mut().unwrap().remove("urls");
    broken["status"] = Value::from("successful");
    let errors = conforms(&doc, "/predictions/{prediction_id}", "get", 200, &broken);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        !conforms(
            &doc,
            "/deployments",
            "post",
            201,
            &fixture("deployment.json")
        )
        .is_empty()
    );
}
