//! Routes: the keys every route has, handed over to the route's provider for the rest.
//! Route options go to the provider type through [`providers::dispatch`]: the provider takes
//! typed options, this module does the YAML (and reports unknown keys, positions and
//! secret-safe messages like the rest of the loader).

use std::collections::HashMap;
use std::sync::Arc;

use serde_yaml::{Mapping, Value};

use super::introspect::struct_fields;
use super::load::Loader;
use super::positions::YPath;
use super::raw::RawRoute;
use super::{ForwardBody, Route, Upstream};
use crate::providers::{self, OptionError, Provider, ProviderFactory, Visit};

impl Loader<'_> {
    pub(super) fn routes(
        &mut self,
        top: &Mapping,
        default_upstream: Option<&Upstream>,
        upstream_given: bool,
    ) -> Vec<Route> {
        let base = YPath::root().key("routes");
        let items = match top.get("routes") {
            Some(Value::Sequence(items)) => items.clone(),
            Some(Value::Null) | None => {
                self.error(
                    None,
                    "no `routes`: hookguard needs at least one route to protect".into(),
                );
                return Vec::new();
            }
            Some(_) => {
                self.error_at_value(&base, "`routes` must be a list of routes".into());
                return Vec::new();
            }
        };
        let mut routes = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut paths: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let here = base.index(i);
            let Some(route) = self.route(item, &here, default_upstream, upstream_given) else {
                continue;
            };
            if let Some(first) = names.insert(route.name.clone(), i) {
                let shown = self.shown(&here.key("name"), &route.name);
                self.error_at_value(
                    &here.key("name"),
                    format!("route name {shown} is already used by routes[{first}]"),
                );
            }
            if let Some(first) = paths.insert(route.path.clone(), i) {
                let shown = self.shown(&here.key("path"), &route.path);
                self.error_at_value(
                    &here.key("path"),
                    format!("path {shown} is already routed by routes[{first}]"),
                );
            }
            routes.push(route);
        }
        routes
    }

    fn route(
        &mut self,
        item: Value,
        here: &YPath,
        default_upstream: Option<&Upstream>,
        upstream_given: bool,
    ) -> Option<Route> {
        let Value::Mapping(map) = item else {
            self.error_at_value(here, format!("`{here}` must be a mapping"));
            return None;
        };
        let common_keys = struct_fields::<RawRoute>();
        let (mut common, mut specific) = (Mapping::new(), Mapping::new());
        for (k, v) in map {
            if k.as_str().is_some_and(|k| common_keys.contains(&k)) {
                common.insert(k, v);
            } else {
                specific.insert(k, v);
            }
        }
        let raw: RawRoute = self.de(Value::Mapping(common), here)?;

        let Some(name) = providers::dispatch(&raw.provider, CanonicalName) else {
            let known: Vec<&str> = providers::NAMES.iter().map(|(n, _)| *n).collect();
            let shown = self.shown(&here.key("provider"), &raw.provider);
            self.error_at_value(
                &here.key("provider"),
                format!("unknown provider {shown} (known: {})", known.join(", ")),
            );
            return None;
        };
        let provider_keys = providers::dispatch(name, OptionKeys).unwrap_or_default();
        let mut all_keys: Vec<&str> = common_keys.to_vec();
        all_keys.extend_from_slice(provider_keys);
        self.unknown_keys(&specific, here, &all_keys, &format!("a `{name}` route"));
        specific.retain(|k, _| k.as_str().is_some_and(|k| provider_keys.contains(&k)));

        let built = providers::dispatch(name, FromYaml(Value::Mapping(specific)));
        let provider = match built {
            Some(Ok(p)) => Some(p),
            Some(Err(BuildError::Deserialize(e))) => {
                let at = here.join_serde(e.path());
                let message = self.describe(&at, e.inner());
                self.error_at_value(&at, message);
                None
            }
            Some(Err(BuildError::Invalid(errors))) => {
                for e in errors {
                    let at = here.key(e.key);
                    // A provider's message may quote the value; an expanded one is not shown.
                    let message = if self.is_expanded(&at) {
                        "invalid value (from ${...}, not shown)".to_owned()
                    } else {
                        e.message
                    };
                    self.error_at_value(&at, format!("`{at}`: {message}"));
                }
                None
            }
            None => None,
        };

        if raw.spool == Some(true) && provider.as_ref().is_some_and(|p| p.needs_the_apps_answer()) {
            self.error_at_value(
                &here.key("spool"),
                format!(
                    "`{}`: a `{name}` route cannot spool: the provider expects the application's \
                     own answer (a slash command, TwiML, an interaction, a challenge), which a \
                     spool cannot give in its stead",
                    here.key("spool")
                ),
            );
        }
        if !raw.path.starts_with('/') || raw.path.contains('?') || raw.path.contains('#') {
            self.error_at_value(
                &here.key("path"),
                format!(
                    "`{}`: a path starts with `/` and has no query",
                    here.key("path")
                ),
            );
        }
        if let Some(up) = &raw.upstream_path {
            if !up.starts_with('/') {
                self.error_at_value(
                    &here.key("upstream_path"),
                    format!("`{}`: must start with `/`", here.key("upstream_path")),
                );
            }
        }
        let upstream = match &raw.upstream {
            Some(url) => self.upstream(url, &here.key("upstream")),
            None => {
                if !upstream_given {
                    self.error_at_value(
                        here,
                        format!("`{here}` has no `upstream`, and there is no top-level `upstream`"),
                    );
                }
                default_upstream.cloned()
            }
        };
        let allow_ips = raw
            .allow_ips
            .as_ref()
            .map(|list| self.networks(list, &here.key("allow_ips")));
        Some(Route {
            allow_ips,
            name: raw.name,
            path: raw.path,
            provider_name: name,
            provider: provider?,
            upstream: upstream?,
            upstream_path: raw.upstream_path,
            forward_body: raw.forward_body.unwrap_or(ForwardBody::Json),
            spool: raw.spool.unwrap_or(false),
        })
    }
}

/// The canonical name of a provider named by its name or an alias.
struct CanonicalName;

impl Visit for CanonicalName {
    type Output = &'static str;
    fn visit<P: ProviderFactory>(self, name: &'static str) -> &'static str {
        name
    }
}

/// The route keys a provider takes besides the common ones.
struct OptionKeys;

impl Visit for OptionKeys {
    type Output = &'static [&'static str];
    fn visit<P: ProviderFactory>(self, _: &'static str) -> Self::Output {
        struct_fields::<P::Options>()
    }
}

/// Why a provider could not be built from its options.
enum BuildError {
    /// The options do not deserialize (with the path inside them).
    Deserialize(serde_path_to_error::Error<serde_yaml::Error>),
    /// They do, but the provider refuses them.
    Invalid(Vec<OptionError>),
}

/// Builds a provider from its route options, as YAML.
struct FromYaml(Value);

impl Visit for FromYaml {
    type Output = Result<Arc<dyn Provider>, BuildError>;
    fn visit<P: ProviderFactory>(self, _: &'static str) -> Self::Output {
        let options: P::Options =
            serde_path_to_error::deserialize(self.0).map_err(BuildError::Deserialize)?;
        let provider = P::from_options(options).map_err(BuildError::Invalid)?;
        Ok(Arc::new(provider))
    }
}
