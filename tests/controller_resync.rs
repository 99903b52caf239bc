//! The controller over time: drift is reverted, out-of-band deletes are recreated, a restart in
//! the middle of a change converges without duplicates, and a steady state costs no writes.

mod common;

use std::time::Duration;

use common::{ControlPlane, eventually, hello_manifest, start_emulator, test_settings};
use replicate_operator::replicate::UpdateDeployment;

const DEPLOYMENTS: &str = "/v1/deployments";
const DEPLOYMENT: &str = "/v1/deployments/{owner}/{name}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reverted_and_an_outside_delete_is_recreated() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let settings = replicate_operator::controller::Settings {
        resync_interval: Duration::from_secs(1),
        ..test_settings()
    };
    let _controller = cp.start_controller(&emu, settings);
    cp.apply(&hello_manifest("drifty", "")).ok();
    cp.wait_condition("drifty", "Ready", "True", "Available")
        .await;

    let edit = UpdateDeployment {
        hardware: Some("gpu-t4".into()),
        max_instances: Some(5),
        ..Default::default()
    };
    emu.update_deployment_out_of_band("demo", "drifty", &edit)
        .unwrap();
    eventually(
        "the edit to be reverted",
        Duration::from_secs(30),
        || async {
            let c = emu
                .deployment("demo", "drifty")?
                .current_release?
                .configuration?;
            (c.hardware.as_deref() == Some("cpu") && c.max_instances == Some(1)).then_some(())
        },
    )
    .await;
    cp.wait_event("drifty", "DriftCorrected").await;

    emu.delete_deployment_out_of_band("demo", "drifty").unwrap();
    eventually(
        "the deployment to be recreated",
        Duration::from_secs(30),
        || async { emu.deployment("demo", "drifty").map(|_| ()) },
    )
    .await;
    cp.wait_event("drifty", "Recreated").await;
    assert_eq!(emu.deployments().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_state_makes_no_writes_and_resyncs_share_one_list() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let settings = replicate_operator::controller::Settings {
        resync_interval: Duration::from_secs(1),
        ..test_settings()
    };
    let controller = cp.start_controller(&emu, settings);
    let names = ["steady-a", "steady-b", "steady-c"];
    for name in names {
        cp.apply(&hello_manifest(name, "")).ok();
    }
    for name in names {
        cp.wait_condition(name, "Ready", "True", "Available").await;
    }
    // Let the first resync after the creates settle (it may record the final release number).
    let settled = controller.metrics.reconcile_count() + names.len() as u64;
    eventually("a first resync", Duration::from_secs(30), || async {
        (controller.metrics.reconcile_count() >= settled).then_some(())
    })
    .await;

    let versions = |rds: Vec<_>| -> Vec<String> {
        rds.into_iter()
            .map(|rd: replicate_operator::crd::ReplicateDeployment| {
                rd.metadata.resource_version.unwrap()
            })
            .collect()
    };
    let mut before = Vec::new();
    for name in names {
        before.push(cp.get_rd(name).await.unwrap());
    }
    let before = versions(before);
    emu.reset_counters();
    let writes = controller.metrics.status_write_count();
    let start = controller.metrics.reconcile_count();

    // Three resync periods of every resource.
    eventually(
        "three resyncs of every resource",
        Duration::from_secs(60),
        || async {
            (controller.metrics.reconcile_count() >= start + 3 * names.len() as u64).then_some(())
        },
    )
    .await;

    let counters = emu.counters();
    let replicate_writes = counters.count("POST", DEPLOYMENTS)
        + counters.count("PATCH", DEPLOYMENT)
        + counters.count("DELETE", DEPLOYMENT);
    assert_eq!(
        replicate_writes,
        0,
        "no writes to Replicate: {:?}",
        counters.rows()
    );
    assert_eq!(
        controller.metrics.status_write_count(),
        writes,
        "no status writes"
    );
    let mut after = Vec::new();
    for name in names {
        after.push(cp.get_rd(name).await.unwrap());
    }
    assert_eq!(
        versions(after),
        before,
        "the resources were not written at all"
    );
    // Resyncs read the account's list, shared by all its resources, not one GET per resource.
    let lists = counters.count("GET", DEPLOYMENTS);
    let gets = counters.count("GET", DEPLOYMENT);
    assert!(lists >= 1, "{:?}", counters.rows());
    assert_eq!(
        gets,
        0,
        "resyncs use the shared list: {:?}",
        counters.rows()
    );
    println!(
        "steady state over {} reconciles: {lists} LIST calls, {gets} GETs, 0 writes",
        controller.metrics.reconcile_count() - start
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_change_converges_without_duplicates() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let first = cp.start_controller(&emu, test_settings());
    cp.apply(&hello_manifest("restarted", "")).ok();
    cp.wait_condition("restarted", "Ready", "True", "Available")
        .await;
    drop(first);

    // Changed while no controller runs, and a second resource created meanwhile.
    cp.apply(&hello_manifest("restarted", "").replace("maxInstances: 1", "maxInstances: 2"))
        .ok();
    cp.apply(&hello_manifest("while-down", "")).ok();

    let _second = cp.start_controller(&emu, test_settings());
    cp.wait_for("restarted", "jsonpath={.status.observedGeneration}=2", 60)
        .ok();
    cp.wait_condition("restarted", "Ready", "True", "Available")
        .await;
    cp.wait_condition("while-down", "Ready", "True", "Available")
        .await;
    let mut names: Vec<String> = emu.deployments().into_iter().map(|d| d.name).collect();
    names.sort();
    assert_eq!(names, ["restarted", "while-down"]);
    let counters = emu.counters();
    assert_eq!(
        counters.count("POST", DEPLOYMENTS),
        2,
        "one create each: {:?}",
        counters.rows()
    );
    let max = emu
        .deployment("demo", "restarted")
        .unwrap()
        .current_release
        .unwrap()
        .configuration
        .unwrap()
        .max_instances;
    assert_eq!(max, Some(2));
}
