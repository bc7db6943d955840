//! The `chat` binary's push commands against a real server, and bad push input refused
//! with a clear status without changing anything.

use std::path::Path;
use std::process::Output;

use chat_sdk::proto::PushMode;
use chat_tests::{PushReceiver, Reply, StoreKind, workspace_bin};
use serde_json::Value;
use tonic::Code;

use crate::{SECRET, Setup, send};

async fn chat(url: &str, config: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(workspace_bin("chat"))
        .arg("--server")
        .arg(url)
        .arg("--config-dir")
        .arg(config)
        .arg("--json")
        .args(args)
        .env_remove("CHAT_AS")
        .output()
        .await
        .expect("run chat")
}

fn lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "chat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[tokio::test]
async fn the_cli_manages_push_targets_mode_and_mutes() {
    let setup = Setup::start(StoreKind::Sqlite, &[]).await;
    let url = setup.server.url.clone();
    let dirs = tempfile::tempdir().expect("temp dir");
    let riya = dirs.path().join("riya");
    let alex = setup.user("alex").await;
    lines(
        &chat(
            &url,
            &riya,
            &["register", "riya", "--password", "correct horse"],
        )
        .await,
    );
    let receiver = PushReceiver::start(&[], Reply::Status(200)).await;

    let added = lines(
        &chat(
            &url,
            &riya,
            &["push", "add-webhook", &receiver.url, "--secret", SECRET],
        )
        .await,
    );
    assert_eq!(added[0]["type"], "push_target");
    assert_eq!(added[0]["kind"], "webhook");
    assert_eq!(added[0]["url"], receiver.url.as_str());
    let id = added[0]["id"].as_str().expect("id").to_owned();
    let listed = lines(&chat(&url, &riya, &["push", "list"]).await);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    let mode = lines(&chat(&url, &riya, &["push", "mode", "content-free"]).await);
    assert_eq!(mode[0]["mode"], "content-free");

    // A conversation must exist to be muted; its first message is pushed.
    send(&alex, "riya", "hello").await;
    setup.wait_counter("chat_push_sent_total", &[], 1).await;
    let muted = lines(&chat(&url, &riya, &["mute", "alex"]).await);
    assert_eq!(muted[0]["type"], "muted");
    send(&alex, "riya", "muted hello").await;
    setup
        .wait_counter("chat_push_suppressed_total", &[("reason", "muted")], 1)
        .await;
    let unmuted = lines(&chat(&url, &riya, &["unmute", "alex"]).await);
    assert_eq!(unmuted[0]["type"], "unmuted");
    send(&alex, "riya", "unmuted hello").await;
    setup.wait_counter("chat_push_sent_total", &[], 2).await;
    let push = receiver.received()[1].json();
    assert_eq!(push["title"], "3 new messages", "content-free: {push}");
    assert!(push.get("body").is_none());

    let removed = lines(&chat(&url, &riya, &["push", "remove", &id]).await);
    assert_eq!(removed[0]["type"], "push_target_removed");
    assert!(lines(&chat(&url, &riya, &["push", "list"]).await).is_empty());
    let again = chat(&url, &riya, &["push", "remove", &id]).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[tokio::test]
async fn bad_push_input_is_refused_and_changes_nothing() {
    let setup = Setup::start(StoreKind::Sqlite, &[]).await;
    let riya = setup.user("riya").await;
    let alex = setup.user("alex").await;
    let good = riya
        .add_webhook("https://hooks.example.com/chat", SECRET)
        .await
        .expect("a valid webhook");

    let code = |r: Result<chat_sdk::proto::PushTarget, chat_sdk::Error>| match r {
        Ok(t) => panic!("accepted {t:?}"),
        Err(e) => e.code(),
    };
    assert_eq!(
        code(riya.add_webhook("ftp://example.com/x", SECRET).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(riya.add_webhook("not a url", SECRET).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(riya.add_webhook("https://example.com/x", "short").await),
        Code::InvalidArgument
    );
    let key = "BA".repeat(40);
    assert_eq!(
        code(
            riya.add_web_push("https://push.example.com/x", &key, "AAAAAAAAAAAAAAAAAAAAAA")
                .await
        ),
        Code::InvalidArgument,
        "a p256dh that is not a P-256 point"
    );
    assert_eq!(
        riya.remove_push_target(&uuid::Uuid::new_v4().to_string())
            .await
            .expect_err("unknown id")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        riya.remove_push_target("nope")
            .await
            .expect_err("malformed id")
            .code(),
        Code::InvalidArgument
    );
    // Someone else's target is not found either.
    assert_eq!(
        alex.remove_push_target(&good.id)
            .await
            .expect_err("not alex's")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        riya.set_push_mode(PushMode::Unspecified)
            .await
            .expect_err("unspecified mode")
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        riya.set_muted(&uuid::Uuid::new_v4().to_string(), true)
            .await
            .expect_err("not a member")
            .code(),
        Code::NotFound
    );

    let targets = riya.push_targets().await.expect("list");
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].id, good.id);
    match &targets[0].kind {
        Some(chat_sdk::proto::push_target::Kind::Webhook(w)) => {
            assert_eq!(w.url, "https://hooks.example.com/chat");
            assert!(w.secret.is_empty(), "the secret is never sent back");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        riya.push_settings().await.expect("settings").mode(),
        PushMode::Content
    );
}
