//! The controller when things are not as they should be: existing deployments, two resources
//! for one deployment, missing or wrong credentials, specs Replicate refuses, throttling, lost
//! answers, and deletions without usable credentials.

mod common;

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;

use common::{ControlPlane, hello_manifest, start_emulator, test_settings, token_secret};
use replicate_operator::emulator::config::{DEMO_TOKEN, versions};
use replicate_operator::emulator::{FaultAction, FaultRule, NO_ANSWER};
use replicate_operator::replicate::CreateDeployment;

const DEPLOYMENTS: &str = "/v1/deployments";
const DEPLOYMENT: &str = "/v1/deployments/{owner}/{name}";

fn existing(name: &str, hardware: &str) -> CreateDeployment {
    CreateDeployment {
        name: name.into(),
        model: "replicate/hello-world".into(),
        version: versions::HELLO_WORLD_V1.into(),
        hardware: hardware.into(),
        min_instances: 0,
        max_instances: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_deployment_is_adopted_only_with_the_opt_in() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    emu.seed_deployment("demo", &existing("made-elsewhere", "gpu-t4"))
        .unwrap();
    let _controller = cp.start_controller(&emu, test_settings());

    cp.apply(&hello_manifest("made-elsewhere", "")).ok();
    let ready = cp
        .wait_condition("made-elsewhere", "Ready", "False", "AlreadyExists")
        .await;
    assert!(
        ready.message.contains("spec.adoptExisting: true"),
        "{}",
        ready.message
    );
    let counters = emu.counters();
    assert_eq!(
        counters.count("POST", DEPLOYMENTS) + counters.count("PATCH", DEPLOYMENT),
        0,
        "{:?}",
        counters.rows()
    );
    let hw = emu
        .deployment("demo", "made-elsewhere")
        .unwrap()
        .current_release
        .unwrap()
        .configuration
        .unwrap()
        .hardware;
    assert_eq!(
        hw.as_deref(),
        Some("gpu-t4"),
        "not touched without the opt-in"
    );

    cp.apply(&hello_manifest("made-elsewhere", "  adoptExisting: true\n"))
        .ok();
    cp.wait_condition("made-elsewhere", "Ready", "True", "Available")
        .await;
    cp.wait_event("made-elsewhere", "Adopted").await;
    let counters = emu.counters();
    assert_eq!(
        counters.count("POST", DEPLOYMENTS),
        0,
        "adoption never creates: {:?}",
        counters.rows()
    );
    let hw = emu
        .deployment("demo", "made-elsewhere")
        .unwrap()
        .current_release
        .unwrap()
        .configuration
        .unwrap()
        .hardware;
    assert_eq!(
        hw.as_deref(),
        Some("cpu"),
        "adopted and brought to the spec"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resources_for_one_deployment_report_a_conflict() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let _controller = cp.start_controller(&emu, test_settings());

    cp.apply(&hello_manifest("first", "  deploymentName: shared\n"))
        .ok();
    cp.wait_condition("first", "Ready", "True", "Available")
        .await;
    emu.reset_counters();
    cp.apply(
        &hello_manifest("second", "  deploymentName: shared\n")
            .replace("maxInstances: 1", "maxInstances: 4"),
    )
    .ok();
    let cond = cp
        .wait_condition("second", "Ready", "False", "Conflict")
        .await;
    assert!(cond.message.contains("test/first"), "{}", cond.message);
    // The first keeps its deployment as it asked; the second never fights over it.
    let max = emu
        .deployment("demo", "shared")
        .unwrap()
        .current_release
        .unwrap()
        .configuration
        .unwrap()
        .max_instances;
    assert_eq!(max, Some(1));
    let counters = emu.counters();
    assert_eq!(
        counters.count("PATCH", DEPLOYMENT) + counters.count("POST", DEPLOYMENTS),
        0,
        "{:?}",
        counters.rows()
    );
    // Deleting the loser leaves the winner's deployment alone.
    cp.run_kubectl(&["delete", "rdep", "second", "--timeout=60s"], None)
        .ok();
    assert!(emu.deployment("demo", "shared").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_the_referenced_secret_and_its_changes() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let _controller = cp.start_controller(&emu, test_settings());
    let secret_ref = "  credentialsSecretRef:\n    name: team-token\n";

    // No Secret yet.
    cp.apply(&hello_manifest("creds", secret_ref)).ok();
    let cond = cp
        .wait_condition("creds", "Ready", "False", "CredentialsMissing")
        .await;
    assert!(cond.message.contains("test/team-token"), "{}", cond.message);
    assert_eq!(
        emu.counters().total(),
        0,
        "nothing is sent without credentials"
    );

    // A wrong token: Unauthorized, and no hot loop.
    cp.apply(&token_secret("team-token", "r8_not_a_real_token"))
        .ok();
    cp.wait_condition("creds", "Ready", "False", "Unauthorized")
        .await;
    emu.reset_counters();
    tokio::time::sleep(Duration::from_secs(3)).await; // measuring a rate: nothing to await
    let calls = emu.counters().total();
    assert!(
        calls <= 6,
        "backoff must keep a failing resource quiet, saw {calls} calls in 3 s"
    );
    // And one Warning for the problem, not one per retry (a repeat would show as a series).
    let events = Api::<Event>::namespaced(cp.client.clone(), &cp.namespace)
        .list(&Default::default())
        .await
        .unwrap();
    let warnings: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Unauthorized"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].series.is_none(),
        "published once: {:?}",
        warnings[0].series
    );

    // Fixing the Secret is picked up without a restart (the Secret is watched).
    cp.apply(&token_secret("team-token", DEMO_TOKEN)).ok();
    cp.wait_condition("creds", "Ready", "True", "Available")
        .await;
    assert!(emu.deployment("demo", "creds").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_replicate_refuses_is_reported_and_not_retried_hot() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let _controller = cp.start_controller(&emu, test_settings());

    // Valid for the schema, unknown to Replicate.
    cp.apply(&hello_manifest("bad-hw", "").replace("hardware: cpu", "hardware: gpu-z9000"))
        .ok();
    let cond = cp
        .wait_condition("bad-hw", "Ready", "False", "InvalidSpec")
        .await;
    assert!(
        cond.message.contains("gpu-z9000"),
        "Replicate's detail reaches the status: {}",
        cond.message
    );
    cp.wait_event("bad-hw", "InvalidSpec").await;
    let before = emu.counters().count("POST", DEPLOYMENTS);
    tokio::time::sleep(Duration::from_secs(2)).await; // measuring a rate: nothing to await
    assert_eq!(
        emu.counters().count("POST", DEPLOYMENTS),
        before,
        "invalid input waits for a spec change"
    );

    // Over the account's instance cap: Replicate's own words, not a hard-coded limit.
    cp.apply(&hello_manifest("too-big", "").replace("maxInstances: 1", "maxInstances: 500"))
        .ok();
    let cond = cp
        .wait_condition("too-big", "Ready", "False", "InvalidSpec")
        .await;
    assert!(cond.message.contains("max_instances"), "{}", cond.message);

    // Fixing the spec recovers.
    cp.apply(&hello_manifest("bad-hw", "")).ok();
    cp.wait_condition("bad-hw", "Ready", "True", "Available")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_ridden_out_honouring_retry_after() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    for _ in 0..3 {
        let mut rule = FaultRule::throttle(1);
        rule.count = Some(1);
        emu.faults().push(rule);
    }
    let _controller = cp.start_controller(&emu, test_settings());
    cp.apply(&hello_manifest("throttled", "")).ok();
    cp.wait_condition("throttled", "Ready", "True", "Available")
        .await;

    let journal = emu.journal();
    let throttled: Vec<_> = journal
        .iter()
        .enumerate()
        .filter(|(_, e)| e.status == 429)
        .collect();
    assert_eq!(throttled.len(), 3, "{journal:?}");
    for (i, entry) in throttled {
        let next = &journal[i + 1];
        let gap = next.at.duration_since(entry.at);
        assert!(
            gap >= Duration::from_millis(990),
            "request after a 429 came {gap:?} later, before Retry-After: 1"
        );
    }
    assert_eq!(emu.deployments().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_is_lost_creates_exactly_one_deployment() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let mut rule = FaultRule::new(FaultAction::LoseResponse);
    rule.method = Some("POST".into());
    rule.route = Some(DEPLOYMENTS.into());
    rule.count = Some(1);
    emu.faults().push(rule);
    let _controller = cp.start_controller(&emu, test_settings());

    cp.apply(&hello_manifest("lost", "")).ok();
    cp.wait_condition("lost", "Ready", "True", "Available")
        .await;
    let counters = emu.counters();
    assert_eq!(
        counters.count_status("POST", DEPLOYMENTS, NO_ANSWER),
        1,
        "the answer was lost: {:?}",
        counters.rows()
    );
    assert_eq!(
        counters.count("POST", DEPLOYMENTS),
        1,
        "never created twice: {:?}",
        counters.rows()
    );
    assert_eq!(emu.deployments().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_never_hangs_on_broken_credentials() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let _controller = cp.start_controller(&emu, test_settings());
    let secret_ref = "  credentialsSecretRef:\n    name: creds\n";
    cp.apply(&token_secret("creds", DEMO_TOKEN)).ok();

    // The Secret disappears first (as when a namespace is deleted): the last token that worked
    // still cleans up.
    cp.apply(&hello_manifest("secret-gone", secret_ref)).ok();
    cp.wait_condition("secret-gone", "Ready", "True", "Available")
        .await;
    cp.run_kubectl(&["delete", "secret", "creds"], None).ok();
    cp.run_kubectl(&["delete", "rdep", "secret-gone", "--timeout=60s"], None)
        .ok();
    assert!(
        emu.deployment("demo", "secret-gone").is_none(),
        "deleted with the remembered token"
    );

    // The token is revoked: after the grace period the finalizer goes, with a Warning that
    // names the deployment left behind.
    cp.apply(&token_secret("creds", DEMO_TOKEN)).ok();
    cp.apply(&hello_manifest("revoked", secret_ref)).ok();
    cp.wait_condition("revoked", "Ready", "True", "Available")
        .await;
    cp.apply(&token_secret("creds", "r8_revoked")).ok();
    cp.wait_condition("revoked", "Ready", "False", "Unauthorized")
        .await;
    cp.run_kubectl(&["delete", "rdep", "revoked", "--wait=false"], None)
        .ok();
    cp.wait_condition("revoked", "Ready", "False", "CredentialsMissing")
        .await;
    cp.run_kubectl(
        &["wait", "--for=delete", "rdep/revoked", "--timeout=60s"],
        None,
    )
    .ok();
    assert!(
        emu.deployment("demo", "revoked").is_some(),
        "left on Replicate"
    );
    cp.wait_event("revoked", "Orphaned").await;
}
