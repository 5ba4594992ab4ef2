//! Istio YAML -> typed model, with validation errors that name file, document and field.
mod types;

pub use types::*;
