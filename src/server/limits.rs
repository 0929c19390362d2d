//! What a client can make the proxy hold, bounded: open connections (beyond the limit the
//! accept loop waits, and the kernel's backlog holds the rest), the time a new connection
//! may take to start talking (a connection that sends nothing is closed), and streams per
//! connection (set on the HTTP/2 server). When the process runs out of descriptors the
//! accept loop backs off instead of spinning.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;

use crate::backoff::Backoff;

pub use crate::config::Limits;

/// Something that hands out connections: a TCP or unix listener.
pub trait Accept: Send + 'static {
    type Conn: Send + 'static;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Conn>>;
}

impl Accept for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Conn>> {
        tokio::net::TcpListener::poll_accept(self, cx).map_ok(|(s, _)| {
            // Small gRPC frames must not wait for Nagle.
            let _ = s.set_nodelay(true);
            s
        })
    }
}

impl Accept for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Conn>> {
        tokio::net::UnixListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

/// Errors after which accepting again at once would fail the same way: the process or
/// the system is out of descriptors or memory.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values the accept loop backs off on (Linux numbering).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// Accepts connections from `listener` as a stream for the gRPC server, within `limits`.
/// The accept task ends when the stream is dropped.
pub fn incoming<L: Accept>(mut listener: L, limits: Limits) -> ReceiverStream<io::Result<Limited<L::Conn>>> {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let mut warned = false;
        loop {
            // At the limit, wait for a connection to close before taking another.
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = tx.closed() => return,
            };
            let conn = loop {
                let accepted = tokio::select! {
                    r = std::future::poll_fn(|cx| listener.poll_accept(cx)) => r,
                    _ = tx.closed() => return,
                };
                match accepted {
                    Ok(c) => {
                        backoff.reset();
                        break c;
                    }
                    Err(e) if out_of_resources(&e) => {
                        if !warned {
                            tracing::warn!(error = %e, "cannot accept connections: out of resources; backing off");
                            warned = true;
                        }
                        backoff.wait().await;
                    }
                    // The peer gave up before the accept (ECONNABORTED and the like).
                    Err(e) => tracing::debug!(error = %e, "accept failed"),
                }
            };
            warned = false;
            let conn = Limited::new(conn, permit, limits.handshake_timeout);
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Bytes a client sends before it can have a request on the way: HTTP/2's preface (24)
/// and the SETTINGS frame header that must follow it (9). A TLS ClientHello is longer;
/// the TLS handshake has its own timeout as well.
const HANDSHAKE_BYTES: usize = 33;

pin_project_lite::pin_project! {
    /// A connection that holds one of the limited slots while open, and fails its reads
    /// if it has not sent [`HANDSHAKE_BYTES`] within the handshake timeout (one byte and
    /// then silence does not hold a slot).
    pub struct Limited<T> {
        #[pin]
        inner: T,
        _slot: OwnedSemaphorePermit,
        // Until the handshake's bytes have arrived.
        deadline: Option<Pin<Box<Sleep>>>,
        received: usize,
    }
}

impl<T> Limited<T> {
    fn new(inner: T, slot: OwnedSemaphorePermit, handshake_timeout: Duration) -> Self {
        Limited {
            inner,
            _slot: slot,
            deadline: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
            received: 0,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Limited<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(r) => {
                *this.received += buf.filled().len() - before;
                if *this.received >= HANDSHAKE_BYTES {
                    *this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing within the handshake timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

use std::future::Future;

impl<T: AsyncWrite> AsyncWrite for Limited<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_and_frees_its_slot() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            max_streams_per_connection: 8,
            handshake_timeout: Duration::from_millis(200),
        };
        let mut conns = incoming(listener, limits);
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut first = conns.next().await.unwrap().unwrap();
        let mut buf = [0u8; 8];
        let err = first.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // The only slot is still taken: the next connection waits in the backlog.
        let mut talker = tokio::net::TcpStream::connect(addr).await.unwrap();
        talker
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n123456789")
            .await
            .unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), conns.next()).await;
        assert!(waiting.is_err(), "a second connection was accepted over the limit");
        drop(first);
        let mut second = conns.next().await.unwrap().unwrap();
        let mut got = vec![0u8; 33];
        second
            .read_exact(&mut got)
            .await
            .expect("a talking connection passes its deadline");
        tokio::time::sleep(Duration::from_millis(300)).await;
        talker.write_all(b"more").await.unwrap();
        let n = second.read(&mut buf).await.expect("no deadline after the handshake");
        assert_eq!(&buf[..n], b"more");
    }

    #[tokio::test]
    async fn one_byte_and_then_silence_is_closed_too() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            max_streams_per_connection: 8,
            handshake_timeout: Duration::from_millis(200),
        };
        let mut conns = incoming(listener, limits);
        let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
        trickle.write_all(b"P").await.unwrap();
        let mut conn = conns.next().await.unwrap().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
