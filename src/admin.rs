//! The admin listener: `/healthz`, `/readyz` and `/metrics`, never on the public port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::proxy::Gateway;

/// Whether the proxy can take traffic.
#[derive(Default)]
pub struct Health {
    /// The public listener accepts connections.
    listening: AtomicBool,
    /// Shutdown has begun.
    draining: AtomicBool,
}

impl Health {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

pub struct AdminApp {
    pub health: Arc<Health>,
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method_ok = req.method == http::Method::GET || req.method == http::Method::HEAD;
        let (status, content_type, body) = match (req.uri.path(), method_ok) {
            (_, false) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"method not allowed\n".to_vec(),
            ),
            ("/healthz", _) => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            ("/readyz", _) if self.health.is_ready() => {
                (StatusCode::OK, "text/plain", b"ready\n".to_vec())
            }
            ("/readyz", _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"not ready\n".to_vec(),
            ),
            ("/metrics", _) => {
                self.metrics
                    .replay_entries
                    .set(self.gateway.replay().len() as i64);
                (
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
