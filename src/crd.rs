//! The `ReplicateDeployment` custom resource: its spec, its status and the admission rules the
//! API server enforces on it.
//!
//! The rules live here, next to the fields they guard, as CEL `x-kubernetes-validations` with a
//! message written for the person running `kubectl apply`. The generated CRD (`crds/`) is produced
//! from these types by `replicate-operator crd`; a test fails when the committed copy drifts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every resource this operator defines.
pub const GROUP: &str = "replicate-operator.dev";
/// The only served version so far.
pub const VERSION: &str = "v1alpha1";

/// Desired state of one Replicate deployment.
///
/// A ReplicateDeployment names a dedicated Replicate endpoint for one model version on one
/// hardware SKU, scaled between `minInstances` and `maxInstances`. The operator creates the
/// deployment on Replicate, keeps it in step with this spec and reports what it observes in
/// `status`.
// Each printcolumn repeats `type_`/`priority`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "replicate-operator.dev",
    version = "v1alpha1",
    kind = "ReplicateDeployment",
    plural = "replicatedeployments",
    singular = "replicatedeployment",
    shortname = "rdep",
    category = "replicate",
    namespaced,
    status = "ReplicateDeploymentStatus",
    derive = "PartialEq",
    doc = "A Replicate deployment (a dedicated model endpoint on replicate.com) managed from Kubernetes.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the Replicate deployment matches the spec"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why it is or is not ready",
        priority = 1
    ),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".spec.model",
        description = "The Replicate model"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.deployment.shortVersion",
        description = "The first 12 characters of the live version ID"
    ),
    printcolumn(
        name = "Hardware",
        type_ = "string",
        json_path = ".spec.hardware",
        description = "Hardware SKU"
    ),
    printcolumn(
        name = "Min",
        type_ = "integer",
        json_path = ".spec.minInstances",
        description = "Minimum instances"
    ),
    printcolumn(
        name = "Max",
        type_ = "integer",
        json_path = ".spec.maxInstances",
        description = "Maximum instances"
    ),
    printcolumn(
        name = "Release",
        type_ = "integer",
        json_path = ".status.deployment.releaseNumber",
        description = "Replicate release number",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.minInstances <= self.maxInstances").message("minInstances must be less than or equal to maxInstances").field_path(".minInstances"))]
#[x_kube(validation = Rule::new("has(self.deploymentName) == has(oldSelf.deploymentName)").message("deploymentName cannot be added or removed after creation: it names the Replicate deployment, which cannot be renamed; create a new ReplicateDeployment instead").field_path(".deploymentName"))]
#[serde(rename_all = "camelCase")]
pub struct ReplicateDeploymentSpec {
    /// The Replicate model to serve, as `owner/name` (for example `stability-ai/sdxl`).
    /// Immutable: Replicate cannot move a deployment to another model.
    #[schemars(length(min = 3, max = 200))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$')").message("model must be written owner/name, for example stability-ai/sdxl (letters, digits, '-', '_' and '.' only)"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("model is immutable: Replicate cannot move a deployment to another model; create a new ReplicateDeployment instead"))]
    pub model: String,

    /// The model version to serve: its 64-character lowercase hexadecimal ID, as shown on the
    /// model's Versions page. Changing it rolls out a new release of the deployment.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("version must be the 64-character lowercase hexadecimal ID of a model version"))]
    pub version: String,

    /// The hardware SKU the deployment runs on, for example `cpu`, `gpu-t4` or `gpu-a40-large`
    /// (`GET /v1/hardware` lists the SKUs your account can use).
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]+(-[a-z0-9]+)*$')").message("hardware must be a Replicate hardware SKU such as cpu, gpu-t4 or gpu-a40-large: lowercase letters, digits and single dashes"))]
    pub hardware: String,

    /// The fewest instances Replicate keeps running. 0 lets the deployment scale to zero.
    /// Replicate's own per-account caps apply; a value over them is reported in the status.
    #[x_kube(validation = Rule::new("self >= 0").message("minInstances must be 0 or more"))]
    pub min_instances: i32,

    /// The most instances Replicate may run. Setting both bounds to 0 takes the deployment offline.
    /// Replicate's own per-account caps apply; a value over them is reported in the status.
    #[x_kube(validation = Rule::new("self >= 0").message("maxInstances must be 0 or more"))]
    pub max_instances: i32,

    /// The name of the deployment on Replicate. Defaults to `metadata.name`. Immutable, and can
    /// be neither added nor removed after creation: a deployment cannot be renamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$')").message("deploymentName must be lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("deploymentName is immutable: a Replicate deployment cannot be renamed; create a new ReplicateDeployment instead"))]
    pub deployment_name: Option<String>,

    /// The Secret (in this resource's namespace) that holds the Replicate API token to use.
    /// Without it the operator's default token is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,

    /// What happens to the Replicate deployment when this resource is deleted: `Delete` (the
    /// default) takes it offline and deletes it once Replicate allows (after 15 minutes offline);
    /// `Orphan` leaves it running on Replicate untouched.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Take over a deployment of the same name that already exists on Replicate and was not
    /// created by this resource. Off by default, so an existing deployment is never changed by
    /// accident; the status says when one is found.
    #[serde(default)]
    pub adopt_existing: bool,
}

/// A key of a Secret in the resource's own namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("credentialsSecretRef.name must be a valid Secret name: lowercase letters, digits, '-' and '.'"))]
    pub name: String,
    /// The key within the Secret whose value is the API token. Defaults to `token`.
    #[serde(default = "default_secret_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("credentialsSecretRef.key must be a valid Secret key: letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

fn default_secret_key() -> String {
    "token".to_string()
}

/// What deleting the resource does on Replicate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Scale the deployment to 0/0, then delete it once Replicate accepts the delete.
    #[default]
    Delete,
    /// Leave the deployment on Replicate as it is.
    Orphan,
}

/// What the operator observes. The controller and the webhook sidecar each own their own
/// fields (server-side apply with separate field managers), so neither overwrites the other.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicateDeploymentStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: the Replicate deployment exists and matches the spec. `Synced`: the last
    /// reconcile reached Replicate and applied what it had to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The deployment as last read from Replicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<ObservedDeployment>,

    /// The URL apps should give Replicate as `webhook` for predictions on this deployment,
    /// published when the operator knows its public webhook base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,

    /// When the deletion policy is Delete and the resource is being deleted: the earliest time
    /// Replicate is expected to accept the delete (15 minutes after going offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_not_before: Option<Time>,

    /// Predictions on this deployment that reached a final state, by that state, as reported
    /// by verified webhooks (written by the webhook sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictions: Option<PredictionCounts>,

    /// The most recent prediction seen in a verified webhook (written by the webhook sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prediction: Option<LastPrediction>,

    /// When the last verified webhook was received (written by the webhook sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_webhook_time: Option<Time>,

    /// IDs of the most recent predictions already counted in `predictions`, newest last and
    /// bounded in length, so that a redelivered webhook is never counted twice, also after a
    /// restart of the sidecar (written by the webhook sidecar).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted_prediction_ids: Vec<String>,
}

/// The Replicate deployment as the API returned it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObservedDeployment {
    /// The Replicate account (user or organization) that owns the deployment.
    pub owner: String,
    /// The deployment's name on Replicate.
    pub name: String,
    /// The number of the current release; it goes up by one on every update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_number: Option<i64>,
    /// The model of the current release, `owner/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The version ID of the current release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The first 12 characters of `version`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_version: Option<String>,
    /// The hardware SKU of the current release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    /// The minimum instance count of the current release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<i32>,
    /// The maximum instance count of the current release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<i32>,
}

/// Predictions that reached a final state, counted once each.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PredictionCounts {
    /// Predictions that finished with output.
    #[serde(default)]
    pub succeeded: i64,
    /// Predictions that failed with an error.
    #[serde(default)]
    pub failed: i64,
    /// Predictions canceled by a user or by their deadline while running.
    #[serde(default)]
    pub canceled: i64,
    /// Predictions that ended before they started running.
    #[serde(default)]
    pub aborted: i64,
}

/// The most recent prediction, as the last verified webhook described it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastPrediction {
    /// Replicate's prediction ID.
    pub id: String,
    /// starting, processing, succeeded, failed, canceled or aborted.
    pub status: String,
    /// When the prediction was created (as Replicate reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When it started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it reached a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Seconds of CPU or GPU time the prediction used (`metrics.predict_time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predict_time: Option<f64>,
    /// The error text of a failed prediction, trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReplicateDeployment {
    /// The name of the deployment on Replicate: `spec.deploymentName`, else `metadata.name`.
    pub fn deployment_name(&self) -> String {
        self.spec
            .deployment_name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}

/// The CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml() -> String {
    let crd = ReplicateDeployment::crd();
    let mut out = String::from(
        "# Generated by `replicate-operator crd` from src/crd.rs. Do not edit by hand:\n\
         # change the Rust types, then run `make crds`.\n",
    );
    out.push_str(&serde_yaml::to_string(&crd).expect("the CRD always serializes"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_the_code() {
        let committed = include_str!("../crds/replicatedeployments.yaml");
        assert!(
            committed == crd_yaml(),
            "crds/replicatedeployments.yaml is stale: run `make crds` and commit the result"
        );
    }

    #[test]
    fn every_field_has_a_description() {
        let crd = serde_json::to_value(ReplicateDeployment::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk_descriptions(schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }

    fn walk_descriptions(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let child_path = format!("{path}.{name}");
                // apiVersion/kind/metadata are documented by Kubernetes itself.
                let standard =
                    path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
                if !standard && child.get("description").is_none() {
                    missing.push(child_path.clone());
                }
                walk_descriptions(child, &child_path, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk_descriptions(items, &format!("{path}[]"), missing);
        }
    }

    #[test]
    fn deployment_name_defaults_to_metadata_name() {
        let spec = ReplicateDeploymentSpec {
            model: "acme/model".into(),
            version: "a".repeat(64),
            hardware: "cpu".into(),
            min_instances: 0,
            max_instances: 1,
            deployment_name: None,
            credentials_secret_ref: None,
            deletion_policy: DeletionPolicy::Delete,
            adopt_existing: false,
        };
        let mut rd = ReplicateDeployment::new("from-metadata", spec);
        assert_eq!(rd.deployment_name(), "from-metadata");
        rd.spec.deployment_name = Some("explicit".into());
        assert_eq!(rd.deployment_name(), "explicit");
    }
}
