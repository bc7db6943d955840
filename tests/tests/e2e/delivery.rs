//! Live delivery, receipts as watermarks, offline catch-up and resume from cursors.

use crate::STORE;
use chat_sdk::{Cursors, Event, SessionOptions, Target};
use chat_tests::{TestServer, expect_event, messages_through, messages_until_caught_up, seqs};

fn manual_acks() -> SessionOptions {
    SessionOptions {
        auto_ack: false,
        ..SessionOptions::default()
    }
}

#[tokio::test]
async fn live_message_and_status_sent_delivered_read() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    let mut alex_session = alex.session().await;
    let mut riya_session = riya.session_with(Cursors::new(), manual_acks()).await;
    expect_event(&mut alex_session, "alex caught up", |e| {
        matches!(e, Event::CaughtUp(_)).then_some(())
    })
    .await;
    expect_event(&mut riya_session, "riya caught up", |e| {
        matches!(e, Event::CaughtUp(_)).then_some(())
    })
    .await;

    let ack = alex_session
        .send(Target::User("riya".into()), "lunch?")
        .await
        .expect("send");
    assert_eq!(ack.seq, 1);
    let conv = ack.conversation_id.clone();

    let got = expect_event(&mut riya_session, "the message", |e| match e {
        Event::Message(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!((got.seq, got.text.as_str()), (1, "lunch?"));
    assert_eq!(got.sender.as_ref().map(|u| u.name.as_str()), Some("alex"));
    assert_eq!(got.id, ack.message_id);

    let status = |page: &chat_sdk::HistoryPage| page.messages[0].status();
    let page = alex
        .client
        .history(&conv, chat_sdk::Page::Latest, 10)
        .await
        .expect("history");
    assert_eq!(
        status(&page),
        chat_sdk::proto::MessageStatus::Sent,
        "nothing acked yet"
    );

    riya_session.ack(&conv, 1).await.expect("ack");
    let receipt = expect_event(&mut alex_session, "delivered receipt", |e| match e {
        Event::Receipt(r) if r.user.as_ref().is_some_and(|u| u.name == "riya") => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!((receipt.delivered_seq, receipt.read_seq), (1, 0));
    let page = alex
        .client
        .history(&conv, chat_sdk::Page::Latest, 10)
        .await
        .expect("history");
    assert_eq!(status(&page), chat_sdk::proto::MessageStatus::Delivered);

    riya_session.mark_read(&conv, 1).await.expect("mark read");
    let receipt = expect_event(&mut alex_session, "read receipt", |e| match e {
        Event::Receipt(r) if r.user.as_ref().is_some_and(|u| u.name == "riya") => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!((receipt.delivered_seq, receipt.read_seq), (1, 1));
    let page = alex
        .client
        .history(&conv, chat_sdk::Page::Latest, 10)
        .await
        .expect("history");
    assert_eq!(status(&page), chat_sdk::proto::MessageStatus::Read);

    // Watermarks never move back and never pass the last seq.
    let r = riya.client.ack(&conv, 0).await.expect("ack");
    assert_eq!((r.delivered_seq, r.read_seq), (1, 1));
    let r = riya.client.mark_read(&conv, 99).await.expect("mark read");
    assert_eq!((r.delivered_seq, r.read_seq), (1, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn offline_recipient_gets_everything_in_order_then_caught_up() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    let mut texts = Vec::new();
    for i in 1..=1000u64 {
        let text = format!("message {i}");
        let ack = alex.send("riya", &text).await;
        assert_eq!(ack.seq, i, "acks carry gapless seqs");
        texts.push(text);
    }
    let mut session = riya.session().await;
    let messages = messages_until_caught_up(&mut session).await;
    assert_eq!(
        seqs(&messages),
        (1..=1000).collect::<Vec<_>>(),
        "all, in order, no gaps, no duplicates"
    );
    assert_eq!(
        messages.iter().map(|m| m.text.clone()).collect::<Vec<_>>(),
        texts
    );

    // Auto-acks reach the store: a new device of Riya's with no cursors gets nothing again.
    let conv = messages[0].conversation_id.clone();
    expect_event(&mut session, "riya's own delivered receipt", |e| match e {
        Event::Receipt(r)
            if r.delivered_seq == 1000 && r.user.as_ref().is_some_and(|u| u.name == "riya") =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    drop(session);
    let mut again = riya.session().await;
    assert!(messages_until_caught_up(&mut again).await.is_empty());
    let list = riya.client.conversations().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].id.as_str(), list[0].unread, list[0].last_seq),
        (conv.as_str(), 1000, 1000)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn reconnect_replays_only_what_is_missing() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    // Riya's device does not ack, so only its cursors say what it holds.
    let mut session = riya.session_with(Cursors::new(), manual_acks()).await;
    messages_until_caught_up(&mut session).await;
    let mut conv = String::new();
    for i in 1..=5 {
        conv = alex.send("riya", &format!("m{i}")).await.conversation_id;
    }
    let first = messages_through(&mut session, &conv, 5).await;
    assert_eq!(seqs(&first), vec![1, 2, 3, 4, 5]);
    let cursors = session.cursors();
    assert_eq!(cursors.get(&conv), 5);
    drop(session);

    for i in 6..=10 {
        alex.send("riya", &format!("m{i}")).await;
    }
    let mut resumed = riya.session_with(cursors, manual_acks()).await;
    let replayed = messages_until_caught_up(&mut resumed).await;
    assert_eq!(seqs(&replayed), vec![6, 7, 8, 9, 10]);
    assert_eq!(resumed.cursors().get(&conv), 10);

    // A client that lost some state resumes from an older cursor.
    let mut older = Cursors::new();
    older.advance(&conv, 3);
    let mut from_three = riya.session_with(older, manual_acks()).await;
    assert_eq!(
        seqs(&messages_until_caught_up(&mut from_three).await),
        vec![4, 5, 6, 7, 8, 9, 10]
    );

    // Live messages continue after the replay with no gap or repeat.
    alex.send("riya", "m11").await;
    assert_eq!(
        seqs(&messages_through(&mut from_three, &conv, 11).await),
        vec![11]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn typing_reaches_the_other_member_only() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    let conv = alex.client.open_direct("riya").await.expect("open").id;
    let carol = server.user("carol").await;
    let mut alex_session = alex.session().await;
    let mut riya_session = riya.session().await;
    let mut carol_session = carol.session().await;
    messages_until_caught_up(&mut alex_session).await;
    messages_until_caught_up(&mut riya_session).await;
    messages_until_caught_up(&mut carol_session).await;
    riya_session.typing(&conv, true).await.expect("typing");
    let typing = expect_event(&mut alex_session, "typing", |e| match e {
        Event::Typing(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert!(typing.typing);
    assert_eq!(typing.user.map(|u| u.name), Some("riya".into()));

    // Riya's own stream and a non-member's: a later message marks the point by which
    // a typing event would have arrived (events reach a session in publish order).
    riya_session
        .send(Target::User("alex".into()), "marker")
        .await
        .expect("send");
    carol.send("riya", "carol's marker").await;
    for (session, who) in [(&mut riya_session, "riya"), (&mut carol_session, "carol")] {
        let mut typing_seen = false;
        expect_event(session, "marker", |e| match e {
            Event::Typing(_) => {
                typing_seen = true;
                None
            }
            Event::Message(_) => Some(()),
            _ => None,
        })
        .await;
        assert!(!typing_seen, "{who} must not get riya's typing");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_streams_with_a_retryable_status() {
    let server = TestServer::spawn(STORE).await;
    let riya = server.user("riya").await;
    let mut session = riya.session().await;
    messages_until_caught_up(&mut session).await;
    server.shutdown().await;
    let status = expect_event(&mut session, "close", |e| match e {
        Event::Closed(status) => Some(status.clone()),
        _ => None,
    })
    .await;
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unavailable));
}

#[tokio::test]
async fn subscribe_and_unary_calls_serve_the_same_session_core() {
    use chat_sdk::proto::{self, server_frame::Kind};
    use chat_tests::{next_frame, raw_chat_stub};
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    let first = alex.send("riya", "while you were away").await;
    let conv = first.conversation_id.clone();
    let mut alex_session = alex.session().await;
    messages_until_caught_up(&mut alex_session).await;

    // Riya's browser: a server stream plus unary calls.
    let mut browser = raw_chat_stub(&server.url, &riya.creds.token, None).await;
    let mut stream = browser
        .subscribe(proto::SubscribeRequest { cursors: vec![] })
        .await
        .expect("subscribe")
        .into_inner();
    let unwrap = |r: proto::SubscribeResponse| r.frame;
    assert!(matches!(
        next_frame(&mut stream, unwrap).await,
        Kind::Welcome(_)
    ));
    // Alex's "online" is announced by its own task and may reach Riya at any point
    // after her welcome: presence frames are skipped below.
    async fn next_but_presence(stream: &mut tonic::Streaming<proto::SubscribeResponse>) -> Kind {
        loop {
            match next_frame(stream, |r: proto::SubscribeResponse| r.frame).await {
                Kind::Presence(_) => {}
                other => return other,
            }
        }
    }
    match next_but_presence(&mut stream).await {
        Kind::Message(m) => assert_eq!((m.seq, m.text.as_str()), (1, "while you were away")),
        other => panic!("expected the missed message, got {other:?}"),
    }
    let caught_up = loop {
        match next_but_presence(&mut stream).await {
            Kind::CaughtUp(c) => break c,
            Kind::Receipt(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        caught_up.cursors,
        vec![proto::Cursor {
            conversation_id: conv.clone(),
            seq: 1
        }]
    );
    let online = expect_event(&mut alex_session, "riya online", |e| match e {
        Event::Presence(p) => Some(p.online),
        _ => None,
    })
    .await;
    assert!(online);

    alex_session
        .send(Target::User("riya".into()), "live")
        .await
        .expect("send");
    match next_but_presence(&mut stream).await {
        Kind::Message(m) => assert_eq!(m.seq, 2),
        other => panic!("expected the live message, got {other:?}"),
    }
    browser
        .heartbeat(proto::HeartbeatRequest {})
        .await
        .expect("heartbeat");
    let mark = proto::MarkReadUpTo {
        conversation_id: conv.clone(),
        seq: 2,
    };
    let receipt = browser
        .mark_read(proto::MarkReadRequest { mark: Some(mark) })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(
        receipt.receipt.map(|r| (r.delivered_seq, r.read_seq)),
        Some((2, 2))
    );
    let read = expect_event(&mut alex_session, "read receipt", |e| match e {
        Event::Receipt(r) if r.user.as_ref().is_some_and(|u| u.name == "riya") => Some(r.read_seq),
        _ => None,
    })
    .await;
    assert_eq!(read, 2);

    // A send from the browser reaches Alex live, echoed on Riya's own stream.
    let send = proto::SendMessage {
        client_msg_id: "browser-1".into(),
        target: Some(proto::send_message::Target::ConversationId(conv.clone())),
        text: "from the browser".into(),
    };
    let ack = browser
        .send(proto::SendRequest {
            message: Some(send),
        })
        .await
        .expect("send")
        .into_inner();
    assert_eq!(ack.ack.map(|a| a.seq), Some(3));
    let got = expect_event(&mut alex_session, "browser message", |e| match e {
        Event::Message(m) if m.seq == 3 => Some(m.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(got, "from the browser");
    loop {
        if let Kind::Message(m) = next_but_presence(&mut stream).await {
            assert_eq!(m.seq, 3);
            break;
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_returning_device_gets_conversations_it_has_never_seen() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let bob = server.user("bob").await;
    let riya = server.user("riya").await;
    let conv = alex.send("riya", "hello").await.conversation_id;
    // The laptop has seen the conversation with Alex, then goes offline.
    let mut laptop = riya.session().await;
    assert_eq!(seqs(&messages_until_caught_up(&mut laptop).await), vec![1]);
    let laptop_cursors = laptop.cursors();
    drop(laptop);

    // Meanwhile Bob starts a conversation; Riya's phone receives and acks all of it.
    let mut phone = riya
        .session_with(Cursors::new(), SessionOptions::default())
        .await;
    messages_until_caught_up(&mut phone).await;
    let bob_conv = bob.send("riya", "b1").await.conversation_id;
    bob.send("riya", "b2").await;
    messages_through(&mut phone, &bob_conv, 2).await;
    expect_event(&mut phone, "phone's delivered receipt", |e| match e {
        Event::Receipt(r) if r.conversation_id == bob_conv && r.delivered_seq == 2 => Some(()),
        _ => None,
    })
    .await;

    // The laptop comes back with its cursors and still gets Bob's messages.
    let mut laptop = riya
        .session_with(laptop_cursors, SessionOptions::default())
        .await;
    let replayed = messages_until_caught_up(&mut laptop).await;
    assert_eq!(
        replayed.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        vec!["b1", "b2"]
    );
    assert_eq!(laptop.cursors().get(&conv), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn replying_does_not_mark_unread_messages_read() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    let conv = riya.send("alex", "r1").await.conversation_id;
    riya.send("alex", "r2").await;
    alex.send("riya", "reply without reading").await;
    let page = riya
        .client
        .history(&conv, chat_sdk::Page::Latest, 10)
        .await
        .expect("history");
    let statuses: Vec<_> = page.messages.iter().map(|m| m.status()).collect();
    use chat_sdk::proto::MessageStatus::{Read, Sent};
    assert_eq!(
        statuses[..2],
        [Sent, Sent],
        "Alex has not read Riya's messages"
    );
    let alex_view = alex.client.conversations().await.expect("list");
    assert_eq!(alex_view[0].read_seq, 0);

    // Once caught up, a sender's own message is not unread for them.
    alex.client.mark_read(&conv, 0).await.expect("read");
    alex.send("riya", "now caught up").await;
    let alex_view = alex.client.conversations().await.expect("list");
    assert_eq!((alex_view[0].unread, alex_view[0].read_seq), (0, 4));
    let page = riya
        .client
        .history(&conv, chat_sdk::Page::Latest, 10)
        .await
        .expect("history");
    assert_eq!(page.messages[0].status(), Read);
    server.shutdown().await;
}

#[tokio::test]
async fn logout_ends_the_device_streams() {
    let server = TestServer::spawn(STORE).await;
    let riya = server.user("riya").await;
    let mut session = riya.session().await;
    messages_until_caught_up(&mut session).await;
    riya.client.logout().await.expect("logout");
    let status = expect_event(&mut session, "close", |e| match e {
        Event::Closed(status) => Some(status.clone()),
        _ => None,
    })
    .await;
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
    let err = session
        .send(Target::User("alex".into()), "hi")
        .await
        .expect_err("closed");
    assert_eq!(
        err.code(),
        tonic::Code::Unavailable,
        "a send after the end fails at once"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_half_closed_connect_stream_still_gets_its_answers() {
    use chat_sdk::proto::{self, client_frame::Kind as In, server_frame::Kind};
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let mut raw = chat_tests::raw_chat_stub(&server.url, &alex.creds.token, None).await;
    let frame = |kind| proto::ConnectRequest {
        frame: Some(proto::ClientFrame {
            request_id: 7,
            kind: Some(kind),
        }),
    };
    // Like a script: hello, one send, end of input.
    let requests = vec![
        frame(In::Hello(proto::Hello { cursors: vec![] })),
        frame(In::Send(proto::SendMessage {
            client_msg_id: "script-1".into(),
            target: Some(proto::send_message::Target::Recipient("riya".into())),
            text: "from a script".into(),
        })),
    ];
    let mut stream = raw
        .connect(tokio_stream::iter(requests))
        .await
        .expect("connect")
        .into_inner();
    let unwrap = |r: proto::ConnectResponse| r.frame;
    loop {
        if let Kind::SendAck(ack) = chat_tests::next_frame(&mut stream, unwrap).await {
            assert_eq!((ack.client_msg_id.as_str(), ack.seq), ("script-1", 1));
            break;
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_quiet_stream_says_it_is_alive() {
    use chat_sdk::proto::{self, server_frame::Kind};
    use chat_tests::{DEADLINE, raw_chat_stub};
    use futures::StreamExt;

    // Heartbeat interval 500 ms (the test default): a stream with nothing to say sends a
    // keep-alive about that often, so a browser on HTTP/1.1 can tell it from a dead one.
    let server = TestServer::spawn(STORE).await;
    let riya = server.user("riya").await;
    let mut stub = raw_chat_stub(&server.url, &riya.creds.token, None).await;
    let mut stream = stub
        .subscribe(proto::SubscribeRequest { cursors: vec![] })
        .await
        .expect("subscribe")
        .into_inner();
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let frame = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame");
        match frame.frame.and_then(|f| f.kind) {
            Some(Kind::Welcome(_)) => kinds.push("welcome"),
            Some(Kind::CaughtUp(_)) => kinds.push("caught_up"),
            Some(Kind::KeepAlive(_)) => kinds.push("keep_alive"),
            other => panic!("nothing else happens on this stream: {other:?}"),
        }
    }
    assert_eq!(kinds, ["welcome", "caught_up", "keep_alive", "keep_alive"]);
    server.shutdown().await;
}
