//! Property tests for the bodies the upstream receives (`forward_body: json`): form and
//! multipart bodies built from arbitrary fields come out as exactly those fields, and JSON
//! in any layout comes out as its compact serialization.

use base64::Engine as _;
use bytes::Bytes;
use hookguard::body::Body;
use hookguard::normalize::{compact_json, to_json};
use proptest::prelude::*;
use serde_json::{Map, Value};

// ------------------------------------------------------------------------------------------
// The model: what the upstream must see for a list of fields
// ------------------------------------------------------------------------------------------

/// Fields as one object: keys in order of first arrival, a repeated name an array in order.
fn model(fields: Vec<(String, Value)>) -> Value {
    let mut order: Vec<String> = Vec::new();
    let mut values: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for (name, value) in fields {
        if !values.contains_key(&name) {
            order.push(name.clone());
        }
        values.entry(name).or_default().push(value);
    }
    let mut map = Map::new();
    for name in order {
        let mut vs = values.remove(&name).unwrap();
        let v = if vs.len() == 1 {
            vs.pop().unwrap()
        } else {
            Value::Array(vs)
        };
        map.insert(name, v);
    }
    Value::Object(map)
}

/// The normalized body as a value, plus the check that its keys are in the model's order
/// (`Value` equality ignores key order).
fn normalized(body: &[u8], content_type: &str) -> Value {
    let body = Body::new(Bytes::copy_from_slice(body), Some(content_type));
    let out = to_json(&body).unwrap_or_else(|e| panic!("normalizes: {e}"));
    serde_json::from_slice(&out).expect("normalized body is JSON")
}

fn assert_same_in_order(got: &Value, want: &Value) {
    assert_eq!(got, want);
    assert_eq!(
        serde_json::to_string(got).unwrap(),
        serde_json::to_string(want).unwrap(),
        "same key order"
    );
}

// ------------------------------------------------------------------------------------------
// Forms
// ------------------------------------------------------------------------------------------

/// Names and values: any Unicode, with the form syntax characters made likely.
fn form_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[a-z&=+% ]{0,6}",
        "[&=+%;#?/\\\\ \\t\\r\\n\"'~!*()\u{e9}\u{2713}\u{1f600}a-c0-9]{0,12}",
    ]
}

/// Names from a small pool half of the time, so that repeats are common.
fn form_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["tag", "a", "", "a b", "&", "=", "+", "%", "✓"])
            .prop_map(str::to_owned),
        form_text(),
    ]
}

/// The form encodings a sender may use.
#[derive(Debug, Clone, Copy)]
enum FormEncoding {
    /// What browsers send: `+` for space, `%XX` for the rest (form_urlencoded's serializer).
    Standard,
    /// Every byte percent-encoded, hex in lower or upper case.
    AllPercent { upper: bool },
}

fn encode_form(fields: &[(String, String)], enc: FormEncoding) -> Vec<u8> {
    match enc {
        FormEncoding::Standard => {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (n, v) in fields {
                s.append_pair(n, v);
            }
            s.finish().into_bytes()
        }
        FormEncoding::AllPercent { upper } => {
            let pct = |s: &str| -> String {
                s.bytes()
                    .map(|b| {
                        if upper {
                            format!("%{b:02X}")
                        } else {
                            format!("%{b:02x}")
                        }
                    })
                    .collect()
            };
            fields
                .iter()
                .map(|(n, v)| format!("{}={}", pct(n), pct(v)))
                .collect::<Vec<_>>()
                .join("&")
                .into_bytes()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any fields, however named and whatever they hold, reach the upstream as the same
    /// fields: strings, arrays for repeated names, keys in order of first arrival.
    #[test]
    fn form_round_trips(
        fields in prop::collection::vec((form_name(), form_text()), 0..12),
        enc in prop_oneof![
            Just(FormEncoding::Standard),
            any::<bool>().prop_map(|upper| FormEncoding::AllPercent { upper }),
        ],
    ) {
        let body = encode_form(&fields, enc);
        let want = model(fields.into_iter().map(|(n, v)| (n, Value::String(v))).collect());
        let got = normalized(&body, "application/x-www-form-urlencoded");
        assert_same_in_order(&got, &want);
    }
}

// ------------------------------------------------------------------------------------------
// JSON
// ------------------------------------------------------------------------------------------

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[\"\\\\/ \\t\\r\\n\\x00-\\x1f\u{2028}\u{fffd}\u{1f600}a-c]{0,8}"
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((json_string(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn pretty_with(value: &Value, indent: &[u8]) -> Vec<u8> {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(indent);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    value.serialize(&mut ser).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any JSON value, pretty-printed (with spaces, tabs or CRLFs), compacts to exactly its
    /// compact serialization; compact input passes unchanged.
    #[test]
    fn pretty_json_compacts_to_the_compact_serialization(
        value in json_value(),
        indent in prop::sample::select(vec![&b"  "[..], b"\t", b"\r\n ", b""]),
    ) {
        let compact = serde_json::to_vec(&value).unwrap();
        let pretty = pretty_with(&value, indent);
        let out = compact_json(&Bytes::from(pretty)).expect("valid JSON compacts");
        prop_assert_eq!(&out[..], &compact[..]);
        let again = compact_json(&Bytes::from(compact.clone())).unwrap();
        prop_assert_eq!(&again[..], &compact[..]);
        // And through a request body with a JSON content type.
        let body = Body::new(Bytes::from(pretty_with(&value, b" ")), Some("application/json"));
        prop_assert_eq!(&to_json(&body).unwrap()[..], &compact[..]);
    }
}

// ------------------------------------------------------------------------------------------
// Multipart
// ------------------------------------------------------------------------------------------

/// A name or filename as a client writes it in a quoted `Content-Disposition` parameter:
/// any Unicode but `"`, `\` and control characters. Strings containing `name` are left
/// out: multer finds `filename=`/`name=` by substring search, so a field *named*
/// `x filename=y` is misread (see the report of the hostile-input work).
fn disposition_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\"\\\\\\x00-\\x1f\\x7f]{0,16}",
        "[a-z0-9_.\\- \u{e9}\u{4f60}\u{1f600}]{1,10}"
    ]
    .prop_filter("no `name` substring", |s| !s.contains("name"))
}

#[derive(Debug, Clone)]
enum Part {
    Text {
        name: String,
        value: String,
    },
    File {
        name: String,
        filename: String,
        content_type: Option<&'static str>,
        data: Vec<u8>,
    },
    /// A part without a filename whose content is not UTF-8: forwarded as a file object
    /// with `filename: null`.
    Binary {
        name: String,
        content_type: Option<&'static str>,
        data: Vec<u8>,
    },
}

impl Part {
    fn name(&self) -> &str {
        match self {
            Part::Text { name, .. } | Part::File { name, .. } | Part::Binary { name, .. } => name,
        }
    }

    fn expected(&self) -> Value {
        let file = |filename: Option<&str>, ct: Option<&str>, data: &[u8]| {
            serde_json::json!({
                "filename": filename,
                "content_type": ct,
                "size": data.len(),
                "content_base64": base64::engine::general_purpose::STANDARD.encode(data),
            })
        };
        match self {
            Part::Text { value, .. } => Value::String(value.clone()),
            Part::File {
                filename,
                content_type,
                data,
                ..
            } => file(Some(filename), *content_type, data),
            Part::Binary {
                content_type, data, ..
            } => file(None, *content_type, data),
        }
    }

    fn write(&self, boundary: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let (disposition, ct, data): (String, Option<&str>, &[u8]) = match self {
            Part::Text { name, value } => (format!("name=\"{name}\""), None, value.as_bytes()),
            Part::File {
                name,
                filename,
                content_type,
                data,
            } => (
                format!("name=\"{name}\"; filename=\"{filename}\""),
                *content_type,
                data,
            ),
            Part::Binary {
                name,
                content_type,
                data,
            } => (format!("name=\"{name}\""), *content_type, data),
        };
        out.extend_from_slice(
            format!("Content-Disposition: form-data; {disposition}\r\n").as_bytes(),
        );
        if let Some(ct) = ct {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

fn part_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["attachment", "token", "a b", "✓"]).prop_map(str::to_owned),
        disposition_text(),
    ]
}

fn media() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(vec![
        "application/octet-stream",
        "image/png",
        "application/pdf",
        "text/csv",
    ]))
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        (part_name(), "(?s).*").prop_map(|(name, value)| Part::Text { name, value }),
        (
            part_name(),
            disposition_text(),
            media(),
            prop::collection::vec(any::<u8>(), 0..600)
        )
            .prop_map(|(name, filename, content_type, data)| Part::File {
                name,
                filename,
                content_type,
                data
            }),
        (
            part_name(),
            media(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(name, content_type, mut data)| {
                // 0xFF never occurs in UTF-8.
                data.insert(0, 0xff);
                Part::Binary {
                    name,
                    content_type,
                    data,
                }
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Multipart bodies built from arbitrary text fields and files reach the upstream as
    /// those fields: text as strings, files as `{filename, content_type, size,
    /// content_base64}`, repeated names as arrays, keys in order of first arrival.
    #[test]
    fn multipart_round_trips(
        parts in prop::collection::vec(part(), 0..8),
        boundary in "[A-Za-z0-9'+_.-]{1,40}[A-Za-z0-9]",
    ) {
        let mut body = Vec::new();
        for p in &parts {
            p.write(&boundary, &mut body);
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let delimiter = format!("\r\n--{boundary}");
        prop_assume!(parts.iter().all(|p| {
            let data: &[u8] = match p {
                Part::Text { value, .. } => value.as_bytes(),
                Part::File { data, .. } | Part::Binary { data, .. } => data,
            };
            !data
                .windows(delimiter.len())
                .any(|w| w == delimiter.as_bytes())
        }));
        let want = model(parts.iter().map(|p| (p.name().to_owned(), p.expected())).collect());
        let got = normalized(&body, &format!("multipart/form-data; boundary={boundary}"));
        assert_same_in_order(&got, &want);
    }
}
