//! Config errors: one located problem, all of a file's, and the accumulator the compile steps
//! record into. A leaf module, so every step can report without importing the loader.

use super::locate::{locate, render, Seg};
use super::secret::redact_urls_in;
use std::fmt;

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write_escaped(f, &self.path)?;
            f.write_str(": ")?;
        }
        write_escaped(f, &self.message)
    }
}

/// Writes `text` with control characters escaped: a key or value quoted from the file may hold
/// a line break, and each error must stay one line.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// The errors found in one file while compiling it, each placed at its field path.
pub(crate) struct Errors<'a> {
    file: &'a str,
    text: &'a str,
    list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Errors {
            file,
            text,
            list: Vec::new(),
        }
    }

    /// Records `message` at `path`.
    pub(crate) fn at(&mut self, path: &[Seg], message: impl Into<String>) {
        self.list
            .push(error_at(self.file, self.text, path, message));
    }

    /// How many errors were recorded so far.
    pub(crate) fn count(&self) -> usize {
        self.list.len()
    }

    /// `value` when nothing was recorded, else every error.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.list))
        }
    }
}

/// An error at `path` of `text`, read from `file`.
pub(super) fn error_at(
    file: &str,
    text: &str,
    path: &[Seg],
    message: impl Into<String>,
) -> ConfigError {
    let (line, column) = locate(text, path);
    ConfigError {
        file: file.to_string(),
        line,
        column,
        path: render(path),
        // Whoever worded the message, a URL it quotes shows no password.
        message: redact_urls_in(&message.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the config_load fuzz target: a key with a line break split an error in two.
    #[test]
    fn an_error_quoting_a_line_break_stays_one_line() {
        let e = ConfigError {
            file: "g.yaml".into(),
            line: 3,
            column: 5,
            path: "routes[0]".into(),
            message: "unknown field `a\nb`".into(),
        };
        assert_eq!(
            e.to_string(),
            "g.yaml:3:5: routes[0]: unknown field `a\\nb`"
        );
    }
}
