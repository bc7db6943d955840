//! The one public port: HTTP/1.1 and HTTP/2 (cleartext) connections with bounded header
//! reads, CORS from an allow-list, and the routing of each request: gRPC and grpc-web
//! calls to the balancing proxy, `/healthz`, and the web client's files.

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic_web::GrpcWebLayer;
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};

use crate::metrics;
use crate::proxy::Proxy;
use crate::upstream::Upstreams;

/// What the per-request router needs.
struct Routes {
    grpc: tonic_web::GrpcWebService<Proxy>,
    web: Option<ServeDir<ServeFile>>,
    max_body_bytes: usize,
    upstreams: Arc<Upstreams>,
}

/// Limits of the public port.
pub(crate) struct EdgeLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_concurrent_streams: u32,
    pub(crate) max_connections: usize,
    pub(crate) shutdown_grace: Duration,
}

/// Headers a browser may send on a cross-origin call, and the ones its code may read:
/// grpc-web carries the call's outcome in `grpc-status` / `grpc-message`.
const ALLOWED_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
];
/// The services the public port forwards; the replicas' reflection is not among them.
const FORWARDED_SERVICES: [&str; 4] = [
    "/chat.v1.AuthService/",
    "/chat.v1.ChatService/",
    "/chat.v1.PushService/",
    "/grpc.health.v1.Health/",
];
const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

fn cors(allow_origins: &[HeaderValue]) -> CorsLayer {
    // Credentials are never allowed: the token travels in `authorization`, set by the
    // page's code, so a cookie-less policy is enough and an origin wildcard never used.
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allow_origins.iter().cloned()))
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 3600))
}

/// Serves the public port until `stop`, then lets open calls finish for the grace period.
pub(crate) async fn serve(
    listener: TcpListener,
    upstreams: Arc<Upstreams>,
    allow_origins: &[HeaderValue],
    web_root: Option<&Path>,
    limits: EdgeLimits,
    stop: CancellationToken,
) {
    let routes = Arc::new(Routes {
        grpc: GrpcWebLayer::new().layer(Proxy::new(upstreams.clone())),
        web: web_root.map(|root| {
            // Unknown paths get the client's page, so its own routes survive a reload.
            ServeDir::new(root).fallback(ServeFile::new(root.join("index.html")))
        }),
        max_body_bytes: limits.max_body_bytes,
        upstreams,
    });
    let service = cors(allow_origins).layer(tower::service_fn(move |request| {
        let routes = routes.clone();
        async move { route(&routes, request).await }
    }));

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));

    let graceful = GracefulShutdown::new();
    // Ends the connections still open when the grace period is over.
    let abort = CancellationToken::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let first_bytes = limits.header_read_timeout;
    loop {
        // At the limit, stop accepting: new connections wait in the listen backlog.
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let builder = builder.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        let abort = abort.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // hyper reads the first bytes to tell HTTP/1.1 from HTTP/2 without a
            // deadline: a client that connects and stays silent is dropped here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(first_bytes, socket.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let connection = builder
                .serve_connection(TokioIo::new(socket), TowerToHyperService::new(service))
                .into_owned();
            tokio::select! {
                ended = watcher.watch(connection) => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = abort.cancelled() => {}
            }
        });
    }
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?limits.shutdown_grace, "connections still open after the grace period; closing them");
        abort.cancel();
    }
}

async fn route(routes: &Routes, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/grpc") {
        let grpc_web = content_type.starts_with("application/grpc-web");
        if !FORWARDED_SERVICES
            .iter()
            .any(|prefix| request.uri().path().starts_with(prefix))
        {
            // Reflection and anything else a replica serves stay inside.
            return Ok(tonic::Status::unimplemented("no such service").into_http());
        }
        metrics::request(if grpc_web { "grpc-web" } else { "grpc" });
        if !grpc_web {
            // A native stream lasts as long as the session; its messages are bounded by
            // the replicas' decode limit.
            return routes.grpc.clone().oneshot(request.map(Body::new)).await;
        }
        // A browser sends a grpc-web body whole, so it can be bounded whole.
        let content_type = content_type.to_owned();
        if declared_length(&request).is_some_and(|n| n > routes.max_body_bytes) {
            return Ok(too_large(&content_type));
        }
        let exceeded = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            Body::new(Capped {
                body: Limited::new(body, routes.max_body_bytes),
                exceeded: exceeded.clone(),
            })
        });
        let response = routes.grpc.clone().oneshot(request).await?;
        // Cut off mid-body, the call failed upstream as a reset stream; say why instead.
        if exceeded.load(Ordering::Relaxed) {
            return Ok(too_large(&content_type));
        }
        return Ok(response);
    }
    metrics::request("http");
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => Ok(health(&routes.upstreams)),
        (&Method::GET | &Method::HEAD, _) => match &routes.web {
            Some(web) => match web.clone().oneshot(request).await {
                Ok(response) => Ok(response.map(Body::new)),
                Err(never) => match never {},
            },
            None => Ok(plain(StatusCode::NOT_FOUND, "not found")),
        },
        _ => Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
}

pin_project_lite::pin_project! {
    /// A request body bounded by `Limited` that records when the bound was hit.
    struct Capped {
        #[pin]
        body: Limited<Incoming>,
        exceeded: Arc<AtomicBool>,
    }
}

impl http_body::Body for Capped {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled
            && e.is::<LengthLimitError>()
        {
            this.exceeded.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn declared_length(request: &Request<Incoming>) -> Option<usize> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// 200 while some replica takes calls (a healthy one, or failing that one that still
/// answers): what a load balancer in front asks.
fn health(upstreams: &Upstreams) -> Response<Body> {
    let all = upstreams.all();
    let healthy = all.iter().filter(|u| u.is_healthy()).count();
    let degraded = all
        .iter()
        .filter(|u| !u.is_healthy() && u.is_reachable())
        .count();
    let status = if healthy + degraded > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut text = format!("{healthy} of {} replicas healthy\n", all.len());
    if degraded > 0 {
        text.push_str(&format!("{degraded} answering but not serving\n"));
    }
    plain(status, &text)
}

/// A grpc-web "trailers-only" answer with RESOURCE_EXHAUSTED: a grpc-web client reads the
/// status from the headers and does not retry it, where a bare HTTP 413 would surface as
/// UNKNOWN, which clients retry.
fn too_large(content_type: &str) -> Response<Body> {
    metrics::body_too_large();
    let mut response = tonic::Status::resource_exhausted("request body too large").into_http();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::new(http_body_util::Full::new(
        bytes::Bytes::copy_from_slice(text.as_bytes()),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
