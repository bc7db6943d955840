//! A session that stops reading is closed with UNAVAILABLE once its bounded queue is
//! full; nobody else waits for it, and after reconnecting it has everything.

use crate::STORE;
use chat_sdk::{Cursors, SessionOptions, proto};
use chat_tests::{TestServer, messages_through, messages_until_caught_up, seqs};
use futures::StreamExt;
use tonic::Code;

#[tokio::test]
async fn a_stalled_session_is_cut_off_without_holding_up_others() {
    let server = TestServer::spawn_with(STORE, &["--session-queue", "16"]).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    let conv = alex.client.open_direct("riya").await.expect("open").id;

    // Riya's stalled device: a raw stream with small HTTP/2 windows that is never read.
    let mut raw = chat_tests::raw_chat_stub(&server.url, &riya.creds.token, Some(65_535)).await;
    let (frames, outbound) = tokio::sync::mpsc::channel(4);
    let hello = proto::ClientFrame {
        request_id: 0,
        kind: Some(proto::client_frame::Kind::Hello(proto::Hello {
            cursors: vec![],
        })),
    };
    frames
        .send(proto::ConnectRequest { frame: Some(hello) })
        .await
        .expect("hello");
    let mut stalled = raw
        .connect(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .expect("connect")
        .into_inner();

    // Riya's other device and Alex's own session read normally.
    let mut riya_fast = riya.session().await;
    let mut alex_session = alex.session().await;
    messages_until_caught_up(&mut riya_fast).await;
    messages_until_caught_up(&mut alex_session).await;
    assert_eq!(server.chat().hub.session_count(), 3);

    let text = "x".repeat(3000);
    let total = 300;
    for _ in 0..total {
        alex.send("riya", &text).await;
    }
    assert_eq!(
        seqs(&messages_through(&mut riya_fast, &conv, total).await),
        (1..=total).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&messages_through(&mut alex_session, &conv, total).await),
        (1..=total).collect::<Vec<_>>()
    );

    // The stalled stream holds what fitted in its buffers, then the close status.
    let mut held = 0;
    let status = loop {
        match tokio::time::timeout(chat_tests::DEADLINE, stalled.next())
            .await
            .expect("stream ends")
        {
            Some(Ok(proto::ConnectResponse {
                frame:
                    Some(proto::ServerFrame {
                        kind: Some(proto::server_frame::Kind::Message(m)),
                    }),
            })) => {
                assert_eq!(m.seq, held + 1, "in order, no gaps");
                held = m.seq;
            }
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        held < total,
        "the server did not buffer everything for a stalled client"
    );
    assert_eq!(
        server.chat().hub.session_count(),
        2,
        "the stalled session is gone"
    );
    drop(frames);

    // Reconnecting from what it held gets exactly the rest.
    let mut cursors = Cursors::new();
    cursors.advance(&conv, held);
    let mut resumed = riya.session_with(cursors, SessionOptions::default()).await;
    let rest = messages_until_caught_up(&mut resumed).await;
    assert_eq!(seqs(&rest), (held + 1..=total).collect::<Vec<_>>());
    server.shutdown().await;
}
