//! Config values that take one item or a list (`secrets: key` or `secrets: [old, new]`).

use serde::{Deserialize, Deserializer};

/// One `T` or a list of them, as a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            One(T),
            Many(Vec<T>),
        }
        // Our own message: the untagged error says nothing useful, and the value is not
        // repeated (it may be a secret).
        match Either::deserialize(d) {
            Ok(Either::One(v)) => Ok(OneOrMany(vec![v])),
            Ok(Either::Many(v)) => Ok(OneOrMany(v)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a string or a list of strings",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_a_list() {
        let one: OneOrMany<String> = serde_yaml::from_str("a").unwrap();
        let many: OneOrMany<String> = serde_yaml::from_str("[a, b]").unwrap();
        assert_eq!((one.0.len(), many.0.len()), (1, 2));
        let err = serde_yaml::from_str::<OneOrMany<String>>("{a: 1}").unwrap_err();
        assert!(err.to_string().contains("expected a string or a list"));
    }
}
