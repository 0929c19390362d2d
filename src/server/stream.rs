//! The upstream half of a bidirectional stream (Watch, LeaseKeepAlive), and the policy for
//! opening it again elsewhere when its connection breaks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::Forwarded;
use crate::upstream::Datastore;

type Opening<Resp> = Pin<Box<dyn Future<Output = Result<Response<Streaming<Resp>>, Status>> + Send>>;

enum State<Resp> {
    Opening(Opening<Resp>),
    // Boxed: a Streaming is large, and a state is made once per stream.
    Open(Box<Streaming<Resp>>),
    Closed,
}

/// A stream to one endpoint of a datastore. Requests are queued without a bound: the
/// datastore's reading of requests must never wait on our reading of its responses, or
/// the two ends could block each other.
/// The requests of an upstream stream, as tonic sends them. (futures' channel: it keeps
/// no room for messages ahead of them, and is small, which counts with many streams.)
pub(crate) type Outbound<Req> = mpsc::UnboundedReceiver<Req>;

pub(crate) struct UpstreamStream<Req, Resp> {
    tx: mpsc::UnboundedSender<Req>,
    state: State<Resp>,
    /// Index of the endpoint in the datastore.
    pub endpoint: usize,
}

impl<Req: Send + 'static, Resp: Send + 'static> UpstreamStream<Req, Resp> {
    /// Starts opening the stream; nothing waits here. `open` makes the call on a channel.
    pub fn open<F, Fut>(datastore: &Arc<Datastore>, fwd: &Forwarded, open: F) -> Self
    where
        F: FnOnce(Channel, Request<Outbound<Req>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response<Streaming<Resp>>, Status>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded();
        let (endpoint, channel) = datastore.pick();
        let ds = Arc::clone(datastore);
        let fwd = fwd.clone();
        let fut = async move {
            let token = ds.token(&channel).await?;
            let mut req = fwd.request(rx, token);
            // A stream lives as long as the client wants it; the client's deadline, if
            // any, is its own business.
            req.metadata_mut().remove("grpc-timeout");
            open(channel, req).await
        };
        UpstreamStream {
            tx,
            state: State::Opening(Box::pin(fut)),
            endpoint,
        }
    }

    pub fn send(&self, req: Req) {
        // A failed send means the stream is gone; `next` reports why.
        let _ = self.tx.unbounded_send(req);
    }

    /// The next response. Safe to use in `select!`: progress is kept in `self`.
    pub async fn next(&mut self) -> Option<Result<Resp, Status>> {
        loop {
            match &mut self.state {
                State::Opening(fut) => match fut.await {
                    Ok(resp) => self.state = State::Open(Box::new(resp.into_inner())),
                    Err(status) => {
                        self.state = State::Closed;
                        return Some(Err(status));
                    }
                },
                State::Open(stream) => {
                    let item = stream.message().await.transpose();
                    if item.is_none() {
                        self.state = State::Closed;
                    }
                    return item;
                }
                State::Closed => return None,
            }
        }
    }
}

/// Backoff for opening a broken stream again: quick at first, giving up after a while so a
/// client is told instead of waiting forever.
pub(crate) struct Reconnect {
    backoff: crate::backoff::Backoff,
}

impl Reconnect {
    const MAX_ATTEMPTS: u32 = 12;

    pub fn new() -> Self {
        // 50 ms doubling to 1.6 s: about 13 s over all attempts.
        Reconnect {
            backoff: crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_millis(1600)),
        }
    }

    /// Waits before the next attempt; `false` when it is time to give up.
    pub async fn wait(&mut self) -> bool {
        if self.backoff.attempts >= Self::MAX_ATTEMPTS {
            return false;
        }
        self.backoff.wait().await;
        true
    }

    /// A response arrived: the stream works again.
    pub fn reset(&mut self) {
        self.backoff.reset();
    }
}

/// Answers a stream's session has ready that the client has not taken yet.
const ANSWERS_AHEAD: usize = 16;

/// The client's side of a bidirectional stream (Watch, LeaseKeepAlive): the session that
/// serves it and the answers it has ready, polled together by the task that serves this
/// HTTP/2 stream. A session needs no task or queue of its own (tens of thousands of idle
/// streams cost less), and it ends the moment the client's stream does: the server drops
/// this when the client resets the stream or its connection closes. When the client
/// reads slowly, the session waits with its answers, and reads no further upstream.
pub struct Driven<T> {
    session: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    answers: mpsc::Receiver<Result<T, Status>>,
}

/// Where a session sends its answers. (futures' channel, not tokio's: a few hundred bytes
/// less per stream.)
pub(crate) type Answers<T> = mpsc::Sender<Result<T, Status>>;

impl<T> Driven<T> {
    /// The stream that runs the session `start` makes, given where to send its answers.
    pub fn new<F>(start: impl FnOnce(Answers<T>) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (down, answers) = mpsc::channel(ANSWERS_AHEAD);
        Driven {
            session: Some(Box::pin(start(down))),
            answers,
        }
    }
}

impl<T> Stream for Driven<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(session) = self.session.as_mut() {
            if session.as_mut().poll(cx).is_ready() {
                // Its sender is gone with it: the answers end once drained.
                self.session = None;
            }
        }
        self.answers.poll_next_unpin(cx)
    }
}
