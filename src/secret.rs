//! A signing secret: usable by the providers, invisible to `Debug`, logs and errors.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// Secret material from the config. `Debug` prints `Secret(<redacted>)`; there is no
/// `Display` and no `Serialize`, so a secret cannot reach a log line or `check` output
/// by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's text, for building a MAC key. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// `secrets:` accepts one string or a list (several = key rotation).
#[derive(Clone, Debug, Default)]
pub struct Secrets(pub Vec<Secret>);

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(Secret),
            Many(Vec<Secret>),
        }
        // The untagged error would not echo the value, but keep the message our own anyway.
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(s)) => Ok(Secrets(vec![s])),
            Ok(OneOrMany::Many(v)) => Ok(Secrets(v)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a secret string or a list of secret strings",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("key-super-secret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let list = Secrets(vec![s.clone(), s]);
        assert!(!format!("{list:?}").contains("super-secret"));
    }
}
