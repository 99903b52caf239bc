//! Following `next` links of paginated lists against our own base URL.

use url::Url;

use super::error::ApiError;

/// The query parameter that carries the page position.
pub const CURSOR_PARAM: &str = "cursor";

/// Lifts the opaque cursor out of a `next` link. The documented example link is `http://`
/// and names the public host, so the link itself is never followed: the cursor is re-issued
/// against the configured base URL, which keeps TLS, proxies and test servers in charge.
pub fn cursor_of(next: &str) -> Result<String, ApiError> {
    let link = Url::parse(next).map_err(|e| ApiError::UnexpectedResponse {
        message: format!("the next-page link is not a URL ({e})"),
    })?;
    link.query_pairs()
        .find(|(key, _)| key == CURSOR_PARAM)
        .map(|(_, value)| value.into_owned())
        .filter(|value| !value.is_empty())
        .ok_or_else(|| ApiError::UnexpectedResponse {
            message: "the next-page link carries no cursor".to_owned(),
        })
}

/// `list_url` with the cursor set (replacing any cursor it had).
pub fn with_cursor(list_url: &Url, cursor: &str) -> Url {
    let mut url = list_url.clone();
    let kept: Vec<(String, String)> = list_url
        .query_pairs()
        .filter(|(key, _)| key != CURSOR_PARAM)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(CURSOR_PARAM, cursor);
    url
}

/// Guards a paging loop against a server that hands back a cursor it already gave.
#[derive(Debug, Default)]
pub struct CursorTrail(std::collections::HashSet<String>);

impl CursorTrail {
    pub fn visit(&mut self, cursor: &str) -> Result<(), ApiError> {
        if self.0.insert(cursor.to_owned()) {
            Ok(())
        } else {
            Err(ApiError::UnexpectedResponse {
                message: "the API returned the same page cursor twice".to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_next_link_is_rebased_on_our_base() {
        let next = "http://api.replicate.com/v1/deployments?cursor=cD0yMDIzLTA2LTA2KzIzJTNBNDAlM0EwOC45NjMwMDAlMkIwMCUzQTAw";
        let cursor = cursor_of(next).unwrap();
        assert_eq!(
            cursor,
            "cD0yMDIzLTA2LTA2KzIzJTNBNDAlM0EwOC45NjMwMDAlMkIwMCUzQTAw"
        );
        let ours = Url::parse("https://proxy.internal:8443/replicate/v1/deployments").unwrap();
        let url = with_cursor(&ours, &cursor);
        assert_eq!(url.host_str(), Some("proxy.internal"));
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.path(), "/replicate/v1/deployments");
        assert_eq!(cursor_of(url.as_str()).unwrap(), cursor);
    }

    #[test]
    fn cursor_with_reserved_characters_survives() {
        let ours = Url::parse("http://127.0.0.1:1/v1/deployments?cursor=old").unwrap();
        let url = with_cursor(&ours, "a+b/c=");
        assert_eq!(cursor_of(url.as_str()).unwrap(), "a+b/c=");
        assert_eq!(url.query_pairs().count(), 1);
    }

    #[test]
    fn links_without_cursor_are_errors() {
        assert!(cursor_of("https://api.replicate.com/v1/deployments").is_err());
        assert!(cursor_of("not a url").is_err());
    }

    #[test]
    fn repeated_cursor_is_caught() {
        let mut trail = CursorTrail::default();
        trail.visit("a").unwrap();
        trail.visit("b").unwrap();
        assert!(trail.visit("a").is_err());
    }
}
