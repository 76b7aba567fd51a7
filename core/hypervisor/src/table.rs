//! Typed `[hypervisor.<name>]` tables, one path for every backend.
//!
//! A backend declares its table as a serde struct with
//! `#[serde(deny_unknown_fields, default)]` and a `Default` that holds every
//! key's default, implements [`BackendConfig`] for it (its name, and the
//! checks serde cannot make: ranges, absolute paths, keys that go together),
//! and calls [`parse`]. Every problem in the table is reported at once, each
//! as a [`ConfigProblem`] naming its key, what was wrong and the fix; the
//! core turns them into one [`TableError`] that also names the config file
//! and the full key (`hypervisor.qemu.tcg_tb_size_mib`), the way its own
//! config errors read.

use std::ops::RangeInclusive;
use std::path::Path;

use serde::de::{DeserializeOwned, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ConfigProblem;

/// A backend's `[hypervisor.<name>]` table.
pub trait BackendConfig: DeserializeOwned + Serialize + Default {
    /// The backend's name: its table is `[hypervisor.BACKEND]`.
    const BACKEND: &'static str;

    /// What serde cannot check, on a table whose keys each have the right
    /// type. Each problem names its key.
    fn check(&self) -> Vec<ConfigProblem> {
        Vec::new()
    }

    /// The example the fix of a bad `key` shows (`key = value`), for keys
    /// whose default is unset; the others show their default.
    fn example(key: &str) -> Option<String> {
        let _ = key;
        None
    }
}

impl ConfigProblem {
    pub fn new(key: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// A backend refused its table: every problem, with the config file it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.lines().join("; "))]
pub struct TableError {
    /// The config file, as the core shows it.
    pub file: String,
    pub backend: String,
    pub problems: Vec<ConfigProblem>,
}

impl TableError {
    /// One sentence a problem: `config file F: key `hypervisor.B.K`: what; fix`.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| {
                let key = if p.key.is_empty() {
                    format!("hypervisor.{}", self.backend)
                } else {
                    format!("hypervisor.{}.{}", self.backend, p.key)
                };
                format!(
                    "config file {}: key `{key}`: {}; {}",
                    self.file, p.message, p.fix
                )
            })
            .collect()
    }
}

/// Parses a backend's table (TOML converted to JSON). A missing table
/// (`null` or `{}`) means every default. Each key is read on its own, so
/// every unknown or mistyped key is reported, then [`BackendConfig::check`]
/// runs on the keys that were well typed.
pub fn parse<T: BackendConfig>(table: &Value) -> Result<T, Vec<ConfigProblem>> {
    let map = match table {
        Value::Null => return Ok(T::default()),
        Value::Object(map) => map,
        other => {
            return Err(vec![ConfigProblem::new(
                "",
                format!("expected a table, found {}", type_name(other)),
                format!("write it as a [hypervisor.{}] table", T::BACKEND),
            )])
        }
    };
    let keys = keys::<T>();
    let mut problems = Vec::new();
    let mut good = Map::new();
    for (key, value) in map {
        if !keys.contains(&key.as_str()) {
            problems.push(unknown_key(T::BACKEND, keys, key));
            continue;
        }
        let one = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
        match serde_json::from_value::<T>(one) {
            Ok(_) => {
                good.insert(key.clone(), value.clone());
            }
            Err(e) => problems.push(ConfigProblem::new(
                key,
                describe(&e.to_string()),
                fix::<T>(key),
            )),
        }
    }
    let config = match serde_json::from_value::<T>(Value::Object(good)) {
        Ok(config) => config,
        Err(e) => {
            // Keys well typed one by one but not together: only a struct
            // with flattened or aliased fields gets here.
            problems.push(ConfigProblem::new(
                "",
                describe(&e.to_string()),
                format!("fix the [hypervisor.{}] table", T::BACKEND),
            ));
            return Err(problems);
        }
    };
    for p in config.check() {
        // A mistyped key already said what is wrong with it.
        if !problems.iter().any(|q| q.key == p.key) {
            problems.push(p);
        }
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// A key that must be an absolute path (without a NUL byte, which no
/// system call takes).
pub fn absolute_path(key: &str, path: &Path, example: &str) -> Option<ConfigProblem> {
    use std::os::unix::ffi::OsStrExt;
    let nul = path.as_os_str().as_bytes().contains(&0);
    (nul || !path.is_absolute()).then(|| {
        ConfigProblem::new(
            key,
            format!("\"{}\" is not an absolute path", path.display()),
            format!("give the full path, e.g. {key} = \"{example}\""),
        )
    })
}

/// A whole number of `unit` that must be in `range`.
pub fn in_range(
    key: &str,
    value: u64,
    range: RangeInclusive<u64>,
    unit: &str,
    example: u64,
) -> Option<ConfigProblem> {
    (!range.contains(&value)).then(|| {
        ConfigProblem::new(
            key,
            format!(
                "{value} is out of range: expected a whole number of {unit} from {} to {}",
                range.start(),
                range.end()
            ),
            format!("e.g. {key} = {example}"),
        )
    })
}

/// The keys `T` accepts, in declaration order, as serde's derive lists them.
pub fn keys<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields = FieldNames(&[]);
    let _ = T::deserialize(&mut fields);
    fields.0
}

/// A deserializer that only notes the field names a struct asks for.
struct FieldNames(&'static [&'static str]);

impl<'de> serde::Deserializer<'de> for &mut FieldNames {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(serde::de::Error::custom("fields noted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// serde's message, with Rust's integer type names said in words
/// (`expected u32` ends serde's messages about numbers).
fn describe(message: &str) -> String {
    match message.rsplit_once("expected ") {
        Some((head, t)) if ["u8", "u16", "u32", "u64", "usize"].contains(&t) => {
            format!("{head}expected a whole number (0 or more)")
        }
        Some((head, t)) if ["i8", "i16", "i32", "i64", "isize"].contains(&t) => {
            format!("{head}expected a whole number")
        }
        _ => message.to_string(),
    }
}

/// `e.g. key = example`: the backend's example, else the key's default.
fn fix<T: BackendConfig>(key: &str) -> String {
    let example = T::example(key).or_else(|| {
        serde_json::to_value(T::default())
            .ok()
            .and_then(|d| d.get(key).filter(|v| !v.is_null()).map(|v| v.to_string()))
            .map(|v| format!("{key} = {v}"))
    });
    match example {
        Some(e) => format!("e.g. {e}"),
        None => "give it a value of the expected type".to_string(),
    }
}

/// Levenshtein distance, for "did you mean" on misspelt keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn unknown_key(backend: &str, keys: &[&str], key: &str) -> ConfigProblem {
    let valid = keys
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let near = |k: &&&str| {
        distance(key, k) <= 2
            || (key.len() >= 3 && (k.starts_with(key) || key.starts_with(**k)))
            || key.replace('-', "_") == ***k
    };
    let suggestion = keys
        .iter()
        .filter(near)
        .min_by_key(|k| distance(key, k))
        .map(|k| format!("did you mean `{k}`? "))
        .unwrap_or_default();
    ConfigProblem::new(
        key,
        "unknown key",
        format!("{suggestion}the valid keys in [hypervisor.{backend}] are {valid}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::path::PathBuf;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        binary: PathBuf,
        #[serde(rename = "type")]
        kind: Kind,
        limit_mib: u64,
        sandbox: bool,
        args: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Pv,
        Pvh,
    }

    impl Default for Demo {
        fn default() -> Self {
            Self {
                binary: PathBuf::from("/usr/bin/demo"),
                kind: Kind::Pv,
                limit_mib: 64,
                sandbox: true,
                args: Vec::new(),
                uid: None,
            }
        }
    }

    impl BackendConfig for Demo {
        const BACKEND: &'static str = "demo";

        fn check(&self) -> Vec<ConfigProblem> {
            [
                absolute_path("binary", &self.binary, "/usr/bin/demo"),
                in_range("limit_mib", self.limit_mib, 1..=4096, "MiB", 64),
            ]
            .into_iter()
            .flatten()
            .collect()
        }

        fn example(key: &str) -> Option<String> {
            (key == "uid").then(|| "uid = 64100".to_string())
        }
    }

    fn problems(v: Value) -> Vec<ConfigProblem> {
        parse::<Demo>(&v).expect_err("should be refused")
    }

    #[test]
    fn a_missing_or_empty_table_is_every_default() {
        assert_eq!(parse::<Demo>(&Value::Null).unwrap(), Demo::default());
        assert_eq!(parse::<Demo>(&json!({})).unwrap(), Demo::default());
        let d = parse::<Demo>(&json!({"type": "pvh", "uid": 7})).unwrap();
        assert_eq!(d.kind, Kind::Pvh);
        assert_eq!(d.uid, Some(7));
        assert_eq!(d.limit_mib, 64);
    }

    #[test]
    fn the_keys_are_the_structs_fields_as_serde_names_them() {
        assert_eq!(
            keys::<Demo>(),
            ["binary", "type", "limit_mib", "sandbox", "args", "uid"]
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_the_valid_ones() {
        let p = problems(json!({"limit_mb": 3}));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "limit_mb");
        assert_eq!(p[0].message, "unknown key");
        assert!(
            p[0].fix.contains("did you mean `limit_mib`?"),
            "{}",
            p[0].fix
        );
        assert!(
            p[0].fix.contains("[hypervisor.demo] are `binary`, `type`"),
            "{}",
            p[0].fix
        );
        let p = problems(json!({"colour": "blue"}));
        assert!(!p[0].fix.contains("did you mean"), "{}", p[0].fix);
    }

    #[test]
    fn a_mistyped_key_says_what_was_expected_and_shows_the_default() {
        let p = problems(json!({"limit_mib": "16"}));
        assert_eq!(p[0].key, "limit_mib");
        assert_eq!(
            p[0].message,
            "invalid type: string \"16\", expected a whole number (0 or more)"
        );
        assert_eq!(p[0].fix, "e.g. limit_mib = 64");
        let p = problems(json!({"sandbox": "yes"}));
        assert!(p[0].message.contains("expected a boolean"), "{p:?}");
        assert_eq!(p[0].fix, "e.g. sandbox = true");
        let p = problems(json!({"type": "hvm"}));
        assert!(p[0].message.contains("expected `pv` or `pvh`"), "{p:?}");
        assert_eq!(p[0].fix, "e.g. type = \"pv\"");
        let p = problems(json!({"uid": -1}));
        assert_eq!(p[0].fix, "e.g. uid = 64100");
        let p = problems(json!({"args": ["-s", 4]}));
        assert_eq!(p[0].key, "args");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut p = problems(json!({
            "binary": "demo", "limit_mib": 0, "sandbox": 1, "colour": "blue"
        }));
        p.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["binary", "colour", "limit_mib", "sandbox"]);
        assert!(p[0].message.contains("not an absolute path"), "{p:?}");
        assert!(p[2].message.contains("from 1 to 4096"), "{p:?}");
    }

    #[test]
    fn a_table_that_is_not_a_table() {
        let p = problems(json!(["binary"]));
        assert_eq!(p[0].key, "");
        assert_eq!(p[0].message, "expected a table, found an array");
        assert_eq!(p[0].fix, "write it as a [hypervisor.demo] table");
    }

    #[test]
    fn the_error_names_the_file_and_the_full_key() {
        let e = TableError {
            file: "/etc/hyper/config.toml".into(),
            backend: "demo".into(),
            problems: problems(json!({"limit_mib": "16"})),
        };
        assert_eq!(
            e.to_string(),
            "config file /etc/hyper/config.toml: key `hypervisor.demo.limit_mib`: \
             invalid type: string \"16\", expected a whole number (0 or more); e.g. limit_mib = 64"
        );
    }
}
