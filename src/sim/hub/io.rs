//! The byte stream under every emulator connection: any `AsyncRead + AsyncWrite` (TCP, TLS),
//! wrapped so that
//! - it can be cut from outside (the drop-connections and down-for faults, shutdown): once its
//!   token is cancelled, reads and writes fail with `ConnectionAborted`, which ends fe2o3's
//!   connection engine and closes the socket;
//! - every write is followed by a flush. Microsoft's Python SDK stalls against a TLS server
//!   that leaves frames in rustls' buffer until the next write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A stream that flushes after each write and dies when its token is cancelled.
pub struct HubStream<S> {
    inner: S,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    is_cut: bool,
}

impl<S> HubStream<S> {
    pub fn new(inner: S, cut: CancellationToken) -> Self {
        HubStream {
            inner,
            cut: Box::pin(cut.cancelled_owned()),
            is_cut: false,
        }
    }

    /// Registers the waker with the cut token; true once the stream is cut.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_cut && self.cut.as_mut().poll(cx).is_ready() {
            self.is_cut = true;
        }
        self.is_cut
    }
}

impl<S> std::fmt::Debug for HubStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubStream")
            .field("is_cut", &self.is_cut)
            .finish_non_exhaustive()
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection cut by the emulator",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for HubStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HubStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = written {
            // Push what TLS buffered onto the socket now; if the socket is full, the caller's
            // own flush finishes the job.
            let _ = Pin::new(&mut this.inner).poll_flush(cx);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn cutting_wakes_a_pending_read() {
        let (a, mut b) = tokio::io::duplex(64);
        let cut = CancellationToken::new();
        let mut stream = HubStream::new(a, cut.clone());
        b.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            stream.read(&mut buf).await
        });
        cut.cancel();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
}
