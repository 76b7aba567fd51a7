//! CNI network configuration lists, found in `[network] cni_conf_dir`
//! (`*.conflist`, and single-plugin `*.conf`/`*.json`, as libcni finds
//! them). The default network is the first one by file name.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::NetworkError;

/// Configuration files bigger than this are refused.
const MAX_CONF_BYTES: u64 = 1 << 20;

/// One network: the list of plugins CNI runs in order on ADD and in
/// reverse on DEL.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflist {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's configuration object, `type` checked.
    pub plugins: Vec<Map<String, Value>>,
    pub file: PathBuf,
}

impl Conflist {
    /// The plugins' types, in order (`bridge, portmap`).
    pub fn plugin_types(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str).map(String::from))
            .collect()
    }

    /// The conflist as JSON, for a pod's record: DEL runs with the very
    /// configuration ADD had, whatever happened to the file since.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": self.plugins,
        })
    }

    /// Parses a conflist (or a single plugin's `.conf`); `file` names it in
    /// errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, NetworkError> {
        let bad = |key: &str, message: String| NetworkError::Conflist {
            file: file.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| bad("(JSON)", format!("not valid JSON: {e}")))?;
        let Value::Object(mut top) = value else {
            return Err(bad("(top level)", "must be a JSON object".into()));
        };
        let name = match top.get("name") {
            Some(Value::String(n)) if valid_name(n) => n.clone(),
            Some(Value::String(n)) => {
                return Err(bad(
                    "name",
                    format!("`{n}` is not a network name: use letters, digits, `-`, `_` and `.` (at most 64)"),
                ))
            }
            Some(_) => return Err(bad("name", "must be a string".into())),
            None => return Err(bad("name", "missing".into())),
        };
        let cni_version = match top.get("cniVersion") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            Some(_) => {
                return Err(bad(
                    "cniVersion",
                    "must be a version string such as \"1.0.0\"".into(),
                ))
            }
            None => {
                return Err(bad(
                    "cniVersion",
                    "missing; add \"cniVersion\": \"1.0.0\"".into(),
                ))
            }
        };
        let plugins = match top.remove("plugins") {
            Some(Value::Array(list)) => list,
            Some(_) => return Err(bad("plugins", "must be a list of plugin objects".into())),
            // A `.conf`: the object is the one plugin.
            None if top.contains_key("type") => vec![Value::Object(top.clone())],
            None => {
                return Err(bad(
                    "plugins",
                    "missing: a conflist lists its plugins".into(),
                ))
            }
        };
        if plugins.is_empty() {
            return Err(bad("plugins", "is empty: list at least one plugin".into()));
        }
        let mut out = Vec::with_capacity(plugins.len());
        for (i, p) in plugins.into_iter().enumerate() {
            let Value::Object(p) = p else {
                return Err(bad(&format!("plugins[{i}]"), "must be an object".into()));
            };
            match p.get("type") {
                Some(Value::String(t)) if valid_plugin_type(t) => {}
                Some(Value::String(t)) => {
                    return Err(bad(
                        &format!("plugins[{i}].type"),
                        format!("`{t}` is not a plugin binary name"),
                    ))
                }
                _ => {
                    return Err(bad(
                        &format!("plugins[{i}].type"),
                        "missing: name the plugin binary (`bridge`, `portmap`, …)".into(),
                    ))
                }
            }
            if let Some(caps) = p.get("capabilities") {
                if !caps.is_object() {
                    return Err(bad(
                        &format!("plugins[{i}].capabilities"),
                        "must be an object such as {\"portMappings\": true}".into(),
                    ));
                }
            }
            out.push(p);
        }
        Ok(Self {
            name,
            cni_version,
            plugins: out,
            file: file.to_path_buf(),
        })
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A plugin type is a file name in the plugin directories.
pub(crate) fn valid_plugin_type(t: &str) -> bool {
    valid_name(t) && t != "." && t != ".."
}

/// Every configuration file in `dir`, by file name, each parsed or the
/// reason it is not usable.
pub fn discover(dir: &Path) -> Result<Vec<Result<Conflist, NetworkError>>, NetworkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetworkError::Io {
                what: format!("CNI configuration directory {}", dir.display()),
                source,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    Ok(files.iter().map(|f| read(f)).collect())
}

fn read(file: &Path) -> Result<Conflist, NetworkError> {
    let io = |source| NetworkError::Io {
        what: format!("CNI configuration {}", file.display()),
        source,
    };
    let meta = std::fs::metadata(file).map_err(io)?;
    if meta.len() > MAX_CONF_BYTES {
        return Err(NetworkError::Conflist {
            file: file.to_path_buf(),
            key: "(file)".into(),
            message: format!("{} bytes; at most {MAX_CONF_BYTES}", meta.len()),
        });
    }
    let text = std::fs::read_to_string(file).map_err(io)?;
    Conflist::parse(&text, file)
}

/// The network named `name`, or the default one (the first file) when
/// `name` is `None`. An unknown name lists the networks found.
pub fn find(dir: &Path, name: Option<&str>) -> Result<Conflist, NetworkError> {
    let all = discover(dir)?;
    let Some(name) = name else {
        return match all.into_iter().next() {
            Some(first) => first,
            None => Err(NetworkError::NoNetworks {
                dir: dir.to_path_buf(),
            }),
        };
    };
    let mut found = Vec::new();
    let mut broken = Vec::new();
    for c in all {
        match c {
            Ok(c) if c.name == name => return Ok(c),
            Ok(c) => found.push(c.name),
            Err(e) => broken.push(e.to_string()),
        }
    }
    Err(NetworkError::UnknownNetwork {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        found,
        broken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"hyper","plugins":[
        {"type":"bridge","bridge":"hyper0","ipam":{"type":"host-local"}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn a_conflist_and_a_conf_parse() {
        let c = Conflist::parse(GOOD, Path::new("/x/10-hyper.conflist")).unwrap();
        assert_eq!(c.name, "hyper");
        assert_eq!(c.plugin_types(), ["bridge", "portmap"]);
        let c = Conflist::parse(
            r#"{"cniVersion":"0.4.0","name":"one","type":"bridge"}"#,
            Path::new("/x/a.conf"),
        )
        .unwrap();
        assert_eq!(c.plugin_types(), ["bridge"]);
        let again = Conflist::parse(&c.to_json().to_string(), Path::new("/x/a.conf")).unwrap();
        assert_eq!(again.plugin_types(), ["bridge"]);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        for (text, key) in [
            ("{", "(JSON)"),
            ("[]", "(top level)"),
            (r#"{"cniVersion":"1.0.0","plugins":[]}"#, "name"),
            (
                r#"{"name":"a b","cniVersion":"1.0.0","plugins":[]}"#,
                "name",
            ),
            (
                r#"{"name":"a","plugins":[{"type":"bridge"}]}"#,
                "cniVersion",
            ),
            (
                r#"{"name":"a","cniVersion":"1.0.0","plugins":[]}"#,
                "plugins",
            ),
            (
                r#"{"name":"a","cniVersion":"1.0.0","plugins":[{"x":1}]}"#,
                "plugins[0].type",
            ),
            (
                r#"{"name":"a","cniVersion":"1.0.0","plugins":[{"type":"../sh"}]}"#,
                "plugins[0].type",
            ),
            (
                r#"{"name":"a","cniVersion":"1.0.0","plugins":[{"type":"a","capabilities":1}]}"#,
                "plugins[0].capabilities",
            ),
        ] {
            let err = Conflist::parse(text, Path::new("/etc/n/bad.conflist")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("/etc/n/bad.conflist"), "{msg}");
            assert!(msg.contains(&format!("key `{key}`")), "{text}: {msg}");
        }
    }

    #[test]
    fn the_default_is_the_first_file_and_unknown_names_list_the_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("20-b.conflist"), GOOD.replace("hyper", "b")).unwrap();
        std::fs::write(dir.path().join("10-a.conflist"), GOOD.replace("hyper", "a")).unwrap();
        std::fs::write(dir.path().join("30-bad.conflist"), "{").unwrap();
        std::fs::write(dir.path().join("README"), "not a config").unwrap();
        assert_eq!(find(dir.path(), None).unwrap().name, "a");
        assert_eq!(find(dir.path(), Some("b")).unwrap().name, "b");
        let err = find(dir.path(), Some("nope")).unwrap_err().to_string();
        assert!(err.contains("a, b"), "{err}");
        assert!(err.contains("30-bad.conflist"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = find(empty.path(), None).unwrap_err().to_string();
        assert!(err.contains("no CNI network"), "{err}");
    }
}
