//! Fewer, larger socket writes for HTTP/2 connections, on both sides of the proxy.
//!
//! h2 flushes after every pass over a connection, and the pieces of one gRPC call rarely
//! arrive in one pass: a request's HEADERS and DATA, a response's HEADERS+DATA and its
//! trailers, each end up in a write of its own. Every write wakes the process on the other
//! end (etcd, or the client) once more. [`Coalesced`] keeps what is written in a buffer and,
//! on the first flush, lets the runtime run every other ready task once before writing, so
//! the rest of the call joins the same write. At most one scheduler pass is added; a
//! write of 8 KiB or more goes straight to the socket.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes kept before a write is forced.
const LIMIT: usize = 64 * 1024;
/// A write this large goes straight to the socket (after what is kept): copying it would
/// cost more than the system call it saves (a large answer's DATA frames, for one).
const DIRECT: usize = 8 * 1024;

pin_project_lite::pin_project! {
    /// A byte stream whose writes are gathered until a flush (see the module docs).
    pub struct Coalesced<T> {
        #[pin]
        inner: T,
        buf: Vec<u8>,
        // Bytes of `buf` already written to `inner`.
        sent: usize,
        // Whether this flush already let the other tasks run once.
        yielded: bool,
    }
}

impl<T> Coalesced<T> {
    pub fn new(inner: T) -> Self {
        Coalesced {
            inner,
            buf: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite> Coalesced<T> {
    /// Writes the whole buffer out.
    fn poll_drain(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        while *this.sent < this.buf.len() {
            let n = ready!(this.inner.as_mut().poll_write(cx, &this.buf[*this.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *this.sent += n;
        }
        this.buf.clear();
        *this.sent = 0;
        // A burst can grow the buffer to LIMIT; don't keep that much per idle connection.
        if this.buf.capacity() > 16 * 1024 {
            this.buf.shrink_to(16 * 1024);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead> AsyncRead for Coalesced<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Coalesced<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if (total >= DIRECT || self.buf.len() + total > LIMIT) && !self.buf.is_empty() {
            ready!(self.as_mut().poll_drain(cx))?;
        }
        let this = self.project();
        if total >= DIRECT {
            return this.inner.poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            if !self.yielded {
                // Let the tasks that are about to add to this connection (the rest of the
                // call) run first; we are polled again right after them.
                *self.as_mut().project().yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.as_mut().poll_drain(cx))?;
        }
        let this = self.project();
        *this.yielded = false;
        this.inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_drain(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_writes_leave_in_one_piece_at_the_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesced::new(a);
        w.write_all(b"HEADERS").await.unwrap();
        w.write_all(b"DATA").await.unwrap();
        // Nothing reached the peer before the flush.
        let mut probe = [0u8; 16];
        assert!(
            b.read(&mut probe).now_or_never().is_none(),
            "bytes left before the flush"
        );
        w.flush().await.unwrap();
        let n = b.read(&mut probe).await.unwrap();
        assert_eq!(&probe[..n], b"HEADERSDATA");
    }

    #[tokio::test]
    async fn large_writes_and_slow_peers_lose_nothing() {
        // A small pipe forces partial writes; pieces of DIRECT or more go straight through.
        let (a, mut b) = tokio::io::duplex(4096);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut w = Coalesced::new(a);
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let piece = vec![(i % 251) as u8; (i as usize * 997) % (LIMIT + 5000)];
            w.write_all(&piece).await.unwrap();
            expected.extend_from_slice(&piece);
            if i % 7 == 0 {
                w.flush().await.unwrap();
            }
        }
        w.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), expected);
    }
}
