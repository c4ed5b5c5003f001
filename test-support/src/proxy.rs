//! A fault-injecting TCP proxy: put it between a service and PostgreSQL or RabbitMQ, then cut,
//! refuse, black-hole or slow down the traffic from the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy currently does to traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Faults {
    refuse: bool,
    blackhole: bool,
    delay: Duration,
}

/// A TCP proxy on `127.0.0.1:<ephemeral port>` forwarding to one target, with fault controls.
///
/// * [`cut`](Self::cut): every current connection is reset (`SO_LINGER` 0, so both peers see a
///   RST), new ones are accepted as usual;
/// * [`set_refuse`](Self::set_refuse): new connections are accepted and reset at once;
/// * [`set_blackhole`](Self::set_blackhole): no more bytes are forwarded on any connection while
///   the sockets stay open (a silent peer, as in a network partition). A connection that has been
///   black-holed stays silent until cut; connections made after the black hole is lifted work;
/// * [`set_delay`](Self::set_delay): each forwarded chunk waits this long first.
///
/// Dropping the proxy stops listening and resets every connection.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    faults: watch::Sender<Faults>,
    cut_generation: watch::Sender<u64>,
    connections: Arc<AtomicUsize>,
    accept_task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts listening (must be called inside a tokio runtime; the proxy lives on it).
    pub async fn start(target: SocketAddr) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (faults, faults_rx) = watch::channel(Faults::default());
        let (cut_generation, cut_rx) = watch::channel(0u64);
        let connections = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            target,
            faults_rx,
            cut_rx,
            connections.clone(),
        ));
        tracing::debug!(%addr, %target, "proxy started");
        Ok(TcpProxy {
            addr,
            target,
            faults,
            cut_generation,
            connections,
            accept_task,
        })
    }

    /// Starts a proxy in front of the server of a URL such as `amqp://u:p@host:5672/%2f` or
    /// `postgres://u@host:5432/db`; returns it and the same URL pointing through it.
    pub async fn for_url(url: &str) -> anyhow::Result<(TcpProxy, String)> {
        let (host_start, path_start) = authority_bounds(url);
        let host_port = &url[host_start..path_start];
        let target = std::net::ToSocketAddrs::to_socket_addrs(host_port)?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| anyhow::anyhow!("{host_port:?} has no IPv4 address"))?;
        let proxy = TcpProxy::start(target).await?;
        let through = format!(
            "{}127.0.0.1:{}{}",
            &url[..host_start],
            proxy.port(),
            &url[path_start..]
        );
        Ok((proxy, through))
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Resets every current connection (both sides); new connections are still accepted.
    pub fn cut(&self) {
        tracing::debug!(proxy = %self.addr, "cutting every connection");
        self.cut_generation.send_modify(|g| *g += 1);
    }

    /// While on, new connections are accepted and reset immediately.
    pub fn set_refuse(&self, refuse: bool) {
        self.faults.send_modify(|f| f.refuse = refuse);
    }

    /// While on, no byte is forwarded in either direction; sockets stay open.
    pub fn set_blackhole(&self, blackhole: bool) {
        self.faults.send_modify(|f| f.blackhole = blackhole);
    }

    /// Delays each forwarded chunk by `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.faults.send_modify(|f| f.delay = delay);
    }

    /// The number of connections currently being proxied (refused ones are not counted).
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Connection tasks end when they see the cut, or the senders go away with `self`.
        self.cut_generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    faults: watch::Receiver<Faults>,
    cut: watch::Receiver<u64>,
    connections: Arc<AtomicUsize>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                tracing::debug!("proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = client.set_zero_linger();
        let _ = client.set_nodelay(true);
        let now = *faults.borrow();
        if now.refuse {
            drop(client); // RST thanks to SO_LINGER 0
            continue;
        }
        let generation = *cut.borrow();
        let guard = ConnectionGuard::new(connections.clone());
        tokio::spawn(serve(
            client,
            target,
            faults.clone(),
            cut.clone(),
            generation,
            guard,
        ));
    }
}

/// Counts a live connection for as long as it exists.
struct ConnectionGuard(Arc<AtomicUsize>);

impl ConnectionGuard {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(counter)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    faults: watch::Receiver<Faults>,
    mut cut: watch::Receiver<u64>,
    generation: u64,
    _guard: ConnectionGuard,
) {
    let cut_seen = async move {
        // Err: the proxy is gone, which ends the connection too.
        let _ = cut.wait_for(|g| *g != generation).await;
    };
    let work = async {
        if faults.borrow().blackhole {
            // A silent peer from the start: never even reach the target.
            std::future::pending::<()>().await;
        }
        let mut upstream = match TcpStream::connect(target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%target, "proxy cannot reach target: {e}");
                return;
            }
        };
        let _ = upstream.set_zero_linger();
        let _ = upstream.set_nodelay(true);
        // Borrowed halves: nothing is shut down behind our back when a pump ends.
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let up = pump(&mut client_read, &mut upstream_write, faults.clone());
        let down = pump(&mut upstream_read, &mut client_write, faults.clone());
        // Both directions until both ended cleanly, or either failed.
        let _ = tokio::try_join!(up, down);
    };
    tokio::select! {
        _ = cut_seen => {}
        _ = work => {}
    }
    // `client` and `upstream` are dropped here; with SO_LINGER 0 both peers get a RST.
}

/// Copies one direction. `Ok` on a clean end of stream (forwarded as a half-close), `Err` when
/// the connection must end. Never returns once black-holed.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    mut faults: watch::Receiver<Faults>,
) -> std::io::Result<()>
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => Some(read?),
            _ = faults.wait_for(|f| f.blackhole) => None,
        };
        let Some(n) = read else {
            return silent().await;
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let delay = faults.borrow().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if faults.borrow().blackhole {
            return silent().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// A black-holed direction: forwards nothing, ever (the connection ends by a cut or proxy drop).
async fn silent() -> std::io::Result<()> {
    std::future::pending::<std::io::Result<()>>().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventually;
    use std::time::Instant;

    /// An echo server; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Sends `msg` and reads the echo, within `timeout`.
    async fn round_trip(s: &mut TcpStream, msg: &[u8], timeout: Duration) -> std::io::Result<()> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(timeout, s.read_exact(&mut got)).await {
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo")),
        }
        assert_eq!(got, msg);
        Ok(())
    }

    async fn proxy() -> TcpProxy {
        TcpProxy::start(echo_server().await).await.expect("proxy")
    }

    async fn connect(p: &TcpProxy) -> TcpStream {
        TcpStream::connect(p.addr())
            .await
            .expect("connect to proxy")
    }

    const OK: Duration = Duration::from_secs(5);
    const SILENT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn forwards_and_counts_connections() {
        let p = proxy().await;
        assert_ne!(p.port(), 0);
        let mut a = connect(&p).await;
        let mut b = connect(&p).await;
        round_trip(&mut a, b"hello", OK).await.expect("echo a");
        round_trip(&mut b, b"world", OK).await.expect("echo b");
        assert_eq!(p.connection_count(), 2);
        drop(a);
        eventually("one connection left", OK, || async {
            (p.connection_count() == 1).then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn cut_resets_current_connections_and_keeps_accepting() {
        let p = proxy().await;
        let mut a = connect(&p).await;
        round_trip(&mut a, b"before", OK).await.expect("echo");
        p.cut();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(OK, a.read(&mut buf))
            .await
            .expect("cut is seen");
        assert!(
            matches!(read, Ok(0)) || read.is_err(),
            "expected EOF or reset, got {read:?}"
        );
        eventually("no connection left", OK, || async {
            (p.connection_count() == 0).then_some(())
        })
        .await;
        let mut b = connect(&p).await;
        round_trip(&mut b, b"after", OK)
            .await
            .expect("new connection works");
    }

    #[tokio::test]
    async fn refuse_drops_new_connections_until_lifted() {
        let p = proxy().await;
        let mut old = connect(&p).await;
        round_trip(&mut old, b"accepted", OK).await.expect("old");
        p.set_refuse(true);
        // The reset may already fail the connect, or else the first read.
        if let Ok(mut refused) = TcpStream::connect(p.addr()).await {
            let mut buf = [0u8; 1];
            let _ = refused.write_all(b"x").await;
            let read = tokio::time::timeout(OK, refused.read(&mut buf))
                .await
                .expect("closed");
            assert!(matches!(read, Ok(0)) || read.is_err(), "got {read:?}");
        }
        assert_eq!(
            p.connection_count(),
            1,
            "refused connections are not counted"
        );
        round_trip(&mut old, b"old still works", OK)
            .await
            .expect("old");
        p.set_refuse(false);
        let mut c = connect(&p).await;
        round_trip(&mut c, b"new", OK)
            .await
            .expect("accepted again");
    }

    #[tokio::test]
    async fn blackhole_silences_existing_and_new_connections() {
        let p = proxy().await;
        let mut a = connect(&p).await;
        round_trip(&mut a, b"before", OK).await.expect("echo");
        p.set_blackhole(true);
        let err = round_trip(&mut a, b"lost", SILENT)
            .await
            .expect_err("silent");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let mut b = connect(&p).await;
        let err = round_trip(&mut b, b"lost", SILENT)
            .await
            .expect_err("silent");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(p.connection_count(), 2, "sockets stay open");
        p.set_blackhole(false);
        let mut c = connect(&p).await;
        round_trip(&mut c, b"new", OK)
            .await
            .expect("new connections work");
        p.cut();
        eventually("black-holed connections cut", OK, || async {
            (p.connection_count() == 0).then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn delay_slows_each_chunk() {
        let p = proxy().await;
        let mut a = connect(&p).await;
        round_trip(&mut a, b"warm", OK).await.expect("echo");
        p.set_delay(Duration::from_millis(200));
        let started = Instant::now();
        round_trip(&mut a, b"slow", OK).await.expect("echo");
        // One chunk each way: at least twice the delay.
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        p.set_delay(Duration::ZERO);
        let started = Instant::now();
        round_trip(&mut a, b"fast", OK).await.expect("echo");
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_connections() {
        let p = proxy().await;
        let mut a = connect(&p).await;
        round_trip(&mut a, b"x", OK).await.expect("echo");
        drop(p);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(OK, a.read(&mut buf))
            .await
            .expect("closed");
        assert!(matches!(read, Ok(0)) || read.is_err(), "got {read:?}");
    }
}

/// Byte offsets of `host:port` in `scheme://user:pass@host:port/path`.
fn authority_bounds(url: &str) -> (usize, usize) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| i + scheme_end);
    let host_start = url[scheme_end..path_start]
        .rfind('@')
        .map_or(scheme_end, |i| i + scheme_end + 1);
    (host_start, path_start)
}

#[cfg(test)]
mod url_tests {
    use super::authority_bounds;

    #[test]
    fn the_authority_is_found_with_or_without_credentials_and_path() {
        let url = "postgres://postgres@127.0.0.1:5432/db";
        let (a, b) = authority_bounds(url);
        assert_eq!(&url[a..b], "127.0.0.1:5432");
        let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
        let (a, b) = authority_bounds(url);
        assert_eq!(&url[a..b], "127.0.0.1:5672");
        let url = "amqp://h:1";
        let (a, b) = authority_bounds(url);
        assert_eq!(&url[a..b], "h:1");
    }
}
