//! Forwards one gRPC call (native, or grpc-web already translated by `tonic_web`) to a
//! replica picked by `Upstreams::pick`, and keeps the call counted as open on that
//! replica until its response body ends, so long streams weigh in the balancing.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tower::{Service, ServiceExt};

use crate::metrics;
use crate::upstream::{CallGuard, Upstream, Upstreams};

/// The balancing proxy: a tower service over every replica.
#[derive(Clone)]
pub(crate) struct Proxy {
    upstreams: Arc<Upstreams>,
}

impl Proxy {
    pub(crate) fn new(upstreams: Arc<Upstreams>) -> Self {
        Proxy { upstreams }
    }
}

impl Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(upstream) = self.upstreams.pick() else {
            metrics::call_refused();
            return Box::pin(async {
                Ok(tonic::Status::unavailable("no healthy chat server; retry").into_http())
            });
        };
        let (channel, guard) = upstream.begin_call();
        metrics::call_forwarded(upstream.label());
        Box::pin(async move {
            match channel.oneshot(request).await {
                Ok(response) => Ok(response.map(|body| {
                    Body::new(Counted {
                        body,
                        _guard: guard,
                    })
                })),
                Err(e) => Ok(failed_call(&upstream, &e).into_http()),
            }
        })
    }
}

/// What the client hears when forwarding failed, and whether the replica is to blame.
///
/// Only a broken connection to the replica takes it out of rotation: a failure caused
/// by the request itself (a body over the limit, a client that reset its stream) must
/// not, or any client could switch replicas off at will. (A body over the limit reaches
/// here as a reset stream; `edge.rs` notices it on its side and answers for it.)
fn failed_call(upstream: &Upstream, error: &(dyn std::error::Error + 'static)) -> tonic::Status {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            // Its retry carries the same idempotency key, so the client may retry at once;
            // this replica gets no more calls until a health check passes.
            tracing::warn!(upstream = %upstream.label(), error = %error, "replica unreachable");
            upstream.mark_failed();
            return tonic::Status::unavailable("chat server unreachable; retry");
        }
        source = e.source();
    }
    tracing::debug!(upstream = %upstream.label(), error = %error, "call failed in transit");
    tonic::Status::unavailable("call failed in transit; retry")
}

pin_project_lite::pin_project! {
    /// A response body that holds its call's place in the replica's open-call count.
    struct Counted {
        #[pin]
        body: Body,
        _guard: CallGuard,
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
