//! Presence: online while connected, offline with a persisted last seen after the
//! session ends or stops heart-beating, flips pushed live to contacts.

use crate::STORE;
use std::time::Duration;

use chat_sdk::{Cursors, Event, SessionOptions};
use chat_tests::{TestServer, expect_event, messages_until_caught_up};

fn presence_of<'a>(name: &'a str) -> impl FnMut(&Event) -> Option<chat_sdk::proto::Presence> + 'a {
    move |e| match e {
        Event::Presence(p) if p.user.as_ref().is_some_and(|u| u.name == name) => Some(p.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn online_while_connected_then_last_seen_after_disconnect() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    alex.send("riya", "hi").await;
    let mut alex_session = alex.session().await;
    messages_until_caught_up(&mut alex_session).await;

    let never = alex.client.presence(&["riya"]).await.expect("presence");
    assert!(!never[0].online);
    assert!(never[0].last_seen.is_none(), "riya was never online");

    let mut riya_session = riya.session().await;
    messages_until_caught_up(&mut riya_session).await;
    let online = expect_event(&mut alex_session, "riya online", presence_of("riya")).await;
    assert!(online.online);
    assert!(alex.client.presence(&["riya"]).await.expect("presence")[0].online);
    let list = alex.client.conversations().await.expect("list");
    assert!(list[0].peer_presence.as_ref().is_some_and(|p| p.online));

    drop(riya_session);
    let offline = expect_event(&mut alex_session, "riya offline", presence_of("riya")).await;
    assert!(!offline.online);
    assert!(offline.last_seen.is_some());
    let stored = alex.client.presence(&["riya"]).await.expect("presence");
    assert!(!stored[0].online);
    assert_eq!(
        stored[0].last_seen, offline.last_seen,
        "last seen is persisted"
    );
    let list = alex.client.conversations().await.expect("list");
    let peer = list[0].peer_presence.as_ref().expect("peer presence");
    assert!(!peer.online);
    assert_eq!(
        peer.last_seen, offline.last_seen,
        "the list shows last seen too"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_device_that_stops_heartbeating_goes_offline_and_comes_back() {
    // Presence timeout is 2 s in tests.
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    alex.send("riya", "hi").await;
    let mut alex_session = alex.session().await;
    messages_until_caught_up(&mut alex_session).await;

    let silent = SessionOptions {
        heartbeat_interval: Some(Duration::ZERO),
        ..SessionOptions::default()
    };
    let riya_session = riya.session_with(Cursors::new(), silent).await;
    assert!(
        expect_event(&mut alex_session, "riya online", presence_of("riya"))
            .await
            .online
    );
    let offline = expect_event(
        &mut alex_session,
        "riya offline by timeout",
        presence_of("riya"),
    )
    .await;
    assert!(!offline.online);
    assert!(offline.last_seen.is_some());

    // Any frame on the stream is a sign of life.
    let conv = alex.client.open_direct("riya").await.expect("open").id;
    riya_session.typing(&conv, false).await.expect("typing");
    assert!(
        expect_event(&mut alex_session, "riya back online", presence_of("riya"))
            .await
            .online
    );
    server.shutdown().await;
}

#[tokio::test]
async fn presence_is_only_visible_to_contacts() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let _stranger = server.user("stranger").await;
    let err = alex
        .client
        .presence(&["stranger"])
        .await
        .expect_err("not a contact");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = alex
        .client
        .presence(&["nobody"])
        .await
        .expect_err("no such user");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(
        alex.client.presence(&["alex"]).await.expect("self").len(),
        1
    );
    server.shutdown().await;
}
