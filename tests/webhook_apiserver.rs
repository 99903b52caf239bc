//! The webhook sidecar against a real kube-apiserver, with the emulator delivering signed
//! webhooks for predictions on a deployment the controller manages.

mod common;

use std::time::Duration;

use common::{ControlPlane, eventually, hello_manifest, start_emulator, test_settings};
use replicate_operator::replicate::{
    PredictionRequest, PredictionStatus, ReplicateClient, WebhookEvent,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_reach_the_status_exactly_once_and_rejected_deliveries_change_nothing() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    let sidecar = cp.start_sidecar(&emu).await;
    let settings = replicate_operator::controller::Settings {
        webhook_base_url: Some(sidecar.base_url.clone()),
        ..test_settings()
    };
    let _controller = cp.start_controller(&emu, settings);
    cp.apply(&hello_manifest("hooked", "  maxInstances: 2\n").replace("  maxInstances: 1\n", ""))
        .ok();
    cp.wait_condition("hooked", "Ready", "True", "Available")
        .await;
    let url = eventually("the webhook URL", Duration::from_secs(30), || async {
        cp.get_rd("hooked").await?.status?.webhook_url
    })
    .await;
    assert_eq!(url, format!("{}/webhooks/test/hooked", sidecar.base_url));

    // 12 predictions: some fail, some ask for every event, all run concurrently.
    let account = ReplicateClient::new(emu.client_config())
        .unwrap()
        .account(emu.demo_token());
    let mut ids = Vec::new();
    for i in 0..12 {
        let request = PredictionRequest {
            input: serde_json::json!({ "prompt": format!("p{i}"), "fail": i % 4 == 0 }),
            webhook: Some(url.clone()),
            webhook_events_filter: (i % 3 == 0).then(|| {
                vec![
                    WebhookEvent::Start,
                    WebhookEvent::Output,
                    WebhookEvent::Completed,
                ]
            }),
        };
        ids.push(
            account
                .create_deployment_prediction("demo", "hooked", &request, None)
                .await
                .unwrap()
                .id,
        );
    }
    // Every terminal webhook was answered 2xx (after its effect was persisted).
    let delivered = emu
        .wait_until(Duration::from_secs(60), |emu| {
            let terminal = emu.webhook_deliveries().into_iter().filter(|d| {
                d.status.is_terminal() && d.response_status.is_some_and(|s| (200..300).contains(&s))
            });
            terminal
                .map(|d| d.prediction_id)
                .collect::<std::collections::HashSet<_>>()
                .len()
                == ids.len()
        })
        .await;
    assert!(delivered, "deliveries: {:#?}", emu.webhook_deliveries());

    let record = emu.predictions();
    let count = |s: PredictionStatus| record.iter().filter(|p| p.status == s).count() as i64;
    let status = cp.get_rd("hooked").await.unwrap().status.unwrap();
    let counts = status.predictions.expect("counts");
    assert_eq!(
        (
            counts.succeeded,
            counts.failed,
            counts.canceled,
            counts.aborted
        ),
        (
            count(PredictionStatus::Succeeded),
            count(PredictionStatus::Failed),
            0,
            0
        ),
        "the status matches the emulator's record exactly"
    );
    assert_eq!(counts.succeeded + counts.failed, 12);
    let last = status.last_prediction.expect("last prediction");
    assert!(
        ids.contains(&last.id) && matches!(last.status.as_str(), "succeeded" | "failed"),
        "{last:?}"
    );
    assert!(status.last_webhook_time.is_some());
    // The controller's fields are intact beside the sidecar's (separate field managers).
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // A spec change makes the controller write its status again: the counts survive.
    cp.apply(&hello_manifest("hooked", "  maxInstances: 3\n").replace("  maxInstances: 1\n", ""))
        .ok();
    cp.wait_for("hooked", "jsonpath={.status.observedGeneration}=2", 60)
        .ok();
    let after = cp.get_rd("hooked").await.unwrap().status.unwrap();
    assert_eq!(
        after.predictions,
        Some(counts),
        "the controller never overwrites the sidecar's fields"
    );

    // Rejected deliveries: right status code, and the resource is not written at all.
    let before = cp.get_rd("hooked").await.unwrap().metadata.resource_version;
    let body = serde_json::to_vec(&record[0]).unwrap();
    let secret = emu.webhook_secret("demo").unwrap();
    let key = replicate_operator::signature::SigningKey::from_secret(&secret).unwrap();
    let now = jiff::Timestamp::now().as_second().to_string();
    let signed = key.sign("msg_test", &now, &body);
    let http = reqwest::Client::new();
    let post = |headers: Vec<(&'static str, String)>, body: Vec<u8>, target: String| {
        let mut req = http.post(target).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let good = || {
        vec![
            ("webhook-id", "msg_test".to_string()),
            ("webhook-timestamp", now.clone()),
            ("webhook-signature", signed.clone()),
        ]
    };
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let stale = (jiff::Timestamp::now().as_second() - 3600).to_string();
    // (what, headers, body, target URL, expected status)
    type Case = (
        &'static str,
        Vec<(&'static str, String)>,
        Vec<u8>,
        String,
        u16,
    );
    let cases: Vec<Case> = vec![
        ("tampered body", good(), tampered, url.clone(), 401),
        (
            "wrong secret",
            vec![
                ("webhook-id", "msg_test".into()),
                ("webhook-timestamp", now.clone()),
                (
                    "webhook-signature",
                    replicate_operator::signature::SigningKey::from_bytes(vec![7; 24])
                        .sign("msg_test", &now, &body),
                ),
            ],
            body.clone(),
            url.clone(),
            401,
        ),
        (
            "stale timestamp",
            vec![
                ("webhook-id", "msg_test".into()),
                ("webhook-timestamp", stale.clone()),
                ("webhook-signature", key.sign("msg_test", &stale, &body)),
            ],
            body.clone(),
            url.clone(),
            401,
        ),
        (
            "missing signature",
            good()
                .into_iter()
                .filter(|(k, _)| *k != "webhook-signature")
                .collect(),
            body.clone(),
            url.clone(),
            400,
        ),
        (
            "not JSON",
            vec![
                ("webhook-id", "msg_x".into()),
                ("webhook-timestamp", now.clone()),
                ("webhook-signature", key.sign("msg_x", &now, b"not json")),
            ],
            b"not json".to_vec(),
            url.clone(),
            400,
        ),
        (
            "unknown resource",
            good(),
            body.clone(),
            format!("{}/webhooks/test/nobody", sidecar.base_url),
            404,
        ),
    ];
    for (what, headers, body, target, want) in cases {
        let got = post(headers, body, target).await.unwrap().status().as_u16();
        assert_eq!(got, want, "{what}");
    }
    let after = cp.get_rd("hooked").await.unwrap().metadata.resource_version;
    assert_eq!(after, before, "rejected deliveries wrote nothing");

    // A redelivery of a terminal webhook (same id, fresh timestamp) is accepted and counted once.
    let ok = post(good(), body, url.clone())
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(ok, 200);
    let again = cp
        .get_rd("hooked")
        .await
        .unwrap()
        .status
        .unwrap()
        .predictions
        .unwrap();
    assert_eq!(
        again, counts,
        "a redelivered prediction is not counted twice"
    );
}
