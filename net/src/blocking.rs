//! A blocking client for ordinary threads (tools, tests, admin commands).
//!
//! Every channel is a task holding one [`Channel`](crate::client::Channel) on a single
//! client thread per process running a glommio `LocalExecutor`; each call is sent there
//! and the caller blocks until the reply comes back. Sockets are made on that thread, so
//! in the network namespace of the thread that connected first.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use futures_lite::StreamExt;

use crate::client::{CallOptions, Channel, ClientConfig};
use crate::{Error, Status};

enum Command {
    Unary {
        path: String,
        msg: Bytes,
        opts: CallOptions,
        reply: oneshot::Sender<Result<Bytes, Status>>,
    },
    Collect {
        path: String,
        msg: Bytes,
        opts: CallOptions,
        max_messages: usize,
        reply: oneshot::Sender<Result<Vec<Bytes>, Status>>,
    },
}

/// A client usable from any thread. Calls from several threads run
/// concurrently on the one connection.
pub struct BlockingChannel {
    tx: Option<mpsc::UnboundedSender<Command>>,
    /// Fires when the channel's task has ended and its connection is closed.
    done: Option<oneshot::Receiver<()>>,
}

fn gone() -> Status {
    Status::unavailable("client executor thread is gone")
}

/// One channel for the shared client thread to open and serve.
struct Start {
    addr: SocketAddr,
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    ready: oneshot::Sender<Result<(), Error>>,
    done: oneshot::Sender<()>,
}

/// The process's one client executor thread, started by the first channel. Every
/// [`BlockingChannel`] is a task on it rather than a thread of its own: a glommio executor
/// leaves eventfds open when it ends (DataDog/glommio#448), so a thread per channel leaked
/// them, and a program that opened channels in a loop ran out of file descriptors.
static RUNTIME: Mutex<Option<mpsc::UnboundedSender<Start>>> = Mutex::new(None);

/// The shared client thread's queue, starting the thread when there is none (or when the
/// last one is gone).
fn runtime() -> Result<mpsc::UnboundedSender<Start>, Error> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
        return Ok(tx.clone());
    }
    let (tx, mut rx) = mpsc::unbounded::<Start>();
    let (made_tx, made_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("grpc-client".into())
        .spawn(move || {
            let ex = match glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .name("grpc-client")
                .make()
            {
                Ok(ex) => {
                    let _ = made_tx.send(Ok(()));
                    ex
                }
                Err(e) => {
                    let _ = made_tx.send(Err(e.to_string()));
                    return;
                }
            };
            ex.run(async move {
                while let Some(start) = rx.next().await {
                    glommio::spawn_local(serve(start)).detach();
                }
            });
        })
        .map_err(|e| Error::Executor(format!("spawn client thread: {e}")))?;
    match made_rx.recv() {
        Ok(Ok(())) => {
            *slot = Some(tx.clone());
            Ok(tx)
        }
        Ok(Err(e)) => Err(Error::Executor(e)),
        Err(_) => Err(Error::Executor(
            "client thread exited during start-up".into(),
        )),
    }
}

/// How long a dropped channel waits for its connection to close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One channel's task: connects, runs each command as a task of its own, and when the
/// handle is dropped waits (briefly) for the connection to close, then says so.
async fn serve(start: Start) {
    let Start {
        addr,
        config,
        mut commands,
        ready,
        done,
    } = start;
    let ch = match Channel::connect(addr, config).await {
        Ok(ch) => {
            let _ = ready.send(Ok(()));
            ch
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let closed = ch.closed_flag();
    while let Some(cmd) = commands.next().await {
        glommio::spawn_local(run(ch.clone(), cmd)).detach();
    }
    // The connection's task ends once no clone of the channel is left.
    drop(ch);
    let since = Instant::now();
    while !closed.get() && since.elapsed() < CLOSE_WAIT {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let _ = done.send(());
}

impl BlockingChannel {
    /// Connects on the shared client thread (started by the first call).
    pub fn connect(addr: SocketAddr, config: ClientConfig) -> Result<BlockingChannel, Error> {
        let (tx, commands) = mpsc::unbounded::<Command>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), Error>>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        runtime()?
            .unbounded_send(Start {
                addr,
                config,
                commands,
                ready: ready_tx,
                done: done_tx,
            })
            .map_err(|_| Error::Executor("the client thread is gone".into()))?;
        match futures_lite::future::block_on(ready_rx) {
            Ok(Ok(())) => Ok(BlockingChannel {
                tx: Some(tx),
                done: Some(done_rx),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Executor(
                "the client thread dropped the connection attempt".into(),
            )),
        }
    }

    fn submit(&self, cmd: Command) -> Result<(), Status> {
        match &self.tx {
            Some(tx) => tx.unbounded_send(cmd).map_err(|_| gone()),
            None => Err(gone()),
        }
    }

    pub fn unary(&self, path: &str, msg: Bytes, opts: CallOptions) -> Result<Bytes, Status> {
        let (reply, rx) = oneshot::channel();
        self.submit(Command::Unary {
            path: path.to_owned(),
            msg,
            opts,
            reply,
        })?;
        futures_lite::future::block_on(rx).map_err(|_| gone())?
    }

    pub fn unary_prost<Req, Resp>(
        &self,
        path: &str,
        req: &Req,
        opts: CallOptions,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let b = self.unary(path, crate::codec::encode(req), opts)?;
        crate::codec::decode_response(b)
    }

    /// A server-streaming call, collected; fails with RESOURCE_EXHAUSTED
    /// past `max_messages` so that an endless stream cannot exhaust memory.
    pub fn server_streaming_collect(
        &self,
        path: &str,
        msg: Bytes,
        opts: CallOptions,
        max_messages: usize,
    ) -> Result<Vec<Bytes>, Status> {
        let (reply, rx) = oneshot::channel();
        self.submit(Command::Collect {
            path: path.to_owned(),
            msg,
            opts,
            max_messages,
            reply,
        })?;
        futures_lite::future::block_on(rx).map_err(|_| gone())?
    }
}

async fn run(ch: Channel, cmd: Command) {
    match cmd {
        Command::Unary {
            path,
            msg,
            opts,
            reply,
        } => {
            let _ = reply.send(ch.unary(&path, msg, opts).await);
        }
        Command::Collect {
            path,
            msg,
            opts,
            max_messages,
            reply,
        } => {
            let r = async {
                let mut s = ch.server_streaming(&path, msg, opts).await?;
                let mut out = Vec::new();
                while let Some(m) = s.message().await? {
                    if out.len() == max_messages {
                        return Err(Status::resource_exhausted(format!(
                            "stream has more than {max_messages} messages"
                        )));
                    }
                    out.push(m);
                }
                Ok(out)
            }
            .await;
            let _ = reply.send(r);
        }
    }
}

impl Drop for BlockingChannel {
    fn drop(&mut self) {
        // Closing the command channel ends the channel's task; no call is in flight (each
        // borrows the handle until its reply), and the task says when the connection has
        // closed, so a dropped channel's connection is gone as it was with a thread of its own.
        self.tx.take();
        if let Some(done) = self.done.take() {
            let _ = futures_lite::future::block_on(done);
        }
    }
}
