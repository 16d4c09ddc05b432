//! A buffered request body and its fields, parsed at most once and only when asked for.
//!
//! Providers that keep their signature in the body (Mailgun) read fields from here, and the
//! normalizer reuses the same parse, so a body is parsed at most once. The parse is bounded by
//! `max_body_fields`: past that many fields the parse stops and the body is refused, so a
//! megabyte of `a&a&a...` costs at most `max_body_fields` small fields before it is
//! authenticated.

use std::sync::OnceLock;

use bytes::Bytes;
use futures_util::FutureExt;

/// The media types hookguard understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaType {
    Json,
    Form,
    Multipart {
        boundary: String,
    },
    /// Any other declared type (`text/plain`, `application/xml`, ...).
    Other,
    /// No `Content-Type` header.
    Missing,
}

impl MediaType {
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        let Some(ct) = content_type else {
            return MediaType::Missing;
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" | "text/json" => MediaType::Json,
            e if e.starts_with("application/") && e.ends_with("+json") => MediaType::Json,
            "application/x-www-form-urlencoded" => MediaType::Form,
            "multipart/form-data" => match multer::parse_boundary(ct) {
                Ok(boundary) => MediaType::Multipart { boundary },
                Err(_) => MediaType::Other,
            },
            _ => MediaType::Other,
        }
    }
}

/// Why a body could not be read as its content type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid multipart body: {0}")]
    Multipart(String),
    #[error("content type has no form fields")]
    NotForm,
    #[error("content type cannot be normalized to JSON")]
    Unsupported,
    #[error("more than {0} form fields")]
    TooManyFields(usize),
}

/// The default bound on the fields of a form or multipart body (`max_body_fields`). Webhook
/// senders post a few dozen fields; Twilio's voice webhooks, among the largest, about forty.
pub const DEFAULT_MAX_FIELDS: usize = 1000;

/// One form or multipart field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: FieldValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Text(String),
    /// A file part, or a multipart part whose content is not UTF-8 text.
    File {
        filename: Option<String>,
        content_type: Option<String>,
        data: Bytes,
    },
}

/// The fields of a form or multipart body, in the order they arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<Field>);

impl Fields {
    /// The text value of `name` when it occurs exactly once. A repeated signature field is
    /// ambiguous (which one would the application read?), so it counts as absent.
    pub fn single_text(&self, name: &str) -> Option<&str> {
        let mut found = None;
        for f in self.0.iter().filter(|f| f.name == name) {
            if found.is_some() {
                return None;
            }
            found = Some(f);
        }
        match &found?.value {
            FieldValue::Text(t) => Some(t),
            FieldValue::File { .. } => None,
        }
    }
}

/// A buffered body with its declared media type.
#[derive(Debug)]
pub struct Body {
    bytes: Bytes,
    media: MediaType,
    max_fields: usize,
    fields: OnceLock<Result<Fields, BodyError>>,
}

impl Body {
    pub fn new(bytes: Bytes, content_type: Option<&str>) -> Self {
        Body {
            bytes,
            media: MediaType::from_content_type(content_type),
            max_fields: DEFAULT_MAX_FIELDS,
            fields: OnceLock::new(),
        }
    }

    /// Bounds the number of form or multipart fields a full parse may build.
    pub fn with_max_fields(mut self, max_fields: usize) -> Self {
        self.max_fields = max_fields;
        self
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn media(&self) -> &MediaType {
        &self.media
    }

    /// The form or multipart fields, parsed on first use; more than `max_fields` of them is
    /// an error (nothing beyond the bound is built).
    pub fn fields(&self) -> Result<&Fields, BodyError> {
        self.fields
            .get_or_init(|| match &self.media {
                MediaType::Form => parse_form_bounded(&self.bytes, self.max_fields),
                MediaType::Multipart { boundary } => {
                    parse_multipart_bounded(&self.bytes, boundary, self.max_fields)
                }
                _ => Err(BodyError::NotForm),
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// `application/x-www-form-urlencoded`. Every byte string is a valid form (the format has no
/// syntax errors); percent-escapes that do not decode to UTF-8 become U+FFFD. Unbounded: for
/// bodies already known to be small (tests, fuzzing, `hookguard sign`).
pub fn parse_form(bytes: &[u8]) -> Fields {
    // Unbounded: the only error, too many fields, cannot happen.
    parse_form_bounded(bytes, usize::MAX).unwrap_or_default()
}

/// [`parse_form`], refusing a body of more than `max` fields before building them.
pub fn parse_form_bounded(bytes: &[u8], max: usize) -> Result<Fields, BodyError> {
    // Room for the fields the `&` separators announce (at most `max`): one allocation.
    let separators = bytes.iter().filter(|b| **b == b'&').count();
    let mut fields = Vec::with_capacity(separators.min(max) + 1);
    for (name, value) in form_urlencoded::parse(bytes) {
        if fields.len() == max {
            return Err(BodyError::TooManyFields(max));
        }
        fields.push(Field {
            name: name.into_owned(),
            value: FieldValue::Text(value.into_owned()),
        });
    }
    Ok(Fields(fields))
}

/// `multipart/form-data`, with multer. Unbounded in the number of parts; see
/// [`parse_multipart_bounded`].
pub fn parse_multipart(bytes: &Bytes, boundary: &str) -> Result<Fields, BodyError> {
    parse_multipart_bounded(bytes, boundary, usize::MAX)
}

/// A multer reader over a body already in memory: multer's futures complete on their first
/// poll, and we drive them with `now_or_never`.
fn multipart_reader<'a>(bytes: &Bytes, boundary: &str) -> multer::Multipart<'a> {
    let bytes = bytes.clone();
    let stream = futures_util::stream::once(async { Ok::<Bytes, std::convert::Infallible>(bytes) });
    multer::Multipart::new(stream, boundary)
}

fn next_part<'a>(
    multipart: &mut multer::Multipart<'a>,
) -> Result<Option<multer::Field<'a>>, BodyError> {
    multipart
        .next_field()
        .now_or_never()
        .ok_or_else(|| BodyError::Multipart("incomplete body".into()))?
        .map_err(|e| BodyError::Multipart(e.to_string()))
}

fn part_bytes(field: multer::Field<'_>) -> Result<Bytes, BodyError> {
    field
        .bytes()
        .now_or_never()
        .ok_or_else(|| BodyError::Multipart("incomplete part".into()))?
        .map_err(|e| BodyError::Multipart(e.to_string()))
}

/// `multipart/form-data`, refusing a body of more than `max` parts.
pub fn parse_multipart_bounded(
    bytes: &Bytes,
    boundary: &str,
    max: usize,
) -> Result<Fields, BodyError> {
    let mut multipart = multipart_reader(bytes, boundary);
    let mut fields = Vec::new();
    while let Some(field) = next_part(&mut multipart)? {
        if fields.len() == max {
            return Err(BodyError::TooManyFields(max));
        }
        let name = field.name().unwrap_or_default().to_owned();
        let filename = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(|m| m.to_string());
        let data = part_bytes(field)?;
        let value = match (filename, std::str::from_utf8(&data)) {
            (None, Ok(text)) => FieldValue::Text(text.to_owned()),
            (filename, _) => FieldValue::File {
                filename,
                content_type,
                data,
            },
        };
        fields.push(Field { name, value });
    }
    Ok(Fields(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            MediaType::from_content_type(Some("application/json; charset=utf-8")),
            MediaType::Json
        );
        assert_eq!(
            MediaType::from_content_type(Some("application/vnd.x+json")),
            MediaType::Json
        );
        assert_eq!(
            MediaType::from_content_type(Some("Application/X-WWW-Form-Urlencoded")),
            MediaType::Form
        );
        assert_eq!(
            MediaType::from_content_type(Some("multipart/form-data; boundary=abc")),
            MediaType::Multipart {
                boundary: "abc".into()
            }
        );
        assert_eq!(
            MediaType::from_content_type(Some("multipart/form-data")),
            MediaType::Other
        );
        assert_eq!(MediaType::from_content_type(None), MediaType::Missing);
    }

    #[test]
    fn form_fields_and_ambiguity() {
        let body = Body::new(
            Bytes::from_static(b"a=1&b=x+y&a=2&c=%E2%9C%93"),
            Some("application/x-www-form-urlencoded"),
        );
        let f = body.fields().unwrap();
        assert_eq!(f.single_text("b"), Some("x y"));
        assert_eq!(f.single_text("c"), Some("✓"));
        assert_eq!(f.single_text("a"), None, "repeated field is ambiguous");
        assert_eq!(f.single_text("zz"), None);
    }

    #[test]
    fn multipart_text_and_files() {
        let raw = "--XX\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\nabc\r\n\
                   --XX\r\nContent-Disposition: form-data; name=\"attachment-1\"; filename=\"a.bin\"\r\n\
                   Content-Type: application/octet-stream\r\n\r\n\x00\x01\r\n--XX--\r\n";
        let body = Body::new(Bytes::from(raw), Some("multipart/form-data; boundary=XX"));
        let f = body.fields().unwrap();
        assert_eq!(f.single_text("token"), Some("abc"));
        match &f.0[1].value {
            FieldValue::File {
                filename,
                content_type,
                data,
            } => {
                assert_eq!(filename.as_deref(), Some("a.bin"));
                assert_eq!(content_type.as_deref(), Some("application/octet-stream"));
                assert_eq!(&data[..], b"\x00\x01");
            }
            other => panic!("expected a file, got {other:?}"),
        }
    }

    #[test]
    fn truncated_multipart_is_an_error() {
        let raw = "--XX\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\nabc";
        let body = Body::new(Bytes::from(raw), Some("multipart/form-data; boundary=XX"));
        assert!(matches!(body.fields(), Err(BodyError::Multipart(_))));
    }
}
