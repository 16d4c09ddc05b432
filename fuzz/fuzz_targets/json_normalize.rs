//! JSON normalization: `compact_json` never panics, and whenever the input is one JSON value
//! the output is the same value (same keys in the same order, same numbers, same strings)
//! with no whitespace between tokens, and compacting it again changes nothing.
#![no_main]

use bytes::Bytes;
use hookguard::body::Body;
use hookguard::normalize::{compact_json, to_json};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);
    let out = compact_json(&raw);

    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let out = out.as_ref().expect("valid JSON compacts");
        let again: Value = serde_json::from_slice(out).expect("compact output is JSON");
        // `Value` equality ignores key order; the serialized form does not.
        assert_eq!(again, value);
        assert_eq!(
            serde_json::to_vec(&again).unwrap(),
            serde_json::to_vec(&value).unwrap(),
            "key order kept"
        );
    }
    if let Ok(out) = &out {
        // Whatever compact_json accepted, its output is accepted again, unchanged.
        assert_eq!(compact_json(out).as_ref(), Ok(out));
        // Only whitespace was removed.
        let stripped: Vec<u8> = data
            .iter()
            .copied()
            .filter(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .collect();
        let out_stripped: Vec<u8> = out
            .iter()
            .copied()
            .filter(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .collect();
        assert_eq!(stripped, out_stripped);
        assert!(out.len() <= data.len());
    }

    // The same through a body with and without a content type.
    let body = Body::new(raw.clone(), Some("application/json"));
    assert_eq!(to_json(&body).ok(), out.clone().ok());
    let body = Body::new(raw, None);
    assert_eq!(to_json(&body).ok(), out.ok());
});
