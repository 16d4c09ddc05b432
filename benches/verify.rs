//! Mailgun verification of a buffered body: finding the signature material (JSON, form or
//! multipart parse), the timestamp window and the HMAC; plus the whole per-request body work
//! for a multipart body (verify, then normalize from the same parse), the 1 MiB ≤ 5 ms target.
//!
//!     cargo bench --bench verify

mod common;

use common::Clock;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hookguard::body::Body;
use hookguard::normalize;
use hookguard::providers::{Inbound, Provider};
use http::HeaderMap;
use std::hint::black_box;

fn verify_once(provider: &dyn Provider, headers: &HeaderMap, body: &Body) {
    let inbound = Inbound {
        path_and_query: "/webhooks/mailgun",
        headers,
        body,
        client_ip: None,
    };
    let verified = provider.verify(&inbound, common::now());
    assert!(verified.is_ok(), "fixture must verify: {verified:?}");
    black_box(verified.ok());
}

fn verify(c: &mut Criterion<Clock>) {
    let provider = common::provider();
    let headers = HeaderMap::new();
    let multipart_type = common::multipart_type();
    let mut group = c.benchmark_group("verify/mailgun");
    for &(label, size) in common::SIZES {
        let cases = [
            ("json", common::json(size, false), common::JSON_TYPE),
            ("form", common::form(size), common::FORM_TYPE),
            (
                "multipart",
                common::multipart(size),
                multipart_type.as_str(),
            ),
        ];
        for (kind, bytes, content_type) in cases {
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.bench_with_input(BenchmarkId::new(kind, label), &bytes, |b, bytes| {
                // A fresh `Body` each time: its fields are parsed once and cached.
                b.iter(|| {
                    let body = Body::new(bytes.clone(), Some(content_type));
                    verify_once(&*provider, &headers, &body);
                })
            });
        }
    }
    group.finish();

    // What hookguard does with a body between reading it and sending it upstream.
    let mut group = c.benchmark_group("verify+normalize/mailgun");
    for &(label, size) in common::SIZES {
        let cases = [
            ("json", common::json(size, false), common::JSON_TYPE),
            ("form", common::form(size), common::FORM_TYPE),
            (
                "multipart",
                common::multipart(size),
                multipart_type.as_str(),
            ),
        ];
        for (kind, bytes, content_type) in cases {
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.bench_with_input(BenchmarkId::new(kind, label), &bytes, |b, bytes| {
                b.iter(|| {
                    let body = Body::new(bytes.clone(), Some(content_type));
                    verify_once(&*provider, &headers, &body);
                    black_box(normalize::to_json(&body).expect("normalizes"));
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = verify
}
criterion_main!(benches);
