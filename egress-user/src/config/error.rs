//! Errors that name the file, the YAML document and the field, so `egress check` can point at
//! the line to fix: `FILE:DOC:FIELD: MESSAGE`.
use std::{fmt, path::PathBuf};

/// One problem in the configuration.
///
/// Displayed as `FILE:DOC:FIELD: MESSAGE`, `FILE:DOC: MESSAGE` when no field is to blame, and
/// `FILE: MESSAGE` when the file as a whole is (it cannot be read, for example).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub document: Option<usize>,
    /// Path of the field with YAML names: `spec.ports[1].targetPort`, `metadata.name`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        match (self.document, &self.field) {
            (Some(document), Some(field)) => write!(f, ":{document}:{field}: ")?,
            (Some(document), None) => write!(f, ":{document}: ")?,
            // Not produced by this module, but keep the field rather than lose it.
            (None, Some(field)) => write!(f, ": {field}: ")?,
            (None, None) => write!(f, ": ")?,
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in every file and document, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Problems found in one document, before they are tied to its file and index.
#[derive(Debug, Default)]
pub(crate) struct Issues {
    list: Vec<(Option<String>, String)>,
}

impl Issues {
    /// A problem with the field at `field` (a path such as `spec.ports[0].number`).
    pub(crate) fn at(&mut self, field: &str, message: impl Into<String>) {
        let field = (!field.is_empty()).then(|| field.to_owned());
        self.list.push((field, message.into()));
    }

    /// A problem with the document as a whole.
    pub(crate) fn document(&mut self, message: impl Into<String>) {
        self.list.push((None, message.into()));
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn into_errors(
        self,
        file: &std::path::Path,
        document: usize,
    ) -> impl Iterator<Item = ConfigError> {
        let file = file.to_path_buf();
        self.list
            .into_iter()
            .map(move |(field, message)| ConfigError {
                file: file.clone(),
                document: Some(document),
                field,
                message,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(document: Option<usize>, field: Option<&str>) -> ConfigError {
        ConfigError {
            file: PathBuf::from("examples/bad.yaml"),
            document,
            field: field.map(str::to_owned),
            message: "must be between 1 and 65535, got 0".into(),
        }
    }

    #[test]
    fn display_follows_the_file_doc_field_contract() {
        let cases = [
            (
                error(Some(2), Some("spec.ports[0].number")),
                "examples/bad.yaml:2:spec.ports[0].number: must be between 1 and 65535, got 0",
            ),
            (
                error(Some(2), None),
                "examples/bad.yaml:2: must be between 1 and 65535, got 0",
            ),
            (
                error(None, None),
                "examples/bad.yaml: must be between 1 and 65535, got 0",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want);
        }
    }

    #[test]
    fn errors_display_one_per_line() {
        let errors = ConfigErrors(vec![error(Some(1), None), error(None, None)]);
        assert_eq!(
            errors.to_string(),
            "examples/bad.yaml:1: must be between 1 and 65535, got 0\n\
             examples/bad.yaml: must be between 1 and 65535, got 0"
        );
    }
}
