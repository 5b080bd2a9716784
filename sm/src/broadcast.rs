//! Broadcasts (autopush's "megaphone"): named values the server holds, such as Firefox's
//! `remote-settings/monitor_changes`, that subscribed clients are told about when they change.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The version reported for a subscribed id the server does not know (as autopush answers).
pub const NOT_FOUND: &str = "Broadcast not found";
/// Subscriptions kept per socket; more are ignored, so a client cannot grow its socket's memory.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Longest broadcast id or version accepted from a client, in bytes.
pub const MAX_LEN: usize = 200;

/// Broadcast id → current version, as the server holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Broadcasts(BTreeMap<String, String>);

/// What one socket follows: broadcast id → the version the client has.
pub type Subscriptions = Vec<(String, String)>;

impl Broadcasts {
    /// A table of these versions.
    pub fn new(table: BTreeMap<String, String>) -> Broadcasts {
        Broadcasts(table)
    }

    /// The current version of a broadcast.
    pub fn get(&self, id: &str) -> Option<&str> {
        self.0.get(id).map(String::as_str)
    }

    /// Every broadcast and its version.
    pub fn table(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Sets versions; the ids whose version changed.
    pub fn update(&mut self, changes: &BTreeMap<String, String>) -> Vec<String> {
        let mut changed = Vec::new();
        for (id, version) in changes {
            if self.0.get(id) != Some(version) {
                self.0.insert(id.clone(), version.clone());
                changed.push(id.clone());
            }
        }
        changed
    }

    /// What a subscriber must be told about `subs` (only the ids in `only`, when given): each id
    /// whose version differs from the client's, and each unknown id as [`NOT_FOUND`]. The
    /// subscriptions are brought up to date with what is told.
    pub fn tell(&self, subs: &mut Subscriptions, only: Option<&[String]>) -> Map<String, Value> {
        let mut out = Map::new();
        for (id, theirs) in subs.iter_mut() {
            if only.is_some_and(|ids| !ids.contains(id)) {
                continue;
            }
            match self.0.get(id.as_str()) {
                Some(ours) if ours != theirs => {
                    out.insert(id.clone(), ours.as_str().into());
                    theirs.clone_from(ours);
                }
                Some(_) => {}
                // A later definition of the id still reaches the client: its version stays.
                None if only.is_none() => {
                    out.insert(id.clone(), NOT_FOUND.into());
                }
                None => {}
            }
        }
        out
    }
}

/// Reads a change of versions (the admin API's and the cluster router's `PUT /broadcasts` body):
/// a JSON object of strings, ids and versions of 1 to [`MAX_LEN`] and up to [`MAX_LEN`] bytes.
pub fn parse_changes(body: &[u8]) -> Result<BTreeMap<String, String>, &'static str> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "body is not JSON")?;
    let obj = v.as_object().ok_or("body must be a JSON object")?;
    let mut out = BTreeMap::new();
    for (id, version) in obj {
        let version = version.as_str().ok_or("versions must be strings")?;
        if id.is_empty() || id.len() > MAX_LEN || version.len() > MAX_LEN {
            return Err("ids and versions are 1 to 200 characters");
        }
        out.insert(id.clone(), version.to_string());
    }
    Ok(out)
}

/// Reads a client's `broadcasts` object: string values only, bounded in count and length.
pub fn parse(v: Option<&Value>) -> Option<Subscriptions> {
    let obj = v?.as_object()?;
    let subs = obj
        .iter()
        .filter_map(|(id, v)| Some((id.clone(), v.as_str()?.to_string())))
        .filter(|(id, v)| id.len() <= MAX_LEN && v.len() <= MAX_LEN)
        .take(MAX_SUBSCRIPTIONS)
        .collect();
    Some(subs)
}

/// Adds or updates subscriptions, keeping at most [`MAX_SUBSCRIPTIONS`].
pub fn merge(subs: &mut Subscriptions, more: Subscriptions) {
    for (id, version) in more {
        if let Some(entry) = subs.iter_mut().find(|(i, _)| *i == id) {
            entry.1 = version;
        } else if subs.len() < MAX_SUBSCRIPTIONS {
            subs.push((id, version));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(pairs: &[(&str, &str)]) -> Broadcasts {
        Broadcasts::new(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn tells_what_differs_and_what_is_unknown() {
        let b = table(&[("rs", "\"5\""), ("same", "1")]);
        let mut subs = vec![
            ("rs".to_string(), "\"0\"".to_string()),
            ("same".to_string(), "1".to_string()),
            ("nope".to_string(), "x".to_string()),
        ];
        let told = b.tell(&mut subs, None);
        assert_eq!(
            Value::Object(told),
            json!({"rs": "\"5\"", "nope": NOT_FOUND})
        );
        // Up to date now: told nothing more, except the unknown one again.
        assert_eq!(
            Value::Object(b.tell(&mut subs, None)),
            json!({"nope": NOT_FOUND})
        );
    }

    #[test]
    fn a_change_reaches_only_subscribers_of_that_id() {
        let mut b = table(&[("a", "1"), ("b", "1")]);
        let mut subs = vec![("a".to_string(), "1".to_string())];
        let changed = b.update(&[("b".to_string(), "2".to_string())].into());
        assert_eq!(changed, ["b"]);
        assert!(b.tell(&mut subs, Some(&changed)).is_empty());
        let changed = b.update(
            &[
                ("a".to_string(), "2".to_string()),
                ("b".to_string(), "2".to_string()),
            ]
            .into(),
        );
        assert_eq!(changed, ["a"]);
        assert_eq!(
            Value::Object(b.tell(&mut subs, Some(&changed))),
            json!({"a": "2"})
        );
        // An id that appears later reaches who followed it while unknown.
        let mut waiting = vec![("new".to_string(), "0".to_string())];
        let changed = b.update(&[("new".to_string(), "1".to_string())].into());
        assert_eq!(
            Value::Object(b.tell(&mut waiting, Some(&changed))),
            json!({"new": "1"})
        );
    }

    #[test]
    fn changes_are_an_object_of_short_strings() {
        assert!(parse_changes(br#"{"a":"1","b":"\"2\""}"#).is_ok());
        for bad in [&b"[]"[..], b"nope", br#"{"a":1}"#, br#"{"":"1"}"#] {
            assert!(
                parse_changes(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_LEN + 1));
        assert!(parse_changes(long.as_bytes()).is_err());
    }

    #[test]
    fn client_objects_are_bounded() {
        assert_eq!(parse(Some(&json!("x"))), None);
        let subs = parse(Some(&json!({"a": "1", "b": 2, "c": null}))).unwrap();
        assert_eq!(subs, vec![("a".to_string(), "1".to_string())]);
        let many: Map<String, Value> = (0..100).map(|i| (format!("id{i}"), json!("v"))).collect();
        assert_eq!(
            parse(Some(&Value::Object(many))).unwrap().len(),
            MAX_SUBSCRIPTIONS
        );
        let long = parse(Some(&json!({"x".repeat(MAX_LEN + 1): "1"}))).unwrap();
        assert!(long.is_empty());
        let mut subs = vec![("a".to_string(), "1".to_string())];
        merge(
            &mut subs,
            vec![
                ("a".to_string(), "2".to_string()),
                ("b".to_string(), "1".to_string()),
            ],
        );
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].1, "2");
    }
}
