//! Redis for tests: a private `redis-server`, or a cluster of three masters, on free
//! loopback ports in temporary directories, without persistence, killed when dropped.
//! Readiness is checked by speaking RESP over a plain TCP socket, so the harness needs
//! no Redis client of its own.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::DEADLINE;

/// Starts on ports found free, which another process may bind first: try a few.
const START_ATTEMPTS: usize = 5;
/// A restart reuses its port, which a client's outgoing connection may hold for a
/// moment after the kill: retry for a while before giving up.
const RESTART_ATTEMPTS: usize = 20;
const RESTART_BACKOFF: Duration = Duration::from_millis(250);
/// How often to ask a starting server (or cluster) whether it is ready.
const POLL: Duration = Duration::from_millis(20);
/// A single RESP exchange with a healthy local server takes microseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const MASTERS: usize = 3;

/// A standalone `redis-server` of one test's own.
pub struct RedisServer {
    node: Node,
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let [port] = free_ports::<1>();
            let mut node = Node::new(port, Vec::new());
            match node.spawn().await {
                Ok(()) => return RedisServer { node },
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// For a [`crate::fault_proxy::FaultProxy`] in front of it.
    pub fn addr(&self) -> SocketAddr {
        self.node.addr()
    }

    pub fn url(&self) -> String {
        self.node.url()
    }

    /// SIGKILL, and waits until the process is gone. Its data goes with it.
    pub async fn kill(&mut self) {
        self.node.kill().await;
    }

    /// Starts again, empty, on the same port (killing it first if it still runs).
    pub async fn restart(&mut self) {
        self.node.restart().await;
    }
}

/// A Redis cluster of one test's own: three masters, no replicas, all slots covered.
pub struct RedisCluster {
    nodes: Vec<Node>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            // Bus ports are chosen too, rather than Redis's port + 10000, which is past
            // 65535 for much of the ephemeral range.
            let ports: [u16; 2 * MASTERS] = free_ports();
            let (client_ports, bus_ports) = ports.split_at(MASTERS);
            let mut nodes: Vec<Node> = client_ports
                .iter()
                .zip(bus_ports)
                .map(|(&port, &bus)| Node::new(port, cluster_flags(port, bus)))
                .collect();
            if let Err(e) = start_all(&mut nodes).await {
                last_error = e;
                continue;
            }
            let cluster = RedisCluster { nodes };
            match cluster.create().await {
                Ok(()) => {
                    cluster.wait_until_ok().await;
                    return cluster;
                }
                Err(e) => last_error = e,
            }
        }
        panic!("could not start a Redis cluster: {last_error}");
    }

    /// One URL per master; a cluster client needs only one but may take them all.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Note that a proxy in front of one node is bypassed: the cluster tells clients
    /// the nodes' real addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(Node::addr).collect()
    }

    /// SIGKILL to one master. The others mark its slots failed once the node timeout
    /// (2s) has passed and they have gossiped about it.
    pub async fn kill_node(&mut self, index: usize) {
        self.nodes[index].kill().await;
    }

    /// Starts a killed master again on its port, empty but still owning its slots
    /// (its node file survives), and waits until the cluster is whole again.
    pub async fn restart_node(&mut self, index: usize) {
        self.nodes[index].restart().await;
        self.wait_until_ok().await;
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub async fn wait_until_ok(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut not_ok = Vec::new();
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                let ok = query(node.port, "CLUSTER INFO")
                    .await
                    .is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok"));
                if !ok {
                    not_ok.push(node.port);
                }
            }
            if not_ok.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Redis cluster nodes on ports {not_ok:?} are not cluster_state:ok"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Assigns the slots and joins the nodes, as an operator would.
    async fn create(&self) -> Result<(), String> {
        let mut command = Command::new("redis-cli");
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(format!("127.0.0.1:{}", node.port));
        }
        command
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(DEADLINE, command.output())
            .await
            .map_err(|_| "redis-cli --cluster create did not finish in time".to_owned())?
            .expect("run redis-cli (is it installed and on PATH?)");
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "redis-cli --cluster create failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

fn cluster_flags(port: u16, bus: u16) -> Vec<String> {
    vec![
        "--cluster-enabled".into(),
        "yes".into(),
        "--cluster-port".into(),
        bus.to_string(),
        "--cluster-config-file".into(),
        format!("nodes-{port}.conf"),
        "--cluster-node-timeout".into(),
        "2000".into(),
    ]
}

/// Starts every node, stopping at the first that fails (the caller drops them all).
async fn start_all(nodes: &mut [Node]) -> Result<(), String> {
    for node in nodes {
        node.spawn().await?;
    }
    Ok(())
}

/// One `redis-server` process and the directory it runs in.
struct Node {
    /// `None` while killed. Declared before `dir` so that the process is killed
    /// (`kill_on_drop`) before its directory is removed.
    child: Option<Child>,
    port: u16,
    /// Flags beyond the common ones, kept for restarts.
    flags: Vec<String>,
    dir: TempDir,
}

impl Node {
    fn new(port: u16, flags: Vec<String>) -> Self {
        Node {
            child: None,
            port,
            flags,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// Starts the process and waits until it answers; `Err` (with its log) if it
    /// exits first, typically because its port was taken.
    async fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.flags)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run redis-server (is it installed and on PATH?)");
        let pid = child.id().expect("just spawned");
        let child = self.child.insert(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("poll redis-server") {
                self.child = None;
                let log = self.log_tail().await;
                return Err(format!(
                    "redis-server on port {} exited ({status}); log:\n{log}",
                    self.port
                ));
            }
            // The pid check: on a port just found free, the answer could come from
            // somebody else's server.
            if serves(self.port, pid).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill().await;
                let log = self.log_tail().await;
                return Err(format!(
                    "redis-server on port {} is not answering after {DEADLINE:?}; log:\n{log}",
                    self.port
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Fails only if it has exited already, which is what we want.
        let _ = child.start_kill();
        tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("redis-server did not exit after SIGKILL")
            .expect("wait for redis-server");
    }

    async fn restart(&mut self) {
        self.kill().await;
        let mut last_error = String::new();
        for _ in 0..RESTART_ATTEMPTS {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) => last_error = e,
            }
            tokio::time::sleep(RESTART_BACKOFF).await;
        }
        panic!(
            "could not restart redis-server on port {}: {last_error}",
            self.port
        );
    }

    async fn log_tail(&self) -> String {
        let log = tokio::fs::read_to_string(self.dir.path().join("redis.log"))
            .await
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

/// Ports that were free a moment ago, all distinct.
fn free_ports<const N: usize>() -> [u16; N] {
    // Held together so that the kernel hands out N different ports.
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local address").port())
}

/// Whether the Redis on `port` answers PING and is the process `pid`.
async fn serves(port: u16, pid: u32) -> bool {
    let exchange = async {
        let mut conn = BufReader::new(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?);
        let pong = request(&mut conn, "PING").await?;
        let info = request(&mut conn, "INFO server").await?;
        let own = format!("process_id:{pid}");
        Ok::<_, io::Error>(pong == "PONG" && info.lines().any(|l| l.trim() == own))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, exchange).await,
        Ok(Ok(true))
    )
}

/// One command on a fresh connection to the Redis on `port`.
async fn query(port: u16, command: &str) -> io::Result<String> {
    let exchange = async {
        let mut conn = BufReader::new(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?);
        request(&mut conn, command).await
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Sends an inline command and reads a simple-string, integer or bulk-string reply
/// (all that PING, INFO and CLUSTER INFO answer); an error reply becomes `Err`.
async fn request(conn: &mut BufReader<TcpStream>, command: &str) -> io::Result<String> {
    conn.get_mut()
        .write_all(format!("{command}\r\n").as_bytes())
        .await?;
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end();
    match line.split_at_checked(1) {
        Some(("+" | ":", value)) => Ok(value.to_owned()),
        Some(("-", error)) => Err(io::Error::other(error.to_owned())),
        Some(("$", len)) => {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::other(format!("unexpected bulk length {len:?}")))?;
            let mut body = vec![0; len + 2];
            conn.read_exact(&mut body).await?;
            body.truncate(len);
            String::from_utf8(body).map_err(io::Error::other)
        }
        _ => Err(io::Error::other(format!("unexpected reply {line:?}"))),
    }
}
