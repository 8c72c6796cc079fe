//! Configuration errors that name the key they are about.
//!
//! Every error carries the key path it is about (`listeners[1].downstreams[0]`) and a reason a
//! user can act on, and validation collects all of them ([`ConfigErrors`]) rather than stopping
//! at the first, so one run of `--check` lists everything to fix. The path is kept apart from
//! the reason so that tests and tools can match on it.

use std::fmt;

/// One problem in the configuration, at a key path such as `listeners[1].downstreams[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: the key path, empty for the document itself.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub reason: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// All problems found in one configuration (at least one). Validation reports every problem at
/// once so a user fixes a file in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single error.
    pub fn one(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }

    /// The errors.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
