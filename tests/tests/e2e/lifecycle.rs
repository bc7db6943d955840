//! The server as an operator sees it: SIGTERM, metrics, health, token expiry.

use crate::STORE;
use chat_sdk::{Client, Cursors, Event, SessionOptions, Target};
use chat_tests::{ServerProcess, TestDb, TestServer, expect_event, messages_until_caught_up};

#[tokio::test]
async fn sigterm_closes_streams_retryably_and_exits_cleanly() {
    let db = TestDb::new(STORE).await;
    let server = ServerProcess::start_with(&db, &["--shutdown-grace", "5s"]).await;
    let client = Client::connect(&server.url).await.expect("connect");
    let riya = client
        .register("riya", "correct horse battery", "t")
        .await
        .expect("register");
    let riya = client.with_token(&riya.token).expect("token");
    let mut session = riya
        .open_session(Cursors::new(), SessionOptions::default())
        .await
        .expect("session");
    messages_until_caught_up(&mut session).await;

    let status = server.terminate().await;
    assert!(status.success(), "clean exit: {status:?}");
    let closed = expect_event(&mut session, "close", |e| match e {
        Event::Closed(status) => Some(status.clone()),
        _ => None,
    })
    .await;
    assert_eq!(closed.map(|s| s.code()), Some(tonic::Code::Unavailable));
}

#[tokio::test]
async fn metrics_and_health_are_served() {
    let server = TestServer::spawn_with(STORE, &["--metrics-listen", "127.0.0.1:0"]).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let mut session = alex.session().await;
    messages_until_caught_up(&mut session).await;
    alex.send("riya", "counted").await;
    let _ = alex
        .client
        .send(Target::User("nobody".into()), "refused")
        .await;

    let addr = server
        .running
        .as_ref()
        .and_then(|r| r.metrics_addr)
        .expect("metrics address");
    let body =
        chat_tests::http1_request(&format!("http://{addr}"), "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for needle in [
        "chat_sends_total{outcome=\"stored\"}",
        "chat_send_duration_seconds_bucket",
        "chat_sessions",
        "chat_message_deliveries_total",
        "chat_requests_rejected_total{code=\"NOT_FOUND\"}",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }

    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("c");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "chat.v1.ChatService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_ends_the_stream() {
    let server = TestServer::spawn_with(STORE, &["--token-ttl", "4s"]).await;
    let riya = server.user("riya").await;
    let mut session = riya.session().await;
    messages_until_caught_up(&mut session).await;
    let closed = expect_event(&mut session, "close at expiry", |e| match e {
        Event::Closed(status) => Some(status.clone()),
        _ => None,
    })
    .await;
    assert_eq!(closed.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
    let err = riya.client.conversations().await.expect_err("expired");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    server.shutdown().await;
}
