//! A local HTTP/1.1 endpoint that stands in for a webhook receiver or a Web Push
//! service: it records every request and answers from a script (a status per request,
//! or no answer at all), so tests can see exactly what a push provider sent.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::DEADLINE;

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// Read the request and never answer (the connection stays open): a sender stuck
    /// mid-delivery.
    Hang,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered (None: it hung).
    pub answered: Option<u16>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    received: Vec<Received>,
}

pub struct PushReceiver {
    pub url: String,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl PushReceiver {
    /// Answers requests with `script` in order, then with `then` forever.
    pub async fn start(script: &[Reply], then: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/push", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            script: script.iter().copied().collect(),
            received: Vec::new(),
        }));
        let arrived = Arc::new(Notify::new());
        let task = {
            let state = state.clone();
            let arrived = arrived.clone();
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let state = state.clone();
                    let arrived = arrived.clone();
                    tokio::spawn(serve(socket, state, arrived, then));
                }
            })
        };
        PushReceiver {
            url,
            state,
            arrived,
            task,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("state").received.clone()
    }

    /// Waits until at least `n` requests arrived; fails at the deadline.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let notified = self.arrived.notified();
                let received = self.received();
                if received.len() >= n {
                    return received;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{n} push requests did not arrive; got {:?}",
                self.received()
            )
        })
    }
}

impl Drop for PushReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>, arrived: Arc<Notify>, then: Reply) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // One request per connection: the answer says `connection: close`.
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    let reply = {
        let mut state = state.lock().expect("state");
        let reply = state.script.pop_front().unwrap_or(then);
        state.received.push(Received {
            method,
            path,
            headers,
            body,
            answered: match reply {
                Reply::Status(code) => Some(code),
                Reply::Hang => None,
            },
        });
        reply
    };
    arrived.notify_waiters();
    match reply {
        Reply::Status(code) => {
            let answer = format!(
                "HTTP/1.1 {code} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
        Reply::Hang => {
            // Hold the connection until the sender gives up or the test ends.
            let _ = socket.read(&mut chunk).await;
        }
    }
}
