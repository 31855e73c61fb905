//! The rejection type ([`ConfigError`]) and [`Origin`], the "which source, which key" every value carries.

use std::fmt;

/// One reason a configuration was rejected. `Display` is the full operator-facing message.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file path, or the flag / "command line" the value came from.
    pub source_name: String,
    /// The key's full path, e.g. `runtime.buffer_size` or `tcp[0].upstreams[1]`; empty when
    /// the problem is not about one key (TOML syntax, nothing to listen on).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `source: key: message`, leaving out a part that the next one already says, so
    /// `--tcp[0]` is not preceded by `--tcp`, and `runtime.shards = 4 but ...` is not preceded
    /// by `runtime.shards`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.source_name.is_empty() && !names_prefix(&self.key, &self.source_name) {
            write!(f, "{}: ", self.source_name)?;
        }
        if !self.key.is_empty() && !names_prefix(&self.message, &self.key) {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Whether `text` starts with `prefix` as a whole name (`tcp[1]` is not a prefix of `tcp[10]`).
fn names_prefix(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix)
        .and_then(|rest| rest.chars().next())
        .is_some_and(|next| matches!(next, ' ' | '['))
}

/// Where a value came from: the source name and the key's full path.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Origin {
    pub source: String,
    pub key: String,
}

impl Origin {
    pub(super) fn new(source: &str, key: impl Into<String>) -> Self {
        Self {
            source: source.to_owned(),
            key: key.into(),
        }
    }

    pub(super) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            source_name: self.source.clone(),
            key: self.key.clone(),
            message: message.into(),
        }
    }

    /// How a message about another place refers to this one, e.g. `tcp[0].listen in ringfwd.toml`.
    pub(super) fn describe(&self) -> String {
        if names_prefix(&self.key, &self.source) {
            self.key.clone()
        } else if self.is_command_line() {
            format!("{} on the command line", self.key)
        } else {
            format!("{} in {}", self.key, self.source)
        }
    }

    /// [`Origin::describe`], leaving out the source when `from` (where the message is reported)
    /// already names it.
    pub(super) fn describe_from(&self, from: &Origin) -> String {
        if self.source == from.source {
            self.key.clone()
        } else {
            self.describe()
        }
    }

    pub(super) fn is_command_line(&self) -> bool {
        self.source == COMMAND_LINE
    }
}

/// The source name for `--shards` / `--cpus`.
pub(super) const COMMAND_LINE: &str = "command line";
