//! Contract tests: every client call and every error class, against the in-process emulator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use replicate_operator::emulator::config::versions;
use replicate_operator::emulator::{
    AccountSeed, DEMO_USERNAME, Emulator, EmulatorConfig, FaultRule, NO_ANSWER, RateLimitSeed,
};
use replicate_operator::replicate::{
    AccountClient, AccountType, ApiError, ApiToken, Budget, ClientConfig, CreateDeployment,
    ErrorClass, PredictionRequest, PredictionStatus, RateLimits, ReplicateClient, RequestOutcome,
    RetryPolicy, UpdateDeployment,
};

const DEPLOYMENTS: &str = "/v1/deployments";
const DEPLOYMENT: &str = "/v1/deployments/{owner}/{name}";
const HARDWARE: &str = "/v1/hardware";

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        max_server_wait: Duration::from_secs(2),
    }
}

fn test_config(emu: &Emulator) -> ClientConfig {
    let mut config = emu.client_config();
    config.retry = fast_retries();
    config.rate_limits = RateLimits {
        general: Budget {
            per_minute: 600_000,
            burst: 1000,
        },
        predictions: Budget {
            per_minute: 600_000,
            burst: 1000,
        },
    };
    config
}

async fn setup() -> (Emulator, AccountClient) {
    let emu = Emulator::start(EmulatorConfig::fast()).await.unwrap();
    let client = ReplicateClient::new(test_config(&emu))
        .unwrap()
        .account(emu.demo_token());
    (emu, client)
}

fn create_request(name: &str) -> CreateDeployment {
    CreateDeployment {
        name: name.into(),
        model: "replicate/hello-world".into(),
        version: versions::HELLO_WORLD_V1.into(),
        hardware: "cpu".into(),
        min_instances: 0,
        max_instances: 1,
    }
}

#[tokio::test]
async fn deployment_crud_round_trip() {
    let (emu, client) = setup().await;
    let created = client
        .create_deployment(&create_request("app"))
        .await
        .unwrap();
    assert_eq!(created.owner, DEMO_USERNAME);
    let release = created.current_release.clone().unwrap();
    assert_eq!(release.number, Some(1));
    assert_eq!(release.created_by.unwrap().kind, AccountType::User);

    assert_eq!(
        client.get_deployment(DEMO_USERNAME, "app").await.unwrap(),
        created
    );

    let update = UpdateDeployment {
        max_instances: Some(3),
        ..Default::default()
    };
    let updated = client
        .update_deployment(DEMO_USERNAME, "app", &update)
        .await
        .unwrap();
    let release2 = updated.current_release.unwrap();
    assert_eq!(release2.number, Some(2));
    assert!(release2.created_at > release.created_at);
    let config = release2.configuration.unwrap();
    assert_eq!(
        (
            config.hardware.as_deref(),
            config.min_instances,
            config.max_instances
        ),
        (Some("cpu"), Some(0), Some(3))
    );

    let version = UpdateDeployment {
        version: Some(versions::HELLO_WORLD_V2.into()),
        ..Default::default()
    };
    let upgraded = client
        .update_deployment(DEMO_USERNAME, "app", &version)
        .await
        .unwrap();
    assert_eq!(
        upgraded.current_release.unwrap().version.as_deref(),
        Some(versions::HELLO_WORLD_V2)
    );

    // Online: refused with a conflict that says why.
    let refused = client
        .delete_deployment(DEMO_USERNAME, "app")
        .await
        .unwrap_err();
    assert_eq!(refused.class(), ErrorClass::Conflict);
    assert!(refused.detail().unwrap().contains("online"), "{refused}");

    let offline = UpdateDeployment {
        min_instances: Some(0),
        max_instances: Some(0),
        ..Default::default()
    };
    client
        .update_deployment(DEMO_USERNAME, "app", &offline)
        .await
        .unwrap();
    client
        .delete_deployment(DEMO_USERNAME, "app")
        .await
        .unwrap();
    assert!(
        client
            .get_deployment(DEMO_USERNAME, "app")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(emu.deployment(DEMO_USERNAME, "app").is_none());
    // Exactly one request per call: nothing was retried.
    assert_eq!(emu.counters().count("POST", DEPLOYMENTS), 1);
    assert_eq!(emu.counters().count("PATCH", DEPLOYMENT), 3);
}

#[tokio::test]
async fn delete_inside_the_offline_window_says_how_long_remains() {
    let config = EmulatorConfig {
        offline_window: Duration::from_secs(900),
        ..EmulatorConfig::fast()
    };
    let emu = Emulator::start(config).await.unwrap();
    let client = ReplicateClient::new(test_config(&emu))
        .unwrap()
        .account(emu.demo_token());
    let mut request = create_request("idle");
    request.max_instances = 0;
    client.create_deployment(&request).await.unwrap();
    let err = client
        .delete_deployment(DEMO_USERNAME, "idle")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert!(err.detail().unwrap().contains("in 14m"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn validation_errors_are_invalid_with_detail() {
    let (emu, client) = setup().await;
    let cases: Vec<(CreateDeployment, &str)> = vec![
        (
            CreateDeployment {
                hardware: "gpu-imaginary".into(),
                ..create_request("a")
            },
            "Unknown hardware",
        ),
        (
            CreateDeployment {
                version: "0".repeat(64),
                ..create_request("a")
            },
            "does not exist",
        ),
        (
            CreateDeployment {
                model: "nobody/nothing".into(),
                ..create_request("a")
            },
            "does not exist",
        ),
        (
            CreateDeployment {
                min_instances: 3,
                max_instances: 2,
                ..create_request("a")
            },
            "greater than",
        ),
        (
            CreateDeployment {
                min_instances: 6,
                max_instances: 6,
                ..create_request("a")
            },
            "at most 5",
        ),
        (
            CreateDeployment {
                max_instances: 21,
                ..create_request("a")
            },
            "at most 20",
        ),
        (
            CreateDeployment {
                name: "bad name!".into(),
                ..create_request("a")
            },
            "Invalid deployment name",
        ),
    ];
    for (request, expected) in cases {
        let err = client.create_deployment(&request).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Invalid, "{err}");
        assert_eq!(err.status(), Some(422));
        assert!(
            err.detail().unwrap().contains(expected),
            "{err} lacks {expected}"
        );
    }
    client
        .create_deployment(&create_request("taken"))
        .await
        .unwrap();
    let dup = client
        .create_deployment(&create_request("taken"))
        .await
        .unwrap_err();
    assert_eq!(dup.class(), ErrorClass::Conflict);
    let bad_patch = UpdateDeployment {
        max_instances: Some(99),
        ..Default::default()
    };
    let err = client
        .update_deployment(DEMO_USERNAME, "taken", &bad_patch)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(emu.counters().with_status(500) == 0);
}

#[tokio::test]
async fn caps_are_configurable_per_account() {
    let emu = Emulator::start(EmulatorConfig::fast()).await.unwrap();
    let mut big = AccountSeed::new("bigco", "r8_bigco");
    big.caps.max_max_instances = 50;
    emu.add_account(&big).unwrap();
    let client = ReplicateClient::new(test_config(&emu))
        .unwrap()
        .account(ApiToken::new("r8_bigco"));
    let request = CreateDeployment {
        max_instances: 40,
        ..create_request("wide")
    };
    assert_eq!(
        client.create_deployment(&request).await.unwrap().owner,
        "bigco"
    );
    // Accounts only see their own deployments.
    let demo = ReplicateClient::new(test_config(&emu))
        .unwrap()
        .account(emu.demo_token());
    assert!(
        demo.get_deployment("bigco", "wide")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(demo.list_deployments().await.unwrap().is_empty());
}

#[tokio::test]
async fn pagination_follows_cursors_across_many_pages() {
    let config = EmulatorConfig {
        page_size: 7,
        ..EmulatorConfig::fast()
    };
    let emu = Emulator::start(config).await.unwrap();
    for i in 0..260 {
        emu.seed_deployment(DEMO_USERNAME, &create_request(&format!("d{i:03}")))
            .unwrap();
    }
    let client = ReplicateClient::new(test_config(&emu))
        .unwrap()
        .account(emu.demo_token());
    let all = client.list_deployments().await.unwrap();
    let names: Vec<String> = all.iter().map(|d| d.name.clone()).collect();
    let expected: Vec<String> = (0..260).rev().map(|i| format!("d{i:03}")).collect();
    assert_eq!(names, expected, "newest first, none missing or repeated");
    assert_eq!(
        emu.counters().count("GET", DEPLOYMENTS),
        260_u64.div_ceil(7)
    );
}

#[tokio::test]
async fn next_links_are_rebased_on_the_configured_base_url() {
    // The emulator advertises a host that does not exist; the client must only lift the cursor.
    let config = EmulatorConfig {
        page_size: 2,
        public_url: Some("http://api.replicate.invalid".into()),
        ..EmulatorConfig::fast()
    };
    let emu = Emulator::start(config).await.unwrap();
    for i in 0..5 {
        emu.seed_deployment(DEMO_USERNAME, &create_request(&format!("d{i}")))
            .unwrap();
    }
    let mut client_config = test_config(&emu);
    client_config.base_url = format!("http://{}/v1", emu.addr()).parse().unwrap();
    let client = ReplicateClient::new(client_config)
        .unwrap()
        .account(emu.demo_token());
    let first = client.list_deployments_page(None).await.unwrap();
    assert!(
        first
            .next
            .as_deref()
            .unwrap()
            .starts_with("http://api.replicate.invalid/v1/deployments?cursor=")
    );
    assert_eq!(client.list_deployments().await.unwrap().len(), 5);
}

#[tokio::test]
async fn hardware_versions_account_and_secret() {
    let (emu, client) = setup().await;
    let hardware = client.list_hardware().await.unwrap();
    let skus: Vec<&str> = hardware.iter().map(|h| h.sku.as_str()).collect();
    for documented in ["cpu", "gpu-t4", "gpu-a40-small", "gpu-a40-large"] {
        assert!(skus.contains(&documented), "{documented} missing");
    }
    let version = client
        .get_model_version("replicate", "hello-world", versions::HELLO_WORLD_V1)
        .await
        .unwrap();
    assert_eq!(version.id, versions::HELLO_WORLD_V1);
    assert!(version.openapi_schema.is_some());
    assert!(
        client
            .get_model_version("replicate", "hello-world", "nope")
            .await
            .unwrap_err()
            .is_not_found()
    );
    let account = client.get_account().await.unwrap();
    assert_eq!(account.username, DEMO_USERNAME);
    let secret = client.default_webhook_secret().await.unwrap();
    assert!(secret.key.starts_with("whsec_"));
    assert_eq!(Some(secret.key), emu.webhook_secret(DEMO_USERNAME));
}

#[tokio::test]
async fn predictions_run_to_the_end_and_can_be_polled() {
    let (emu, client) = setup().await;
    client
        .create_deployment(&create_request("app"))
        .await
        .unwrap();
    let request = PredictionRequest {
        input: serde_json::json!({"text": "Alice"}),
        webhook: None,
        webhook_events_filter: None,
    };
    let started = client
        .create_deployment_prediction(DEMO_USERNAME, "app", &request, None)
        .await
        .unwrap();
    assert_eq!(started.status, PredictionStatus::Starting);
    assert_eq!(started.deployment.as_deref(), Some("demo/app"));
    assert!(
        started
            .urls
            .get
            .ends_with(&format!("/v1/predictions/{}", started.id))
    );
    let id = started.id.clone();
    assert!(
        emu.wait_until(Duration::from_secs(10), |e| e.predictions()[0]
            .status
            .is_terminal())
            .await
    );
    let done = client.get_prediction(&id).await.unwrap();
    assert_eq!(done.status, PredictionStatus::Succeeded);
    assert_eq!(done.output, serde_json::json!({"echo": {"text": "Alice"}}));

    // Sync mode waits for the end; a forced failure is a failed prediction, not an HTTP error.
    let failing = PredictionRequest {
        input: serde_json::json!({"fail": true}),
        webhook: None,
        webhook_events_filter: None,
    };
    let failed = client
        .create_deployment_prediction(DEMO_USERNAME, "app", &failing, Some(30))
        .await
        .unwrap();
    assert_eq!(failed.status, PredictionStatus::Failed);
    assert!(failed.error_message().unwrap().contains("failure"));
    assert!(
        client
            .get_prediction("doesnotexist")
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn predictions_on_offline_deployments_are_refused() {
    let (_emu, client) = setup().await;
    let mut request = create_request("off");
    request.max_instances = 0;
    client.create_deployment(&request).await.unwrap();
    let input = PredictionRequest {
        input: serde_json::json!({}),
        webhook: None,
        webhook_events_filter: None,
    };
    let err = client
        .create_deployment_prediction(DEMO_USERNAME, "off", &input, None)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict);
    assert!(err.detail().unwrap().contains("offline"));
}

#[tokio::test]
async fn unauthenticated_and_forbidden() {
    let emu = Emulator::start(EmulatorConfig::fast()).await.unwrap();
    let client = ReplicateClient::new(test_config(&emu)).unwrap();
    let stranger = client.account(ApiToken::new("r8_wrongtokenvalue"));
    let err = stranger.list_deployments().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unauthenticated);
    assert_eq!(
        err.detail(),
        Some("You did not pass a valid authentication token")
    );
    // No token text anywhere in what a caller could log.
    for shown in [err.to_string(), format!("{err:?}"), format!("{stranger:?}")] {
        assert!(!shown.contains("wrongtokenvalue"), "{shown}");
    }
    emu.faults()
        .push(FaultRule::status(403).on("GET", HARDWARE).times(1));
    let err = client
        .account(emu.demo_token())
        .list_hardware()
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert_eq!(
        emu.counters().count("GET", HARDWARE),
        1,
        "403 is not retried"
    );
}

#[tokio::test]
async fn gets_retry_server_errors_and_dropped_connections() {
    let (emu, client) = setup().await;
    emu.faults()
        .push(FaultRule::status(500).on("GET", HARDWARE).times(2));
    emu.faults()
        .push(FaultRule::drop_connection().on("GET", HARDWARE).times(1));
    assert!(!client.list_hardware().await.unwrap().is_empty());
    let counters = emu.counters();
    assert_eq!(counters.count_status("GET", HARDWARE, 500), 2);
    assert_eq!(counters.count_status("GET", HARDWARE, NO_ANSWER), 1);
    assert_eq!(counters.count_status("GET", HARDWARE, 200), 1);

    // Attempts are bounded: 4 failures in a row end with the server error.
    emu.reset_counters();
    emu.faults()
        .push(FaultRule::status(502).on("GET", HARDWARE).times(10));
    let err = client.list_hardware().await.unwrap_err();
    assert_eq!(
        err,
        ApiError::Server {
            status: 502,
            detail: Some("Injected fault: HTTP 502".into()),
            retry_after: None
        }
    );
    assert_eq!(emu.counters().count("GET", HARDWARE), 4);
}

#[tokio::test]
async fn posts_are_never_retried_and_a_lost_create_is_found_by_name() {
    let (emu, client) = setup().await;
    emu.faults()
        .push(FaultRule::status(503).on("POST", DEPLOYMENTS).times(1));
    let err = client
        .create_deployment(&create_request("a"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Server);
    emu.faults()
        .push(FaultRule::throttle(0).on("POST", DEPLOYMENTS).times(1));
    assert_eq!(
        client
            .create_deployment(&create_request("a"))
            .await
            .unwrap_err()
            .class(),
        ErrorClass::RateLimited
    );
    emu.faults()
        .push(FaultRule::lose_response().on("POST", DEPLOYMENTS).times(1));
    let lost = client
        .create_deployment(&create_request("a"))
        .await
        .unwrap_err();
    assert_eq!(lost.class(), ErrorClass::Transport, "{lost}");
    assert_eq!(
        emu.counters().count("POST", DEPLOYMENTS),
        3,
        "one request per create call"
    );
    // The write happened although the answer never came: the caller finds it by name.
    assert_eq!(
        client
            .get_deployment(DEMO_USERNAME, "a")
            .await
            .unwrap()
            .name,
        "a"
    );
}

#[tokio::test]
async fn patch_and_delete_retry_only_unprocessed_answers() {
    let (emu, client) = setup().await;
    client
        .create_deployment(&create_request("a"))
        .await
        .unwrap();
    let update = UpdateDeployment {
        max_instances: Some(2),
        ..Default::default()
    };
    emu.faults()
        .push(FaultRule::status(503).on("PATCH", DEPLOYMENT).times(1));
    emu.faults()
        .push(FaultRule::status(504).on("PATCH", DEPLOYMENT).times(1));
    let updated = client
        .update_deployment(DEMO_USERNAME, "a", &update)
        .await
        .unwrap();
    assert_eq!(
        updated.current_release.unwrap().number,
        Some(2),
        "one release despite the retries"
    );
    emu.faults()
        .push(FaultRule::status(500).on("PATCH", DEPLOYMENT).times(1));
    assert_eq!(
        client
            .update_deployment(DEMO_USERNAME, "a", &update)
            .await
            .unwrap_err()
            .status(),
        Some(500)
    );
    assert_eq!(emu.counters().count("PATCH", DEPLOYMENT), 4);

    emu.faults()
        .push(FaultRule::throttle(0).on("DELETE", DEPLOYMENT).times(1));
    let err = client
        .delete_deployment(DEMO_USERNAME, "a")
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::Conflict,
        "the throttled DELETE was retried and reached the state check"
    );
    assert_eq!(emu.counters().count("DELETE", DEPLOYMENT), 2);
}

#[tokio::test]
async fn retry_after_is_respected() {
    let (emu, client) = setup().await;
    let seen = Arc::new(Mutex::new(Vec::<RequestOutcome>::new()));
    let sink = seen.clone();
    let mut config = test_config(&emu);
    config.observer = Some(Arc::new(move |o: &RequestOutcome| {
        sink.lock().unwrap().push(o.clone())
    }));
    let observed = ReplicateClient::new(config)
        .unwrap()
        .account(emu.demo_token());
    emu.faults()
        .push(FaultRule::throttle(1).on("GET", HARDWARE).times(1));
    let started = std::time::Instant::now();
    observed.list_hardware().await.unwrap();
    // A lower bound the client must honour, not a speed measurement.
    assert!(started.elapsed() >= Duration::from_secs(1));
    let outcomes = seen.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 2);
    assert_eq!(
        (outcomes[0].status, outcomes[0].error),
        (Some(429), Some(ErrorClass::RateLimited))
    );
    assert_eq!(
        (outcomes[1].status, outcomes[1].attempt, outcomes[1].route),
        (Some(200), 2, "/hardware")
    );
    // A wait longer than the policy allows ends the call with the wait for the caller.
    emu.faults()
        .push(FaultRule::throttle(3600).on("GET", HARDWARE).times(1));
    let err = client.list_hardware().await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
}

#[tokio::test]
async fn the_client_rate_limit_keeps_accounts_under_the_server_budget() {
    let emu = Emulator::start(EmulatorConfig::fast()).await.unwrap();
    let mut limited = AccountSeed::new("limited", "r8_limited");
    // 20 requests per 500 ms window on the server.
    limited.rate_limit = Some(RateLimitSeed {
        general: 20,
        predictions: 5,
        window_ms: 500,
    });
    emu.add_account(&limited).unwrap();
    let mut config = test_config(&emu);
    // Burst 5 + 600/min (5 per 500 ms): at most 10 per window, well under 20.
    config.rate_limits.general = Budget {
        per_minute: 600,
        burst: 5,
    };
    config.retry = RetryPolicy::none();
    let client = ReplicateClient::new(config).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        // Separate handles for the same token share one budget.
        let account = client.account(ApiToken::new("r8_limited"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                account.list_hardware().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(emu.counters().count_status("GET", HARDWARE, 200), 20);
    assert_eq!(emu.counters().with_status(429), 0);
}

#[tokio::test]
async fn server_rate_limit_answers_429_with_headers() {
    let emu = Emulator::start(EmulatorConfig::fast()).await.unwrap();
    let mut limited = AccountSeed::new("tiny", "r8_tiny");
    limited.rate_limit = Some(RateLimitSeed {
        general: 2,
        predictions: 1,
        window_ms: 60_000,
    });
    emu.add_account(&limited).unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/hardware", emu.base_url());
    let mut last = None;
    for _ in 0..3 {
        last = Some(http.get(&url).bearer_auth("r8_tiny").send().await.unwrap());
    }
    let response = last.unwrap();
    assert_eq!(response.status(), 429);
    let headers = response.headers();
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert!(headers.contains_key("retry-after") && headers.contains_key("ratelimit-reset"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("Request was throttled.")
    );
}

#[tokio::test]
async fn timeouts_are_their_own_class() {
    let (emu, _) = setup().await;
    let mut config = test_config(&emu);
    config.request_timeout = Duration::from_millis(100);
    config.retry = RetryPolicy::none();
    let client = ReplicateClient::new(config)
        .unwrap()
        .account(emu.demo_token());
    emu.faults()
        .push(FaultRule::delay(2_000).on("GET", HARDWARE).times(1));
    let err = client.list_hardware().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn unreachable_servers_are_transport_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = ClientConfig::default()
        .with_base_url(&format!("http://{addr}/v1"))
        .unwrap();
    config.retry = RetryPolicy {
        max_attempts: 2,
        ..fast_retries()
    };
    let client = ReplicateClient::new(config)
        .unwrap()
        .account(ApiToken::new("r8_secretvalue"));
    let err = client.get_account().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transport);
    assert!(!format!("{err} {err:?}").contains("secretvalue"));
}

#[tokio::test]
async fn out_of_band_changes_are_visible() {
    let (emu, client) = setup().await;
    client
        .create_deployment(&create_request("drift"))
        .await
        .unwrap();
    let drift = UpdateDeployment {
        hardware: Some("gpu-t4".into()),
        ..Default::default()
    };
    emu.update_deployment_out_of_band(DEMO_USERNAME, "drift", &drift)
        .unwrap();
    let seen = client.get_deployment(DEMO_USERNAME, "drift").await.unwrap();
    assert_eq!(
        seen.configuration().unwrap().hardware.as_deref(),
        Some("gpu-t4")
    );
    emu.delete_deployment_out_of_band(DEMO_USERNAME, "drift")
        .unwrap();
    assert!(
        client
            .get_deployment(DEMO_USERNAME, "drift")
            .await
            .unwrap_err()
            .is_not_found()
    );
}
