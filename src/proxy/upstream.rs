//! Sending a verified request to the upstream over Pingora's pooled connections.
//!
//! A pooled connection may have been closed by the upstream while idle (Node closes idle
//! keep-alive connections after 5 s, for example). Pingora checks a pooled connection before
//! handing it out (a connection that has read EOF is discarded). If writing the request to a
//! reused connection still fails before a single byte of it was accepted, the request is sent
//! once more on a fresh connection: the upstream cannot have seen it. Once any byte went out,
//! it is never sent again, whatever happens next (RFC 9112 §9.3.1: a non-idempotent request
//! that may have been processed must not be retried automatically): the upstream may have
//! acted on it, so the attempt fails (502), the keys are released, and the provider's own retry
//! decides. Re-sending here would deliver the message twice.
//!
//! The request goes out as wire bytes written straight to the connection, header and body in
//! one write when the body is small: Pingora's client session flushes the header on its own,
//! which cost a second `sendto` (and a second wake-up of the upstream) per request. The
//! session is then used to read the response, as before.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as ClientSession};
use pingora::protocols::Stream;
use pingora::time::fast_timeout::fast_timeout;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType};
use tokio::io::AsyncWriteExt;

use crate::config::{Timeouts, Upstream};
use crate::outcome::Rejection;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Bodies up to this size are copied behind the header and sent in one write; larger ones
/// follow the header in a write of their own rather than being copied.
const COALESCE_BODY: usize = 64 * 1024;

/// A request as it goes on the wire.
struct Wire<'a> {
    /// Request line and header, and the body too when it was small enough to join them.
    head: BytesMut,
    /// The body when it did not join the head (else empty).
    rest: &'a [u8],
}

impl<'a> Wire<'a> {
    fn new(header: &RequestHeader, body: &'a Bytes) -> Option<Self> {
        let mut head = http_req_header_to_wire(header)?;
        if body.len() <= COALESCE_BODY {
            head.extend_from_slice(body);
            Some(Wire { head, rest: &[] })
        } else {
            Some(Wire { head, rest: body })
        }
    }
}

pub struct UpstreamClient {
    connector: TransportConnector,
}

/// An upstream exchange whose response header has arrived; its body is still to be read.
pub struct Exchange {
    pub session: ClientSession,
    /// The pool key of the peer the connection belongs to.
    reuse_hash: u64,
    /// From sending the request to the response header.
    pub waited: Duration,
}

impl UpstreamClient {
    pub fn new(pool_size: usize) -> Self {
        UpstreamClient {
            connector: TransportConnector::new(Some(pingora::connectors::ConnectorOptions::new(
                pool_size,
            ))),
        }
    }

    pub fn peer(upstream: &Upstream, timeouts: &Timeouts) -> HttpPeer {
        let mut peer = HttpPeer::new(upstream.addr, false, String::new());
        peer.options.connection_timeout = Some(timeouts.upstream_connect);
        peer.options.total_connection_timeout = Some(timeouts.upstream_connect);
        peer.options.read_timeout = Some(timeouts.upstream_read);
        peer.options.write_timeout = Some(timeouts.upstream_read);
        peer.options.idle_timeout = Some(POOL_IDLE);
        peer
    }

    /// Sends `header` and `body` and waits for the final (non-1xx) response header.
    pub async fn send(
        &self,
        peer: &HttpPeer,
        header: &RequestHeader,
        body: &Bytes,
    ) -> Result<Exchange, Rejection> {
        let started = std::time::Instant::now();
        let reuse_hash = peer.reuse_hash();
        // The request line and header were built from validated parts; a forbidden byte
        // here would be a bug, answered like an upstream that cannot be reached.
        let wire = Wire::new(header, body).ok_or(Rejection::UpstreamUnavailable)?;
        if let Some(stream) = self.connector.reused_stream(peer).await {
            match exchange(stream, peer, &wire).await {
                Ok(session) => {
                    return Ok(Exchange {
                        session,
                        reuse_hash,
                        waited: started.elapsed(),
                    })
                }
                // Nothing of the request left: a stale pooled connection; try a fresh one.
                Err(Failed::Unsent(_)) => {}
                Err(Failed::Sent(e)) => return Err(classify(&e)),
            }
        }
        let stream = self
            .connector
            .new_stream(peer)
            .await
            .map_err(|e| classify(&e))?;
        match exchange(stream, peer, &wire).await {
            Ok(session) => Ok(Exchange {
                session,
                reuse_hash,
                waited: started.elapsed(),
            }),
            Err(Failed::Sent(e) | Failed::Unsent(e)) => Err(classify(&e)),
        }
    }

    /// Returns the connection to the pool when the exchange left it reusable.
    pub async fn release(&self, exchange: Exchange) {
        let Exchange {
            mut session,
            reuse_hash,
            ..
        } = exchange;
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            self.connector
                .release_stream(stream, reuse_hash, Some(POOL_IDLE));
        }
    }
}

/// How an exchange failed: before any byte of the request was accepted (it may be sent again
/// elsewhere), or after (it must not be).
enum Failed {
    Unsent(Box<Error>),
    Sent(Box<Error>),
}

/// Writes `buf`, noting in `sent` once any byte of it was accepted.
async fn write_noting(stream: &mut Stream, buf: &[u8], sent: &mut bool) -> std::io::Result<()> {
    let mut rest = buf;
    while !rest.is_empty() {
        let n = stream.write(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        *sent = true;
        rest = &rest[n..];
    }
    Ok(())
}

/// Writes the request and reads the response header.
async fn exchange(
    mut stream: Stream,
    peer: &HttpPeer,
    wire: &Wire<'_>,
) -> Result<ClientSession, Failed> {
    let mut sent = false;
    let write = async {
        write_noting(&mut stream, &wire.head, &mut sent).await?;
        write_noting(&mut stream, wire.rest, &mut sent).await?;
        stream.flush().await
    };
    let written = match peer.options.write_timeout {
        Some(t) => fast_timeout(t, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => write.await,
    };
    if let Err(e) = written {
        let etype = if e.kind() == std::io::ErrorKind::TimedOut {
            ErrorType::WriteTimedout
        } else {
            ErrorType::WriteError
        };
        let e = Error::because(etype, "while writing the request", e);
        return Err(if sent {
            Failed::Sent(e)
        } else {
            Failed::Unsent(e)
        });
    }
    let mut session = ClientSession::new_with_options(stream, peer);
    session.read_timeout = peer.options.read_timeout;
    session.write_timeout = peer.options.write_timeout;
    loop {
        // The request is out: whatever fails now, the upstream may have acted on it.
        session.read_response().await.map_err(Failed::Sent)?;
        match session.get_status() {
            // 101 cannot happen (we never ask to upgrade); other 1xx precede the answer.
            Some(s) if s.is_informational() => continue,
            _ => return Ok(session),
        }
    }
}

fn classify(e: &Error) -> Rejection {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Rejection::UpstreamTimeout
        }
        _ => Rejection::UpstreamUnavailable,
    }
}

/// The upstream's response header as the client gets it: unchanged but for the headers that
/// describe the upstream connection, not the message.
pub fn downstream_response(upstream: &ResponseHeader) -> ResponseHeader {
    let mut resp = upstream.clone();
    for name in ["connection", "keep-alive", "proxy-connection"] {
        resp.remove_header(name);
    }
    resp
}
