//! A blocking client for ordinary threads (tools, tests, admin commands).
//!
//! It owns a thread running a glommio `LocalExecutor` with one
//! [`Channel`](crate::client::Channel); each call is sent there and the
//! caller blocks until the reply comes back.

use std::net::SocketAddr;
use std::thread::JoinHandle;

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
    thread: Option<JoinHandle<()>>,
}

fn gone() -> Status {
    Status::unavailable("client executor thread is gone")
}

impl BlockingChannel {
    /// Starts the executor thread and connects.
    pub fn connect(addr: SocketAddr, config: ClientConfig) -> Result<BlockingChannel, Error> {
        let (tx, mut rx) = mpsc::unbounded::<Command>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), Error>>();
        let thread = std::thread::Builder::new()
            .name(format!("grpc-client-{addr}"))
            .spawn(move || {
                let ex =
                    match glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make() {
                        Ok(ex) => ex,
                        Err(e) => {
                            let _ = ready_tx.send(Err(Error::Executor(e.to_string())));
                            return;
                        }
                    };
                ex.run(async move {
                    let ch = match Channel::connect(addr, config).await {
                        Ok(ch) => {
                            let _ = ready_tx.send(Ok(()));
                            ch
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    while let Some(cmd) = rx.next().await {
                        let ch = ch.clone();
                        glommio::spawn_local(run(ch, cmd)).detach();
                    }
                });
            })
            .map_err(|e| Error::Executor(format!("spawn client thread: {e}")))?;
        match futures_lite::future::block_on(ready_rx) {
            Ok(Ok(())) => Ok(BlockingChannel {
                tx: Some(tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Executor(
                    "client thread exited during start-up".into(),
                ))
            }
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
        // Closing the command channel ends the executor's loop; calls in
        // flight finish first since the executor runs until they do.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
