//! A walk over a parsed document that knows each value's field path, so every type error can
//! name its field. Documents are parsed into a generic tree first (rather than straight into
//! serde structs) so one bad field does not hide the others: all problems are collected.
use serde_json::{Map, Value};

use super::error::Issues;

/// A value in a document and the path that leads to it (`spec.ports[0].number`).
#[derive(Clone, Debug)]
pub(crate) struct Node<'a> {
    pub value: &'a Value,
    pub path: String,
}

impl<'a> Node<'a> {
    pub(crate) fn new(value: &'a Value, path: impl Into<String>) -> Self {
        Node {
            value,
            path: path.into(),
        }
    }

    /// The path of `key` under this node. Keys that would be ambiguous in a dotted path (label
    /// keys such as `app.kubernetes.io/name`) are quoted: `labels["app.kubernetes.io/name"]`.
    pub(crate) fn key_path(&self, key: &str) -> String {
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match (plain, self.path.is_empty()) {
            (true, true) => key.to_owned(),
            (true, false) => format!("{}.{key}", self.path),
            (false, _) => format!("{}[{key:?}]", self.path),
        }
    }

    /// The field `key` of this mapping; `None` when absent or `null` (Kubernetes treats both as
    /// unset), or when this node is not a mapping (reported by whoever asked for the mapping).
    pub(crate) fn get(&self, key: &str) -> Option<Node<'a>> {
        match self.value.as_object()?.get(key)? {
            Value::Null => None,
            value => Some(Node::new(value, self.key_path(key))),
        }
    }

    pub(crate) fn object(&self, issues: &mut Issues) -> Option<&'a Map<String, Value>> {
        match self.value {
            Value::Object(map) => Some(map),
            other => {
                issues.at(
                    &self.path,
                    format!("must be a mapping, got {}", describe(other)),
                );
                None
            }
        }
    }

    pub(crate) fn str(&self, issues: &mut Issues) -> Option<&'a str> {
        match self.value {
            Value::String(s) => Some(s),
            other => {
                issues.at(
                    &self.path,
                    format!("must be a string, got {}", describe(other)),
                );
                None
            }
        }
    }

    /// The elements of a list; empty (after reporting) when this is not a list.
    pub(crate) fn items(&self, issues: &mut Issues) -> Vec<Node<'a>> {
        match self.value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, value)| Node::new(value, format!("{}[{i}]", self.path)))
                .collect(),
            other => {
                issues.at(
                    &self.path,
                    format!("must be a list, got {}", describe(other)),
                );
                Vec::new()
            }
        }
    }

    /// The entries of a mapping, in key order; empty (after reporting) when not a mapping.
    pub(crate) fn entries(&self, issues: &mut Issues) -> Vec<(&'a str, Node<'a>)> {
        match self.object(issues) {
            Some(map) => map
                .iter()
                .map(|(key, value)| (key.as_str(), Node::new(value, self.key_path(key))))
                .collect(),
            None => Vec::new(),
        }
    }

    /// A list of strings: each string with its path. Non-strings are reported and left out.
    pub(crate) fn strings(&self, issues: &mut Issues) -> Vec<(String, &'a str)> {
        self.items(issues)
            .into_iter()
            .filter_map(|item| item.str(issues).map(|s| (item.path, s)))
            .collect()
    }

    /// A mapping of strings to strings (labels).
    pub(crate) fn string_map(&self, issues: &mut Issues) -> Vec<(&'a str, String, &'a str)> {
        self.entries(issues)
            .into_iter()
            .filter_map(|(key, node)| node.str(issues).map(|s| (key, node.path, s)))
            .collect()
    }

    /// An integer. Quoted numbers are refused as Kubernetes refuses them for integer fields.
    pub(crate) fn integer(&self, issues: &mut Issues) -> Option<i128> {
        let number = match self.value {
            Value::Number(n) => n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)),
            _ => None,
        };
        if number.is_none() {
            issues.at(
                &self.path,
                format!("must be an integer, got {}", describe(self.value)),
            );
        }
        number
    }

    /// A TCP port number.
    pub(crate) fn port(&self, issues: &mut Issues) -> Option<u16> {
        let n = self.integer(issues)?;
        match u16::try_from(n) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                issues.at(&self.path, format!("must be between 1 and 65535, got {n}"));
                None
            }
        }
    }
}

/// How a value is named in messages: its type, and the value itself when short.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) if n.is_f64() => format!("a number ({n})"),
        Value::Number(n) => format!("an integer ({n})"),
        Value::String(s) if s.chars().count() <= 40 => format!("a string ({s:?})"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_use_yaml_names_and_quote_odd_keys() {
        let doc = json!({"spec": {"endpoints": [{"labels": {"app.kubernetes.io/name": "x"}}]}});
        let root = Node::new(&doc, "");
        let spec = root.get("spec").expect("spec");
        assert_eq!(spec.path, "spec");
        let mut issues = Issues::default();
        let endpoint = &spec.get("endpoints").expect("endpoints").items(&mut issues)[0];
        assert_eq!(endpoint.path, "spec.endpoints[0]");
        let labels = endpoint
            .get("labels")
            .expect("labels")
            .string_map(&mut issues);
        assert_eq!(
            labels[0].1,
            r#"spec.endpoints[0].labels["app.kubernetes.io/name"]"#
        );
        assert_eq!(issues.len(), 0);
    }

    #[test]
    fn type_errors_name_the_field_and_what_was_found() {
        let doc = json!({"number": "80", "zero": 0, "big": 65536, "neg": -1, "f": 1.5});
        let root = Node::new(&doc, "spec");
        let cases = [
            ("number", "must be an integer, got a string (\"80\")"),
            ("zero", "must be between 1 and 65535, got 0"),
            ("big", "must be between 1 and 65535, got 65536"),
            ("neg", "must be between 1 and 65535, got -1"),
            ("f", "must be an integer, got a number (1.5)"),
        ];
        for (key, want) in cases {
            let mut issues = Issues::default();
            assert_eq!(root.get(key).expect(key).port(&mut issues), None);
            let errors: Vec<_> = issues.into_errors("f.yaml".as_ref(), 1).collect();
            assert_eq!(errors.len(), 1, "{key}");
            assert_eq!(
                errors[0].field.as_deref(),
                Some(format!("spec.{key}").as_str())
            );
            assert_eq!(errors[0].message, want, "{key}");
        }
    }

    #[test]
    fn null_is_absent() {
        let doc = json!({"hosts": null});
        assert!(Node::new(&doc, "spec").get("hosts").is_none());
    }
}
