//! A TCP proxy that breaks a link on command, for partition tests. It forwards bytes
//! ([`Mode::Pass`]), swallows them while every connection stays open
//! ([`Mode::Blackhole`]: a partition that TCP itself does not notice, found only by
//! timeouts), or resets every connection ([`Mode::Reset`]: a peer that is plainly
//! gone).
//!
//! A connection that was blackholed is reset when the blackhole ends: a TCP stream
//! cannot resume with a hole in it. That is how a partition ends that lasted long
//! enough for the peers to give up on their connections.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with traffic; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Reset,
}

/// Connecting to a local upstream takes microseconds, or is refused at once; this
/// only bounds a pathological case.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BUFFER: usize = 16 * 1024;

/// A proxy on a loopback port in front of one upstream address. Dropping it stops it
/// and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts in [`Mode::Pass`].
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let (mode, _) = watch::channel(Mode::Pass);
        let accept = tokio::spawn(accept_loop(listener, upstream, mode.subscribe()));
        FaultProxy { addr, mode, accept }
    }

    /// Takes effect on existing connections as soon as their tasks run, and on every
    /// connection accepted after this returns.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a Redis URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The proxy as a server URL, for a proxy in front of a chat server.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    // Connection tasks live in this set so that aborting this task aborts them too.
    let mut connections = JoinSet::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of file descriptors or the like: let some connections end.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let now = *mode.borrow();
        match now {
            Mode::Pass => {
                connections.spawn(relay(client, upstream, mode.clone()));
            }
            Mode::Blackhole => {
                connections.spawn(swallow(client, mode.clone()));
            }
            Mode::Reset => reset(client),
        }
    }
}

/// Forwards both ways until both sides have closed, or the mode cuts the connection.
async fn relay(mut client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(Ok(mut server)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
    else {
        // As if the upstream itself had refused: the client sees its connection reset.
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Set by a pump that dropped bytes, so the connection is reset when the blackhole
    // ends even if the watcher never saw `Blackhole` (watch keeps only the latest).
    let holed = AtomicBool::new(false);
    let abortive = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let pumps = async {
            tokio::try_join!(
                pump(client_read, server_write, &mode, &holed),
                pump(server_read, client_write, &mode, &holed),
            )
        };
        tokio::select! {
            done = pumps => done.is_err(),
            () = until_cut(mode.clone(), &holed) => true,
        }
    };
    if abortive {
        reset(client);
        reset(server);
    }
}

/// Accepted during a blackhole: no upstream connection, every byte dropped, and a
/// reset once the blackhole ends.
async fn swallow(mut client: TcpStream, mode: watch::Receiver<Mode>) {
    let holed = AtomicBool::new(true);
    {
        let drain = async {
            let mut buf = vec![0; BUFFER];
            while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            () = drain => {}
            () = until_cut(mode, &holed) => {}
        }
    }
    reset(client);
}

/// Copies one direction; in any mode but `Pass` the bytes are read and dropped.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mode: &watch::Receiver<Mode>,
    holed: &AtomicBool,
) -> io::Result<()> {
    let mut buf = vec![0; BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        let passing = *mode.borrow() == Mode::Pass;
        if !passing {
            holed.store(true, Ordering::Relaxed);
        }
        if n == 0 {
            if passing {
                to.shutdown().await?;
            }
            return Ok(());
        }
        if passing {
            to.write_all(&buf[..n]).await?;
        }
    }
}

/// Resolves when the connection must be reset: on `Reset`, or on leaving `Blackhole`
/// once it has been blackholed.
async fn until_cut(mut mode: watch::Receiver<Mode>, holed: &AtomicBool) {
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Reset => return,
            Mode::Blackhole => holed.store(true, Ordering::Relaxed),
            Mode::Pass if holed.load(Ordering::Relaxed) => return,
            Mode::Pass => {}
        }
        if mode.changed().await.is_err() {
            // The proxy is gone.
            return;
        }
    }
}

/// Closes with RST rather than FIN: SO_LINGER 0 makes the close abortive.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{FaultProxy, Mode};

    /// A bound for "nothing arrives": long enough for a loopback echo many times over.
    const QUIET: Duration = Duration::from_millis(300);

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn echoes(stream: &mut TcpStream) -> bool {
        stream.write_all(b"ping").await.expect("write");
        let mut buf = [0; 4];
        matches!(
            tokio::time::timeout(QUIET, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"ping"
    }

    /// Whether the stream has been closed on us (reset or EOF) within the deadline.
    async fn is_closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0; 16];
        matches!(
            tokio::time::timeout(crate::DEADLINE, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn passes_blackholes_and_resets() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut before = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(echoes(&mut before).await, "Pass forwards both ways");

        proxy.set_mode(Mode::Blackhole);
        assert!(!echoes(&mut before).await, "Blackhole drops bytes");
        let mut during = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(
            !echoes(&mut during).await,
            "a new connection is blackholed too"
        );

        proxy.set_mode(Mode::Pass);
        assert!(
            is_closed(&mut before).await,
            "a blackholed connection is reset"
        );
        assert!(
            is_closed(&mut during).await,
            "a blackholed connection is reset"
        );
        let mut after = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(echoes(&mut after).await, "new connections pass again");

        proxy.set_mode(Mode::Reset);
        assert!(is_closed(&mut after).await, "Reset closes open connections");
        let mut refused = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(
            is_closed(&mut refused).await,
            "Reset closes new connections"
        );
    }
}
