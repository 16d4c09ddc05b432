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
pub type Secrets = crate::one_or_many::OneOrMany<Secret>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("key-super-secret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let list = crate::one_or_many::OneOrMany(vec![s.clone(), s]);
        assert!(!format!("{list:?}").contains("super-secret"));
    }
}
