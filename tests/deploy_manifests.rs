//! The installation manifests (`deploy/`, a kustomize base): what they render to, the security
//! settings of the Pods, the exact RBAC they grant, and that a real kube-apiserver accepts them,
//! all with the real kubectl (and its built-in kustomize).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ControlPlane, KubectlOutput};
use serde::Deserialize;
use serde_json::{Value, json};

const NAMESPACE: &str = "replicate-operator";
const SERVICE_ACCOUNT: &str = "replicate-operator";
/// How the API server names the operator's ServiceAccount (for `--as` and in `auth whoami`).
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:replicate-operator:replicate-operator";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// `kubectl kustomize <dir>`: runs without a cluster, like `kubectl apply -k` does before sending.
fn kustomize(dir: &str) -> String {
    let out = Command::new(common::assets_dir().join("kubectl"))
        .arg("kustomize")
        .arg(repo_path(dir))
        .output()
        .expect("kubectl runs");
    let out = KubectlOutput::from(out).ok();
    out.stdout
}

/// Every document of a multi-document YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn rendered_base() -> Vec<Value> {
    documents(&kustomize("deploy"))
}

/// The one object of this kind and name in `objects`.
fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}/{name}");
    found[0]
}

fn kind_and_name(o: &Value) -> (String, String) {
    (
        o["kind"].as_str().unwrap().to_string(),
        o["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

/// RBAC rules as a set of (apiGroup, resource, verb) triples, so the comparison does not depend on
/// how rules are grouped or ordered.
fn rule_triples(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut triples = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        for key in ["resourceNames", "nonResourceURLs"] {
            assert!(
                rule.get(key).is_none(),
                "unexpected {key} in {rule}: update the test if this is deliberate"
            );
        }
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    triples.insert((
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                        verb.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    triples
}

fn triples(expected: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    expected
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(move |verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect()
}

#[test]
fn base_renders_with_every_object_and_nothing_else() {
    let objects = rendered_base();
    let actual: BTreeSet<(String, String)> = objects.iter().map(kind_and_name).collect();
    assert_eq!(actual.len(), objects.len(), "duplicate objects: {actual:?}");
    let expected: BTreeSet<(String, String)> = [
        (
            "CustomResourceDefinition",
            "replicatedeployments.replicate-operator.dev",
        ),
        ("Namespace", NAMESPACE),
        ("ServiceAccount", SERVICE_ACCOUNT),
        ("ClusterRole", "replicate-operator"),
        ("ClusterRoleBinding", "replicate-operator"),
        ("Role", "replicate-operator-leader-election"),
        ("RoleBinding", "replicate-operator-leader-election"),
        ("Deployment", "replicate-operator"),
        ("PodDisruptionBudget", "replicate-operator"),
        ("Service", "replicate-operator-webhook"),
        ("Service", "replicate-operator-metrics"),
        ("NetworkPolicy", "replicate-operator"),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    // No Secret (it would overwrite the real token on every apply) and no samples.
    assert_eq!(actual, expected);

    let cluster_scoped = [
        "CustomResourceDefinition",
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    for o in &objects {
        let kind = o["kind"].as_str().unwrap();
        if cluster_scoped.contains(&kind) {
            assert!(o["metadata"].get("namespace").is_none(), "{kind}");
        } else {
            assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{kind}");
        }
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"], "replicate-operator",
            "{kind}"
        );
    }

    // The CRD comes from crds/ unchanged (no copy that could go stale).
    let committed =
        documents(&std::fs::read_to_string(repo_path("crds/replicatedeployments.yaml")).unwrap());
    let mut rendered_crd = find(
        &objects,
        "CustomResourceDefinition",
        "replicatedeployments.replicate-operator.dev",
    )
    .clone();
    // The base's common labels are the only difference.
    rendered_crd["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    assert_eq!(vec![rendered_crd], committed);

    // The image is the documented placeholder until one is published.
    let deployment = find(&objects, "Deployment", "replicate-operator");
    for c in deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
    {
        assert_eq!(
            c["image"],
            "ghcr.io/replicate-operator/replicate-operator:0.1.0"
        );
    }
}

#[test]
fn deployment_runs_both_containers_locked_down() {
    let objects = rendered_base();
    let deployment = find(&objects, "Deployment", "replicate-operator");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the selector matches the Pods");
    }

    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    assert_eq!(pod["automountServiceAccountToken"], true);
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    assert_eq!(pod_security["runAsUser"], 65532);
    assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault");
    assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());
    assert!(
        pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname",
        "replicas are spread over nodes"
    );

    let containers = pod["containers"].as_array().unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["controller", "webhook"]);

    for c in containers {
        let name = c["name"].as_str().unwrap();
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_ne!(sc["privileged"], true, "{name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(sc["capabilities"].get("add").is_none(), "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        // A container-level runAsUser would override the Pod's; only 65532 or nothing is fine.
        assert!(
            sc.get("runAsUser").is_none() || sc["runAsUser"] == 65532,
            "{name}"
        );

        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][resource].is_string(),
                    "{name} has no {kind}.{resource}"
                );
            }
        }

        // Both probes hit the container's own HTTP port (by name).
        let ports: Vec<&str> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name} {probe}");
            assert!(
                ports.contains(&get["port"].as_str().unwrap_or_default()),
                "{name} {probe} uses one of its ports {ports:?}"
            );
        }

        let env = c["env"].as_array().unwrap();
        let token = env
            .iter()
            .find(|e| e["name"] == "REPLICATE_API_TOKEN")
            .unwrap_or_else(|| panic!("{name} gets REPLICATE_API_TOKEN"));
        assert_eq!(
            token["valueFrom"]["secretKeyRef"],
            json!({"name": "replicate-credentials", "key": "token", "optional": true}),
            "{name}"
        );
        for (var, field) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ] {
            let e = env.iter().find(|e| e["name"] == var).unwrap();
            assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"], field, "{name}");
        }
    }

    let args = |i: usize| -> Vec<&str> {
        containers[i]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect()
    };
    assert_eq!(args(0)[0], "controller");
    assert!(args(0).contains(&"--leader-election"));
    assert_eq!(args(1)[0], "webhook");

    // The webhook Service reaches the webhook container's port.
    let service = find(&objects, "Service", "replicate-operator-webhook");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhook");
    assert_eq!(containers[1]["ports"][0]["name"], "webhook");
    assert_eq!(containers[1]["ports"][0]["containerPort"], 8443);
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the webhook Service selects the Pods");
    }
}

#[test]
fn cluster_role_grants_exactly_what_the_operator_uses() {
    let objects = rendered_base();
    let expected = triples(&[
        (
            "replicate-operator.dev",
            "replicatedeployments",
            &["get", "list", "watch", "patch"],
        ),
        (
            "replicate-operator.dev",
            "replicatedeployments/status",
            &["get", "patch"],
        ),
        ("", "secrets", &["get", "list", "watch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
    ]);
    assert_eq!(
        rule_triples(find(&objects, "ClusterRole", "replicate-operator")),
        expected
    );
    // kube-lease-manager reads, creates and patches its Lease; it never PUTs, lists or deletes.
    assert_eq!(
        rule_triples(find(&objects, "Role", "replicate-operator-leader-election")),
        triples(&[("coordination.k8s.io", "leases", &["get", "create", "patch"])])
    );

    let subject =
        json!([{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]);
    for (kind, name, role_kind) in [
        ("ClusterRoleBinding", "replicate-operator", "ClusterRole"),
        ("RoleBinding", "replicate-operator-leader-election", "Role"),
    ] {
        let binding = find(&objects, kind, name);
        assert_eq!(binding["subjects"], subject, "{kind}");
        assert_eq!(binding["roleRef"]["kind"], role_kind, "{kind}");
        assert_eq!(binding["roleRef"]["name"], name, "{kind}");
    }
}

#[test]
fn example_credentials_secret_is_fake_and_outside_the_base() {
    let text =
        std::fs::read_to_string(repo_path("deploy/replicate-credentials.example.yaml")).unwrap();
    let docs = documents(&text);
    assert_eq!(docs.len(), 1);
    let secret = &docs[0];
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "replicate-credentials");
    assert_eq!(secret["metadata"]["namespace"], NAMESPACE);
    let token = secret["stringData"]["token"].as_str().unwrap();
    assert!(token.contains("FAKE"), "{token}");
    assert!(text.contains("kubectl -n replicate-operator create secret generic"));

    let kustomization = std::fs::read_to_string(repo_path("deploy/kustomization.yaml")).unwrap();
    assert!(!kustomization.contains("replicate-credentials.example.yaml"));
}

#[test]
fn samples_kustomization_lists_every_sample() {
    let dir = repo_path("deploy/samples");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    let kustomization: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, files);
    // No namespace of their own: they go where the user applies them.
    assert!(kustomization.get("namespace").is_none());
    let rendered = documents(&kustomize("deploy/samples"));
    assert!(
        rendered
            .iter()
            .filter(|o| o["kind"] == "ReplicateDeployment")
            .count()
            >= 3
    );
}

/// The whole base against a real API server that already has the CRD (as the harness installs
/// it), in dry-run mode: every object passes validation and admission.
#[tokio::test]
async fn base_passes_server_side_dry_run() {
    let cp = ControlPlane::start().await;
    // A dry run creates nothing, so the namespace objects go into must exist already.
    cp.admin(&["create", "namespace", NAMESPACE]).ok();
    let base = repo_path("deploy");
    let out = cp
        .admin(&[
            "apply",
            "-k",
            base.to_str().unwrap(),
            "--server-side",
            "--dry-run=server",
        ])
        .ok();
    assert!(
        out.stdout
            .contains("deployment.apps/replicate-operator serverside-applied (server dry run)"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("Warning"), "{out:?}");
}

/// A real install of the whole base on an empty control plane: the CRD from the base becomes
/// Established, a second apply changes nothing (no perpetual diff for GitOps), the samples apply
/// on top, and the API server's Pod Security admission finds nothing to complain about in the
/// Deployment (and does complain about a weakened copy, so the check can fail).
#[tokio::test]
async fn base_installs_for_real_and_reapplies_cleanly() {
    let cp = ControlPlane::start_without_crd().await;
    let base = repo_path("deploy");
    let base = base.to_str().unwrap();

    let out = cp.admin(&["apply", "-k", base, "--server-side"]).ok();
    assert!(
        !out.stderr.contains("Warning"),
        "no Pod Security (or other) warnings: {out:?}"
    );
    cp.admin(&[
        "wait",
        "--for=condition=Established",
        "crd/replicatedeployments.replicate-operator.dev",
        "--timeout=60s",
    ])
    .ok();

    // Every object of the base exists now.
    for o in rendered_base() {
        let (kind, name) = kind_and_name(&o);
        let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
        let mut args = vec!["get", kind.as_str(), name.as_str(), "-o", "name"];
        if !ns.is_empty() {
            args.extend(["--namespace", ns]);
        }
        cp.admin(&args).ok();
    }

    // Applying again changes nothing: `kubectl diff` exits 0 only when there is no difference.
    let out = cp.admin(&["diff", "-k", base, "--server-side"]);
    assert!(
        out.success,
        "the base differs from what it installed: {out:?}"
    );
    // ...and does notice a difference when there is one.
    cp.admin(&[
        "scale",
        "deployment/replicate-operator",
        "--replicas=3",
        "--namespace",
        NAMESPACE,
    ])
    .ok();
    // (Forced: kubectl now owns .spec.replicas through the scale subresource.)
    let out = cp.admin(&["diff", "-k", base, "--server-side", "--force-conflicts"]);
    assert!(
        !out.success && out.stdout.contains("replicas: 2"),
        "kubectl diff saw the scaled Deployment: {out:?}"
    );

    // The samples work against the CRD the base installed.
    let out = cp
        .run_kubectl(
            &["apply", "-k", repo_path("deploy/samples").to_str().unwrap()],
            None,
        )
        .ok();
    assert!(out.stdout.contains("replicatedeployment"), "{out:?}");
    let out = cp
        .run_kubectl(&["get", "replicatedeployments", "-o", "name"], None)
        .ok();
    assert!(out.stdout.lines().count() >= 3, "{out:?}");

    // The namespace's `warn: restricted` label really checks the Pod template: a copy of the
    // Deployment without the container security settings draws a warning.
    let mut weakened = find(&rendered_base(), "Deployment", "replicate-operator").clone();
    weakened["metadata"]["name"] = json!("weakened");
    for c in weakened["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
    {
        c.as_object_mut().unwrap().remove("securityContext");
    }
    let out = cp
        .run_kubectl(
            &[
                "apply",
                "--namespace",
                NAMESPACE,
                "--dry-run=server",
                "-f",
                "-",
            ],
            Some(&weakened.to_string()),
        )
        .ok();
    assert!(
        out.stderr
            .contains("would violate PodSecurity \"restricted:latest\""),
        "{out:?}"
    );
}

/// What the operator's ServiceAccount may do, asked of the API server's real RBAC authorizer, and
/// a token for it: with it the lead's behavioural RBAC test can run the controller as the
/// ServiceAccount (see `service_account_kubeconfig`).
#[tokio::test]
async fn service_account_can_do_exactly_its_job() {
    let cp = ControlPlane::start_without_crd().await;
    let base = repo_path("deploy");
    cp.admin(&["apply", "-k", base.to_str().unwrap(), "--server-side"])
        .ok();

    let sa = cp.service_account_kubeconfig(NAMESPACE, SERVICE_ACCOUNT);
    let as_sa = |args: &[&str]| common::kubectl_with(&sa, args);

    // The token authenticates as the ServiceAccount.
    let out = as_sa(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])
    .ok();
    assert_eq!(out.stdout, SERVICE_ACCOUNT_USER);

    // (verb, resource, namespace, allowed)
    let cases: &[(&str, &str, &str, bool)] = &[
        (
            "watch",
            "replicatedeployments.replicate-operator.dev",
            "test",
            true,
        ),
        (
            "list",
            "replicatedeployments.replicate-operator.dev",
            "",
            true,
        ),
        (
            "patch",
            "replicatedeployments.replicate-operator.dev",
            "test",
            true,
        ),
        (
            "patch",
            "replicatedeployments.replicate-operator.dev/status",
            "test",
            true,
        ),
        (
            "update",
            "replicatedeployments.replicate-operator.dev",
            "test",
            false,
        ),
        (
            "create",
            "replicatedeployments.replicate-operator.dev",
            "test",
            false,
        ),
        (
            "delete",
            "replicatedeployments.replicate-operator.dev",
            "test",
            false,
        ),
        (
            "update",
            "replicatedeployments.replicate-operator.dev/status",
            "test",
            false,
        ),
        ("get", "secrets", "test", true),
        ("watch", "secrets", "", true),
        ("create", "secrets", "test", false),
        ("update", "secrets", "test", false),
        ("create", "events.events.k8s.io", "test", true),
        ("patch", "events.events.k8s.io", "test", true),
        ("create", "events", "test", false), // core/v1 events: not used
        ("get", "leases.coordination.k8s.io", NAMESPACE, true),
        ("create", "leases.coordination.k8s.io", NAMESPACE, true),
        ("patch", "leases.coordination.k8s.io", NAMESPACE, true),
        ("update", "leases.coordination.k8s.io", NAMESPACE, false),
        ("delete", "leases.coordination.k8s.io", NAMESPACE, false),
        ("create", "leases.coordination.k8s.io", "test", false),
        ("get", "pods", NAMESPACE, false),
        ("create", "deployments.apps", NAMESPACE, false),
    ];
    let mut wrong = Vec::new();
    for &(verb, resource, ns, allowed) in cases {
        // `can-i` reads `type/name`, so a subresource goes into its own flag.
        let mut args = vec!["auth", "can-i", verb];
        match resource.split_once('/') {
            Some((resource, sub)) => args.extend([resource, "--subresource", sub]),
            None => args.push(resource),
        }
        if ns.is_empty() {
            args.push("--all-namespaces");
        } else {
            args.extend(["--namespace", ns]);
        }
        // Impersonation by the admin must give the same answer as the token.
        let mut impersonated = args.clone();
        impersonated.extend(["--as", SERVICE_ACCOUNT_USER]);
        for (how, out) in [
            ("token", as_sa(&args)),
            ("impersonation", cp.admin(&impersonated)),
        ] {
            let answer = out.stdout.trim();
            assert!(answer == "yes" || answer == "no", "{args:?}: {out:?}");
            if (answer == "yes") != allowed {
                wrong.push(format!(
                    "{how}: can-i {verb} {resource} in {ns:?}: {answer}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // And a real call with the token, both allowed and refused.
    as_sa(&["get", "replicatedeployments", "--all-namespaces"]).ok();
    let out = as_sa(&["get", "pods", "--namespace", NAMESPACE]);
    assert!(!out.success && out.stderr.contains("Forbidden"), "{out:?}");
}
