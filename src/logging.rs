//! Logging: env_logger's text lines or one JSON object per line, with a level a reload can change.
//!
//! The installed logger holds an env_logger `Logger` behind a lock and swaps it whole on a reload
//! (`log.level`, `log.format`), so the filter and the format always change together. Each record
//! takes the read lock once, uncontended but for the instant of a swap.

use std::io::{self, Write};
use std::sync::{Arc, RwLock};

use env_logger::fmt::Formatter;
use log::kv::{Key, Value, VisitSource};
use log::{Log, Metadata, Record};
use serde_json::{Map, Value as Json};

use crate::config::LogConfig;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// env_logger's `[time LEVEL target] message key=value…`.
    Text,
    /// `{"timestamp","level","target","message","fields":{…}}`, one object per line.
    Json,
}

impl Format {
    /// `"text"` or `"json"`.
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }
}

/// What the logger was built from: the filter as written and the format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// An env_logger filter (`info`, `warn,simplepush::reliability=debug`).
    pub level: String,
    /// Text or JSON.
    pub format: Format,
}

impl Settings {
    /// The settings a configuration asks for: `log.level`, else `RUST_LOG`, else `info`.
    pub fn of(cfg: &LogConfig, rust_log: Option<String>) -> Settings {
        let level = if !cfg.level.is_empty() {
            cfg.level.clone()
        } else {
            rust_log
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "info".into())
        };
        Settings {
            level,
            // Checked when the configuration was loaded.
            format: Format::parse(&cfg.format).unwrap_or(Format::Text),
        }
    }
}

/// Checks a `log.level` filter as env_logger would read it.
pub fn check_level(spec: &str) -> Result<(), String> {
    env_filter::Builder::new()
        .try_parse(spec)
        .map(drop)
        .map_err(|e| e.to_string())
}

struct Current {
    settings: Settings,
    logger: Arc<env_logger::Logger>,
}

struct Reloadable {
    current: RwLock<Current>,
}

static LOGGER: std::sync::OnceLock<Reloadable> = std::sync::OnceLock::new();

fn build(s: &Settings) -> env_logger::Logger {
    let mut b = env_logger::Builder::new();
    b.parse_filters(&s.level);
    if s.format == Format::Json {
        b.format(write_json);
    }
    b.build()
}

impl Log for Reloadable {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.logger().enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        self.logger().log(record);
    }

    fn flush(&self) {
        self.logger().flush();
    }
}

impl Reloadable {
    fn logger(&self) -> Arc<env_logger::Logger> {
        let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
        cur.logger.clone()
    }
}

/// Installs the logger; a second call changes nothing.
pub fn init(settings: Settings) {
    let logger = Arc::new(build(&settings));
    let max = logger.filter();
    let installed = LOGGER.get_or_init(|| Reloadable {
        current: RwLock::new(Current { settings, logger }),
    });
    if log::set_logger(installed).is_ok() {
        log::set_max_level(max);
    }
}

/// Switches to new settings; what changed, if anything (`None` without an installed logger).
pub fn reload(settings: Settings) -> Option<String> {
    let installed = LOGGER.get()?;
    let logger = Arc::new(build(&settings));
    let max = logger.filter();
    let mut cur = installed.current.write().unwrap_or_else(|e| e.into_inner());
    if cur.settings == settings {
        return None;
    }
    let mut changes = Vec::new();
    if cur.settings.level != settings.level {
        changes.push(format!(
            "log.level {:?} -> {:?}",
            cur.settings.level, settings.level
        ));
    }
    if cur.settings.format != settings.format {
        changes.push(format!(
            "log.format {} -> {}",
            cur.settings.format.name(),
            settings.format.name()
        ));
    }
    *cur = Current { settings, logger };
    drop(cur);
    log::set_max_level(max);
    Some(changes.join(", "))
}

/// One log line in JSON, its keys in this order.
#[derive(serde::Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'a str,
    target: &'a str,
    message: String,
    fields: Map<String, Json>,
}

/// One record as a JSON object on one line; serde_json does the escaping.
fn write_json(buf: &mut Formatter, record: &Record<'_>) -> io::Result<()> {
    let mut fields = Fields(Map::new());
    // A field that cannot be visited is left out; the line itself still goes out.
    let _ = record.key_values().visit(&mut fields);
    let line = Line {
        timestamp: buf.timestamp_millis().to_string(),
        level: record.level().as_str(),
        target: record.target(),
        message: record.args().to_string(),
        fields: fields.0,
    };
    serde_json::to_writer(&mut *buf, &line)?;
    buf.write_all(b"\n")
}

struct Fields(Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'_>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.insert(key.as_str().to_string(), json_value(&value));
        Ok(())
    }
}

/// Numbers and booleans stay what they are; everything else (ids, names) is its Display text.
fn json_value(v: &Value<'_>) -> Json {
    if let Some(b) = v.to_bool() {
        return Json::Bool(b);
    }
    if let Some(n) = v.to_u64() {
        return Json::from(n);
    }
    if let Some(n) = v.to_i64() {
        return Json::from(n);
    }
    Json::String(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;

    fn cfg(level: &str, format: &str) -> LogConfig {
        LogConfig {
            level: level.into(),
            format: format.into(),
        }
    }

    #[test]
    fn the_level_comes_from_the_file_then_rust_log_then_info() {
        let from = |c: &LogConfig, env: Option<&str>| Settings::of(c, env.map(String::from)).level;
        assert_eq!(from(&cfg("warn", "text"), Some("debug")), "warn");
        assert_eq!(from(&cfg("", "text"), Some("debug")), "debug");
        assert_eq!(from(&cfg("", "text"), Some(" ")), "info");
        assert_eq!(from(&cfg("", "text"), None), "info");
        assert_eq!(Settings::of(&cfg("", "json"), None).format, Format::Json);
    }

    #[test]
    fn bad_levels_are_refused() {
        assert!(check_level("info").is_ok());
        assert!(check_level("warn,simplepush::reliability=debug").is_ok());
        // A bare word names a module for env_logger, so only a bad level after `=` is an error.
        assert!(check_level("simplepush=loud").is_err());
        assert!(check_level("info/a/b").is_err());
    }

    #[test]
    fn field_values_keep_numbers_and_print_the_rest() {
        assert_eq!(json_value(&Value::from(7u64)), Json::from(7));
        assert_eq!(json_value(&Value::from(true)), Json::Bool(true));
        let id = sm::Id::parse("0CB8A613-8E2B-4B47-B370-51098DAA8401").unwrap();
        assert_eq!(
            json_value(&Value::from_display(&id)),
            Json::String("0CB8A613-8E2B-4B47-B370-51098DAA8401".into())
        );
    }
}
