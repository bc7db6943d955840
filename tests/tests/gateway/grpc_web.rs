//! grpc-web as a browser speaks it, by hand over HTTP/1.1: framed protobuf bodies, the
//! status in headers or in a trailer frame.

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;

use chat_tests::DEADLINE;

/// What came back from one grpc-web call.
#[derive(Debug)]
pub(crate) struct GrpcWebReply<T> {
    pub(crate) http_status: u16,
    pub(crate) headers: http::HeaderMap,
    /// `grpc-status`, from the headers (trailers-only reply) or the trailer frame.
    pub(crate) status: Option<String>,
    pub(crate) message: Option<T>,
}

impl<T> GrpcWebReply<T> {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// One unary grpc-web call over HTTP/1.1.
pub(crate) async fn grpc_web_call<Req: Message, Resp: Message + Default>(
    base: &str,
    path: &str,
    token: Option<&str>,
    origin: Option<&str>,
    request: &Req,
) -> GrpcWebReply<Resp> {
    let encoded = request.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    body.extend_from_slice(&encoded);
    let mut builder = http::Request::post(format!("{base}{path}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if let Some(origin) = origin {
        builder = builder.header("origin", origin);
    }
    let request = builder.body(Full::new(Bytes::from(body))).expect("request");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .expect("grpc-web call timed out")
        .expect("grpc-web call");
    let (parts, body) = response.into_parts();
    let mut data = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("grpc-web body timed out")
        .expect("grpc-web body")
        .to_bytes();
    let mut status = parts
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut message = None;
    let framed = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc-web"));
    while framed && data.remaining() >= 5 {
        let flag = data.get_u8();
        let len = data.get_u32() as usize;
        let frame = data.split_to(len.min(data.remaining()));
        if flag & 0x80 == 0 {
            message = Some(Resp::decode(frame).expect("a response message"));
        } else {
            for line in String::from_utf8_lossy(&frame).split("\r\n") {
                if let Some((name, value)) = line.split_once(':')
                    && name.trim().eq_ignore_ascii_case("grpc-status")
                {
                    status = Some(value.trim().to_owned());
                }
            }
        }
    }
    GrpcWebReply {
        http_status: parts.status.as_u16(),
        headers: parts.headers,
        status,
        message,
    }
}
