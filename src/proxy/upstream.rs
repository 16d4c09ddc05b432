//! Sending a verified request to the upstream over Pingora's pooled connections.
//!
//! A pooled connection may have been closed by the upstream while idle (Node closes idle
//! keep-alive connections after 5 s, for example). When a reused connection fails before any
//! response byte arrives, the request is sent once more on a fresh connection; the upstream
//! cannot have acted on a request it never answered on a connection it had already closed.

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession as ClientSession;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType};

use crate::config::{Timeouts, Upstream};
use crate::outcome::Rejection;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(30);

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
        header: RequestHeader,
        body: &Bytes,
    ) -> Result<Exchange, Rejection> {
        let started = std::time::Instant::now();
        let reuse_hash = peer.reuse_hash();
        if let Some(stream) = self.connector.reused_stream(peer).await {
            let session = ClientSession::new_with_options(stream, peer);
            match exchange(session, peer, header.clone(), body).await {
                Ok(session) => {
                    return Ok(Exchange {
                        session,
                        reuse_hash,
                        waited: started.elapsed(),
                    })
                }
                Err((e, answered)) if answered || !retryable(&e) => return Err(classify(&e)),
                Err(_) => {} // stale pooled connection: try a fresh one
            }
        }
        let stream = self
            .connector
            .new_stream(peer)
            .await
            .map_err(|e| classify(&e))?;
        let session = ClientSession::new_with_options(stream, peer);
        match exchange(session, peer, header, body).await {
            Ok(session) => Ok(Exchange {
                session,
                reuse_hash,
                waited: started.elapsed(),
            }),
            Err((e, _)) => Err(classify(&e)),
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

/// Writes the request and reads the response header. On error, also says whether any
/// response byte had arrived (then the request must not be sent again).
async fn exchange(
    mut session: ClientSession,
    peer: &HttpPeer,
    header: RequestHeader,
    body: &Bytes,
) -> Result<ClientSession, (Box<Error>, bool)> {
    session.read_timeout = peer.options.read_timeout;
    session.write_timeout = peer.options.write_timeout;
    let sent = async {
        session.write_request_header(Box::new(header)).await?;
        if !body.is_empty() {
            session.write_body(body).await?;
        }
        session.finish_body().await?;
        Ok::<(), Box<Error>>(())
    }
    .await;
    if let Err(e) = sent {
        return Err((e, false));
    }
    loop {
        if let Err(e) = session.read_response().await {
            let answered = session.resp_header().is_some();
            return Err((e, answered));
        }
        match session.get_status() {
            // 101 cannot happen (we never ask to upgrade); other 1xx precede the answer.
            Some(s) if s.is_informational() => continue,
            _ => return Ok(session),
        }
    }
}

/// Errors that show a pooled connection was already dead.
fn retryable(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
    )
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
