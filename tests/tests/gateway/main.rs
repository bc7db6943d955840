//! The gateway in front of real replicas: native gRPC (the SDK, the CLI) and grpc-web
//! (raw HTTP/1.1, as a browser sends it) reach the replicas; streams are balanced by
//! open calls; unhealthy replicas get no calls; CORS follows the allow-list; oversized
//! bodies and slow headers are refused; the web client's files are served.

mod grpc_web;

use std::sync::Arc;

use chat_sdk::{Client, Page, Target, proto};
use chat_tests::{
    DEADLINE, StoreKind, TestDb, TestGateway, TestServer, next_frame, raw_chat_stub, workspace_bin,
};
use chat_tests::{http1_request, raw_exchange};
use grpc_web::{GrpcWebReply, grpc_web_call};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two replicas on one Postgres database, and a gateway in front of them.
async fn two_replicas(extra: &[&str]) -> (TestServer, TestServer, TestGateway) {
    let db = Arc::new(TestDb::new(StoreKind::Postgres).await);
    let r1 = TestServer::spawn_on(db.clone(), &[], None).await;
    let r2 = TestServer::spawn_on(db, &[], None).await;
    let gateway = TestGateway::spawn(&[&r1.url, &r2.url], extra).await;
    gateway.wait_for_healthy(2).await;
    (r1, r2, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_grpc_and_grpc_web_reach_the_replicas() {
    let (r1, r2, gateway) = two_replicas(&[]).await;
    // Native gRPC through the gateway: the SDK as any service would use it.
    let client = Client::connect(&gateway.url).await.expect("connect");
    let alex = client
        .register("alex", "correct horse battery", "t")
        .await
        .expect("register");
    client
        .register("riya", "correct horse battery", "t")
        .await
        .expect("register");
    let alex = client.with_token(&alex.token).expect("token");
    let ack = alex
        .send(Target::User("riya".into()), "through the gateway")
        .await
        .expect("send");

    // grpc-web over HTTP/1.1, as a browser sends it: history of that conversation.
    let login = proto::LoginRequest {
        name: "riya".into(),
        password: "correct horse battery".into(),
        device_name: "browser".into(),
    };
    let reply: GrpcWebReply<proto::LoginResponse> = grpc_web_call(
        &gateway.url,
        "/chat.v1.AuthService/Login",
        None,
        None,
        &login,
    )
    .await;
    assert_eq!(reply.status.as_deref(), Some("0"), "{reply:?}");
    let token = reply
        .message
        .and_then(|r| r.session)
        .expect("login response")
        .token;
    let history = proto::GetHistoryRequest {
        conversation_id: ack.conversation_id.clone(),
        limit: 50,
        ..Default::default()
    };
    let reply: GrpcWebReply<proto::GetHistoryResponse> = grpc_web_call(
        &gateway.url,
        "/chat.v1.ChatService/GetHistory",
        Some(&token),
        None,
        &history,
    )
    .await;
    assert_eq!(reply.status.as_deref(), Some("0"), "{reply:?}");
    let messages = reply.message.expect("history").messages;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].text, "through the gateway");

    // A failed call keeps its status over grpc-web.
    let reply: GrpcWebReply<proto::GetHistoryResponse> = grpc_web_call(
        &gateway.url,
        "/chat.v1.ChatService/GetHistory",
        Some("ct_not-a-token"),
        None,
        &history,
    )
    .await;
    assert_eq!(
        reply.status.as_deref(),
        Some("16"),
        "UNAUTHENTICATED: {reply:?}"
    );

    // The CLI through the same gateway.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::process::Command::new(workspace_bin("chat"))
        .args(["--server", &gateway.url, "--config-dir"])
        .arg(dir.path())
        .args(["login", "riya", "--password", "correct horse battery"])
        .output()
        .await
        .expect("run chat");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new(workspace_bin("chat"))
        .args(["--server", &gateway.url, "--config-dir"])
        .arg(dir.path())
        .args(["send", "alex", "from the CLI"])
        .output()
        .await
        .expect("run chat");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = alex
        .history(&ack.conversation_id, Page::Latest, 10)
        .await
        .expect("history");
    assert_eq!(
        page.messages.last().map(|m| m.text.as_str()),
        Some("from the CLI")
    );
    gateway.shutdown().await;
    r1.shutdown().await;
    r2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_balanced_by_open_calls_and_unhealthy_replicas_are_skipped() {
    let (r1, r2, gateway) = two_replicas(&["--streams-per-connection", "2"]).await;
    let riya = Client::connect(&gateway.url)
        .await
        .expect("connect")
        .register("riya", "correct horse battery", "t")
        .await
        .expect("register");

    // Ten long-lived streams, opened one after another: with two replicas, power of two
    // choices always compares both and puts each on the less loaded one.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut stub = raw_chat_stub(&gateway.url, &riya.token, None).await;
        let mut stream = stub
            .subscribe(proto::SubscribeRequest { cursors: vec![] })
            .await
            .expect("subscribe")
            .into_inner();
        let unwrap = |r: proto::SubscribeResponse| r.frame;
        assert!(matches!(
            next_frame(&mut stream, unwrap).await,
            proto::server_frame::Kind::Welcome(_)
        ));
        streams.push((stub, stream));
    }
    let on_r1 = r1.chat().hub.session_count();
    let on_r2 = r2.chat().hub.session_count();
    assert_eq!((on_r1, on_r2), (5, 5), "balanced by open streams");

    // Streams spread over connections to each replica (the replicas allow 64 streams per
    // connection): 5 streams with 2 per connection need 3 connections.
    for upstream in gateway.upstreams().all() {
        assert_eq!(upstream.connection_count(), 3, "{}", upstream.label());
    }

    // Replica 2 goes away: the gateway stops routing to it, and calls still succeed.
    r2.shutdown().await;
    gateway.wait_for_healthy(1).await;
    let client = Client::connect(&gateway.url).await.expect("connect");
    for i in 0..6 {
        client
            .login("riya", "correct horse battery", &format!("d{i}"))
            .await
            .expect("login through the healthy replica");
    }
    let health = http1_request(&gateway.url, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("1 of 2 replicas healthy"), "{health}");

    // None left: calls fail retryably, and the gateway's health says so.
    r1.shutdown().await;
    gateway.wait_for_healthy(0).await;
    let refused = client
        .login("riya", "correct horse battery", "late")
        .await
        .expect_err("no replica");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let health = http1_request(&gateway.url, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    drop(streams);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_listed_origins() {
    let server = TestServer::spawn(StoreKind::Sqlite).await;
    let gateway =
        TestGateway::spawn(&[&server.url], &["--allow-origin", "https://chat.example"]).await;

    let preflight = |origin: &str| {
        format!(
            "OPTIONS /chat.v1.AuthService/Login HTTP/1.1\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n\r\n"
        )
    };
    let allowed = http1_request(&gateway.url, &preflight("https://chat.example"))
        .await
        .to_ascii_lowercase();
    assert!(allowed.starts_with("http/1.1 200"), "{allowed}");
    assert!(
        allowed.contains("access-control-allow-origin: https://chat.example\r\n"),
        "{allowed}"
    );
    assert!(allowed.contains("authorization"), "{allowed}");
    assert!(
        !allowed.contains("access-control-allow-credentials"),
        "{allowed}"
    );

    let denied = http1_request(&gateway.url, &preflight("https://evil.example"))
        .await
        .to_ascii_lowercase();
    assert!(
        !denied.contains("access-control-allow-origin"),
        "no allowance for an unlisted origin: {denied}"
    );

    // An actual call from the allowed origin can read the call's status.
    let login = proto::LoginRequest {
        name: "nobody".into(),
        password: "correct horse battery".into(),
        device_name: "browser".into(),
    };
    let reply: GrpcWebReply<proto::LoginResponse> = grpc_web_call(
        &gateway.url,
        "/chat.v1.AuthService/Login",
        None,
        Some("https://chat.example"),
        &login,
    )
    .await;
    assert_eq!(reply.status.as_deref(), Some("16"), "{reply:?}");
    let allow = reply.header("access-control-allow-origin");
    assert_eq!(allow.as_deref(), Some("https://chat.example"));
    let exposed = reply
        .header("access-control-expose-headers")
        .unwrap_or_default();
    assert!(exposed.contains("grpc-status"), "{exposed}");
    assert!(exposed.contains("grpc-message"), "{exposed}");
    let reply: GrpcWebReply<proto::LoginResponse> = grpc_web_call(
        &gateway.url,
        "/chat.v1.AuthService/Login",
        None,
        Some("https://evil.example"),
        &login,
    )
    .await;
    assert_eq!(reply.header("access-control-allow-origin"), None);
    gateway.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_slow_headers_are_refused() {
    let server = TestServer::spawn(StoreKind::Sqlite).await;
    let gateway = TestGateway::spawn(
        &[&server.url],
        &["--max-body-bytes", "1024", "--header-read-timeout", "1s"],
    )
    .await;

    let addr = gateway.url.trim_start_matches("http://").to_owned();
    // Declared too large: refused before anything is read or forwarded, with a status a
    // grpc-web client does not retry.
    let big = proto::LoginRequest {
        name: "alex".into(),
        password: "x".repeat(4096),
        device_name: "browser".into(),
    };
    let reply: GrpcWebReply<proto::LoginResponse> =
        grpc_web_call(&gateway.url, "/chat.v1.AuthService/Login", None, None, &big).await;
    assert_eq!(
        reply.status.as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED: {reply:?}"
    );
    assert_eq!(
        reply.http_status, 200,
        "grpc-web carries the status in headers"
    );

    // Too large without a declared length (chunked): cut off while it is read, with the
    // same status; and the replica is not blamed for it.
    let mut frame = vec![0u8];
    let encoded = big.encode_to_vec();
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let mut request = String::from(
        "POST /chat.v1.AuthService/Login HTTP/1.1\r\ncontent-type: application/grpc-web+proto\r\n\
         x-grpc-web: 1\r\nhost: gateway\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    request.push_str(&format!("{:x}\r\n", frame.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(&frame);
    bytes.extend_from_slice(b"\r\n0\r\n\r\n");
    let reply = raw_exchange(&gateway.url, &bytes).await;
    let text = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(
        text.contains("grpc-status: 8") || text.contains("grpc-status:8"),
        "an oversized chunked body gets RESOURCE_EXHAUSTED: {text}"
    );
    assert!(
        gateway.upstreams().all().iter().all(|u| u.is_healthy()),
        "a client's oversized body must not take a replica out of rotation"
    );

    // Reflection stays inside: only the chat and health services are forwarded.
    let reflection = proto::LoginRequest::default();
    let reply: GrpcWebReply<proto::LoginResponse> = grpc_web_call(
        &gateway.url,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        None,
        None,
        &reflection,
    )
    .await;
    assert_eq!(
        reply.status.as_deref(),
        Some("12"),
        "UNIMPLEMENTED: {reply:?}"
    );

    // A client that connects and says nothing is cut off too.
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut nothing = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, silent.read_to_end(&mut nothing)).await;
    assert!(closed.is_ok(), "a silent connection must not be held open");

    // A client that never finishes its headers is cut off by the header-read timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"POST /chat.v1.AuthService/Login HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a slow header must not hold the connection open"
    );

    // And the gateway still serves everyone else.
    let health = http1_request(&gateway.url, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    gateway.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_web_client_with_its_routes() {
    let server = TestServer::spawn(StoreKind::Sqlite).await;
    let web = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        web.path().join("index.html"),
        "<!doctype html><title>chat</title>",
    )
    .expect("write index");
    std::fs::write(web.path().join("app.js"), "console.log('chat')").expect("write js");
    let root = web.path().to_str().expect("utf-8 path").to_owned();
    let gateway = TestGateway::spawn(&[&server.url], &["--web-root", &root]).await;

    let index = http1_request(&gateway.url, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    assert!(index.contains("<title>chat</title>"), "{index}");
    let js = http1_request(&gateway.url, "GET /app.js HTTP/1.1\r\n\r\n").await;
    assert!(js.contains("console.log('chat')"), "{js}");
    let route = http1_request(&gateway.url, "GET /chat/riya HTTP/1.1\r\n\r\n").await;
    assert!(
        route.contains("<title>chat</title>"),
        "a client route gets the page: {route}"
    );
    let post = http1_request(
        &gateway.url,
        "POST /app.js HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    gateway.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_stands_for_every_address_it_resolves_to() {
    let server = TestServer::spawn(StoreKind::Sqlite).await;
    let port = server.url.rsplit(':').next().expect("a port").to_owned();
    let gateway = TestGateway::spawn(&[&format!("http://localhost:{port}")], &[]).await;
    // Whatever else localhost resolves to (::1, where nothing listens) fails its first
    // health check; calls then go only to the address that serves.
    gateway.wait_for_healthy(1).await;
    let addrs: Vec<String> = gateway
        .upstreams()
        .all()
        .iter()
        .map(|u| u.addr.to_string())
        .collect();
    assert!(
        addrs.contains(&format!("127.0.0.1:{port}")),
        "localhost resolved to {addrs:?}"
    );
    let client = Client::connect(&gateway.url).await.expect("connect");
    client
        .register("alex", "correct horse battery", "t")
        .await
        .expect("register through a resolved replica");
    gateway.shutdown().await;
    server.shutdown().await;
}
