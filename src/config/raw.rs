//! Reading the TOML tree: syntax errors with line and column, unknown keys, and type checks,
//! each reported against the key's full path (`tcp[1].upstreams[0]`).
//!
//! The tree is walked by hand rather than through `#[derive(Deserialize)]` because serde's
//! errors carry a byte span but not the key path, and the operator needs the path.

use std::time::Duration;

use toml::{Table, Value};

use super::error::{ConfigError, Origin};
use super::units;

/// Parsed TOML text plus the name it is reported under.
pub(super) struct Document {
    source: String,
    table: Table,
}

impl Document {
    pub(super) fn parse(source: &str, text: &str) -> Result<Self, ConfigError> {
        let table = text
            .parse::<Table>()
            .map_err(|err| syntax_error(source, text, &err))?;
        Ok(Self {
            source: source.to_owned(),
            table,
        })
    }

    pub(super) fn root(&self) -> Section<'_> {
        Section {
            source: &self.source,
            path: String::new(),
            table: &self.table,
        }
    }
}

fn syntax_error(source: &str, text: &str, err: &toml::de::Error) -> ConfigError {
    let what = err.message().trim().replace('\n', "; ");
    let message = match err.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            let context = text
                .lines()
                .nth(line.saturating_sub(1))
                .map_or("", str::trim);
            format!(
                "invalid TOML at line {line}, column {column} (in {:?}): {what}",
                clip(context, 80)
            )
        }
        None => format!("invalid TOML: {what}"),
    };
    ConfigError {
        source_name: source.to_owned(),
        key: String::new(),
        message,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (_, c) in text.char_indices().take_while(|&(i, _)| i < offset) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// At most `max` characters of `text`, marked with `...` when cut.
pub(super) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", text.get(..end).unwrap_or(text)),
        None => text.to_owned(),
    }
}

/// One TOML table and the path that leads to it (empty for the document root).
pub(super) struct Section<'a> {
    source: &'a str,
    path: String,
    table: &'a Table,
}

impl<'a> Section<'a> {
    /// Rejects any key not in `valid`, naming the closest valid key when there is a likely typo.
    pub(super) fn deny_unknown(&self, valid: &[&str], location: &str) -> Result<(), ConfigError> {
        let Some(unknown) = self.table.keys().find(|key| !valid.contains(&key.as_str())) else {
            return Ok(());
        };
        let suggestion = closest(unknown, valid)
            .map(|near| format!("did you mean {near:?}? "))
            .unwrap_or_default();
        Err(self.origin(unknown).error(format!(
            "unknown key {unknown:?} {location}; {suggestion}valid keys are {}",
            valid.join(", ")
        )))
    }

    pub(super) fn get(&self, name: &str) -> Option<Field<'a>> {
        self.table.get(name).map(|value| Field {
            origin: self.origin(name),
            source: self.source,
            value,
        })
    }

    /// The full path of `name` in this section, quoting names that are not bare TOML keys.
    fn key_path(&self, name: &str) -> String {
        let is_bare = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        let name = if is_bare {
            name.to_owned()
        } else {
            format!("{name:?}")
        };
        if self.path.is_empty() {
            name
        } else {
            format!("{}.{name}", self.path)
        }
    }

    pub(super) fn origin(&self, name: &str) -> Origin {
        Origin::new(self.source, self.key_path(name))
    }

    /// The section's own table (to derive others from, as a port range does).
    pub(super) fn table(&self) -> &'a Table {
        self.table
    }

    /// `table` read as if it were this section: same source, same key paths.
    pub(super) fn with_table<'b>(&self, table: &'b Table) -> Section<'b>
    where
        'a: 'b,
    {
        Section {
            source: self.source,
            path: self.path.clone(),
            table,
        }
    }
}

/// The valid key within edit distance 2 of `unknown`, if there is one.
fn closest<'v>(unknown: &str, valid: &[&'v str]) -> Option<&'v str> {
    valid
        .iter()
        .map(|&candidate| (edit_distance(unknown, candidate), candidate))
        .filter(|&(distance, _)| distance <= 2)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous
                .get(j)
                .map_or(usize::MAX, |d| d + usize::from(ca != cb));
            let delete = previous.get(j + 1).map_or(usize::MAX, |d| d + 1);
            let insert = current.get(j).map_or(usize::MAX, |d| d + 1);
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(usize::MAX)
}

/// One value in the tree and where it came from.
pub(super) struct Field<'a> {
    pub origin: Origin,
    source: &'a str,
    value: &'a Value,
}

impl<'a> Field<'a> {
    pub(super) fn error(&self, message: impl Into<String>) -> ConfigError {
        self.origin.error(message)
    }

    /// The value as the operator wrote it, for quoting in messages.
    pub(super) fn shown(&self) -> String {
        show(self.value, 0)
    }

    /// `example` is a line of TOML showing the right type, e.g. `shards = 2`.
    fn wrong_type(&self, expected: &str, example: &str) -> ConfigError {
        self.error(format!(
            "expected {expected}, found {} {}; write it like {example}",
            kind(self.value),
            self.shown()
        ))
    }

    pub(super) fn as_str(&self) -> Option<&'a str> {
        match self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn integer(&self, example: &str) -> Result<i64, ConfigError> {
        match self.value {
            Value::Integer(n) => Ok(*n),
            _ => Err(self.wrong_type("an integer", example)),
        }
    }

    pub(super) fn boolean(&self, example: &str) -> Result<bool, ConfigError> {
        match self.value {
            Value::Boolean(b) => Ok(*b),
            _ => Err(self.wrong_type("true or false", example)),
        }
    }

    pub(super) fn string(&self, example: &str) -> Result<&'a str, ConfigError> {
        match self.value {
            Value::String(s) => Ok(s),
            _ => Err(self.wrong_type("a string", example)),
        }
    }

    /// The elements, each keyed `path[i]`.
    pub(super) fn array(&self, example: &str) -> Result<Vec<Field<'a>>, ConfigError> {
        let Value::Array(items) = self.value else {
            return Err(self.wrong_type("an array", example));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, value)| Field {
                origin: Origin::new(self.source, format!("{}[{i}]", self.origin.key)),
                source: self.source,
                value,
            })
            .collect())
    }

    pub(super) fn table(&self, example: &str) -> Result<Section<'a>, ConfigError> {
        let Value::Table(table) = self.value else {
            return Err(self.wrong_type("a table", example));
        };
        Ok(Section {
            source: self.source,
            path: self.origin.key.clone(),
            table,
        })
    }

    /// Bytes: a TOML integer, or a size string like `"16KiB"`.
    pub(super) fn size(&self, example: &str) -> Result<u64, ConfigError> {
        match self.value {
            Value::Integer(n) => u64::try_from(*n)
                .map_err(|_| self.error(format!("{n} is negative; write a size like {example}"))),
            Value::String(s) => units::parse_size(s).map_err(|why| self.error(why)),
            _ => Err(self.wrong_type("a size", example)),
        }
    }

    /// A duration string like `"5s"`. Integers are refused: their unit would be a guess.
    pub(super) fn duration(&self, example: &str) -> Result<Duration, ConfigError> {
        match self.value {
            Value::String(s) => units::parse_duration(s).map_err(|why| self.error(why)),
            Value::Integer(n) => Err(self.error(format!(
                "{n} is a bare number, and a duration needs a unit; write it as a string like \"{n}s\" or \"{n}ms\""
            ))),
            _ => Err(self.wrong_type("a duration string", example)),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "the string",
        Value::Integer(_) => "the integer",
        Value::Float(_) => "the float",
        Value::Boolean(_) => "the boolean",
        Value::Datetime(_) => "the date-time",
        Value::Array(_) => "the array",
        Value::Table(_) => "the table",
    }
}

/// Nested values past this depth are shown as `...`: messages stay short, and hostile input
/// cannot recurse deeply.
const SHOW_DEPTH: usize = 2;
const SHOW_ITEMS: usize = 8;

fn show(value: &Value, depth: usize) -> String {
    match value {
        Value::String(s) => format!("{:?}", clip(s, 200)),
        Value::Integer(n) => n.to_string(),
        Value::Float(f) if f.is_nan() => "nan".to_owned(),
        Value::Float(f) if f.is_infinite() => if *f > 0.0 { "inf" } else { "-inf" }.to_owned(),
        Value::Float(f) => format!("{f:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(_) | Value::Table(_) if depth >= SHOW_DEPTH => "...".to_owned(),
        Value::Array(items) => {
            let shown = items.iter().map(|item| show(item, depth + 1));
            format!("[{}]", join_clipped(shown, items.len()))
        }
        Value::Table(table) => {
            let shown = table
                .iter()
                .map(|(key, value)| format!("{key} = {}", show(value, depth + 1)));
            format!("{{ {} }}", join_clipped(shown, table.len()))
        }
    }
}

fn join_clipped(items: impl Iterator<Item = String>, len: usize) -> String {
    let mut parts: Vec<String> = items.take(SHOW_ITEMS).collect();
    if len > SHOW_ITEMS {
        parts.push(format!("... {} more", len - SHOW_ITEMS));
    }
    parts.join(", ")
}
