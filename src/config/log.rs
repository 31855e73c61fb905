//! `[log]`: where the access log goes and how its records are spelled.
//!
//! A file path is only checked for shape: whether its directory exists or is
//! writable is a fact of the host at start, not of the configuration.

use std::path::PathBuf;

use super::error::ConfigError;
use super::raw::Field;
use super::{AccessFormat, AccessLog, AccessTarget, LogPlan};

const KEYS: [&str; 2] = ["access", "format"];
const ACCESS_EXAMPLE: &str = "access = \"stdout\", \"stderr\" or a file like \
                              access = \"/var/log/ringfwd/access.log\"";
const FORMAT_EXAMPLE: &str = "format = \"json\" (or \"text\")";

pub(super) fn resolve(field: Option<Field<'_>>) -> Result<LogPlan, ConfigError> {
    let Some(field) = field else {
        return Ok(LogPlan::default());
    };
    let section = field.table("[log] with access = \"stdout\"")?;
    section.deny_unknown(&KEYS, "in [log]")?;
    let format = section.get("format").map(|f| format(&f)).transpose()?;
    let Some(access) = section.get("access") else {
        return match section.get("format") {
            // A format with nothing to format is a forgotten `access`.
            Some(f) => Err(f.error(format!(
                "is set but log.access is not, so there is no access log to format; add \
                 {ACCESS_EXAMPLE}, or remove format"
            ))),
            None => Ok(LogPlan::default()),
        };
    };
    Ok(LogPlan {
        access: Some(AccessLog {
            target: target(&access)?,
            format: format.unwrap_or(AccessFormat::Text),
        }),
    })
}

fn target(field: &Field<'_>) -> Result<AccessTarget, ConfigError> {
    let text = field.string(ACCESS_EXAMPLE)?;
    let refuse = |why: &str| {
        Err(field.error(format!(
            "{} {why}; write {ACCESS_EXAMPLE}, or remove the key for no access log",
            field.shown()
        )))
    };
    match text {
        "stdout" => return Ok(AccessTarget::Stdout),
        "stderr" => return Ok(AccessTarget::Stderr),
        "" => return refuse("is empty"),
        _ => {}
    }
    if text.contains('\0') {
        return refuse("contains a NUL byte, which no file path can");
    }
    if text.trim() != text {
        return refuse("starts or ends with white space (a typo, or a file name no one will find)");
    }
    if text.ends_with('/') || matches!(text.rsplit('/').next(), Some("." | "..")) {
        return refuse("names a directory; the access log is a file");
    }
    Ok(AccessTarget::File(PathBuf::from(text)))
}

fn format(field: &Field<'_>) -> Result<AccessFormat, ConfigError> {
    let text = field.string(FORMAT_EXAMPLE)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(AccessFormat::Text),
        "json" => Ok(AccessFormat::Json),
        _ => Err(field.error(format!(
            "{} is not an access log format; use \"text\" (key=value pairs, the default) or \
             \"json\" (one object per line), like {FORMAT_EXAMPLE}",
            field.shown()
        ))),
    }
}
