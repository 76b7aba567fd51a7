//! How many calls to each plugin failed, by call, for hyperd's `/metrics`
//! (`hyper_plugin_call_errors_total`). Counted where every call to a plugin
//! host process goes through, so a backend's refusal, a plugin that
//! panicked and a host that died all count.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::abi::{PluginRequest, PluginResult};

static ERRORS: Mutex<BTreeMap<(String, &'static str), u64>> = Mutex::new(BTreeMap::new());

/// One failed-calls figure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallErrors {
    pub plugin: String,
    /// The call: `launch`, `kill`, `stats`…
    pub call: &'static str,
    pub count: u64,
}

/// Every plugin and call that failed at least once since hyperd started.
pub fn call_errors() -> Vec<CallErrors> {
    lock()
        .iter()
        .map(|((plugin, call), count)| CallErrors {
            plugin: plugin.clone(),
            call,
            count: *count,
        })
        .collect()
}

/// Counts `result` against `plugin`'s `call` if it failed.
pub(super) fn count(plugin: &str, call: &'static str, result: &PluginResult) {
    if result.is_err() {
        *lock().entry((plugin.to_string(), call)).or_default() += 1;
    }
}

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<(String, &'static str), u64>> {
    ERRORS.lock().unwrap_or_else(|p| p.into_inner())
}

impl PluginRequest {
    /// The call's name, as `/metrics` labels it.
    pub fn name(&self) -> &'static str {
        match self {
            PluginRequest::Configure { .. } => "configure",
            PluginRequest::Capabilities { .. } => "capabilities",
            PluginRequest::Probe { .. } => "probe",
            PluginRequest::Launch { .. } => "launch",
            PluginRequest::Recover { .. } => "recover",
            PluginRequest::Wait { .. } => "wait",
            PluginRequest::Shutdown { .. } => "shutdown",
            PluginRequest::Kill { .. } => "kill",
            PluginRequest::Stats { .. } => "stats",
            PluginRequest::Restore { .. } => "restore",
            PluginRequest::SaveTemplate { .. } => "save_template",
            PluginRequest::Release { .. } => "release",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HypervisorError;

    #[test]
    fn failed_calls_are_counted_by_plugin_and_call() {
        let call = PluginRequest::Kill { vm: "x".into() }.name();
        count("count-test", call, &Ok(super::super::PluginReply::Done));
        count(
            "count-test",
            call,
            &Err(HypervisorError::NotFound("x".into())),
        );
        count(
            "count-test",
            call,
            &Err(HypervisorError::NotFound("x".into())),
        );
        let mine: Vec<_> = call_errors()
            .into_iter()
            .filter(|e| e.plugin == "count-test")
            .collect();
        assert_eq!(
            mine,
            [CallErrors {
                plugin: "count-test".into(),
                call: "kill",
                count: 2
            }]
        );
    }
}
