//! The outbound HTTP client the push providers share: one POST at a time per call, over
//! HTTPS (rustls with the ring provider and the platform's root certificates) or plain
//! HTTP (local receivers in tests), HTTP/1.1 or HTTP/2 as the server offers, with a
//! pool of kept-alive connections. Each exchange is bounded by one timeout, and a
//! receiver can't make us read an endless response: the body is drained up to 64 KiB
//! and dropped.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

const USER_AGENT: &str = concat!("chat-server/", env!("CARGO_PKG_VERSION"));

/// The most of a response body that is read; past it the connection is dropped rather
/// than drained (the status is all a provider needs).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// How long an idle pooled connection is kept: pushes to one push service come in
/// bursts, and a new TLS handshake per push would triple its cost.
const POOL_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not an absolute http:// or https:// URL with a host.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A header name or value that HTTP can't carry.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The TLS configuration could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// No response (or no response head) within the timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// DNS, TCP or TLS failed before the request was sent.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection failed while the request or the response head was in flight.
    #[error("request failed: {0}")]
    Io(String),
}

impl HttpError {
    /// True when the same request may succeed later (the endpoint was unreachable or
    /// slow); false when the request itself is wrong and retrying can't help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HttpError::Timeout(_) | HttpError::Connect(_) | HttpError::Io(_)
        )
    }
}

/// What a POST got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostResponse {
    pub status: u16,
    /// The response's Retry-After, in seconds or as an HTTP date (a date in the past
    /// is zero).
    pub retry_after: Option<Duration>,
}

impl PostResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds the client; `timeout` bounds each whole exchange (connect, TLS, request,
    /// response head, and draining the response body). Loads the platform's root
    /// certificates (once: it reads and parses a few hundred KB), so build one client
    /// and share it.
    pub fn new(timeout: Duration) -> Result<Self, HttpError> {
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new())
            // The pool's idle timeout only takes effect with a timer.
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        Ok(HttpClient { client, timeout })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` to `url` with `headers` (names in lower case; a user-agent is
    /// added). Any status is an `Ok`: what a status means is the provider's call.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<PostResponse, HttpError> {
        let uri = parse_url(url)?;
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let map = request.headers_mut();
        map.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        for (name, value) in headers {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| HttpError::InvalidRequest(format!("header name {name:?}: {e}")))?;
            let header_value = HeaderValue::from_str(value)
                .map_err(|e| HttpError::InvalidRequest(format!("header {name}: {e}")))?;
            map.insert(header_name, header_value);
        }

        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_elapsed) => return Err(HttpError::Timeout(self.timeout)),
            Ok(Err(error)) => {
                let detail = error_chain(&error);
                return Err(if error.is_connect() {
                    HttpError::Connect(detail)
                } else {
                    HttpError::Io(detail)
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        // Draining lets an HTTP/1.1 connection go back to the pool. The status already
        // is the answer, so a body that is slow, broken or too long changes nothing:
        // the exchange just ends at the same deadline.
        let _ = tokio::time::timeout_at(deadline, drain(response.into_body())).await;
        Ok(PostResponse {
            status,
            retry_after,
        })
    }
}

/// rustls with the ring provider passed in explicitly, so nothing depends on which
/// provider (if any) the process installed as its default.
fn tls_config() -> Result<rustls::ClientConfig, HttpError> {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "push: could not load some platform root certificates");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        // Not fatal: plain-http receivers still work, and every https push fails (and
        // is retried) with a certificate error that names the cause.
        tracing::warn!(
            ignored,
            "push: no platform root certificates; https pushes will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| HttpError::InvalidUrl(format!("{url:?}: {e}")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(HttpError::InvalidUrl(format!(
            "{url:?}: not an absolute http(s) URL"
        ))),
    }
}

/// Reads and discards the body, up to `MAX_RESPONSE_BODY` bytes.
async fn drain(mut body: Incoming) {
    let mut read = 0usize;
    while read <= MAX_RESPONSE_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len();
                }
            }
            Some(Err(_)) | None => break,
        }
    }
}

/// Retry-After is either delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The client's errors say little at the top ("client error (Connect)"): the cause
/// (refused, DNS, certificate) is further down the chain.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_absolute_http_or_https() {
        assert!(parse_url("https://push.example.com/abc").is_ok());
        assert!(parse_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(matches!(
            parse_url("ftp://example.com/x"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("/relative"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("not a url"),
            Err(HttpError::InvalidUrl(_))
        ));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(300));
        let parsed = parse_retry_after(&later).expect("an HTTP date");
        assert!(parsed > Duration::from_secs(290) && parsed <= Duration::from_secs(300));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn transient_errors_are_the_network_ones() {
        assert!(HttpError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(HttpError::Connect("refused".into()).is_transient());
        assert!(HttpError::Io("reset".into()).is_transient());
        assert!(!HttpError::InvalidUrl("x".into()).is_transient());
        assert!(!HttpError::InvalidRequest("x".into()).is_transient());
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_transient_error() {
        let client = HttpClient::new(Duration::from_secs(5)).expect("client");
        // Port 1 on loopback: nothing listens there, so the connect is refused at once.
        let error = client
            .post("http://127.0.0.1:1/", &[], b"{}".to_vec())
            .await
            .expect_err("nothing listens on port 1");
        assert!(error.is_transient(), "{error}");
    }
}
