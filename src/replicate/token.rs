//! The API token, kept out of every log line, error and `Debug` output.

use std::fmt;

/// The environment variable the official clients read the token from.
pub const TOKEN_ENV: &str = "REPLICATE_API_TOKEN";

/// A Replicate API token (`r8_…`). Tokens are the accounts: every per-account call, and the
/// per-account rate limit, is keyed by one.
///
/// `Debug` and `Display` print `ApiToken(<redacted>)`; the only way to read the secret is
/// [`ApiToken::expose`], which the client calls when it builds the `Authorization` header.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiToken(String);

impl ApiToken {
    /// Wraps a token, trimming the whitespace that Secrets and env files tend to carry.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }

    /// Reads `REPLICATE_API_TOKEN`; `None` when unset or empty.
    pub fn from_env() -> Option<Self> {
        std::env::var(TOKEN_ENV)
            .ok()
            .map(Self::new)
            .filter(|t| !t.0.is_empty())
    }

    /// The secret itself. Never format the result into a log line or an error.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for ApiToken {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for ApiToken {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_token() {
        let token = ApiToken::new(" r8_supersecretvalue\n");
        assert_eq!(token.expose(), "r8_supersecretvalue");
        for shown in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{:#?}", Some(&token)),
        ] {
            assert!(!shown.contains("supersecret"), "{shown}");
        }
    }
}
