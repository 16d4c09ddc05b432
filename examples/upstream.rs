//! A demo application for the quick start: listens on 127.0.0.1:3000 (or the address given as
//! the first argument), prints every request hookguard forwards, and answers 200.
//!
//!     cargo run --release --example upstream [ADDR]

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn show(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    println!("{} {}", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        if name.as_str().starts_with("x-webhook-") || name == "content-type" {
            println!("  {name}: {}", value.to_str().unwrap_or("?"));
        }
    }
    println!("  body: {}\n", String::from_utf8_lossy(&body));
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"ok\":true}\n",
    ))))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("demo app listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(show))
                .await;
        });
    }
}
