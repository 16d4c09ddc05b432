//! A buffered request body and its fields, parsed at most once and only when asked for.
//!
//! Providers that keep their signature in the body (Mailgun) read fields from here, and the
//! normalizer reuses the same parse, so a body is never parsed twice for one request.

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
}

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
    fields: OnceLock<Result<Fields, BodyError>>,
}

impl Body {
    pub fn new(bytes: Bytes, content_type: Option<&str>) -> Self {
        Body {
            bytes,
            media: MediaType::from_content_type(content_type),
            fields: OnceLock::new(),
        }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn media(&self) -> &MediaType {
        &self.media
    }

    /// The form or multipart fields, parsed on first use.
    pub fn fields(&self) -> Result<&Fields, BodyError> {
        self.fields
            .get_or_init(|| match &self.media {
                MediaType::Form => Ok(parse_form(&self.bytes)),
                MediaType::Multipart { boundary } => parse_multipart(&self.bytes, boundary),
                _ => Err(BodyError::NotForm),
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// `application/x-www-form-urlencoded`. Every byte string is a valid form (the format has no
/// syntax errors); percent-escapes that do not decode to UTF-8 become U+FFFD.
pub fn parse_form(bytes: &[u8]) -> Fields {
    Fields(
        form_urlencoded::parse(bytes)
            .map(|(name, value)| Field {
                name: name.into_owned(),
                value: FieldValue::Text(value.into_owned()),
            })
            .collect(),
    )
}

/// `multipart/form-data`, with multer. The body is already in memory, so multer's futures
/// complete on their first poll and we drive them with `now_or_never`.
pub fn parse_multipart(bytes: &Bytes, boundary: &str) -> Result<Fields, BodyError> {
    let stream =
        futures_util::stream::once(async { Ok::<Bytes, std::convert::Infallible>(bytes.clone()) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut fields = Vec::new();
    loop {
        let next = multipart
            .next_field()
            .now_or_never()
            .ok_or_else(|| BodyError::Multipart("incomplete body".into()))?
            .map_err(|e| BodyError::Multipart(e.to_string()))?;
        let Some(field) = next else { break };
        let name = field.name().unwrap_or_default().to_owned();
        let filename = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(|m| m.to_string());
        let data = field
            .bytes()
            .now_or_never()
            .ok_or_else(|| BodyError::Multipart("incomplete part".into()))?
            .map_err(|e| BodyError::Multipart(e.to_string()))?;
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
