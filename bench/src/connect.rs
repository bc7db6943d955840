//! Channels to the servers: one TCP connection per simulated device, as each real client
//! has its own.
//!
//! A TCP connection is named by (source address, source port, server address, server
//! port), and a socket bound to a source address draws its port from that address's
//! ephemeral range (about 28k ports on Linux). So past 28k connections from one host the
//! client runs out of ports, not the server of anything. On loopback every 127.0.0.x is a
//! source address of its own: binding the local side round-robin to 127.0.0.1 ..
//! 127.0.0.N multiplies the ports available by N.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Makes channels, spreading them over servers and source addresses.
pub(crate) struct Dialer {
    endpoints: Vec<Endpoint>,
    sources: Vec<Ipv4Addr>,
}

impl Dialer {
    /// Servers are URLs such as `http://127.0.0.1:50051`; `source_addrs` is N in
    /// 127.0.0.1 .. 127.0.0.N.
    pub(crate) fn new(servers: &[String], source_addrs: u8) -> anyhow::Result<Self> {
        if servers.is_empty() {
            bail!("no --server to connect to");
        }
        let endpoints = servers
            .iter()
            .map(|url| {
                Endpoint::from_shared(url.clone())
                    .with_context(|| format!("invalid server address {url}"))
                    // The same settings as `chat_sdk::Client::connect`, apart from the
                    // connect timeout: thousands of devices connect at once here.
                    .map(|e| {
                        e.connect_timeout(Duration::from_secs(30))
                            .http2_keep_alive_interval(Duration::from_secs(30))
                            .keep_alive_timeout(Duration::from_secs(10))
                            .keep_alive_while_idle(true)
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sources = (1..=source_addrs.max(1))
            .map(|last| Ipv4Addr::new(127, 0, 0, last))
            .collect();
        Ok(Dialer { endpoints, sources })
    }

    /// The channel of device number `device`: its server and source address are chosen
    /// round-robin by that number, so the caller decides who lands where (a pair's two
    /// devices on different replicas, for instance).
    pub(crate) async fn channel(&self, device: usize) -> anyhow::Result<Channel> {
        let endpoint = &self.endpoints[device % self.endpoints.len()];
        // One source address is what the kernel picks anyway, and binding first would
        // make it search for a free port among every bound socket (`bind` with port 0),
        // which at ten thousand connections costs more than the rest of a connect.
        let source = (self.sources.len() > 1).then(|| self.sources[device % self.sources.len()]);
        let connector = tower::service_fn(move |uri: Uri| dial(uri, source));
        endpoint
            .connect_with_connector(connector)
            .await
            .with_context(|| match source {
                Some(source) => format!("connecting to {} from {source}", endpoint.uri()),
                None => format!("connecting to {}", endpoint.uri()),
            })
    }
}

/// Opens one TCP connection to `uri`'s host, from `source` when one is given and the
/// server is on IPv4 loopback (a loopback source cannot reach anything else).
async fn dial(uri: Uri, source: Option<Ipv4Addr>) -> io::Result<TokioIo<TcpStream>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "server URL has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let target = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")))?;
    let socket = match target {
        SocketAddr::V4(v4) => {
            let socket = TcpSocket::new_v4()?;
            if let Some(source) = source.filter(|_| v4.ip().is_loopback()) {
                socket.bind(SocketAddr::from((source, 0)))?;
            }
            socket
        }
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_nodelay(true)?;
    let stream = socket.connect(target).await?;
    Ok(TokioIo::new(stream))
}
