//! The controller against a real kube-apiserver and the Replicate emulator: the life of one
//! resource from apply to delete.

mod common;

use common::{ControlPlane, start_emulator, test_settings};
use replicate_operator::emulator::config::versions;

const DEPLOYMENTS: &str = "/v1/deployments";
const DEPLOYMENT: &str = "/v1/deployments/{owner}/{name}";

fn manifest(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: replicate-operator.dev/v1alpha1
kind: ReplicateDeployment
metadata:
  name: {name}
spec:
  model: replicate/hello-world
  version: {version}
  hardware: cpu
  minInstances: 0
  maxInstances: 1
{extra}"#,
        version = versions::HELLO_WORLD_V1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_and_delete_one_deployment() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let controller = cp.start_controller(&emu, test_settings());
    let calls = |emu: &replicate_operator::emulator::Emulator| -> Vec<String> {
        emu.journal()
            .iter()
            .map(|e| format!("{} {} {}", e.method, e.route, e.status))
            .collect()
    };

    let writes = cp.record_writes("hello").await;
    cp.apply(&manifest("hello", "")).ok();
    cp.wait_for("hello", "condition=Ready", 60).ok();
    cp.wait_event("hello", "Created").await;
    // API-server writes on create: kubectl's create, then the finalizer, the claim annotation and
    // one status write (a restarted watch can only make the count lower, never higher).
    let created = writes.count();
    assert!(
        (2..=4).contains(&created),
        "{created} writes to the resource on create"
    );
    assert_eq!(cp.event_reasons("hello").await, ["Created"]);
    // Create: who the account is, whether the deployment exists, the create. One status write.
    assert_eq!(
        calls(&emu),
        [
            "GET /v1/account 200",
            "GET /v1/deployments/{owner}/{name} 404",
            "POST /v1/deployments 200"
        ]
    );
    assert_eq!(controller.metrics.status_write_count(), 1);
    let live = emu
        .deployment("demo", "hello")
        .expect("the deployment exists on Replicate");
    let release = live.current_release.as_ref().unwrap();
    assert_eq!(release.model.as_deref(), Some("replicate/hello-world"));
    assert_eq!(release.version.as_deref(), Some(versions::HELLO_WORLD_V1));
    let counters = emu.counters();
    assert_eq!(
        counters.count("POST", DEPLOYMENTS),
        1,
        "{:?}",
        counters.rows()
    );
    assert_eq!(counters.count("PATCH", DEPLOYMENT), 0);

    // The status tells what Replicate has.
    let out = cp
        .run_kubectl(&["get", "rdep", "hello", "-o", "jsonpath={.status.deployment.owner}/{.status.deployment.name}/{.status.deployment.releaseNumber}/{.status.observedGeneration}"], None)
        .ok();
    assert_eq!(out.stdout, "demo/hello/1/1");

    // Change all four mutable fields at once: one PATCH.
    emu.reset_counters();
    cp.apply(
        &manifest("hello", "")
            .replace(versions::HELLO_WORLD_V1, versions::HELLO_WORLD_V2)
            .replace("hardware: cpu", "hardware: gpu-t4")
            .replace("minInstances: 0", "minInstances: 1")
            .replace("maxInstances: 1", "maxInstances: 3"),
    )
    .ok();
    cp.wait_for("hello", "jsonpath={.status.observedGeneration}=2", 60)
        .ok();
    cp.wait_for("hello", "condition=Ready", 60).ok();
    let counters = emu.counters();
    assert_eq!(
        counters.count("PATCH", DEPLOYMENT),
        1,
        "{:?}",
        counters.rows()
    );
    assert_eq!(counters.count("POST", DEPLOYMENTS), 0);
    assert_eq!(
        calls(&emu),
        [
            "GET /v1/deployments/{owner}/{name} 200",
            "PATCH /v1/deployments/{owner}/{name} 200"
        ]
    );
    // The PATCH carries exactly the four changed fields.
    let patch = emu
        .journal()
        .into_iter()
        .find(|e| e.method == "PATCH")
        .unwrap()
        .body
        .unwrap();
    let mut fields: Vec<&String> = patch.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        ["hardware", "max_instances", "min_instances", "version"]
    );
    assert_eq!(
        controller.metrics.status_write_count(),
        2,
        "one more status write"
    );
    cp.wait_event("hello", "Updated").await;
    let updated = writes.count() - created;
    assert!(
        updated <= 2,
        "{updated} writes on update: kubectl's and one status write"
    );
    let config = emu
        .deployment("demo", "hello")
        .unwrap()
        .current_release
        .unwrap();
    assert_eq!(config.number, Some(2));
    assert_eq!(config.version.as_deref(), Some(versions::HELLO_WORLD_V2));
    let c = config.configuration.unwrap();
    assert_eq!(
        (c.hardware.as_deref(), c.min_instances, c.max_instances),
        (Some("gpu-t4"), Some(1), Some(3))
    );

    // Delete: taken offline, then deleted once Replicate allows it; then the resource is gone.
    emu.reset_counters();
    cp.run_kubectl(&["delete", "rdep", "hello", "--wait=false"], None)
        .ok();
    cp.run_kubectl(
        &["wait", "--for=delete", "rdep/hello", "--timeout=60s"],
        None,
    )
    .ok();
    assert!(
        emu.deployment("demo", "hello").is_none(),
        "the deployment is deleted on Replicate"
    );
    let counters = emu.counters();
    assert_eq!(
        counters.count("PATCH", DEPLOYMENT),
        1,
        "one PATCH to 0/0: {:?}",
        counters.rows()
    );
    assert!(
        counters.count_status("DELETE", DEPLOYMENT, 204) == 1,
        "{:?}",
        counters.rows()
    );
    let patch = emu
        .journal()
        .into_iter()
        .find(|e| e.method == "PATCH")
        .unwrap()
        .body
        .unwrap();
    assert_eq!(
        patch,
        serde_json::json!({"min_instances": 0, "max_instances": 0})
    );
    // Deletion: kubectl's (deletionTimestamp), one status write (waiting for offline), the
    // finalizer's removal, and the removal itself.
    let deleted = writes.count() - created - updated;
    assert!(deleted <= 4, "{deleted} writes on delete");
    let mut reasons = cp.event_reasons("hello").await;
    reasons.sort();
    assert_eq!(reasons, ["Created", "Deleted", "Deleting", "Updated"]);
    println!(
        "resource writes (incl. kubectl's): create {created}, update {updated}, delete {deleted}; \
         delete calls: {:?}; status writes in all: {}",
        calls(&emu),
        controller.metrics.status_write_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_sends_only_the_changed_field() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let _controller = cp.start_controller(&emu, test_settings());
    cp.apply(&manifest("one-field", "")).ok();
    cp.wait_for("one-field", "condition=Ready", 60).ok();
    emu.reset_counters();
    cp.apply(&manifest("one-field", "").replace("maxInstances: 1", "maxInstances: 2"))
        .ok();
    cp.wait_for(
        "one-field",
        "jsonpath={.status.deployment.maxInstances}=2",
        60,
    )
    .ok();
    let patches: Vec<_> = emu
        .journal()
        .into_iter()
        .filter(|e| e.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].body,
        Some(serde_json::json!({"max_instances": 2}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_policy_leaves_the_deployment_on_replicate() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let _controller = cp.start_controller(&emu, test_settings());

    cp.apply(&manifest("keep", "  deletionPolicy: Orphan\n"))
        .ok();
    cp.wait_for("keep", "condition=Ready", 60).ok();
    emu.reset_counters();
    cp.run_kubectl(&["delete", "rdep", "keep", "--timeout=60s"], None)
        .ok();
    let live = emu.deployment("demo", "keep").expect("still on Replicate");
    assert_eq!(
        live.current_release
            .unwrap()
            .configuration
            .unwrap()
            .max_instances,
        Some(1),
        "untouched"
    );
    let counters = emu.counters();
    assert_eq!(
        counters.count("PATCH", DEPLOYMENT) + counters.count("DELETE", DEPLOYMENT),
        0,
        "{:?}",
        counters.rows()
    );
}
