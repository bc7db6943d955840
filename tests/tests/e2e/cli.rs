//! The real `chat` binary against a real server: register, send, watch, read, history.

use crate::STORE;
use std::path::Path;
use std::process::Output;

use chat_tests::{TestServer, workspace_bin};
use serde_json::Value;

async fn chat(server: &TestServer, config: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(workspace_bin("chat"))
        .arg("--server")
        .arg(&server.url)
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
async fn register_send_watch_read_history() {
    let server = TestServer::spawn(STORE).await;
    let dirs = tempfile::tempdir().expect("temp dir");
    let alex = dirs.path().join("alex");
    let riya = dirs.path().join("riya");

    let out = lines(
        &chat(
            &server,
            &alex,
            &["register", "alex", "--password", "correct horse"],
        )
        .await,
    );
    assert_eq!(out[0]["type"], "session");
    lines(
        &chat(
            &server,
            &riya,
            &["register", "riya", "--password", "correct horse"],
        )
        .await,
    );

    let sent = lines(&chat(&server, &alex, &["send", "riya", "lunch?"]).await);
    assert_eq!(sent[0]["type"], "sent");
    assert_eq!(sent[0]["seq"], 1);
    let sent2 = lines(&chat(&server, &alex, &["send", "riya", "at 1?"]).await);
    assert_eq!(sent2[0]["seq"], 2);

    let watched = lines(
        &chat(
            &server,
            &riya,
            &["watch", "--count", "2", "--timeout", "20"],
        )
        .await,
    );
    let messages: Vec<&Value> = watched.iter().filter(|v| v["type"] == "message").collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        (messages[0]["text"].as_str(), messages[0]["sender"].as_str()),
        (Some("lunch?"), Some("alex"))
    );
    assert_eq!(messages[1]["seq"], 2);
    assert_eq!(messages[0]["conversation_id"], sent[0]["conversation_id"]);

    let history = lines(&chat(&server, &alex, &["history", "riya"]).await);
    assert_eq!(history.len(), 2);
    assert!(
        history
            .iter()
            .all(|m| m["type"] == "message" && m["status"] == "delivered"),
        "{history:?}"
    );

    let read = lines(&chat(&server, &riya, &["read", "alex"]).await);
    assert_eq!(
        (read[0]["type"].as_str(), read[0]["read_seq"].as_u64()),
        (Some("receipt"), Some(2))
    );
    let history = lines(&chat(&server, &alex, &["history", "riya", "--limit", "1"]).await);
    assert_eq!(
        (
            history.len(),
            history[0]["seq"].as_u64(),
            history[0]["status"].as_str()
        ),
        (1, Some(2), Some("read"))
    );
    let older = lines(&chat(&server, &alex, &["history", "riya", "--before", "2"]).await);
    assert_eq!(older[0]["seq"], 1);

    // The saved cursors make a second watch start after what was shown.
    lines(&chat(&server, &alex, &["send", "riya", "third"]).await);
    let watched = lines(
        &chat(
            &server,
            &riya,
            &["watch", "--count", "1", "--timeout", "20"],
        )
        .await,
    );
    let messages: Vec<&Value> = watched.iter().filter(|v| v["type"] == "message").collect();
    assert_eq!(
        (messages.len(), messages[0]["text"].as_str()),
        (1, Some("third"))
    );

    let conversations = lines(&chat(&server, &riya, &["conversations"]).await);
    assert_eq!(conversations[0]["type"], "conversation");
    assert_eq!(conversations[0]["peer"], "alex");
    assert_eq!(conversations[0]["unread"], 1);
    let presence = lines(&chat(&server, &riya, &["presence", "alex"]).await);
    assert_eq!(
        (
            presence[0]["type"].as_str(),
            presence[0]["online"].as_bool()
        ),
        (Some("presence"), Some(false))
    );

    let failed = chat(&server, &alex, &["send", "nobody", "hi"]).await;
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("NOT_FOUND"));
    server.shutdown().await;
}
