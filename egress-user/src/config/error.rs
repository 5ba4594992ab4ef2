//! Errors that name where the problem is, so `egress check` can point at the line to fix and a
//! log line at the object to fix: `FILE:DOC:FIELD: MESSAGE` for files, `Kind ns/name: FIELD:
//! MESSAGE` for Kubernetes objects.
use std::{fmt, path::PathBuf};

use super::{ObjectRef, Source};

/// Where a problem is: a file (and the document in it), or a Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File {
        file: PathBuf,
        /// 1-based index of the YAML document in the file; `None` for the file as a whole.
        document: Option<usize>,
    },
    Object(ObjectRef),
}

impl From<&Source> for Origin {
    fn from(source: &Source) -> Self {
        match source {
            Source::File { file, document } => Origin::File {
                file: file.clone(),
                document: Some(*document),
            },
            Source::Object(object) => Origin::Object(object.clone()),
        }
    }
}

/// One problem in the configuration.
///
/// Displayed as `FILE:DOC:FIELD: MESSAGE`, `FILE:DOC: MESSAGE` when no field is to blame, and
/// `FILE: MESSAGE` when the file as a whole is (it cannot be read, for example); for an object
/// of the Kubernetes API `Kind ns/name: FIELD: MESSAGE` or `Kind ns/name: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    /// Path of the field with YAML names: `spec.ports[1].targetPort`, `metadata.name`.
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// A problem of a file (`document: None`: the file as a whole).
    pub fn in_file(
        file: impl Into<PathBuf>,
        document: Option<usize>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            origin: Origin::File {
                file: file.into(),
                document,
            },
            field,
            message: message.into(),
        }
    }

    /// The 1-based document index, for a problem of a file's document.
    pub fn document(&self) -> Option<usize> {
        match &self.origin {
            Origin::File { document, .. } => *document,
            Origin::Object(_) => None,
        }
    }

    /// The file, for a problem of a file.
    pub fn file(&self) -> Option<&std::path::Path> {
        match &self.origin {
            Origin::File { file, .. } => Some(file),
            Origin::Object(_) => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { file, document } => {
                write!(f, "{}", file.display())?;
                match (document, &self.field) {
                    (Some(document), Some(field)) => write!(f, ":{document}:{field}: ")?,
                    (Some(document), None) => write!(f, ":{document}: ")?,
                    // Not produced by this module, but keep the field rather than lose it.
                    (None, Some(field)) => write!(f, ": {field}: ")?,
                    (None, None) => write!(f, ": ")?,
                }
            }
            Origin::Object(object) => match &self.field {
                Some(field) => write!(f, "{object}: {field}: ")?,
                None => write!(f, "{object}: ")?,
            },
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
        let origin = Origin::File {
            file: file.to_path_buf(),
            document: Some(document),
        };
        self.into_origin_errors(origin)
    }

    /// The problems, each naming `source` (a file's document or a Kubernetes object).
    pub(crate) fn into_errors_of(self, source: &Source) -> impl Iterator<Item = ConfigError> {
        self.into_origin_errors(Origin::from(source))
    }

    fn into_origin_errors(self, origin: Origin) -> impl Iterator<Item = ConfigError> {
        self.list
            .into_iter()
            .map(move |(field, message)| ConfigError {
                origin: origin.clone(),
                field,
                message,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(document: Option<usize>, field: Option<&str>) -> ConfigError {
        ConfigError::in_file(
            PathBuf::from("examples/bad.yaml"),
            document,
            field.map(str::to_owned),
            "must be between 1 and 65535, got 0",
        )
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
    fn kubernetes_objects_are_named_by_kind_namespace_and_name() {
        let source = Source::object("ServiceEntry", "istio-egress", "httpbin");
        let mut issues = Issues::default();
        issues.at("spec.ports[0].number", "must be between 1 and 65535, got 0");
        issues.document("spec is required");
        let lines: Vec<String> = issues
            .into_errors_of(&source)
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            lines,
            [
                "ServiceEntry istio-egress/httpbin: spec.ports[0].number: must be between 1 and 65535, got 0",
                "ServiceEntry istio-egress/httpbin: spec is required",
            ]
        );
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
