//! Accepting connections. Every port has a connection budget of its own, so
//! a flood of connections on one port (thousands of idle clients) never
//! uses the file descriptors the others need: peers, admin and `/healthz`
//! keep serving while the client port is full. A connection past its
//! port's budget is closed as soon as it is accepted. A connection that has
//! not sent its first bytes (the HTTP/2 preface, or an HTTP/1 request line)
//! within [`HANDSHAKE_TIMEOUT`] is closed (slow or silent openers); on the
//! HTTP port a connection silent for [`HTTP_IDLE_TIMEOUT`] is closed too
//! (gRPC ports close connections that stop answering keepalive pings).
//! Accepted sockets get `TCP_NODELAY`: Raft and client messages are small
//! and must not wait for Nagle's algorithm.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::METRICS;

/// How long a new connection may take to send its first bytes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a connection must send within [`HANDSHAKE_TIMEOUT`]: the length
/// of the HTTP/2 client preface, shorter than any HTTP/1 request.
pub const HANDSHAKE_BYTES: usize = 24;
/// How long an HTTP/1 connection (metrics, health) may stay silent.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// File descriptors kept out of every connection budget: RocksDB's files,
/// the node's own peer channels, logs.
pub const RESERVED_FDS: u64 = 1024;
/// The fixed budgets of the ports only operators and peers use.
pub const PEER_CONNECTIONS: usize = 256;
pub const ADMIN_CONNECTIONS: usize = 64;
pub const HTTP_CONNECTIONS: usize = 64;
/// The client port gets what is left, but never fewer than this.
pub const MIN_CLIENT_CONNECTIONS: usize = 64;

/// How many connections each port may hold open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    pub client: usize,
    pub peer: usize,
    pub admin: usize,
    pub http: usize,
}

/// The budgets for a process allowed `fd_limit` open files, with the client
/// port capped at `max_client`: the fixed ports first, then the client port
/// gets what is left after [`RESERVED_FDS`] (at least
/// [`MIN_CLIENT_CONNECTIONS`], which a too-small limit is warned about).
pub fn budgets(fd_limit: u64, max_client: usize) -> Budgets {
    let fixed = (PEER_CONNECTIONS + ADMIN_CONNECTIONS + HTTP_CONNECTIONS) as u64;
    let left = fd_limit.saturating_sub(RESERVED_FDS + fixed);
    let client = usize::try_from(left).unwrap_or(usize::MAX).min(max_client);
    Budgets {
        client: client.max(MIN_CLIENT_CONNECTIONS),
        peer: PEER_CONNECTIONS,
        admin: ADMIN_CONNECTIONS,
        http: HTTP_CONNECTIONS,
    }
}

/// Raises this process's soft open-file limit to its hard limit (as Go
/// programs do at start) and returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-file limit; assuming 1024");
            1024
        }
    }
}

/// A listening port with its budget and timeouts.
pub struct Listener {
    inner: TcpListener,
    port: &'static str,
    budget: Arc<Semaphore>,
    idle: Option<Duration>,
    last_warning: Option<Instant>,
}

impl Listener {
    /// `port` names the port in logs and metrics; `idle`, when set, closes
    /// a connection that neither sends nor receives for that long.
    pub fn new(inner: TcpListener, port: &'static str, budget: usize, idle: Option<Duration>) -> Listener {
        Listener {
            inner,
            port,
            budget: Arc::new(Semaphore::new(budget)),
            idle,
            last_warning: None,
        }
    }

    /// The next connection within the budget. Connections past it are
    /// closed here; accept errors (out of file descriptors, a connection
    /// reset before it was accepted) are logged and retried after a pause,
    /// never returned: one bad connection must not stop the port.
    pub async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => match self.budget.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = tcp.set_nodelay(true);
                        METRICS.connections.with_label_values(&[self.port]).inc();
                        return (Conn::new(tcp, permit, self.port, self.idle), addr);
                    }
                    Err(_) => {
                        drop(tcp);
                        METRICS.connections_refused.with_label_values(&[self.port]).inc();
                        self.warn(
                            |port| tracing::warn!(port, %addr, "connection budget full: closing new connections"),
                        );
                    }
                },
                Err(e) => {
                    self.warn(|port| tracing::warn!(port, error = %e, "accept failed; retrying"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// At most one warning every ten seconds per port: a flood must not
    /// become a flood of logs.
    fn warn(&mut self, log: impl FnOnce(&'static str)) {
        if self.last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            self.last_warning = Some(Instant::now());
            log(self.port);
        }
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<Conn>> + Send + 'static {
        futures::stream::unfold(self, |mut l| async move {
            let (conn, _) = l.accept().await;
            Some((Ok(conn), l))
        })
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        Listener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// What a connection's timer is waiting for.
enum Watch {
    /// The first bytes: this many more must arrive before the timer fires.
    Handshake {
        missing: usize,
    },
    /// Any traffic within the idle timeout.
    Idle(Duration),
    Off,
}

/// An accepted connection: holds its port's budget until it is dropped and
/// fails its reads once its handshake or idle timer fires.
pub struct Conn {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    port: &'static str,
    watch: Watch,
    idle: Option<Duration>,
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(io: TcpStream, permit: OwnedSemaphorePermit, port: &'static str, idle: Option<Duration>) -> Conn {
        Conn {
            io,
            _permit: permit,
            port,
            watch: Watch::Handshake {
                missing: HANDSHAKE_BYTES,
            },
            idle,
            timer: Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT)),
        }
    }

    /// Traffic moved `n` bytes (`read` tells the direction).
    fn saw(&mut self, n: usize, read: bool) {
        if n == 0 {
            return;
        }
        match &mut self.watch {
            Watch::Handshake { missing } if read => {
                *missing = missing.saturating_sub(n);
                if *missing == 0 {
                    self.watch = self.idle.map_or(Watch::Off, Watch::Idle);
                    self.rearm();
                }
            }
            Watch::Handshake { .. } | Watch::Off => {}
            Watch::Idle(_) => self.rearm(),
        }
    }

    fn rearm(&mut self) {
        if let Watch::Idle(d) = self.watch {
            self.timer.as_mut().reset(tokio::time::Instant::now() + d);
        }
    }

    /// Whether the timer fired (registering the waker if it has not).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let what = match self.watch {
            Watch::Off => return None,
            Watch::Handshake { .. } => "sent too little within the handshake timeout",
            Watch::Idle(_) => "was idle too long",
        };
        if self.timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        METRICS.connections_timed_out.with_label_values(&[self.port]).inc();
        self.watch = Watch::Off;
        Some(io::Error::new(io::ErrorKind::TimedOut, format!("connection {what}")))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        METRICS.connections.with_label_values(&[self.port]).dec();
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                self.saw(n, true);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.saw(n, false);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?;
        self.saw(n, false);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_port_gets_what_the_fixed_ports_and_the_reserve_leave() {
        let fixed = PEER_CONNECTIONS + ADMIN_CONNECTIONS + HTTP_CONNECTIONS;
        let b = budgets(1 << 20, usize::MAX);
        assert_eq!(b.client, (1 << 20) - RESERVED_FDS as usize - fixed);
        assert_eq!(
            (b.peer, b.admin, b.http),
            (PEER_CONNECTIONS, ADMIN_CONNECTIONS, HTTP_CONNECTIONS)
        );
        // Every budget together stays below the limit by the reserve.
        for limit in [2048u64, 4096, 65_536, 1 << 20] {
            let b = budgets(limit, usize::MAX);
            assert_eq!((b.client + b.peer + b.admin + b.http) as u64 + RESERVED_FDS, limit);
        }
    }

    #[test]
    fn the_client_budget_is_capped_by_the_flag_and_floored_when_the_limit_is_tiny() {
        assert_eq!(budgets(1 << 20, 10_000).client, 10_000);
        assert_eq!(budgets(1024, usize::MAX).client, MIN_CLIENT_CONNECTIONS);
        assert_eq!(budgets(0, usize::MAX).client, MIN_CLIENT_CONNECTIONS);
        assert_eq!(budgets(u64::MAX, 5).client, MIN_CLIENT_CONNECTIONS);
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener(budget: usize, idle: Option<Duration>) -> (Listener, SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("address");
        (Listener::new(tcp, "test", budget, idle), addr)
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_and_a_connection_past_the_budget_is_closed() {
        let (mut l, addr) = listener(1, None).await;
        let _first = TcpStream::connect(addr).await.expect("connect");
        let (conn, _) = l.accept().await;
        assert!(
            conn.io.nodelay().expect("nodelay"),
            "an accepted socket lacks TCP_NODELAY"
        );

        // The budget is spent: the next connection is closed on accept, and
        // the one after it waits until the first is dropped.
        let next = tokio::spawn(async move { l.accept().await });
        let mut refused = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let n = refused.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "a connection past the budget was not closed");
        let _third = TcpStream::connect(addr).await.expect("connect");
        drop(conn);
        let (conn, _) = tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("the freed slot was not reused")
            .expect("accept task");
        assert!(conn.io.nodelay().expect("nodelay"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_too_little_is_timed_out_and_one_that_sent_its_preface_is_not() {
        let (mut l, addr) = listener(2, None).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        let (mut conn, _) = l.accept().await;
        slow.write_all(&[0u8; HANDSHAKE_BYTES - 1]).await.expect("write");
        let mut buf = vec![0u8; 64];
        let n = conn.read(&mut buf).await.expect("the first bytes");
        assert_eq!(n, HANDSHAKE_BYTES - 1);
        let e = conn.read(&mut buf).await.expect_err("no timeout after too few bytes");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let mut fine = TcpStream::connect(addr).await.expect("connect");
        let (mut conn, _) = l.accept().await;
        fine.write_all(&[0u8; HANDSHAKE_BYTES]).await.expect("write");
        let mut got = 0;
        while got < HANDSHAKE_BYTES {
            got += conn.read(&mut buf).await.expect("the preface");
        }
        let quiet = tokio::time::timeout(HANDSHAKE_TIMEOUT * 3, conn.read(&mut buf)).await;
        assert!(quiet.is_err(), "a connection past its handshake was closed: {quiet:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http_connection_is_closed_after_the_idle_timeout() {
        let (mut l, addr) = listener(1, Some(HTTP_IDLE_TIMEOUT)).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (mut conn, _) = l.accept().await;
        client.write_all(&[b'G'; HANDSHAKE_BYTES]).await.expect("write");
        let mut buf = vec![0u8; 64];
        let mut got = 0;
        while got < HANDSHAKE_BYTES {
            got += conn.read(&mut buf).await.expect("the request");
        }
        let started = tokio::time::Instant::now();
        let e = conn.read(&mut buf).await.expect_err("an idle connection stayed open");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() >= HTTP_IDLE_TIMEOUT,
            "closed after {:?}",
            started.elapsed()
        );
    }
}
