//! The objects of the Replicate HTTP API, as the OpenAPI document describes them.
//!
//! Every field the API may leave out is an `Option`; unknown fields are ignored and unknown enum
//! values land in an `Unknown(String)` variant, so a newer API never breaks deserialisation.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Declares a string enum whose unknown values are kept instead of rejected.
macro_rules! open_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this crate does not know yet, kept verbatim.
            Unknown(String),
        }

        impl $name {
            /// The wire form of the value.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Unknown(other) => other,
                }
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                match value {
                    $($text => Self::$variant,)+
                    other => Self::Unknown(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Ok(Self::from(text.as_str()))
            }
        }
    };
}

open_enum! {
    /// Whether an account is a person or an organization.
    pub enum AccountType {
        Organization => "organization",
        User => "user",
    }
}

open_enum! {
    /// The lifecycle state of a prediction.
    pub enum PredictionStatus {
        Starting => "starting",
        Processing => "processing",
        Succeeded => "succeeded",
        Failed => "failed",
        Canceled => "canceled",
        /// Ended before it started running (e.g. its deadline passed first); newer API only.
        Aborted => "aborted",
    }
}

impl PredictionStatus {
    /// Succeeded, failed, canceled and aborted are final; an unknown status is assumed not to be.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Aborted
        )
    }
}

open_enum! {
    /// The events a prediction's webhook can be sent for (`webhook_events_filter`).
    pub enum WebhookEvent {
        Start => "start",
        Output => "output",
        Logs => "logs",
        Completed => "completed",
    }
}

open_enum! {
    /// How a prediction was created.
    pub enum PredictionSource {
        Web => "web",
        Api => "api",
    }
}

/// A user or organization (`GET /v1/account`, and a release's `created_by`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    #[serde(rename = "type")]
    pub kind: AccountType,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// A deployment. Only `owner` and `name` are always present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub owner: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_release: Option<Release>,
}

impl Deployment {
    /// The current configuration, if the API reported one.
    pub fn configuration(&self) -> Option<&DeploymentConfiguration> {
        self.current_release.as_ref()?.configuration.as_ref()
    }
}

/// A deployment's release: every successful update creates a new one with `number + 1`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Release {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// `{model_owner}/{model_name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Account>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<DeploymentConfiguration>,
}

/// Hardware and scaling of a release. `min_instances`/`max_instances` sit directly here (an
/// older OAS nested them under `scaling`, which the real API never did).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeploymentConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
}

/// The body of `POST /v1/deployments`; the API requires all six fields. There is no owner: the
/// deployment belongs to the token's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateDeployment {
    pub name: String,
    pub model: String,
    pub version: String,
    pub hardware: String,
    pub min_instances: u32,
    pub max_instances: u32,
}

/// The body of `PATCH /v1/deployments/{owner}/{name}`: only the fields that are `Some` are sent,
/// and the API keeps the others. `name` and `model` cannot be changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpdateDeployment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
}

impl UpdateDeployment {
    /// True when no field is set (the PATCH would change nothing but still make a release).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// One entry of `GET /v1/hardware` (a bare array, not a page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub sku: String,
}

/// A model version (`GET /v1/models/{owner}/{name}/versions/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(default)]
    pub cog_version: Option<String>,
    #[serde(default)]
    pub openapi_schema: Option<Value>,
}

/// A page of a cursor-paginated list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub previous: Option<String>,
    pub results: Vec<T>,
}

/// The account's webhook signing secret (`whsec_…`). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSecret {
    pub key: String,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The body of `POST /v1/deployments/{owner}/{name}/predictions` (the schema forbids other fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRequest {
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_events_filter: Option<Vec<WebhookEvent>>,
}

/// A prediction, as `GET /v1/predictions/{id}` returns it and as webhooks carry it.
///
/// `output` and `error` are required by the schema even when null, so they are always
/// serialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    #[serde(default)]
    pub model: String,
    /// A 64-character version ID, or `"hidden"` for official models.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub error: Option<Value>,
    pub status: PredictionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    #[serde(default)]
    pub data_removed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PredictionSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub urls: PredictionUrls,
    /// The deployment that created it (newer API only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_events_filter: Option<Vec<WebhookEvent>>,
}

impl Prediction {
    /// The error message of a failed prediction, whatever JSON type the API used for it.
    pub fn error_message(&self) -> Option<String> {
        match self.error.as_ref()? {
            Value::Null => None,
            Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// Links for working with a prediction; `get`, `cancel` and `web` are required by the schema.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PredictionUrls {
    #[serde(default)]
    pub get: String,
    #[serde(default)]
    pub cancel: String,
    #[serde(default)]
    pub web: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// An RFC 7807 problem body (`application/problem+json`). The API omits fields freely (a 404
/// may lack `title`, a 429 carries only `detail`), so every one is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Problem {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_values_are_kept() {
        let status: PredictionStatus = serde_json::from_str(r#""paused""#).unwrap();
        assert_eq!(status, PredictionStatus::Unknown("paused".into()));
        assert!(!status.is_terminal());
        assert_eq!(serde_json::to_string(&status).unwrap(), r#""paused""#);
        let aborted: PredictionStatus = serde_json::from_str(r#""aborted""#).unwrap();
        assert!(aborted.is_terminal());
    }

    #[test]
    fn update_sends_only_given_fields() {
        let update = UpdateDeployment {
            min_instances: Some(0),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&update).unwrap(),
            r#"{"min_instances":0}"#
        );
        assert!(UpdateDeployment::default().is_empty());
    }

    #[test]
    fn deployment_tolerates_missing_and_unknown_fields() {
        let d: Deployment =
            serde_json::from_str(r#"{"owner":"a","name":"b","surprise":1,"current_release":{}}"#)
                .unwrap();
        assert_eq!(d.current_release, Some(Release::default()));
        assert!(d.configuration().is_none());
    }

    #[test]
    fn webhook_secret_debug_is_redacted() {
        let secret = WebhookSecret {
            key: "whsec_abc".into(),
        };
        assert!(!format!("{secret:?}").contains("abc"));
    }
}
