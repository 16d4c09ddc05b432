//! The body the upstream receives with `forward_body: json`: always compact JSON.
//!
//! - JSON stays the same value, byte for byte (numbers, escapes, key order and all), with the
//!   whitespace between tokens removed. A body that is already compact is passed on without a
//!   copy.
//! - Form and multipart fields become one object; a repeated field becomes an array of its
//!   values in order; a file part becomes `{"filename", "content_type", "size", "content_base64"}`.

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::body::{Body, BodyError, FieldValue, Fields, MediaType};

/// Normalizes `body` to compact JSON.
pub fn to_json(body: &Body) -> Result<Bytes, BodyError> {
    match body.media() {
        MediaType::Json => compact_json(body.bytes()),
        MediaType::Form | MediaType::Multipart { .. } => Ok(fields_to_json(body.fields()?)),
        // Without a Content-Type, a body that is JSON is still JSON.
        MediaType::Missing => compact_json(body.bytes()).map_err(|_| BodyError::Unsupported),
        MediaType::Other => Err(BodyError::Unsupported),
    }
}

/// Validates `raw` as one JSON value and removes insignificant whitespace.
pub fn compact_json(raw: &Bytes) -> Result<Bytes, BodyError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(raw)
        .map_err(|e| BodyError::Json(e.to_string()))?;
    if !has_insignificant_whitespace(raw) {
        return Ok(raw.clone());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw.iter() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    Ok(Bytes::from(out))
}

/// Whether valid JSON `raw` has whitespace outside strings. (Inside strings, JSON forbids raw
/// control characters, so only a space can occur there.)
fn has_insignificant_whitespace(raw: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            return true;
        }
    }
    false
}

/// Form or multipart fields as one JSON object, keys in order of first appearance.
pub fn fields_to_json(fields: &Fields) -> Bytes {
    let mut map = Map::with_capacity(fields.0.len());
    for field in &fields.0 {
        let value = field_value(&field.value);
        match map.get_mut(&field.name) {
            None => {
                map.insert(field.name.clone(), value);
            }
            // Field values are strings or objects, never arrays: an array is one we built.
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
    // Serializing a Value to a Vec cannot fail (string keys, no non-finite floats).
    Bytes::from(serde_json::to_vec(&Value::Object(map)).unwrap_or_default())
}

fn field_value(value: &FieldValue) -> Value {
    match value {
        FieldValue::Text(t) => Value::String(t.clone()),
        FieldValue::File {
            filename,
            content_type,
            data,
        } => {
            let mut obj = Map::with_capacity(4);
            obj.insert(
                "filename".into(),
                filename.clone().map_or(Value::Null, Value::String),
            );
            obj.insert(
                "content_type".into(),
                content_type.clone().map_or(Value::Null, Value::String),
            );
            obj.insert("size".into(), Value::from(data.len()));
            obj.insert(
                "content_base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
            );
            Value::Object(obj)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> String {
        String::from_utf8(compact_json(&Bytes::from(s.to_owned())).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn compacts_json_exactly() {
        assert_eq!(
            json("{ \"b\" : 1,\n\t\"a\": [ 1.50, 1e400 ] }"),
            r#"{"b":1,"a":[1.50,1e400]}"#
        );
        assert_eq!(
            json(r#"{"s":"a b \" \\ c","n":null}"#),
            r#"{"s":"a b \" \\ c","n":null}"#
        );
        assert_eq!(json(r#" "x\\" "#), r#""x\\""#);
        assert!(compact_json(&Bytes::from_static(b"{\"a\":}")).is_err());
        assert!(compact_json(&Bytes::from_static(b"")).is_err());
        assert!(compact_json(&Bytes::from_static(b"{} {}")).is_err());
    }

    #[test]
    fn compact_json_is_zero_copy() {
        let raw = Bytes::from_static(br#"{"a":"b c"}"#);
        let out = compact_json(&raw).unwrap();
        assert_eq!(out.as_ptr(), raw.as_ptr());
    }

    #[test]
    fn form_arrays_in_order() {
        let body = Body::new(
            Bytes::from_static(b"x=1&tag=a&y=&tag=b&tag=c"),
            Some("application/x-www-form-urlencoded"),
        );
        let out = to_json(&body).unwrap();
        assert_eq!(&out[..], br#"{"x":"1","tag":["a","b","c"],"y":""}"#);
    }

    #[test]
    fn other_types_are_unsupported() {
        let body = Body::new(Bytes::from_static(b"<a/>"), Some("application/xml"));
        assert_eq!(to_json(&body), Err(BodyError::Unsupported));
        let body = Body::new(Bytes::from_static(b"{\"a\":1}"), None);
        assert_eq!(&to_json(&body).unwrap()[..], b"{\"a\":1}");
    }
}
