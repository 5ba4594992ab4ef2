//! Paths -> files -> documents -> a validated [`ConfigSet`], collecting every error on the way.
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use super::{
    ConfigError, ConfigErrors, ConfigSet, Source, documents::parse_documents, error::Issues,
    node::Node, object::add_object,
};

/// File name endings read from directories. Files named explicitly are read whatever their name.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads files and directories (recursively; `*.yaml`, `*.yml`, `*.json`; names starting with
/// '.' skipped — Kubernetes ConfigMap mounts have `..data` dirs; sorted for determinism),
/// multi-document YAML (`---`).
///
/// Every error of every file and document is returned, not only the first.
pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<ConfigSet, ConfigErrors> {
    let mut errors = Vec::new();
    let mut files = Files::default();
    for path in paths {
        files.collect(path.as_ref(), true, &mut errors);
    }
    let mut set = ConfigSet::default();
    for file in &files.list {
        match fs::read_to_string(file) {
            Ok(text) => add_file(file, &text, &mut set, &mut errors),
            Err(e) => errors.push(file_error(file, format!("cannot read: {e}"))),
        }
    }
    check_duplicates(&set, &mut errors);
    finish(set, errors)
}

/// Same as [`load`], for one file's text.
pub fn parse_str(file: &Path, text: &str) -> Result<ConfigSet, ConfigErrors> {
    let mut errors = Vec::new();
    let mut set = ConfigSet::default();
    add_file(file, text, &mut set, &mut errors);
    check_duplicates(&set, &mut errors);
    finish(set, errors)
}

/// Validates one object read from the Kubernetes API (JSON with `apiVersion` and `kind`), with
/// the parser files use; every error names `source` (`Kind ns/name: field: message`).
pub fn parse_object(value: &serde_json::Value, source: &Source) -> Result<ConfigSet, ConfigErrors> {
    let mut set = ConfigSet::default();
    let mut issues = Issues::default();
    add_object(&Node::new(value, ""), source, &mut set, &mut issues);
    if issues.len() == 0 {
        Ok(set)
    } else {
        Err(ConfigErrors(issues.into_errors_of(source).collect()))
    }
}

fn finish(set: ConfigSet, errors: Vec<ConfigError>) -> Result<ConfigSet, ConfigErrors> {
    if errors.is_empty() {
        tracing::debug!(
            service_entries = set.service_entries.len(),
            skipped = set.skipped.len(),
            "configuration loaded"
        );
        Ok(set)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn file_error(file: &Path, message: String) -> ConfigError {
    ConfigError::in_file(file, None, None, message)
}

/// The files to read, in order, each once.
#[derive(Default)]
struct Files {
    list: Vec<PathBuf>,
    /// Canonical paths already listed, and directories already walked (symlink loops).
    seen: HashSet<PathBuf>,
}

impl Files {
    fn collect(&mut self, path: &Path, explicit: bool, errors: &mut Vec<ConfigError>) {
        // `metadata` follows symlinks: ConfigMap mounts are symlinks into `..data`.
        let metadata = match fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(e) => {
                let message = if explicit {
                    format!("cannot read: {e}")
                } else {
                    format!("cannot read (found in a configured directory): {e}")
                };
                errors.push(file_error(path, message));
                return;
            }
        };
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if metadata.is_dir() {
            if self.seen.insert(canonical) {
                self.walk(path, errors);
            }
        } else if (explicit || has_config_extension(path)) && self.seen.insert(canonical) {
            self.list.push(path.to_path_buf());
        }
    }

    fn walk(&mut self, dir: &Path, errors: &mut Vec<ConfigError>) {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                errors.push(file_error(dir, format!("cannot read directory: {e}")));
                return;
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => names.push(entry.file_name()),
                Err(e) => errors.push(file_error(dir, format!("cannot read directory: {e}"))),
            }
        }
        names.sort();
        for name in names {
            // Hidden files, editor droppings and the `..data`/`..2024_…` directories of a
            // ConfigMap mount (whose files are also reachable through top-level symlinks).
            if name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            self.collect(&dir.join(name), false, errors);
        }
    }
}

fn has_config_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// Adds every document of one file to `set`, and its problems to `errors`.
fn add_file(file: &Path, text: &str, set: &mut ConfigSet, errors: &mut Vec<ConfigError>) {
    for document in parse_documents(file, text) {
        let value = match document.parsed {
            Ok(Some(value)) => value,
            Ok(None) => continue,
            Err(message) => {
                errors.push(ConfigError::in_file(
                    file,
                    Some(document.index),
                    None,
                    message,
                ));
                continue;
            }
        };
        let source = Source::file(file, document.index);
        let mut issues = Issues::default();
        add_object(&Node::new(&value, ""), &source, set, &mut issues);
        errors.extend(issues.into_errors(file, document.index));
    }
}

/// Two ServiceEntries with one namespace and name: Kubernetes would keep only one of them, so
/// a second one in files is a mistake.
fn check_duplicates(set: &ConfigSet, errors: &mut Vec<ConfigError>) {
    let mut first: HashMap<(&str, &str), &Source> = HashMap::new();
    for entry in &set.service_entries {
        let key = (entry.namespace.as_str(), entry.name.as_str());
        if let Some(previous) = first.get(&key) {
            let mut issues = Issues::default();
            issues.at(
                "metadata.name",
                format!(
                    "ServiceEntry {}/{} is already defined at {previous}",
                    entry.namespace, entry.name
                ),
            );
            errors.extend(issues.into_errors_of(&entry.source));
        } else {
            first.insert(key, &entry.source);
        }
    }
}
