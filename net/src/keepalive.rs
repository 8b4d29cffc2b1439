//! HTTP/2 keepalive: h2 has no timers, so PINGs run on glommio's.
//!
//! A PING goes out every `interval`; if its ack does not arrive within
//! `timeout` the connection is declared dead. Pings are sent whether or not
//! the connection is busy: a connection whose peer vanished while a call
//! was blocked on flow control is busy and dead at once.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use glommio::timer::Timer;
use h2::Ping;

use crate::Error;

/// Sends PINGs on a timer and fails the connection when one goes unanswered.
pub(crate) struct KeepAlive {
    pp: h2::PingPong,
    peer: Option<SocketAddr>,
    interval: Duration,
    timeout: Duration,
    timer: Timer,
    awaiting_pong: bool,
}

impl KeepAlive {
    pub(crate) fn new(
        pp: h2::PingPong,
        peer: Option<SocketAddr>,
        interval: Duration,
        timeout: Duration,
    ) -> KeepAlive {
        KeepAlive {
            pp,
            peer,
            interval,
            timeout,
            timer: Timer::new(interval),
            awaiting_pong: false,
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if self.awaiting_pong {
                match self.pp.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting_pong = false;
                        self.timer = Timer::new(self.interval);
                        continue;
                    }
                    // The connection itself failed; the accept loop reports why.
                    Poll::Ready(Err(_)) => return Poll::Pending,
                    Poll::Pending => {}
                }
                if Pin::new(&mut self.timer).poll(cx).is_ready() {
                    return Poll::Ready(Err(Error::KeepaliveTimeout {
                        peer: self.peer,
                        timeout: self.timeout,
                    }));
                }
                return Poll::Pending;
            }
            if Pin::new(&mut self.timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.pp.send_ping(Ping::opaque()).is_err() {
                return Poll::Pending;
            }
            self.awaiting_pong = true;
            self.timer = Timer::new(self.timeout);
        }
    }
}
