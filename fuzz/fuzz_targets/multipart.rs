//! `multipart/form-data` through the same path a request takes: the content type picks the
//! boundary, the body is parsed (lazily, once), Mailgun looks for its fields, and the fields
//! are normalized. Never panics; when the body parses, the JSON is valid, names keep their
//! first-arrival order, and every file part's `size` and `content_base64` match its bytes.
//!
//! Input layout: byte 0 chooses the content type. If it is odd, the content type is
//! `multipart/form-data; boundary=XX` and the body is the rest (seeds use this). If it is
//! even, the content type is the rest up to the first `\n` and the body follows it.
#![no_main]

use base64::Engine as _;
use bytes::Bytes;
use hookguard::body::{Body, FieldValue, MediaType};
use hookguard::normalize;
use hookguard::providers::mailgun;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (content_type, body): (String, &[u8]) = if mode % 2 == 1 {
        ("multipart/form-data; boundary=XX".to_owned(), rest)
    } else {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let Ok(ct) = std::str::from_utf8(&rest[..split]) else {
            return;
        };
        (ct.to_owned(), rest.get(split + 1..).unwrap_or_default())
    };

    let body = Body::new(Bytes::copy_from_slice(body), Some(&content_type));
    let fields = body.fields().cloned();
    // Parsed at most once: asking again gives the same answer.
    assert_eq!(body.fields().cloned(), fields);
    let _ = mailgun::material(&body);
    let normalized = normalize::to_json(&body);

    let fields = match (body.media(), fields) {
        (MediaType::Multipart { .. }, Ok(fields)) => fields,
        (MediaType::Multipart { .. }, Err(_)) => {
            assert!(
                normalized.is_err(),
                "a malformed multipart body never normalizes"
            );
            return;
        }
        _ => return,
    };
    let json = normalized.expect("parsed multipart normalizes");
    let value: Value = serde_json::from_slice(&json).expect("valid JSON");
    let obj = value.as_object().expect("an object");

    let mut names: Vec<&str> = Vec::new();
    for f in &fields.0 {
        if !names.contains(&f.name.as_str()) {
            names.push(&f.name);
        }
    }
    assert_eq!(obj.keys().map(String::as_str).collect::<Vec<_>>(), names);

    for (i, f) in fields.0.iter().enumerate() {
        let occurrences: Vec<&FieldValue> = fields
            .0
            .iter()
            .filter(|g| g.name == f.name)
            .map(|g| &g.value)
            .collect();
        let nth = fields.0[..i].iter().filter(|g| g.name == f.name).count();
        let got = if occurrences.len() == 1 {
            &obj[&f.name]
        } else {
            &obj[&f.name].as_array().expect("repeated name is an array")[nth]
        };
        match &f.value {
            FieldValue::Text(t) => assert_eq!(got, &Value::String(t.clone())),
            FieldValue::File {
                filename,
                content_type,
                data,
            } => {
                assert_eq!(got["size"], Value::from(data.len()));
                assert_eq!(
                    got["filename"],
                    filename.clone().map_or(Value::Null, Value::String)
                );
                assert_eq!(
                    got["content_type"],
                    content_type.clone().map_or(Value::Null, Value::String)
                );
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(got["content_base64"].as_str().expect("base64 string"))
                    .expect("valid base64");
                assert_eq!(&decoded[..], &data[..]);
            }
        }
    }
});
