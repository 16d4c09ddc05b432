//! `forward_body: json`: a buffered body to compact JSON, parse included (a fresh `Body` per
//! iteration, since a body caches its parsed fields).
//!
//!     cargo bench --bench normalize

mod common;

use common::Clock;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hookguard::body::Body;
use hookguard::normalize;
use std::hint::black_box;

fn normalize(c: &mut Criterion<Clock>) {
    let multipart_type = common::multipart_type();
    let mut group = c.benchmark_group("normalize");
    for &(label, size) in common::SIZES {
        let cases = [
            // Already compact: validated, then passed on without a copy.
            ("json-compact", common::json(size, false), common::JSON_TYPE),
            // Pretty-printed (as Stripe and others send): validated and copied without whitespace.
            ("json-pretty", common::json(size, true), common::JSON_TYPE),
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
    targets = normalize
}
criterion_main!(benches);
