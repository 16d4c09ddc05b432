//! Sending a verified request to the upstream: hyper HTTP/1 client connections, kept alive in
//! a pool of hookguard's own (a mutex-guarded stack per upstream address: a generic pool's
//! hashing, channels and bookkeeping cost 1–2 µs a request, measured).
//!
//! A pooled connection may have been closed by the upstream while idle (Node closes idle
//! keep-alive connections after 5 s, for example). hyper notices a closed connection before
//! it writes to it and hands the request back; only then is it sent again, on a fresh
//! connection: the upstream cannot have seen it. Once any byte of it went out it is never sent
//! again, whatever happens next (RFC 9112 §9.3.1: a non-idempotent request that may have been
//! processed must not be retried automatically): the attempt fails (502), the keys are
//! released, and the provider's own retry decides. Re-sending here would deliver a message
//! twice.
//!
//! hyper writes the request head and a small body in one `writev`, and the response is read by
//! the connection's own task; a connection goes back to the pool once the response body has
//! been read to its end (see [`Lease`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use pingora::time::fast_timeout::fast_timeout;

use crate::config::Timeouts;
use crate::outcome::Rejection;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Idle connections kept per upstream address.
const MAX_IDLE: usize = 256;

type Sender = SendRequest<Full<Bytes>>;

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The upstream connection pool, shared by every request.
#[derive(Clone, Default)]
pub struct UpstreamClient {
    idle: Arc<Mutex<HashMap<SocketAddr, Vec<Idle>>>>,
}

/// A connection lent to one exchange: back to the pool when the response has been read
/// whole, closed otherwise.
pub struct Lease {
    pool: UpstreamClient,
    addr: SocketAddr,
    sender: Sender,
}

impl Lease {
    fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.entry(self.addr).or_default();
        if stack.len() < MAX_IDLE {
            stack.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

/// An upstream exchange whose response header has arrived; its body is still to be read.
pub struct Exchange {
    pub response: Response<Incoming>,
    pub lease: Lease,
    /// From sending the request to the response header.
    pub waited: Duration,
}

impl UpstreamClient {
    pub fn new() -> Self {
        Self::default()
    }

    /// An idle pooled connection to `addr` that is still open, if any.
    fn pooled(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.get_mut(&addr)?;
        while let Some(conn) = stack.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < POOL_IDLE {
                return Some(conn.sender);
            }
        }
        None
    }

    /// A new connection to `addr`, its reading and writing driven by a task of its own.
    async fn connect(addr: SocketAddr, timeouts: &Timeouts) -> Result<Sender, Rejection> {
        let tcp = match fast_timeout(
            timeouts.upstream_connect,
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(_)) => return Err(Rejection::UpstreamUnavailable),
            Err(_) => return Err(Rejection::UpstreamTimeout),
        };
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| Rejection::UpstreamUnavailable)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends `req` to `addr` and waits (at most `upstream_read`) for the final response
    /// header.
    pub async fn send(
        &self,
        addr: SocketAddr,
        timeouts: &Timeouts,
        req: Request<Full<Bytes>>,
    ) -> Result<Exchange, Rejection> {
        let started = Instant::now();
        let mut req = req;
        if let Some(mut sender) = self.pooled(addr) {
            match exchange(&mut sender, req, timeouts.upstream_read).await {
                Ok(response) => return Ok(self.lent(addr, sender, response, started)),
                // Not one byte of it left: a stale pooled connection. Try a fresh one.
                Err(Failed::Unsent(back)) => req = *back,
                Err(Failed::Sent(r)) => return Err(r),
            }
        }
        let mut sender = Self::connect(addr, timeouts).await?;
        match exchange(&mut sender, req, timeouts.upstream_read).await {
            Ok(response) => Ok(self.lent(addr, sender, response, started)),
            Err(Failed::Unsent(_)) => Err(Rejection::UpstreamUnavailable),
            Err(Failed::Sent(r)) => Err(r),
        }
    }

    fn lent(
        &self,
        addr: SocketAddr,
        sender: Sender,
        response: Response<Incoming>,
        started: Instant,
    ) -> Exchange {
        Exchange {
            response,
            lease: Lease {
                pool: self.clone(),
                addr,
                sender,
            },
            waited: started.elapsed(),
        }
    }
}

/// How an exchange failed: before any byte of the request was written (it may be sent
/// again elsewhere), or after (it must not be).
enum Failed {
    Unsent(Box<Request<Full<Bytes>>>),
    Sent(Rejection),
}

async fn exchange(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
    read_timeout: Duration,
) -> Result<Response<Incoming>, Failed> {
    match fast_timeout(read_timeout, sender.try_send_request(req)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(mut e)) => match e.take_message() {
            Some(req) => Err(Failed::Unsent(Box::new(req))),
            None if e.error().is_timeout() => Err(Failed::Sent(Rejection::UpstreamTimeout)),
            None => Err(Failed::Sent(Rejection::UpstreamUnavailable)),
        },
        // The request may be with the upstream already: not sent again.
        Err(_) => Err(Failed::Sent(Rejection::UpstreamTimeout)),
    }
}

/// The upstream's response body on its way to the client: its connection goes back to the
/// pool when the body ends, and each wait for more of it is bounded by `upstream_read`.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
    read_timeout: Duration,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl UpstreamBody {
    pub fn new(body: Incoming, lease: Lease, read_timeout: Duration) -> Self {
        let mut b = UpstreamBody {
            body,
            lease: Some(lease),
            read_timeout,
            wait: None,
        };
        // An empty body (most webhook answers, with their Content-Length: 0 or a small JSON
        // read in one frame) ends at once: the connection is free for the next request.
        if b.body.is_end_stream() {
            b.finish();
        }
        b
    }

    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.give_back();
        }
    }
}

/// Why the upstream's body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("the upstream broke off its response: {0}")]
    Broken(#[from] hyper::Error),
    #[error("the upstream stopped sending its response")]
    TimedOut,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.wait = None;
                if this.body.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            // The connection is not reusable: dropped with the lease.
            Poll::Ready(Some(Err(e))) => {
                this.lease = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                // Only a body that does not arrive at once needs a timer.
                let timeout = this.read_timeout;
                let wait = this
                    .wait
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match wait.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.lease = None;
                        Poll::Ready(Some(Err(UpstreamBodyError::TimedOut)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
