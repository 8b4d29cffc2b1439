//! Ports for test servers; shared with the bench's tests (`bench/tests/common`).

use std::net::TcpListener;

/// A port nobody uses right now, below the kernel's ephemeral range (32768 and up here),
/// never handed out before in this test process. From the ephemeral range a port can be
/// taken by some client's `connect` (even one that connects to itself) or a listener on
/// port 0 the moment it is released, which breaks restarts on the same port; and the tests
/// of a binary run in parallel: two servers given one port would both bind it (their
/// listeners use SO_REUSEPORT) and share its connections.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + seed.wrapping_add(n.wrapping_mul(104_729)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
