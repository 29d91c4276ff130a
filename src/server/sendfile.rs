//! A plain-TCP connection whose writes of file-backed frames go through `sendfile(2)`.
//!
//! Blob bodies are made of [`crate::mapped`] frames: `Bytes` that are read-only mappings of
//! chunk files. hyper hands the slices it writes to `poll_write_vectored`; a slice that
//! lies inside a live mapping is sent with `sendfile` from the same file and offset (the
//! kernel moves page-cache pages to the socket, and the mapping is never touched, so user
//! space copies nothing and faults nothing in). Every other slice is written as usual.
//! The bytes on the wire are the same either way.
//!
//! Owns: that translation. Must not: know anything of HTTP. Used for plain-HTTP listeners
//! only (TLS must encrypt the bytes in user space).

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Largest single `sendfile` call (the socket takes what fits anyway).
const MAX_SENDFILE: usize = 4 << 20;

pub struct SendfileStream {
    inner: TcpStream,
}

impl SendfileStream {
    pub fn new(inner: TcpStream) -> Self {
        SendfileStream { inner }
    }

    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let len = len.min(MAX_SENDFILE);
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                let mut off = libc::off_t::try_from(offset)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
                // SAFETY: both descriptors are open for the duration of the call; `off` is a
                // valid pointer to a local.
                let n = unsafe {
                    libc::sendfile(self.inner.as_raw_fd(), file.as_raw_fd(), &mut off, len)
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.as_mut()
            .poll_write_vectored(cx, std::slice::from_ref(&IoSlice::new(buf)))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let bufs = &bufs[first..];
        if let Some((file, offset)) = crate::mapped::find(bufs[0].as_ptr(), bufs[0].len()) {
            return self.poll_sendfile(cx, &file, offset, bufs[0].len());
        }
        // Plain slices up to the first mapped one go out in one writev.
        let plain = bufs
            .iter()
            .skip(1)
            .position(|b| crate::mapped::find(b.as_ptr(), b.len()).is_some())
            .map_or(bufs.len(), |i| i + 1);
        Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..plain])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn mapped_and_plain_slices_arrive_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&content))
            .expect("write");
        let file = Arc::new(std::fs::File::open(&path).expect("open"));
        let mapped = crate::mapped::map_range(&file, 1000, 2_500_000).expect("map");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let expected: Vec<u8> = [b"head:".as_slice(), &mapped[..], b":tail"].concat();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got
        });
        let mut s = SendfileStream::new(TcpStream::connect(addr).await.expect("connect"));
        let mut bufs: Vec<bytes::Bytes> = vec![
            bytes::Bytes::from_static(b"head:"),
            mapped.clone(),
            bytes::Bytes::from_static(b":tail"),
        ];
        while !bufs.is_empty() {
            let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            let mut n = futures_util::future::poll_fn(|cx| {
                Pin::new(&mut s).poll_write_vectored(cx, &slices)
            })
            .await
            .expect("write");
            drop(slices);
            while n > 0 {
                let first = &mut bufs[0];
                let take = n.min(first.len());
                let _ = first.split_to(take);
                n -= take;
                if first.is_empty() {
                    bufs.remove(0);
                }
            }
        }
        s.shutdown().await.expect("shutdown");
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ");
    }
}
