//! `${NAME}` (environment) and `${file:/path}` (mounted secret file) expansion in string values.
//!
//! Expansion runs on the parsed YAML tree before typed deserialization, so it applies to every
//! string value. `$${` writes a literal `${`. The paths of expanded values are recorded so that
//! errors about them never echo what was substituted (it is often a secret).

use std::collections::HashSet;

use serde_yaml::Value;

use super::positions::YPath;

/// Where `${...}` expansion looks things up; tests pass their own.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn read_file(&self, path: &str) -> std::io::Result<String>;
}

/// The real process environment and file system.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn read_file(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

pub struct ExpandError {
    pub path: YPath,
    pub message: String,
}

/// Expands every string in `value`; returns the paths that were expanded and the errors.
pub fn expand_tree(
    value: &mut Value,
    path: &YPath,
    env: &dyn Environment,
    expanded: &mut HashSet<YPath>,
    errors: &mut Vec<ExpandError>,
) {
    match value {
        Value::String(s) if s.contains('$') => match expand_str(s, env) {
            Ok(Some(new)) => {
                *s = new;
                expanded.insert(path.clone());
            }
            Ok(None) => {}
            Err(message) => errors.push(ExpandError {
                path: path.clone(),
                message,
            }),
        },
        Value::Sequence(seq) => {
            for (i, v) in seq.iter_mut().enumerate() {
                expand_tree(v, &path.index(i), env, expanded, errors);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?").to_owned();
                expand_tree(v, &path.key(&key), env, expanded, errors);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, env, expanded, errors),
        _ => {}
    }
}

/// Returns `Ok(None)` when the string holds no `${`.
fn expand_str(s: &str, env: &dyn Environment) -> Result<Option<String>, String> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        // `$${` is an escaped, literal `${`.
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${` (write `$${` for a literal)".to_owned())?;
        let reference = &after[..end];
        out.push_str(&resolve(reference, env)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

fn resolve(reference: &str, env: &dyn Environment) -> Result<String, String> {
    if let Some(path) = reference.strip_prefix("file:") {
        let text = env
            .read_file(path)
            .map_err(|e| format!("cannot read secret file `{path}`: {e}"))?;
        // Files written by editors and `echo` end with a newline the secret does not have.
        let trimmed = text.strip_suffix('\n').unwrap_or(&text);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        return Ok(trimmed.to_owned());
    }
    let valid = !reference.is_empty()
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`${{{reference}}}` is not a valid reference: use ${{NAME}} or ${{file:/path}}"
        ));
    }
    env.var(reference)
        .ok_or_else(|| format!("environment variable `{reference}` is not set"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    pub struct FakeEnv(pub HashMap<&'static str, &'static str>);
    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
        fn read_file(&self, path: &str) -> std::io::Result<String> {
            self.0
                .get(path)
                .map(|s| s.to_string())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not found"))
        }
    }

    #[test]
    fn expands_env_and_files() {
        let env = FakeEnv(HashMap::from([("A", "1"), ("/run/s", "sec\n")]));
        assert_eq!(expand_str("x${A}y", &env).unwrap().unwrap(), "x1y");
        assert_eq!(expand_str("${file:/run/s}", &env).unwrap().unwrap(), "sec");
        assert_eq!(expand_str("$${A}", &env).unwrap().unwrap(), "${A}");
        assert_eq!(expand_str("plain $x", &env).unwrap(), None);
        assert!(expand_str("${B}", &env)
            .unwrap_err()
            .contains("`B` is not set"));
        assert!(expand_str("${A", &env)
            .unwrap_err()
            .contains("unterminated"));
        assert!(expand_str("${file:/nope}", &env)
            .unwrap_err()
            .contains("/nope"));
        assert!(expand_str("${a-b}", &env)
            .unwrap_err()
            .contains("not a valid"));
    }
}
