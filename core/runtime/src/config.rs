//! The TOML configuration model. Unknown keys are refused; every error names
//! the file, the key and the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/hyper/config.toml";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub payload: PayloadConfig,
    pub vm: VmDefaults,
    pub images: ImagesConfig,
    pub network: NetworkConfig,
    /// Each backend's own table, validated by the backend's plugin.
    pub hypervisor: BTreeMap<String, toml::Table>,
    /// Where the config came from, for error messages; not a TOML key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `auto` or a backend name (`qemu`, `kvm`, `xen`, …).
    pub hypervisor: String,
    pub plugin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// A group whose members may use the socket too (mode 0660); without
    /// it only root may (0600).
    pub socket_group: Option<String>,
    /// Whether a stopping hyperd takes its pods' VMs down. By default they
    /// keep running and the next hyperd takes them over (on backends that
    /// can; others' pods are stopped).
    pub stop_pods_on_exit: bool,
    /// Per-pod host cgroups: each pod's VMM and helpers run in
    /// `cgroup_parent/pod-<id>`, limited in memory, CPU and tasks. `false`
    /// leaves them in hyperd's cgroup, unlimited.
    pub cgroups: bool,
    /// Where the pods' cgroups go: relative, under hyperd's own cgroup in
    /// each hierarchy; absolute (`/hyper`), under each hierarchy's root.
    pub cgroup_parent: PathBuf,
    /// What a pod's VMM may use beyond its guest's memory, in MiB: its
    /// memory limit is the guest memory plus this (docs/perf/jail.md).
    pub cgroup_vmm_overhead_mib: u64,
    /// Tasks (processes and threads) a pod's VMM and helpers may have.
    pub cgroup_pids_max: u64,
}

/// `[runtime] cgroup_vmm_overhead_mib` by default: QEMU under TCG with its
/// translation cache, measured (docs/perf/jail.md), with headroom.
pub const DEFAULT_VMM_OVERHEAD_MIB: u64 = 256;
pub const DEFAULT_CGROUP_PIDS_MAX: u64 = 1024;

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            hypervisor: "auto".into(),
            plugin_dir: "/usr/local/lib/hyper/backends".into(),
            state_dir: "/var/lib/hyper".into(),
            socket: "/run/hyper/hyperd.sock".into(),
            socket_group: None,
            stop_pods_on_exit: false,
            cgroups: true,
            cgroup_parent: "hyper".into(),
            cgroup_vmm_overhead_mib: DEFAULT_VMM_OVERHEAD_MIB,
            cgroup_pids_max: DEFAULT_CGROUP_PIDS_MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayloadConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel command line arguments, appended to the core's.
    pub cmdline: String,
}

impl Default for PayloadConfig {
    fn default() -> Self {
        Self {
            kernel: "/usr/local/share/hyper/hyperkernel".into(),
            initrd: "/usr/local/share/hyper/hyperstart.img".into(),
            cmdline: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmDefaults {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// How long a guest may take from launch to hyperstart's READY.
    pub boot_timeout_secs: u64,
    /// How pods start: `cold` (boot the payload), `template` (restore a
    /// booted template VM; a pod that cannot fails) or `auto` (a template
    /// when the backend and the pod's layout allow it, else cold).
    pub start: String,
}

pub use hyper_api::start::StartMode;

impl VmDefaults {
    /// `start` as validated at load (`cold` for a config built in code
    /// with a value that is none of the three).
    pub fn start_mode(&self) -> StartMode {
        StartMode::parse(&self.start).unwrap_or_default()
    }
}

impl Default for VmDefaults {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: 128,
            boot_timeout_secs: 60,
            start: StartMode::Cold.as_str().to_string(),
        }
    }
}

/// How images are pulled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Registries (`host:port`) reached over plain HTTP instead of HTTPS.
    pub insecure_registries: Vec<String>,
    /// Credentials `hyper login` writes (Docker's config.json format);
    /// `<state_dir>/auth.json` when unset.
    pub auth_file: Option<PathBuf>,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// What one image may unpack to, all layers together: file contents
    /// plus 512 bytes and the path of every entry. Beyond it a pull, load
    /// or rootfs build is refused (a decompression or metadata bomb).
    pub max_unpack_bytes: u64,
    /// How many tar entries one image may have, all layers together.
    pub max_unpack_entries: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            auth_file: None,
            max_concurrent_downloads: 3,
            max_unpack_bytes: hyper_images::unpack::DEFAULT_MAX_BYTES,
            max_unpack_entries: hyper_images::unpack::DEFAULT_MAX_ENTRIES,
        }
    }
}

impl ImagesConfig {
    /// The unpack limits these keys set.
    pub fn limits(&self) -> hyper_images::Limits {
        hyper_images::Limits {
            max_bytes: self.max_unpack_bytes,
            max_entries: self.max_unpack_entries,
        }
    }
}

/// Pods' networks: CNI configuration lists and plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Where the networks' conflists are; the first by file name is the
    /// default network.
    pub cni_conf_dir: PathBuf,
    /// Where the plugin binaries are, searched in order.
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// How long one plugin may run before it is killed.
    pub plugin_timeout_secs: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            cni_conf_dir: "/etc/hyper/cni/net.d".into(),
            cni_plugin_dirs: vec!["/usr/lib/cni".into()],
            plugin_timeout_secs: 60,
        }
    }
}

impl NetworkConfig {
    /// What the network crate needs.
    pub fn settings(&self) -> hyper_network::Settings {
        hyper_network::Settings {
            conf_dir: self.cni_conf_dir.clone(),
            plugin_dirs: self.cni_plugin_dirs.clone(),
            plugin_timeout: std::time::Duration::from_secs(self.plugin_timeout_secs),
        }
    }
}

/// The smallest `[images] max_unpack_bytes` / `max_unpack_entries` taken:
/// below them not even a busybox image fits.
pub const MIN_UNPACK_BYTES: u64 = 16 << 20;
pub const MIN_UNPACK_ENTRIES: u64 = 1000;

pub const MAX_VCPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: key `{key}`: {message}; {fix}")]
    Invalid {
        path: String,
        key: String,
        message: String,
        fix: String,
    },
}

impl Config {
    /// Loads `path`, or the built-in defaults when `path` is the default
    /// location and no file is there.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!("no {} found: using the built-in defaults", path.display());
                Ok(Self::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: describe_toml_error(&e, text),
        })?;
        config.source = Some(path.to_path_buf());
        config.validate()?;
        Ok(config)
    }

    pub fn source_name(&self) -> String {
        self.source.as_ref().map_or_else(
            || "<built-in defaults>".to_string(),
            |p| p.display().to_string(),
        )
    }

    fn invalid(
        &self,
        key: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.source_name(),
            key: key.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_VCPUS).contains(&self.vm.vcpus) {
            return Err(self.invalid(
                "vm.vcpus",
                format!("{} is out of range", self.vm.vcpus),
                format!("set it between 1 and {MAX_VCPUS}"),
            ));
        }
        if self.vm.memory_mib < MIN_MEMORY_MIB {
            return Err(self.invalid(
                "vm.memory_mib",
                format!("{} MiB is too little for the guest", self.vm.memory_mib),
                format!("set it to at least {MIN_MEMORY_MIB}"),
            ));
        }
        if self.vm.boot_timeout_secs == 0 {
            return Err(self.invalid(
                "vm.boot_timeout_secs",
                "0 would fail every boot",
                "set it to a few seconds or more",
            ));
        }
        if StartMode::parse(&self.vm.start).is_none() {
            return Err(self.invalid(
                "vm.start",
                format!("`{}` is not a start mode", self.vm.start),
                format!("set it to {} (the default is \"cold\")", StartMode::VALUES),
            ));
        }
        let name = &self.runtime.hypervisor;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.invalid(
                "runtime.hypervisor",
                format!("`{name}` is not a backend name"),
                "use `auto` or the name of an installed backend (`hyper info` lists them)",
            ));
        }
        if let Err(why) = crate::cgroups::check_parent(&self.runtime.cgroup_parent) {
            return Err(self.invalid(
                "runtime.cgroup_parent",
                why,
                "name a cgroup such as \"hyper\" (under hyperd's own) or \"/hyper\" (under the root), or turn per-pod cgroups off with `cgroups = false`",
            ));
        }
        if !(16..=1 << 20).contains(&self.runtime.cgroup_vmm_overhead_mib) {
            return Err(self.invalid(
                "runtime.cgroup_vmm_overhead_mib",
                format!(
                    "{} MiB is out of range",
                    self.runtime.cgroup_vmm_overhead_mib
                ),
                format!("set it between 16 and 1048576; the default is {DEFAULT_VMM_OVERHEAD_MIB}"),
            ));
        }
        if !(64..=1 << 22).contains(&self.runtime.cgroup_pids_max) {
            return Err(self.invalid(
                "runtime.cgroup_pids_max",
                format!("{} is out of range", self.runtime.cgroup_pids_max),
                format!("set it between 64 and 4194304; the default is {DEFAULT_CGROUP_PIDS_MAX}"),
            ));
        }
        if !(1..=16).contains(&self.images.max_concurrent_downloads) {
            return Err(self.invalid(
                "images.max_concurrent_downloads",
                format!("{} is out of range", self.images.max_concurrent_downloads),
                "set it between 1 and 16",
            ));
        }
        if self.images.max_unpack_bytes < MIN_UNPACK_BYTES {
            return Err(self.invalid(
                "images.max_unpack_bytes",
                format!(
                    "{} bytes is too small for any image",
                    self.images.max_unpack_bytes
                ),
                format!(
                    "set it to at least {MIN_UNPACK_BYTES} (16 MiB); the default is {} (4 GiB)",
                    hyper_images::unpack::DEFAULT_MAX_BYTES
                ),
            ));
        }
        if self.images.max_unpack_entries < MIN_UNPACK_ENTRIES {
            return Err(self.invalid(
                "images.max_unpack_entries",
                format!(
                    "{} entries is too few for any image",
                    self.images.max_unpack_entries
                ),
                format!(
                    "set it to at least {MIN_UNPACK_ENTRIES}; the default is {}",
                    hyper_images::unpack::DEFAULT_MAX_ENTRIES
                ),
            ));
        }
        if let Some(bad) = self
            .images
            .insecure_registries
            .iter()
            .find(|r| r.is_empty() || r.contains('/') || r.contains(char::is_whitespace))
        {
            return Err(self.invalid(
                "images.insecure_registries",
                format!("`{bad}` is not a registry address"),
                "list registries as `host` or `host:port`, e.g. \"127.0.0.1:5000\"",
            ));
        }
        if let Some(path) = &self.images.auth_file {
            if !path.is_absolute() {
                return Err(self.invalid(
                    "images.auth_file",
                    format!("`{}` is a relative path", path.display()),
                    "use an absolute path",
                ));
            }
        }
        if !(1..=3600).contains(&self.network.plugin_timeout_secs) {
            return Err(self.invalid(
                "network.plugin_timeout_secs",
                format!("{} is out of range", self.network.plugin_timeout_secs),
                "set it between 1 and 3600 (seconds one CNI plugin may run)",
            ));
        }
        if self.network.cni_plugin_dirs.is_empty() {
            return Err(self.invalid(
                "network.cni_plugin_dirs",
                "is empty: no CNI plugin could be found",
                "list Debian's [\"/usr/lib/cni\"] or where your plugins are",
            ));
        }
        for (i, dir) in self.network.cni_plugin_dirs.iter().enumerate() {
            if !dir.is_absolute() {
                return Err(self.invalid(
                    &format!("network.cni_plugin_dirs[{i}]"),
                    format!("`{}` is a relative path", dir.display()),
                    "use an absolute path",
                ));
            }
        }
        for (key, path) in [
            ("network.cni_conf_dir", &self.network.cni_conf_dir),
            ("runtime.plugin_dir", &self.runtime.plugin_dir),
            ("runtime.state_dir", &self.runtime.state_dir),
            ("runtime.socket", &self.runtime.socket),
            ("payload.kernel", &self.payload.kernel),
            ("payload.initrd", &self.payload.initrd),
        ] {
            if !path.is_absolute() {
                return Err(self.invalid(
                    key,
                    format!("`{}` is a relative path", path.display()),
                    "use an absolute path",
                ));
            }
        }
        Ok(())
    }

    /// Where registry credentials are kept.
    pub fn auth_file(&self) -> PathBuf {
        self.images
            .auth_file
            .clone()
            .unwrap_or_else(|| self.runtime.state_dir.join("auth.json"))
    }

    /// A backend's table as JSON, the form its plugin validates.
    pub fn hypervisor_table(&self, name: &str) -> serde_json::Value {
        self.hypervisor
            .get(name)
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()))
    }
}

/// toml's message already names the key and points at the line; add the fix.
fn describe_toml_error(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().to_string();
    let location = err
        .span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: ")
        })
        .unwrap_or_default();
    let fix = if message.contains("unknown field") {
        "remove the key or correct its spelling"
    } else if message.contains("invalid type") {
        "give the key a value of the expected type"
    } else {
        "correct the TOML syntax"
    };
    format!("{location}{message}; {fix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/hyper/test.toml"))
    }

    #[test]
    fn vm_start_is_checked_and_named() {
        assert_eq!(parse("").unwrap().vm.start_mode(), StartMode::Cold);
        for (text, mode) in [
            ("cold", StartMode::Cold),
            ("auto", StartMode::Auto),
            ("template", StartMode::Template),
        ] {
            let c = parse(&format!("[vm]\nstart = \"{text}\"\n")).unwrap();
            assert_eq!(c.vm.start_mode(), mode);
        }
        let err = parse("[vm]\nstart = \"warm\"\n").unwrap_err().to_string();
        assert!(err.contains("/etc/hyper/test.toml"), "{err}");
        assert!(err.contains("vm.start"), "{err}");
        assert!(err.contains("`warm`"), "{err}");
        assert!(err.contains("\"template\""), "{err}");
    }

    #[test]
    fn network_keys_are_checked_and_named() {
        let c = parse("").unwrap();
        assert_eq!(c.network.cni_conf_dir, Path::new("/etc/hyper/cni/net.d"));
        assert_eq!(c.network.cni_plugin_dirs, [Path::new("/usr/lib/cni")]);
        for (text, key) in [
            (
                "[network]\nplugin_timeout_secs = 0\n",
                "network.plugin_timeout_secs",
            ),
            (
                "[network]\ncni_plugin_dirs = []\n",
                "network.cni_plugin_dirs",
            ),
            (
                "[network]\ncni_plugin_dirs = [\"lib/cni\"]\n",
                "network.cni_plugin_dirs[0]",
            ),
            (
                "[network]\ncni_conf_dir = \"net.d\"\n",
                "network.cni_conf_dir",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("`{key}`")) && err.contains("test.toml"),
                "{err}"
            );
        }
        let err = parse("[network]\ncni_dir = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cni_dir"), "{err}");
    }

    #[test]
    fn cgroup_keys_are_checked_and_named() {
        let c = parse("").unwrap();
        assert!(c.runtime.cgroups);
        assert_eq!(c.runtime.cgroup_parent, Path::new("hyper"));
        assert_eq!(c.runtime.cgroup_vmm_overhead_mib, DEFAULT_VMM_OVERHEAD_MIB);
        assert_eq!(c.runtime.cgroup_pids_max, DEFAULT_CGROUP_PIDS_MAX);
        let c = parse("[runtime]\ncgroups = false\ncgroup_parent = \"/ops/hyper\"\n").unwrap();
        assert!(!c.runtime.cgroups);
        assert_eq!(c.runtime.cgroup_parent, Path::new("/ops/hyper"));
        for (text, key) in [
            ("[runtime]\ncgroup_parent = \"\"\n", "runtime.cgroup_parent"),
            (
                "[runtime]\ncgroup_parent = \"../x\"\n",
                "runtime.cgroup_parent",
            ),
            (
                "[runtime]\ncgroup_parent = \"/\"\n",
                "runtime.cgroup_parent",
            ),
            (
                "[runtime]\ncgroup_vmm_overhead_mib = 1\n",
                "runtime.cgroup_vmm_overhead_mib",
            ),
            (
                "[runtime]\ncgroup_pids_max = 2\n",
                "runtime.cgroup_pids_max",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
        let err = parse("[runtime]\ncgroups = \"no\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("boolean"), "{err}");
    }

    #[test]
    fn defaults_fill_missing_sections() {
        let c = parse("[runtime]\nhypervisor = \"qemu\"\n").unwrap();
        assert_eq!(c.runtime.hypervisor, "qemu");
        assert_eq!(c.vm.vcpus, 1);
        assert_eq!(
            c.payload.kernel,
            PathBuf::from("/usr/local/share/hyper/hyperkernel")
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[runtime]\nhypervisr = \"qemu\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/hyper/test.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("hypervisr"), "{err}");
        assert!(err.contains("remove the key"), "{err}");
    }

    #[test]
    fn wrong_type_is_explained() {
        let err = parse("[vm]\nvcpus = \"two\"\n").unwrap_err().to_string();
        assert!(err.contains("vcpus") || err.contains("line 2"), "{err}");
        assert!(err.contains("expected type"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = parse("[vm]\nvcpus = 0\n").unwrap_err().to_string();
        assert!(err.contains("vm.vcpus"), "{err}");
        let err = parse("[payload]\nkernel = \"vmlinux\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("payload.kernel") && err.contains("absolute"),
            "{err}"
        );
    }

    #[test]
    fn images_section_is_checked() {
        let c = parse("[images]\ninsecure_registries = [\"127.0.0.1:5000\"]\n").unwrap();
        assert_eq!(c.images.insecure_registries, vec!["127.0.0.1:5000"]);
        assert_eq!(c.auth_file(), PathBuf::from("/var/lib/hyper/auth.json"));
        let err = parse("[images]\ninsecure_registries = [\"http://x/\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("images.insecure_registries"), "{err}");
        let err = parse("[images]\nmax_concurrent_downloads = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("images.max_concurrent_downloads"), "{err}");
    }

    #[test]
    fn unpack_limits_are_keys_with_checked_values() {
        let c = parse("").unwrap();
        assert_eq!(c.images.limits(), hyper_images::Limits::default());
        assert_eq!(c.images.max_unpack_bytes, 4 << 30);
        let c =
            parse("[images]\nmax_unpack_bytes = 1073741824\nmax_unpack_entries = 50000\n").unwrap();
        assert_eq!(
            c.images.limits(),
            hyper_images::Limits {
                max_bytes: 1 << 30,
                max_entries: 50_000
            }
        );
        let err = parse("[images]\nmax_unpack_bytes = 10\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("images.max_unpack_bytes") && err.contains("at least"),
            "{err}"
        );
        let err = parse("[images]\nmax_unpack_entries = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("images.max_unpack_entries"), "{err}");
    }

    #[test]
    fn backend_tables_are_kept_for_the_plugin() {
        let c = parse("[hypervisor.qemu]\nmachine = \"q35\"\n").unwrap();
        assert_eq!(c.hypervisor_table("qemu")["machine"], "q35");
        assert_eq!(c.hypervisor_table("xen"), serde_json::json!({}));
    }
}
