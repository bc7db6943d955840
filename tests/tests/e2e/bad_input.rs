//! Bad input gets a clear status, stores nothing, and never kills a stream that
//! could go on.

use crate::STORE;
use chat_sdk::{Event, Page, Target, proto};
use chat_tests::{TestServer, expect_event, messages_until_caught_up};
use tonic::Code;

fn code<T: std::fmt::Debug>(result: Result<T, chat_sdk::Error>) -> Code {
    result.expect_err("must fail").code()
}

async fn last_seq(user: &chat_tests::User, conversation: &str) -> u64 {
    let page = user
        .client
        .history(conversation, Page::Latest, 1)
        .await
        .expect("history");
    page.messages.last().map(|m| m.seq).unwrap_or(0)
}

#[tokio::test]
async fn missing_or_wrong_token_is_unauthenticated() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let anonymous = server.client().await;
    let err = anonymous.conversations().await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Raw stub without any authorization header.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("c");
    let mut raw = proto::chat_service_client::ChatServiceClient::new(channel);
    let status = raw
        .list_conversations(proto::ListConversationsRequest {})
        .await
        .expect_err("no header");
    assert_eq!(status.code(), Code::Unauthenticated);

    let wrong = server
        .client()
        .await
        .with_token("ct_not-a-real-token")
        .expect("token");
    assert_eq!(
        wrong
            .send(Target::User("alex".into()), "hi")
            .await
            .expect_err("wrong")
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        wrong
            .open_session(Default::default(), Default::default())
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::Unauthenticated)
    );

    assert_eq!(
        server.memberships(&alex).await,
        0,
        "nothing stored for a wrong token"
    );

    // A logged-out token stops working.
    alex.client.logout().await.expect("logout");
    assert_eq!(
        alex.client
            .conversations()
            .await
            .expect_err("logged out")
            .code(),
        Code::Unauthenticated
    );

    let err = anonymous
        .login("alex", "wrong password!", "t")
        .await
        .expect_err("bad password");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = anonymous
        .register("alex", "correct horse battery", "t")
        .await
        .expect_err("taken");
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = anonymous
        .register("bad name", "correct horse battery", "t")
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = anonymous
        .register("shorty", "short", "t")
        .await
        .expect_err("short password");
    assert_eq!(err.code(), Code::InvalidArgument);
    server.shutdown().await;
}

#[tokio::test]
async fn non_members_get_not_found_and_nothing_changes() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let carol = server.user("carol").await;
    let conv = alex.send("riya", "private").await.conversation_id;

    assert_eq!(
        code(carol.client.history(&conv, Page::Latest, 10).await),
        Code::NotFound
    );
    assert_eq!(code(carol.client.mark_read(&conv, 1).await), Code::NotFound);
    assert_eq!(code(carol.client.ack(&conv, 1).await), Code::NotFound);
    assert_eq!(
        code(carol.client.set_typing(&conv, true).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            carol
                .client
                .send(Target::Conversation(conv.clone()), "let me in")
                .await
        ),
        Code::NotFound
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        code(alex.client.history(&unknown, Page::Latest, 10).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            alex.client
                .send(Target::User("nobody".into()), "hello?")
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(alex.client.open_direct("nobody").await),
        Code::NotFound
    );
    assert_eq!(
        alex.client
            .history("not-a-uuid", Page::Latest, 10)
            .await
            .map(|_| ())
            .expect_err("bad id")
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(last_seq(&alex, &conv).await, 1, "nothing stored");
    let receipts = alex
        .client
        .history(&conv, Page::Latest, 1)
        .await
        .expect("history")
        .receipts;
    let marks: Vec<_> = receipts
        .iter()
        .map(|r| {
            (
                r.user.as_ref().map(|u| u.name.clone()),
                r.delivered_seq,
                r.read_seq,
            )
        })
        .collect();
    assert_eq!(
        marks,
        vec![(Some("alex".into()), 1, 1), (Some("riya".into()), 0, 0)],
        "receipts untouched"
    );
    assert_eq!(server.memberships(&carol).await, 0);
    assert!(carol.client.conversations().await.expect("list").is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_text_is_rejected_and_nothing_is_stored() {
    let server = TestServer::spawn_with(STORE, &["--max-message-bytes", "100"]).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let conv = alex.send("riya", "first").await.conversation_id;
    let riya = || Target::User("riya".into());
    for text in ["", "   \n", &"x".repeat(101), "nul\0inside"] {
        let err = alex
            .client
            .send(riya(), text)
            .await
            .expect_err("invalid text");
        assert_eq!(err.code(), Code::InvalidArgument, "text {text:?}");
    }
    assert_eq!(
        alex.client
            .send(riya(), &"é".repeat(50))
            .await
            .expect("100 bytes is fine")
            .seq,
        2
    );
    let err = alex
        .client
        .send_with_id(riya(), "", "no id")
        .await
        .expect_err("empty id");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = alex
        .client
        .send_with_id(riya(), &"k".repeat(65), "long id")
        .await
        .expect_err("long id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        last_seq(&alex, &conv).await,
        2,
        "only the good messages are stored"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn sends_over_the_rate_limit_are_resource_exhausted() {
    let server = TestServer::spawn_with(STORE, &["--send-rate", "0.01", "--send-burst", "5"]).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let mut results = Vec::new();
    for i in 0..8 {
        results.push(
            alex.client
                .send(Target::User("riya".into()), &format!("m{i}"))
                .await,
        );
    }
    let limited = results
        .iter()
        .filter(|r| r.as_ref().err().map(|e| e.code()) == Some(Code::ResourceExhausted))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(ok >= 5, "the burst goes through");
    assert!(limited >= 2, "the rest is refused");
    let conv = alex.client.open_direct("riya").await.expect("open").id;
    assert_eq!(
        last_seq(&alex, &conv).await,
        ok as u64,
        "refused sends store nothing"
    );

    // A retry of a stored message is answered with the original, over the limit too.
    let first = results[0].as_ref().expect("first send");
    let retry = alex
        .client
        .send_with_id(Target::User("riya".into()), &first.client_msg_id, "m0")
        .await
        .expect("retry answered");
    assert!(retry.duplicate);
    assert_eq!(
        (retry.seq, &retry.message_id),
        (first.seq, &first.message_id)
    );

    // A refused send to someone new does not even create the conversation.
    let dora = server.user("dora").await;
    let err = alex
        .client
        .send(Target::User("dora".into()), "hi dora")
        .await
        .expect_err("limited");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(server.memberships(&dora).await, 0, "no conversation stored");

    // Typing signals have their own limit.
    let mut typing_limited = false;
    for _ in 0..40 {
        if let Err(e) = alex.client.set_typing(&conv, true).await {
            assert_eq!(e.code(), Code::ResourceExhausted);
            typing_limited = true;
            break;
        }
    }
    assert!(typing_limited, "a typing flood is refused");
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_request_on_the_stream_does_not_end_it() {
    let server = TestServer::spawn_with(STORE, &["--max-message-bytes", "100"]).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let mut session = alex.session().await;
    messages_until_caught_up(&mut session).await;
    let riya = || Target::User("riya".into());

    let err = session.send(riya(), "").await.expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = session
        .send(riya(), &"x".repeat(101))
        .await
        .expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = session
        .send(Target::User("nobody".into()), "hi")
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    session
        .mark_read("not-a-uuid", 1)
        .await
        .expect("frame sent");
    let error = expect_event(&mut session, "error frame", |e| match e {
        Event::Error(err) => Some(err.clone()),
        _ => None,
    })
    .await;
    assert_eq!(error.code, "INVALID_ARGUMENT");

    let ack = session
        .send(riya(), "still here")
        .await
        .expect("the stream goes on");
    assert_eq!(ack.seq, 1);
    server.shutdown().await;
}

/// `SendRequest` as a client with a broken encoder would send it: the text field's
/// bytes are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct BrokenSendMessage {
    #[prost(string, tag = "1")]
    client_msg_id: String,
    #[prost(string, tag = "3")]
    recipient: String,
    #[prost(bytes = "vec", tag = "4")]
    text: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BrokenSendRequest {
    #[prost(message, optional, tag = "1")]
    message: Option<BrokenSendMessage>,
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_invalid_argument() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(BrokenSendRequest {
        message: Some(BrokenSendMessage {
            client_msg_id: "broken-1".into(),
            recipient: "riya".into(),
            text: vec![b'h', 0xff, 0xfe, b'i'],
        }),
    });
    let bearer = format!("Bearer {}", alex.creds.token)
        .parse()
        .expect("header");
    request.metadata_mut().insert("authorization", bearer);
    let codec = tonic_prost::ProstCodec::<BrokenSendRequest, proto::SendResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/chat.v1.ChatService/Send");
    let status = grpc
        .unary(request, path, codec)
        .await
        .expect_err("not UTF-8");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let conv = alex.client.open_direct("riya").await.expect("open").id;
    assert_eq!(last_seq(&alex, &conv).await, 0, "nothing stored");
    server.shutdown().await;
}

#[tokio::test]
async fn connect_must_start_with_hello_and_foreign_cursors_are_ignored() {
    use proto::client_frame::Kind as In;
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let carol = server.user("carol").await;
    let conv = alex.send("riya", "private").await.conversation_id;

    let mut raw = chat_tests::raw_chat_stub(&server.url, &carol.creds.token, None).await;
    let frame = |kind| proto::ConnectRequest {
        frame: Some(proto::ClientFrame {
            request_id: 1,
            kind: Some(kind),
        }),
    };
    let heartbeat_first = vec![frame(In::Heartbeat(proto::HeartbeatSignal {}))];
    let status = raw
        .connect(tokio_stream::iter(heartbeat_first))
        .await
        .expect_err("no hello");
    assert_eq!(status.code(), Code::InvalidArgument);

    // Carol claims a cursor in Alex and Riya's conversation: it is ignored.
    let mut cursors = chat_sdk::Cursors::new();
    cursors.advance(&conv, 0);
    let mut session = carol.session_with(cursors, Default::default()).await;
    let replayed = messages_until_caught_up(&mut session).await;
    assert!(replayed.is_empty());
    server.shutdown().await;
}
