//! `application/x-www-form-urlencoded`: any byte string is a form. Parsing never panics,
//! re-encoding the parsed fields and parsing again gives the same fields, and the JSON the
//! upstream would receive is exactly the model: one key per name in order of first arrival,
//! a string for a single value, an array of strings (in order) for a repeated name.
#![no_main]

use bytes::Bytes;
use hookguard::body::{parse_form, Body, FieldValue};
use hookguard::normalize;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let fields = parse_form(data);

    // Round trip: encode what was decoded, decode again.
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for f in &fields.0 {
        match &f.value {
            FieldValue::Text(t) => {
                ser.append_pair(&f.name, t);
            }
            FieldValue::File { .. } => panic!("a form field is never a file"),
        }
    }
    assert_eq!(parse_form(ser.finish().as_bytes()), fields);

    // The model of the normalized object.
    let mut model: Vec<(String, Vec<String>)> = Vec::new();
    for f in &fields.0 {
        let FieldValue::Text(t) = &f.value else {
            unreachable!()
        };
        match model.iter_mut().find(|(n, _)| *n == f.name) {
            Some((_, values)) => values.push(t.clone()),
            None => model.push((f.name.clone(), vec![t.clone()])),
        }
    }

    let body = Body::new(
        Bytes::copy_from_slice(data),
        Some("application/x-www-form-urlencoded"),
    );
    let json = normalize::to_json(&body).expect("every form normalizes");
    let value: Value = serde_json::from_slice(&json).expect("normalized form is JSON");
    let obj = value.as_object().expect("an object");
    assert_eq!(obj.len(), model.len());
    for ((key, got), (name, values)) in obj.iter().zip(&model) {
        assert_eq!(key, name, "arrival order of first occurrence");
        match values.as_slice() {
            [one] => assert_eq!(got, &Value::String(one.clone())),
            many => assert_eq!(
                got,
                &Value::Array(many.iter().cloned().map(Value::String).collect())
            ),
        }
    }
    // Normalized output is already compact: normalizing it as JSON changes nothing.
    assert_eq!(normalize::compact_json(&json).expect("valid"), json);
});
