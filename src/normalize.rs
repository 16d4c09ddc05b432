//! The body the upstream receives with `forward_body: json`: always compact JSON.
//!
//! - JSON stays the same value, byte for byte (numbers, escapes, key order and all), with the
//!   whitespace between tokens removed. A body that is already compact is passed on without a
//!   copy.
//! - Form and multipart fields become one object; a repeated field becomes an array of its
//!   values in order; a file part becomes `{"filename", "content_type", "size", "content_base64"}`.

use base64::Engine;
use bytes::Bytes;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

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

/// Form or multipart fields as one JSON object, keys in order of first appearance; the values
/// of a repeated name become an array, in order. Written straight to bytes (no intermediate
/// `serde_json::Value` holding copies of every field).
pub fn fields_to_json(fields: &Fields) -> Bytes {
    let list = &fields.0;
    let n = list.len();
    // Chain the fields of each name: `next[i]` is the next field with the name of field `i`.
    const END: usize = usize::MAX;
    let mut next = vec![END; n];
    let mut tail = vec![END; n];
    let mut heads: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (i, field) in list.iter().enumerate() {
        match heads.entry(field.name.as_str()) {
            Entry::Vacant(e) => {
                e.insert(i);
                tail[i] = i;
            }
            Entry::Occupied(e) => {
                let head = *e.get();
                next[tail[head]] = i;
                tail[head] = i;
            }
        }
    }
    let estimate: usize = list
        .iter()
        .map(|f| {
            f.name.len()
                + 6
                + match &f.value {
                    FieldValue::Text(t) => t.len(),
                    FieldValue::File { data, .. } => data.len() * 4 / 3 + 96,
                }
        })
        .sum();
    let mut out = Vec::with_capacity(estimate + 2);
    out.push(b'{');
    for (i, field) in list.iter().enumerate() {
        // Only the first field of each name opens its key (`tail` is set for those alone).
        if tail[i] == END {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        write_json_str(&mut out, &field.name);
        out.push(b':');
        if next[i] == END {
            write_field_value(&mut out, &field.value);
            continue;
        }
        out.push(b'[');
        let mut j = i;
        loop {
            write_field_value(&mut out, &list[j].value);
            j = next[j];
            if j == END {
                break;
            }
            out.push(b',');
        }
        out.push(b']');
    }
    out.push(b'}');
    Bytes::from(out)
}

/// A JSON string, escaped by serde_json (writing into a Vec cannot fail).
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_field_value(out: &mut Vec<u8>, value: &FieldValue) {
    match value {
        FieldValue::Text(t) => write_json_str(out, t),
        FieldValue::File {
            filename,
            content_type,
            data,
        } => {
            out.extend_from_slice(b"{\"filename\":");
            match filename {
                Some(f) => write_json_str(out, f),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"content_type\":");
            match content_type {
                Some(c) => write_json_str(out, c),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(
                format!(",\"size\":{},\"content_base64\":\"", data.len()).as_bytes(),
            );
            // Base64's alphabet needs no escaping in a JSON string.
            let start = out.len();
            out.resize(
                start + base64::encoded_len(data.len(), true).unwrap_or(0),
                0,
            );
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(data, &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + written);
            out.extend_from_slice(b"\"}");
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
