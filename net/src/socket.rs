//! A glommio TCP stream as a tokio `AsyncRead + AsyncWrite` (what h2 and tokio-rustls take),
//! reading large amounts into the caller's uninitialized memory.
//!
//! tokio-util's `compat` adapter does the same job, but glommio's `poll_read` takes an
//! initialized `&mut [u8]`, so `compat` zeroes all of the room the caller offers before every
//! read. h2 offers room for a whole frame (up to 256 KiB here) and a read returns what has
//! arrived, so a connection receiving large messages zeroed several times the bytes it
//! received (4.3% of the partition shard's CPU under batched produce, docs/benchmarks.md).
//!
//! Here a read into room of more than [`ZEROED_READ_BYTES`] first asks the kernel directly
//! (`recv` with `MSG_DONTWAIT` into the caller's room, which the kernel writes without
//! reading). Reads into smaller room, a read finding nothing, and the read after one that
//! drained the socket go through glommio's `poll_read` as `compat` did, over at most
//! [`ZEROED_READ_BYTES`] of the room zeroed: glommio registers the wake-up, and after a read
//! that drained the socket it has already asked the reactor to watch it, so going to glommio
//! next costs no system call (a direct `recv` would fail first). Writes, flushes and shutdown
//! are glommio's, as with `compat`.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use glommio::net::TcpStream;
use tokio::io::ReadBuf;

/// Room read through glommio, zeroed first: zeroing this much costs less than a failed
/// system call, and a small call (a unary request's frames) arrives whole in it.
pub const ZEROED_READ_BYTES: usize = 16 * 1024;

/// Bytes read without a break (every read finding bytes) before a read yields: it wakes its
/// task and says Pending, so that the executor runs its other tasks before this connection
/// goes on. h2 reads and handles frames for as long as bytes are there, and a client sending
/// control frames back to back (SETTINGS, PING, unknown types: millions a second, each
/// handled in nanoseconds) kept its connection's task running, and every other connection of
/// the shard waiting, for seconds (a produce took 17 s).
pub const READ_BUDGET_BYTES: usize = 64 * 1024;

/// A glommio TCP stream for tokio's I/O traits; see the module documentation.
pub struct Socket {
    inner: TcpStream,
    /// The last read took fewer bytes than it had room for: the socket is likely empty, and
    /// the next read goes to glommio.
    drained: bool,
    /// Bytes read since a read last found nothing or yielded ([`READ_BUDGET_BYTES`]).
    unbroken: usize,
    /// Tests: every how many reads skips the direct `recv` (0: none), so that glommio's path
    /// is taken with large room and bytes waiting.
    #[cfg(test)]
    glommio_every: usize,
    #[cfg(test)]
    reads: usize,
}

impl Socket {
    pub fn new(inner: TcpStream) -> Self {
        Socket {
            inner,
            drained: false,
            unbroken: 0,
            #[cfg(test)]
            glommio_every: 0,
            #[cfg(test)]
            reads: 0,
        }
    }

    #[cfg(test)]
    fn skip_direct(&mut self) -> bool {
        self.reads += 1;
        self.glommio_every != 0 && self.reads.is_multiple_of(self.glommio_every)
    }

    #[cfg(not(test))]
    fn skip_direct(&mut self) -> bool {
        false
    }

    /// A non-blocking `recv` into `buf`'s unfilled room: `None` when nothing has arrived.
    fn recv_now(&mut self, buf: &mut ReadBuf<'_>) -> Option<io::Result<()>> {
        // SAFETY: the room is handed only to the kernel, which writes into it and never reads
        // it; `assume_init` below covers exactly the `n` bytes `recv` reports written.
        let room = unsafe { buf.unfilled_mut() };
        let len = room.len();
        loop {
            // SAFETY: `room` is valid for writes of `len` bytes for the whole call, and the
            // descriptor is this stream's, open while `self` is.
            let n = unsafe {
                libc::recv(
                    self.inner.as_raw_fd(),
                    room.as_mut_ptr().cast(),
                    len,
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                let n = n as usize;
                // SAFETY: `recv` wrote the first `n` bytes of the unfilled room.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                self.drained = n < len;
                return Some(Ok(()));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return None,
                _ => return Some(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.unbroken >= READ_BUDGET_BYTES {
            this.unbroken = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        if buf.remaining() > ZEROED_READ_BYTES && !this.drained && !this.skip_direct() {
            if let Some(done) = this.recv_now(buf) {
                this.unbroken += buf.filled().len() - before;
                return Poll::Ready(done);
            }
        }
        let want = buf.remaining().min(ZEROED_READ_BYTES);
        let room = buf.initialize_unfilled_to(want);
        match futures_lite::AsyncRead::poll_read(Pin::new(&mut this.inner), cx, room) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                this.drained = n < want;
                this.unbroken += n;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Woken when bytes arrive: read them directly.
                this.drained = false;
                this.unbroken = 0;
                Poll::Pending
            }
        }
    }
}

impl tokio::io::AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures_lite::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().inner), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_lite::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().inner), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_lite::AsyncWrite::poll_close(Pin::new(&mut self.get_mut().inner), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection whose bytes never run out yields after [`READ_BUDGET_BYTES`]: its read
    /// says Pending once, having woken its task, and then reads on.
    #[test]
    fn reads_that_always_find_bytes_yield_now_and_then() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let ex = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("addr");
                let mut out = Socket::new(TcpStream::connect(addr).await.expect("connect"));
                let mut conn = Socket::new(listener.accept().await.expect("accept"));
                let flood = vec![7u8; 4 * READ_BUDGET_BYTES];
                out.write_all(&flood).await.expect("write");
                // Everything has arrived before the reads begin.
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                let count = Arc::new(Count(AtomicUsize::new(0)));
                let waker = std::task::Waker::from(count.clone());
                let mut cx = Context::from_waker(&waker);
                let mut read = 0usize;
                let mut since_yield = 0usize;
                let mut yields = 0;
                while read < flood.len() {
                    let mut room = [0u8; 4096];
                    let mut buf = ReadBuf::new(&mut room);
                    match tokio::io::AsyncRead::poll_read(Pin::new(&mut conn), &mut cx, &mut buf) {
                        Poll::Ready(r) => {
                            r.expect("read");
                            read += buf.filled().len();
                            since_yield += buf.filled().len();
                            assert!(since_yield <= READ_BUDGET_BYTES + 4096, "{since_yield}");
                        }
                        Poll::Pending => {
                            since_yield = 0;
                            if count.0.load(Ordering::SeqCst) > yields {
                                // Woken at once to go on: a yield.
                                yields += 1;
                            } else {
                                // The socket ran dry for a moment (the rest was still in
                                // the sender's buffer): glommio wakes the task later.
                                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                            }
                        }
                    }
                }
                assert!(yields >= 1, "{yields} yields over {read} bytes");
            })
            .expect("executor");
        ex.join().expect("join");
    }

    /// Bytes sent in pieces of every size, with pauses, arrive whole and in order into large
    /// and small room that was never initialized, the end of the stream reading as 0 bytes:
    /// as it goes, and with every third read through glommio even when bytes are waiting.
    #[test]
    fn reads_straight_and_through_glommio_deliver_every_byte_in_order() {
        transfer(0);
        transfer(3);
    }

    fn transfer(glommio_every: usize) {
        let ex = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("addr");
                let total: usize = 3 * 1024 * 1024 + 17;
                let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
                let sent = data.clone();
                let writer = glommio::spawn_local(async move {
                    let mut out = Socket::new(TcpStream::connect(addr).await.expect("connect"));
                    let mut at = 0;
                    let mut piece = 1;
                    while at < sent.len() {
                        let end = (at + piece).min(sent.len());
                        out.write_all(&sent[at..end]).await.expect("write");
                        at = end;
                        piece = if piece > 300_000 { 1 } else { piece * 3 + 1 };
                        if piece % 4 == 0 {
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                    out.shutdown().await.expect("shutdown");
                });
                let mut conn = Socket::new(listener.accept().await.expect("accept"));
                conn.glommio_every = glommio_every;
                let mut got = Vec::with_capacity(total);
                let mut reads = 0usize;
                loop {
                    // Room the reader never initialized: a fresh BytesMut's spare capacity,
                    // large (read directly) or small (through glommio).
                    let size = if reads % 5 == 4 { 1000 } else { 256 * 1024 };
                    let mut room = bytes::BytesMut::with_capacity(size);
                    let n = conn.read_buf(&mut room).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    reads += 1;
                    got.extend_from_slice(&room[..n]);
                }
                writer.await;
                assert_eq!(got.len(), data.len(), "bytes received");
                assert!(got == data, "the bytes differ from those sent");
                assert!(reads > 1, "one read only");
            })
            .expect("executor");
        ex.join().expect("join");
    }
}
