//! What became of a request: forwarded, answered, or rejected with one of the contract's
//! error codes. The codes are the vocabulary of the metrics and the logs; which HTTP status
//! each one is answered with is the proxy's business (`proxy::respond`).

use crate::providers::VerifyError;

/// Every way hookguard refuses a request, by the contract's `error` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    #[error("no route for this path")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("client address not in the route's allow_ips")]
    IpNotAllowed,
    #[error("request header larger than max_header_bytes")]
    HeadersTooLarge,
    #[error("body larger than max_body_bytes")]
    BodyTooLarge,
    #[error("signature material absent or unparsable")]
    MissingSignature,
    #[error("timestamp outside the route's tolerance")]
    StaleTimestamp,
    #[error("signature does not match any secret")]
    BadSignature,
    #[error("message already delivered or in flight")]
    Replayed,
    #[error("the shared replay store cannot be reached")]
    ReplayStoreUnavailable,
    #[error("the replay store is full of keys still inside their window")]
    ReplayStoreFull,
    #[error("the spool is full")]
    SpoolFull,
    #[error("the spool could not write the message in time")]
    SpoolUnavailable,
    #[error("body does not parse as its content type")]
    MalformedBody,
    #[error("client took too long to send the request")]
    ClientTimeout,
    #[error("upstream refused or dropped the connection")]
    UpstreamUnavailable,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
}

impl Rejection {
    pub const ALL: [Rejection; 17] = [
        Rejection::NoRoute,
        Rejection::MethodNotAllowed,
        Rejection::IpNotAllowed,
        Rejection::HeadersTooLarge,
        Rejection::BodyTooLarge,
        Rejection::MissingSignature,
        Rejection::StaleTimestamp,
        Rejection::BadSignature,
        Rejection::Replayed,
        Rejection::ReplayStoreUnavailable,
        Rejection::ReplayStoreFull,
        Rejection::SpoolFull,
        Rejection::SpoolUnavailable,
        Rejection::MalformedBody,
        Rejection::ClientTimeout,
        Rejection::UpstreamUnavailable,
        Rejection::UpstreamTimeout,
    ];

    /// The `error` code of the JSON body and the `outcome` label of the metrics.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::NoRoute => "no_route",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::IpNotAllowed => "ip_not_allowed",
            Rejection::HeadersTooLarge => "headers_too_large",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::MissingSignature => "missing_signature",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::BadSignature => "bad_signature",
            Rejection::Replayed => "replayed",
            Rejection::ReplayStoreUnavailable => "replay_store_unavailable",
            Rejection::ReplayStoreFull => "replay_store_full",
            Rejection::SpoolFull => "spool_full",
            Rejection::SpoolUnavailable => "spool_unavailable",
            Rejection::MalformedBody => "malformed_body",
            Rejection::ClientTimeout => "client_timeout",
            Rejection::UpstreamUnavailable => "upstream_unavailable",
            Rejection::UpstreamTimeout => "upstream_timeout",
        }
    }
}

impl From<VerifyError> for Rejection {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::MissingSignature => Rejection::MissingSignature,
            VerifyError::StaleTimestamp => Rejection::StaleTimestamp,
            VerifyError::BadSignature => Rejection::BadSignature,
            VerifyError::TooManyFields => Rejection::BodyTooLarge,
        }
    }
}

/// The outcome label of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    /// Written to the spool and answered `202`: the spool delivers it.
    Queued,
    /// Verified and answered by hookguard on the provider's behalf (a validation challenge).
    Answered,
    /// A copy of a message already delivered: answered `200 {"status":"duplicate"}`, not
    /// forwarded. Counted as `replayed`, like a copy refused while the first is in flight.
    Duplicate,
    Rejected(Rejection),
    /// The client went away (or broke the protocol) before a response could be given.
    Aborted,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Answered => "answered",
            Outcome::Queued => "queued",
            Outcome::Duplicate => Rejection::Replayed.code(),
            Outcome::Aborted => "aborted",
            Outcome::Rejected(r) => r.code(),
        }
    }
}
