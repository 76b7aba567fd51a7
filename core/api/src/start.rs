//! How a pod's VM starts.

use serde::{Deserialize, Serialize};

/// How a pod's VM starts (`[vm] start`, `hyper run --start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// Boot the payload.
    #[default]
    Cold,
    /// From a template when the backend and the pod's layout allow it,
    /// else cold (the reason logged and shown).
    Auto,
    /// From a template only: a pod that cannot get one fails.
    Template,
}

impl StartMode {
    pub const VALUES: &'static str = "\"cold\", \"auto\" or \"template\"";

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cold" => Some(Self::Cold),
            "auto" => Some(Self::Auto),
            "template" => Some(Self::Template),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Auto => "auto",
            Self::Template => "template",
        }
    }
}

impl std::fmt::Display for StartMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
