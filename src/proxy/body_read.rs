//! Reading a request body whole, within a size cap and a deadline.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::protocols::http::ServerSession;
use pingora::time::fast_timeout::fast_timeout;
use pingora::ErrorType;

/// Why a body could not be read.
pub enum BodyRead {
    TooLarge,
    TimedOut,
    /// The body's framing is invalid (a chunk size that is not hex, overflows, ...): the
    /// client gets a 400 and the connection is closed.
    Malformed,
    /// The connection broke: nobody to answer.
    Broken,
}

/// Pingora's error for invalid chunked framing (its constant is not public).
const INVALID_CHUNK: ErrorType = ErrorType::new("InvalidChunk");

/// Reads the whole body, stopping as soon as it passes `max` bytes, within `deadline`.
pub async fn read_body(
    session: &mut ServerSession,
    max: usize,
    declared: Option<usize>,
    deadline: Duration,
) -> Result<Bytes, BodyRead> {
    let read = async {
        // Most bodies arrive in one chunk: keep it as is; copy only once a second one comes.
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut total = 0usize;
        loop {
            let chunk = match session.read_request_body().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) if e.etype() == &ErrorType::ReadTimedout => return Err(BodyRead::TimedOut),
                Err(e) if e.etype() == &INVALID_CHUNK => return Err(BodyRead::Malformed),
                Err(_) => return Err(BodyRead::Broken),
            };
            total += chunk.len();
            if total > max {
                return Err(BodyRead::TooLarge);
            }
            match (&first, &mut joined) {
                (None, _) => first = Some(chunk),
                (Some(f), None) => {
                    let mut buf = BytesMut::with_capacity(declared.unwrap_or(total).max(total));
                    buf.extend_from_slice(f);
                    buf.extend_from_slice(&chunk);
                    joined = Some(buf);
                }
                (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
            }
        }
        Ok(match joined {
            Some(buf) => buf.freeze(),
            None => first.unwrap_or_default(),
        })
    };
    match fast_timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(BodyRead::TimedOut),
    }
}
