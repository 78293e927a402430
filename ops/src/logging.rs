//! Log set-up shared by both processes: `text` (human-readable, coloured on a
//! terminal) or `json` (one object per line with `timestamp`, `level`, `target` and
//! the event's fields at the top level, for log shippers). Both go to standard output.

use std::fmt;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// `--log-format`; in configuration files `"text"` or `"json"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log format or level that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown log format {0:?}: expected \"text\" or \"json\"")]
    UnknownFormat(String),
    #[error("invalid log level or filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: String },
    #[error("logging was already set up")]
    AlreadySet,
}

impl FromStr for LogFormat {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self, LogError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(LogError::UnknownFormat(s.to_string())),
        }
    }
}

/// Checks a level or filter (`info`, `warn,tandem_relay=debug`) without installing it.
pub fn check_filter(filter: &str) -> Result<(), LogError> {
    EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| LogError::InvalidFilter {
            filter: filter.to_string(),
            reason: e.to_string(),
        })
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(format: LogFormat, filter: &str) -> Result<(), LogError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| LogError::InvalidFilter {
        filter: filter.to_string(),
        reason: e.to_string(),
    })?;
    // A log line that cannot be written (standard output closed, a full disk) is
    // dropped: the subscriber must not report it on standard error, which is often the
    // same closed pipe, where that report would panic the task that logged.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .log_internal_errors(false);
    let r = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    r.map_err(|_| LogError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!(" TEXT ".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn filters_are_checked() {
        assert!(check_filter("info").is_ok());
        assert!(check_filter("warn,tandem_relay=debug").is_ok());
        assert!(check_filter("info,=[").is_err());
    }
}
