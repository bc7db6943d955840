//! The webhook provider: a POST of the notification's JSON to the target's URL, signed
//! so the receiver can tell it came from us and is fresh.
//!
//! Headers:
//! - `content-type: application/json`
//! - `x-chat-delivery: <delivery_id>`: the same on every retry; receivers drop repeats.
//! - `x-chat-timestamp: <unix seconds>`: when this attempt was signed.
//! - `x-chat-signature: sha256=<hex>`: lowercase hex of
//!   HMAC-SHA256(secret, "<timestamp>.<body>"). The timestamp is inside the MAC so a
//!   captured request can't be replayed later under a fresh timestamp; receivers
//!   should refuse timestamps more than a few minutes off their clock, and compare
//!   signatures in constant time.

use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use ring::hmac;

use super::http::{HttpClient, HttpError, PostResponse};
use super::notification::Notification;
use super::provider::{Outcome, Provider, error_outcome, response_outcome};
use crate::domain::Timestamp;
use crate::store::{PushEndpoint, PushTarget};

pub const SIGNATURE_HEADER: &str = "x-chat-signature";
pub const TIMESTAMP_HEADER: &str = "x-chat-timestamp";
pub const DELIVERY_HEADER: &str = "x-chat-delivery";

pub struct WebhookProvider {
    pub http: Arc<HttpClient>,
}

impl WebhookProvider {
    pub fn new(http: Arc<HttpClient>) -> Self {
        WebhookProvider { http }
    }
}

/// The `x-chat-signature` value for `body` sent at `timestamp` (Unix seconds):
/// `sha256=` and the lowercase hex of HMAC-SHA256(secret, "<timestamp>.<body>").
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let mut value = String::with_capacity("sha256=".len() + 2 * tag.as_ref().len());
    value.push_str("sha256=");
    for byte in tag.as_ref() {
        // Writing to a String can't fail.
        let _ = write!(value, "{byte:02x}");
    }
    value
}

#[async_trait]
impl Provider for WebhookProvider {
    async fn deliver(&self, target: &PushTarget, notification: &Notification) -> Outcome {
        let PushEndpoint::Webhook { url, secret } = &target.endpoint else {
            return Outcome::Rejected(format!(
                "a {} target given to the webhook provider",
                target.endpoint.kind()
            ));
        };
        let body = match serde_json::to_vec(notification) {
            Ok(body) => body,
            Err(error) => return Outcome::Rejected(format!("notification JSON: {error}")),
        };
        let timestamp = Timestamp::now().unix_seconds();
        let headers = [
            ("content-type", "application/json".to_owned()),
            (DELIVERY_HEADER, notification.delivery_id.clone()),
            (TIMESTAMP_HEADER, timestamp.to_string()),
            (SIGNATURE_HEADER, sign(secret.as_bytes(), timestamp, &body)),
        ];
        match self.http.post(url, &headers, body).await {
            Ok(response) => outcome_for_response(&response),
            Err(error) => outcome_for_error(&error),
        }
    }
}

/// 410 says the hook is gone for good (see `provider::response_outcome`).
fn outcome_for_response(response: &PostResponse) -> Outcome {
    response_outcome(response, "webhook", &[410])
}

fn outcome_for_error(error: &HttpError) -> Outcome {
    error_outcome(error, "webhook")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn signature_matches_an_independently_computed_hmac() {
        // Computed outside this code base:
        //   printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            sign(b"s3cret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }

    #[test]
    fn signature_is_the_hmac_of_timestamp_dot_body() {
        let secret = b"another secret";
        let body = br#"{"delivery_id":"d1","title":"New message"}"#;
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let mut message = b"1234567890.".to_vec();
        message.extend_from_slice(body);
        let expected: String = hmac::sign(&key, &message)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            sign(secret, 1_234_567_890, body),
            format!("sha256={expected}")
        );
        // A receiver verifying with the same scheme accepts it, and refuses a changed
        // timestamp.
        let tag = hmac::sign(&key, &message);
        assert!(hmac::verify(&key, &message, tag.as_ref()).is_ok());
        assert_ne!(
            sign(secret, 1_234_567_891, body),
            sign(secret, 1_234_567_890, body)
        );
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let at = |status| PostResponse {
            status,
            retry_after: None,
        };
        assert_eq!(outcome_for_response(&at(200)), Outcome::Delivered);
        assert_eq!(outcome_for_response(&at(204)), Outcome::Delivered);
        for status in [408, 429, 500, 502, 503] {
            assert!(
                matches!(outcome_for_response(&at(status)), Outcome::Retry(_)),
                "{status}"
            );
        }
        assert!(matches!(outcome_for_response(&at(410)), Outcome::Gone(_)));
        for status in [301, 400, 401, 403, 404, 413] {
            assert!(
                matches!(outcome_for_response(&at(status)), Outcome::Rejected(_)),
                "{status}"
            );
        }
        let limited = PostResponse {
            status: 429,
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            outcome_for_response(&limited),
            Outcome::Retry("webhook answered HTTP 429 (retry after 30s)".into())
        );
    }

    #[test]
    fn network_errors_retry_and_bad_urls_do_not() {
        assert!(matches!(
            outcome_for_error(&HttpError::Timeout(Duration::from_secs(10))),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            outcome_for_error(&HttpError::Connect("refused".into())),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            outcome_for_error(&HttpError::InvalidUrl("x".into())),
            Outcome::Rejected(_)
        ));
    }
}
