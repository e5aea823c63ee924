//! Reading a configuration file: spanned TOML → [`Config`], collecting every problem.

use super::*;
use std::path::Path;

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigProblem {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    load_str(&text, path)
}

/// Validates `text` as if read from `path` (used by tests).
pub fn load_str(_text: &str, _path: &Path) -> Result<Config, ConfigErrors> {
    todo!("config loader")
}
