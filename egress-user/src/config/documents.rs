//! A file's text -> its documents, each parsed on its own into a generic tree.
//!
//! The text is split at document markers before parsing, so a syntax error in one document
//! still lets every other document be checked, and each document keeps the index a reader
//! counts (`---` separators) even when some are empty.
use std::path::Path;

use serde_json::Value;

/// One document of a file.
#[derive(Debug)]
pub(crate) struct Document {
    /// 1-based index in the file.
    pub index: usize,
    /// The parsed tree; `None` for an empty document (only comments, or a bare `null`).
    pub parsed: Result<Option<Value>, String>,
}

/// Splits and parses `text`. `.json` files are one JSON document; anything else is YAML.
pub(crate) fn parse_documents(file: &Path, text: &str) -> Vec<Document> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let is_json = file
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    if is_json {
        let parsed = match serde_json::from_str::<Value>(text) {
            Ok(Value::Null) => Ok(None),
            Ok(value) => Ok(Some(value)),
            Err(e) => Err(format!("JSON syntax error: {e}")),
        };
        return vec![Document { index: 1, parsed }];
    }
    split_yaml(text)
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| Document {
            index: i + 1,
            parsed: parse_yaml_chunk(&chunk),
        })
        .collect()
}

/// The text of one YAML document and the file line it starts on.
#[derive(Debug, PartialEq, Eq)]
struct Chunk<'a> {
    text: &'a str,
    first_line: usize,
    has_content: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// `---`, possibly followed by content or a comment.
    Start,
    /// `...`
    End,
    /// Blank, a comment or a directive (`%YAML`): not content of a document.
    Trivia,
    Content,
}

fn classify(line: &str) -> LineKind {
    let line = line.trim_end_matches(['\n', '\r']);
    let marker = |m: &str| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    // Markers count only at column 0; YAML forbids them there inside any scalar.
    if marker("---") {
        LineKind::Start
    } else if marker("...") {
        LineKind::End
    } else {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || line.starts_with('%') {
            LineKind::Trivia
        } else {
            LineKind::Content
        }
    }
}

/// Splits a YAML stream into documents the way a YAML parser counts them: text before the first
/// `---` is a document only if it has content, and so is text after a `...` end marker.
fn split_yaml(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0; // byte offset of the current chunk
    let mut first_line = 1;
    let mut explicit = false; // the current chunk began with `---`
    let mut has_content = false;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        match classify(line) {
            LineKind::Start => {
                if explicit || has_content {
                    chunks.push(Chunk {
                        text: &text[start..offset],
                        first_line,
                        has_content,
                    });
                    start = offset;
                    first_line = line_no;
                }
                // Otherwise the prelude (comments, directives) belongs to this document.
                explicit = true;
                has_content = classify_inline_content(line);
            }
            LineKind::End => {
                let end = offset + line.len();
                chunks.push(Chunk {
                    text: &text[start..end],
                    first_line,
                    has_content,
                });
                start = end;
                first_line = line_no + 1;
                explicit = false;
                has_content = false;
            }
            LineKind::Trivia => {}
            LineKind::Content => has_content = true,
        }
        offset += line.len();
    }
    if explicit || has_content {
        chunks.push(Chunk {
            text: &text[start..],
            first_line,
            has_content,
        });
    }
    chunks
}

/// Whether a `---` line carries content after the marker (`--- {a: 1}`, `--- !tag`).
fn classify_inline_content(line: &str) -> bool {
    let rest = line.trim_end_matches(['\n', '\r'])[3..].trim_start();
    !rest.is_empty() && !rest.starts_with('#')
}

fn parse_yaml_chunk(chunk: &Chunk<'_>) -> Result<Option<Value>, String> {
    if !chunk.has_content {
        return Ok(None);
    }
    let options = serde_saphyr::options! { with_snippet: false };
    match serde_saphyr::from_str_with_options::<Value>(chunk.text, options) {
        Ok(Value::Null) => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(e) => {
            let render = serde_saphyr::render_options! {
                formatter: &serde_saphyr::UserMessageFormatter,
                snippets: serde_saphyr::SnippetMode::Off,
                line_offset: (chunk.first_line - 1) as u64,
            };
            Err(format!(
                "YAML syntax error: {}",
                e.render_with_options(render)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (first line, has content, text) of each chunk.
    type Chunks<'a> = Vec<(usize, bool, &'a str)>;

    fn chunks(text: &str) -> Chunks<'_> {
        split_yaml(text)
            .into_iter()
            .map(|c| (c.first_line, c.has_content, c.text))
            .collect()
    }

    #[test]
    fn splits_like_a_yaml_parser_counts() {
        let cases: [(&str, Chunks<'_>); 8] = [
            ("a: 1\n", vec![(1, true, "a: 1\n")]),
            ("", vec![]),
            ("# only a comment\n", vec![]),
            // A leading `---` does not make an empty first document.
            (
                "# c\n---\na: 1\n---\nb: 2",
                vec![(1, true, "# c\n---\na: 1\n"), (4, true, "---\nb: 2")],
            ),
            (
                "a: 1\n---\n---\nb: 2\n",
                vec![
                    (1, true, "a: 1\n"),
                    (2, false, "---\n"),
                    (3, true, "---\nb: 2\n"),
                ],
            ),
            (
                "a: 1\n...\n---\nb: 2\n",
                vec![(1, true, "a: 1\n...\n"), (3, true, "---\nb: 2\n")],
            ),
            ("--- {a: 1}\n", vec![(1, true, "--- {a: 1}\n")]),
            // `----` and `---x` are content, not markers.
            ("a: |\n  x\n----\n", vec![(1, true, "a: |\n  x\n----\n")]),
        ];
        for (text, want) in cases {
            assert_eq!(chunks(text), want, "{text:?}");
        }
    }

    #[test]
    fn crlf_markers() {
        assert_eq!(
            chunks("a: 1\r\n---\r\nb: 2\r\n"),
            vec![(1, true, "a: 1\r\n"), (2, true, "---\r\nb: 2\r\n")]
        );
    }

    #[test]
    fn syntax_error_in_one_document_leaves_the_others() {
        let text = "a: 1\n---\nb: [1, 2\nc: 3\n---\nd: 4\n";
        let docs = parse_documents(Path::new("f.yaml"), text);
        assert_eq!(docs.len(), 3);
        assert!(docs[0].parsed.as_ref().is_ok_and(|v| v.is_some()));
        let err = docs[1].parsed.as_ref().expect_err("document 2 is broken");
        assert!(err.starts_with("YAML syntax error: "), "{err}");
        // The line is counted in the file, not in the document.
        assert!(err.contains("line 3") || err.contains("line 4"), "{err}");
        assert!(docs[2].parsed.as_ref().is_ok_and(|v| v.is_some()));
    }

    #[test]
    fn json_is_one_document() {
        let docs = parse_documents(Path::new("f.json"), "{\"a\": [1, 2]}");
        assert_eq!(docs.len(), 1);
        assert_eq!(
            docs[0].parsed.as_ref().expect("parses"),
            &Some(serde_json::json!({"a": [1, 2]}))
        );
        let docs = parse_documents(Path::new("f.JSON"), "{\"a\": ");
        assert!(docs[0].parsed.is_err());
    }

    #[test]
    fn bare_null_and_comments_are_empty() {
        let docs = parse_documents(Path::new("f.yaml"), "---\n# nothing\n---\n~\n");
        assert_eq!(docs.len(), 2);
        assert!(docs.iter().all(|d| matches!(d.parsed, Ok(None))));
    }
}
