//! The CRD against a real kube-apiserver, driven by real kubectl: installation, samples,
//! admission rules with their messages, immutability, `kubectl explain` and printer columns.

mod common;

use common::ControlPlane;
use std::time::Duration;

use serde_json::{Value, json};

const VERSION: &str = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa";

fn manifest(name: &str, spec: Value) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "replicate-operator.dev/v1alpha1",
        "kind": "ReplicateDeployment",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap()
}

fn valid_spec() -> Value {
    json!({
        "model": "replicate/hello-world",
        "version": VERSION,
        "hardware": "cpu",
        "minInstances": 0,
        "maxInstances": 1,
    })
}

/// `spec` with `field` set to `value` (`Value::Null` removes it). Dotted paths reach into objects.
fn with(field: &str, value: Value) -> Value {
    let mut spec = valid_spec();
    let mut target = &mut spec;
    let parts: Vec<&str> = field.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        target = target
            .as_object_mut()
            .unwrap()
            .entry(*part)
            .or_insert(json!({}));
    }
    let last = parts[parts.len() - 1];
    if value.is_null() {
        target.as_object_mut().unwrap().remove(last);
    } else {
        target[last] = value;
    }
    spec
}

#[tokio::test]
async fn generated_crd_installs_with_kubectl_and_becomes_established() {
    let cp = ControlPlane::start_without_crd().await;
    let crd_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/replicatedeployments.yaml"
    );
    cp.run_kubectl(&["apply", "-f", crd_file], None).ok();
    cp.run_kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "crd/replicatedeployments.replicate-operator.dev",
            "--timeout=60s",
        ],
        None,
    )
    .ok();
    // The short name and the category resolve once the CRD is served.
    let out = cp.run_kubectl(&["get", "rdep"], None).ok();
    assert!(out.stderr.contains("No resources found"), "{out:?}");
    let out = cp.run_kubectl(&["get", "replicate"], None).ok();
    assert!(out.stderr.contains("No resources found"), "{out:?}");
}

#[tokio::test]
async fn every_sample_manifest_applies() {
    let cp = ControlPlane::start().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/samples");
    let mut applied = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml")
            && path.file_name().unwrap() != "kustomization.yaml"
        {
            cp.run_kubectl(&["apply", "-f", path.to_str().unwrap()], None)
                .ok();
            applied += 1;
        }
    }
    assert!(
        applied >= 3,
        "expected at least three samples, applied {applied}"
    );
    let out = cp
        .run_kubectl(&["get", "replicatedeployments", "-o", "name"], None)
        .ok();
    assert_eq!(out.stdout.lines().count(), applied, "{}", out.stdout);
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_a_message_a_person_understands() {
    let cp = ControlPlane::start().await;
    // (what is wrong, spec, text the refusal must contain)
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "model without owner",
            with("model", json!("hello-world")),
            "model must be written owner/name",
        ),
        (
            "model with two slashes",
            with("model", json!("a/b/c")),
            "model must be written owner/name",
        ),
        (
            "model with a space",
            with("model", json!("acme/my model")),
            "model must be written owner/name",
        ),
        (
            "model missing",
            with("model", Value::Null),
            "spec.model: Required value",
        ),
        (
            "version too short",
            with("version", json!("5c7d5dc6")),
            "version must be the 64-character lowercase hexadecimal ID",
        ),
        (
            "version in uppercase",
            with("version", json!(VERSION.to_uppercase())),
            "version must be the 64-character lowercase hexadecimal ID",
        ),
        (
            "version not hex",
            with("version", json!("z".repeat(64))),
            "version must be the 64-character lowercase hexadecimal ID",
        ),
        (
            "version missing",
            with("version", Value::Null),
            "spec.version: Required value",
        ),
        (
            "hardware with capitals",
            with("hardware", json!("GPU-T4")),
            "hardware must be a Replicate hardware SKU",
        ),
        (
            "hardware with a space",
            with("hardware", json!("gpu t4")),
            "hardware must be a Replicate hardware SKU",
        ),
        (
            "hardware empty",
            with("hardware", json!("")),
            "hardware must be a Replicate hardware SKU",
        ),
        (
            "negative minInstances",
            with("minInstances", json!(-1)),
            "minInstances must be 0 or more",
        ),
        (
            "negative maxInstances",
            with("maxInstances", json!(-2)),
            "maxInstances must be 0 or more",
        ),
        (
            "min above max",
            with("minInstances", json!(3)),
            "minInstances must be less than or equal to maxInstances",
        ),
        (
            "deployment name with capitals",
            with("deploymentName", json!("My-Deployment")),
            "deploymentName must be lowercase letters",
        ),
        (
            "deployment name ending in a dash",
            with("deploymentName", json!("prod-")),
            "deploymentName must be lowercase letters",
        ),
        (
            "deployment name too long",
            with("deploymentName", json!("a".repeat(101))),
            "spec.deploymentName: Too long",
        ),
        (
            "secret name invalid",
            with("credentialsSecretRef.name", json!("Not_A_Secret")),
            "credentialsSecretRef.name must be a valid Secret name",
        ),
        (
            "secret key invalid",
            with(
                "credentialsSecretRef",
                json!({"name": "creds", "key": "a key"}),
            ),
            "credentialsSecretRef.key must be a valid Secret key",
        ),
        (
            "unknown deletion policy",
            with("deletionPolicy", json!("Destroy")),
            "supported values: \"Delete\", \"Orphan\"",
        ),
        (
            "adoptExisting not a boolean",
            with("adoptExisting", json!("yes")),
            "spec.adoptExisting: Invalid value: \"string\"",
        ),
    ];
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (i, (what, spec, expected)) in cases.iter().enumerate() {
        let name = format!("invalid-{i}");
        let out = cp.apply(&manifest(&name, spec.clone()));
        if out.success || !out.stderr.contains(expected) {
            failures.push(format!(
                "{what}: expected refusal containing {expected:?}, got success={} stderr={}",
                out.success,
                out.stderr.trim()
            ));
        }
        // Nothing was stored.
        let get = cp.run_kubectl(&["get", "rdep", &name], None);
        if get.success {
            failures.push(format!("{what}: the invalid resource was stored"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn model_and_deployment_name_are_immutable_but_the_rest_can_change() {
    let cp = ControlPlane::start().await;
    let named = with("deploymentName", json!("prod"));
    cp.apply(&manifest("immutable", named.clone())).ok();
    cp.apply(&manifest("unnamed", valid_spec())).ok();

    let mut changed_model = named.clone();
    changed_model["model"] = json!("replicate/other-model");
    let out = cp.apply(&manifest("immutable", changed_model));
    assert!(
        !out.success && out.stderr.contains("model is immutable"),
        "{out:?}"
    );

    let mut renamed = named.clone();
    renamed["deploymentName"] = json!("staging");
    let out = cp.apply(&manifest("immutable", renamed));
    assert!(
        !out.success && out.stderr.contains("deploymentName is immutable"),
        "{out:?}"
    );

    // `kubectl apply` of a manifest without the field removes it, which would retarget the resource.
    let out = cp.apply(&manifest("immutable", valid_spec()));
    assert!(
        !out.success
            && out
                .stderr
                .contains("deploymentName cannot be added or removed"),
        "{out:?}"
    );

    let out = cp.apply(&manifest(
        "unnamed",
        with("deploymentName", json!("unnamed")),
    ));
    assert!(
        !out.success
            && out
                .stderr
                .contains("deploymentName cannot be added or removed"),
        "{out:?}"
    );

    // Version, hardware and instance bounds are what a deployment update is for.
    let mut updated = named;
    updated["version"] = json!("a".repeat(64));
    updated["hardware"] = json!("gpu-t4");
    updated["minInstances"] = json!(1);
    updated["maxInstances"] = json!(3);
    cp.apply(&manifest("immutable", updated)).ok();
    let out = cp
        .run_kubectl(
            &[
                "get",
                "rdep",
                "immutable",
                "-o",
                "jsonpath={.spec.hardware}/{.spec.maxInstances}/{.spec.model}",
            ],
            None,
        )
        .ok();
    assert_eq!(out.stdout, "gpu-t4/3/replicate/hello-world");
}

#[tokio::test]
async fn kubectl_explain_documents_the_fields_and_get_shows_the_columns() {
    let cp = ControlPlane::start().await;
    // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    let out = common::eventually(
        "the CRD's OpenAPI to be published",
        Duration::from_secs(60),
        || async {
            let out = cp.run_kubectl(&["explain", "replicatedeployment.spec"], None);
            out.success.then_some(out)
        },
    )
    .await;
    for text in [
        "The Replicate model to serve, as `owner/name`",
        "64-character lowercase hexadecimal ID",
        "hardware SKU",
        "deletionPolicy",
        "adoptExisting",
        "credentialsSecretRef",
    ] {
        assert!(
            out.stdout.contains(text),
            "explain lacks {text:?}:\n{}",
            out.stdout
        );
    }
    let out = cp
        .run_kubectl(&["explain", "replicatedeployment.status.conditions"], None)
        .ok();
    assert!(out.stdout.contains("Ready"), "{}", out.stdout);

    cp.apply(&manifest("columns", valid_spec())).ok();
    // The version column shows what the controller observed; write it as the controller would.
    cp.run_kubectl(
        &[
            "patch", "rdep", "columns", "--subresource=status", "--type=merge", "-p",
            &json!({"status": {"deployment": {"owner": "acme", "name": "columns", "shortVersion": &VERSION[..12]},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "message": "ok",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}).to_string(),
        ],
        None,
    )
    .ok();
    let out = cp.run_kubectl(&["get", "rdep", "columns"], None).ok();
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "READY", "MODEL", "VERSION", "HARDWARE", "MIN", "MAX", "AGE"
        ]
    );
    let row: Vec<&str> = out
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..7],
        [
            "columns",
            "True",
            "replicate/hello-world",
            &VERSION[..12],
            "cpu",
            "0",
            "1"
        ]
    );
    let wide = cp
        .run_kubectl(&["get", "rdep", "columns", "-o", "wide"], None)
        .ok();
    assert!(
        wide.stdout.lines().next().unwrap().contains("REASON"),
        "{}",
        wide.stdout
    );
}
