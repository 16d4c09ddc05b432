//! Reading a request body whole, within a size cap and a deadline.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pingora::time::fast_timeout::fast_timeout;

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

/// Reads the whole body, stopping as soon as it passes `max` bytes, within `deadline`.
pub async fn read_body(
    mut body: Incoming,
    max: usize,
    declared: Option<usize>,
    deadline: Duration,
) -> Result<Bytes, BodyRead> {
    let read = async {
        // Most bodies arrive in one chunk: keep it as is; copy only once a second one comes.
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                if e.is_parse() {
                    BodyRead::Malformed
                } else {
                    BodyRead::Broken
                }
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers: not part of the body
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
