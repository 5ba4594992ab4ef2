//! The properties the fuzz targets in `fuzz/` check, one function per target, each taking the
//! fuzzer's bytes and panicking when a property fails. They live here, not in `fuzz/`, so the
//! unit tests run every seed corpus file (`fuzz/corpus/TARGET/`) through them on stable: a crash
//! the fuzzer found, once its input is in the corpus, stays a regression test.
//!
//! Not an API: compiled only for tests and with the `fuzzing` feature (which `fuzz/` enables).
mod policy;

use std::path::Path;

use crate::{
    config,
    policy::{PathParameters, is_miscased_method, normalize_request_target},
};

pub use policy::policy;

/// The request framing gate in front of hyper: no panic, no hang, a bounded buffer; what it
/// hands on is the client's bytes, framed as httparse frames them; the verdict does not depend
/// on read sizes.
pub fn framing(data: &[u8]) {
    crate::proxy::check_framing(data);
}

/// Path normalization (`normalize_request_target`, `apply_path_parameters`) on a request
/// target, and `is_miscased_method` on the same bytes as a method.
///
/// A normalized path starts with `/`, has no `.`/`..` segment, no `//`, no `\`, no encoded
/// slash; normalizing it again changes nothing; what is forwarded normalizes to what was
/// matched. `PathParameters::Reject` never lets a `;` (or `%3B`) through; under `Allow` the
/// path authorization matches has no parameters and is itself normalized.
pub fn normalize(data: &[u8]) {
    let _ = is_miscased_method(data);
    if is_miscased_method(data) {
        assert!(!is_miscased_method(&data.to_ascii_uppercase()));
    }
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(target) = normalize_request_target(raw) else {
        return;
    };
    assert_normalized(&target.path, raw);
    let again = normalize_request_target(&target.path).unwrap_or_else(|e| {
        panic!(
            "{:?} normalized to {:?}, which fails: {e}",
            raw, target.path
        )
    });
    assert_eq!(again.path, target.path, "not idempotent for {raw:?}");
    let forwarded = normalize_request_target(&target.to_forward())
        .unwrap_or_else(|e| panic!("what {raw:?} forwards does not normalize: {e}"));
    assert_eq!(forwarded.path, target.path, "forwarded path for {raw:?}");
    assert_eq!(forwarded.query, target.query, "forwarded query for {raw:?}");

    let mut rejected = target.clone();
    if rejected
        .apply_path_parameters(PathParameters::Reject)
        .is_ok()
    {
        assert!(
            !has_parameter(rejected.matched_path()) && !has_parameter(&rejected.path),
            "PathParameters::Reject let {raw:?} through"
        );
        assert_eq!(rejected.matched, None);
    }
    let mut allowed = target.clone();
    if allowed.apply_path_parameters(PathParameters::Allow).is_ok() {
        let matched = allowed.matched_path();
        assert!(!has_parameter(matched), "{raw:?} matched as {matched:?}");
        assert_normalized(matched, raw);
        let again = normalize_request_target(matched).map(|t| t.path);
        assert_eq!(again.as_deref(), Ok(matched), "matched path of {raw:?}");
        assert_eq!(
            allowed.path, target.path,
            "Allow changed the forwarded path"
        );
    }
}

fn assert_normalized(path: &str, raw: &str) {
    assert!(path.starts_with('/'), "{raw:?} normalized to {path:?}");
    for bad in ["/./", "/../", "//", "\\"] {
        assert!(
            !path.contains(bad),
            "{raw:?} normalized to {path:?}: has {bad:?}"
        );
    }
    assert!(
        !path.ends_with("/.") && !path.ends_with("/.."),
        "{raw:?} normalized to {path:?}: dot segment at the end"
    );
    let lower = path.to_ascii_lowercase();
    for bad in ["%2f", "%5c", "%2e", "%00"] {
        assert!(
            !lower.contains(bad),
            "{raw:?} normalized to {path:?}: still has {bad}"
        );
    }
}

fn has_parameter(path: &str) -> bool {
    path.contains(';') || path.to_ascii_lowercase().contains("%3b")
}

/// The YAML/JSON config loader on any UTF-8 text: no panic; an error names the file and the
/// document (and the field when there is one), and says something; what loads can be
/// compiled into a policy set and evaluated.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for name in ["fuzz.yaml", "fuzz.json"] {
        let file = Path::new(name);
        match config::parse_str(file, text) {
            Ok(set) => policy::evaluate_loaded(&set),
            Err(errors) => {
                assert!(!errors.0.is_empty(), "an Err without errors");
                for error in &errors.0 {
                    assert_eq!(error.file(), Some(file));
                    let document = error
                        .document()
                        .unwrap_or_else(|| panic!("no document in {error}"));
                    assert!(document >= 1, "document 0 in {error}");
                    assert!(!error.message.is_empty(), "no message in {error:?}");
                    let shown = error.to_string();
                    let prefix = match &error.field {
                        Some(field) => {
                            assert!(!field.is_empty(), "empty field in {error:?}");
                            format!("{name}:{document}:{field}: ")
                        }
                        None => format!("{name}:{document}: "),
                    };
                    assert!(shown.starts_with(&prefix), "{shown:?} is not {prefix}...");
                }
            }
        }
        // JSON only for what could be JSON; YAML for everything.
        if !text.trim_start().starts_with(['{', '[']) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        panic::{AssertUnwindSafe, catch_unwind},
        path::PathBuf,
    };

    /// The seed corpora, and every crash the fuzzers found, run through the same properties:
    /// `cargo fuzz` on nightly explores, this keeps what it found on stable.
    #[test]
    fn seed_corpora_pass_their_properties() {
        type Property = fn(&[u8]);
        let targets: [(&str, Property); 4] = [
            ("framing", super::framing),
            ("normalize", super::normalize),
            ("config", super::config),
            ("policy", super::policy),
        ];
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut failures = Vec::new();
        for (target, property) in targets {
            let dir = root.join(target);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .map(|entry| entry.expect("directory entry").path())
                .collect();
            files.sort();
            assert!(
                files.len() >= 5,
                "{} has {} seeds: a corpus needs a few",
                dir.display(),
                files.len()
            );
            for file in files {
                let data = std::fs::read(&file).expect("reading a seed");
                if catch_unwind(AssertUnwindSafe(|| property(&data))).is_err() {
                    failures.push(file.display().to_string());
                }
            }
        }
        assert!(
            failures.is_empty(),
            "seeds failing their property:\n{}",
            failures.join("\n")
        );
    }
}
