//! `SIMPLEPUSH_<SECTION>_<KEY>` environment overrides.

use super::{Config, ConfigError, CONFIG_ENV, ENV_PREFIX};

/// What the environment did to the configuration.
#[derive(Debug, Default)]
pub(super) struct Overrides {
    /// Why each unknown `SIMPLEPUSH_…` variable was ignored, one line each.
    pub(super) ignored: Vec<String>,
    /// (key path, variable) of every key a variable set, in the order applied.
    pub(super) set: Vec<(String, String)>,
}

impl Overrides {
    /// The variable that set `key` (or, for a section, one of its keys), if any.
    pub(super) fn setter(&self, key: &str) -> Option<&str> {
        self.set
            .iter()
            .rev()
            .find(|(k, _)| k == key || k.strip_prefix(key).is_some_and(|r| r.starts_with('.')))
            .map(|(_, name)| name.as_str())
    }
}

/// Applies `SIMPLEPUSH_SERVER_LISTEN=…` and the like to `cfg`, each typed like the key's value.
/// Variables that name no setting are listed, not refused: Kubernetes sets
/// `SIMPLEPUSH_SERVICE_HOST`, `SIMPLEPUSH_PORT_8080_TCP` and more for a Service named `simplepush`.
pub(super) fn apply(
    cfg: Config,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(Config, Overrides), ConfigError> {
    let mut table = toml::Table::try_from(&cfg).map_err(|e| ConfigError::Invalid {
        key: "config".into(),
        message: e.to_string(),
    })?;
    let mut cfg = cfg;
    let mut over = Overrides::default();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name == CONFIG_ENV {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let Some((section, key, current)) = setting(&table, &rest) else {
            over.ignored.push(unknown(&name, &rest, &table));
            continue;
        };
        let path = format!("{section}.{key}");
        let bad = |message: String| ConfigError::Env {
            name: name.clone(),
            key: path.clone(),
            message,
        };
        let value = typed(&current, &raw).ok_or_else(|| bad(not_a(&current, &raw)))?;
        if let Some(sec) = table.get_mut(&section).and_then(|s| s.as_table_mut()) {
            sec.insert(key, value);
        }
        // Typed at once, so that a value the key cannot hold (-1, too large) names its variable.
        cfg = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                bad(format!("{raw:?}: {}", super::source::plain(e.message())))
            })?;
        over.set.push((path, name));
    }
    Ok((cfg, over))
}

/// The section, key and current value a variable's lower-cased rest names, if it names one.
fn setting(table: &toml::Table, rest: &str) -> Option<(String, String, toml::Value)> {
    table.iter().find_map(|(section, keys)| {
        let key = rest.strip_prefix(section.as_str())?.strip_prefix('_')?;
        let current = keys.as_table()?.get(key)?.clone();
        Some((section.clone(), key.to_string(), current))
    })
}

/// Why an unknown variable is ignored; a misspelt key of a real section is pointed out, since
/// its value (perhaps a secret: the value is never logged) does not take effect.
fn unknown(name: &str, rest: &str, table: &toml::Table) -> String {
    let section = table.keys().find(|section| {
        rest.strip_prefix(section.as_str())
            .is_some_and(|r| r.starts_with('_'))
    });
    match section {
        Some(section) => format!(
            "environment variable {name} ignored: [{section}] has no key {:?}",
            &rest[section.len() + 1..]
        ),
        None => format!("environment variable {name} ignored: not a simplepush setting"),
    }
}

/// `raw` as a value of the kind `like` is (lists are comma-separated).
fn typed(like: &toml::Value, raw: &str) -> Option<toml::Value> {
    Some(match like {
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().ok()?),
        toml::Value::Boolean(_) => toml::Value::Boolean(raw.trim().parse().ok()?),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

/// What `raw` failed to be.
fn not_a(like: &toml::Value, raw: &str) -> String {
    let kind = match like {
        toml::Value::Integer(_) => "an integer",
        toml::Value::Boolean(_) => "true or false",
        _ => "a valid value",
    };
    format!("{raw:?} is not {kind}")
}
