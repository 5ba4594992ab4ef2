//! The import graph of this crate, read from its sources at test time: no import cycle between
//! top-level modules (or between `proxy` submodules) may come back once it is removed.
//!
//! An edge `a -> b` is a path `crate::b…` (in a `use` or inline) in a non-test file of module
//! `a`, comments left out; in `proxy/`, `super::b` and `crate::proxy::b` name submodule `b`.
//! Test files (`tests/`, `tests.rs`, `*_tests.rs`, a trailing `#[cfg(test)] mod tests`) are
//! left out: tests may reach anywhere.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Modules still on an import cycle. Known debt, to be removed by moving shared types down (as
/// was done for `bpf`, `identity`, `policy`, `config` and `tls`): this list only shrinks.
const STILL_CYCLIC: &[&str] = &[
    "dns",
    "dnsproxy",
    "kube",
    "model",
    "pods",
    "proxy",
    "reload",
    "run",
    "telemetry",
    "verdicts",
];

/// The cycles issue 13 named, removed: neither may reach the other again.
const REMOVED: &[(&str, &str)] = &[
    ("bpf", "model"),
    ("identity", "model"),
    ("bpf", "verdicts"),
    ("identity", "verdicts"),
    ("config", "tls"),
    ("proxy/http", "proxy/reply"),
];

/// Direct two-way imports removed whose modules are still on a longer cycle (see
/// [`STILL_CYCLIC`]): neither may import the other again while the rest is untangled.
const REMOVED_DIRECT: &[(&str, &str)] = &[("reload", "run")];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The first identifier of `text` and, after `::`, the second (`b::c` gives `b`, `c`).
fn leading_path(text: &str) -> (String, String) {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let first = ident(text);
    let rest = text[first.len()..].strip_prefix("::").unwrap_or("");
    let rest = rest.trim_start_matches('{').trim_start();
    (first, ident(rest))
}

/// Every path that follows `prefix` in `code`: `prefix::a::b` gives (`a`, `b`), and a group
/// `prefix::{a::b, c}` gives each of its top-level items.
fn paths_after(code: &str, prefix: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let Some(group) = rest.strip_prefix('{') else {
            found.push(leading_path(rest));
            continue;
        };
        let mut depth = 1;
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 || (depth == 1 && c == ',') {
                if !item.trim().is_empty() {
                    found.push(leading_path(item.trim()));
                }
                item.clear();
                if depth == 0 {
                    break;
                }
            } else {
                item.push(c);
            }
        }
    }
    found
}

/// `code` without `//` comments (doc links are no imports) and without its trailing test
/// module.
fn non_test_code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn collect(dir: &Path, src: &Path, graph: &mut Graph) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read the source directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "tests" {
                collect(&path, src, graph);
            }
            continue;
        }
        if !name.ends_with(".rs") || name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let relative = path.strip_prefix(src).expect("under src");
        let parts: Vec<&str> = relative
            .iter()
            .map(|p| p.to_str().expect("utf-8 path").trim_end_matches(".rs"))
            .filter(|p| *p != "mod")
            .collect();
        let top = parts[0];
        if matches!(top, "lib" | "main" | "fuzzing") {
            continue;
        }
        let code = non_test_code(&fs::read_to_string(&path).expect("read a source file"));
        let node = graph.entry(top.to_owned()).or_default();
        for (module, _) in paths_after(&code, "crate::") {
            if module != top && !module.is_empty() {
                node.insert(module);
            }
        }
        if top == "proxy" && parts.len() > 1 {
            let sub = format!("proxy/{}", parts[1]);
            let targets: Vec<String> = paths_after(&code, "super::")
                .into_iter()
                .chain(paths_after(&code, "proxy::"))
                .map(|(first, _)| first)
                .collect();
            let node = graph.entry(sub.clone()).or_default();
            for target in targets {
                let target = format!("proxy/{target}");
                let file = src.join(format!("{target}.rs"));
                if target != sub && (file.is_file() || src.join(&target).is_dir()) {
                    node.insert(target);
                }
            }
        }
    }
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    collect(&src, &src, &mut graph);
    graph
}

/// Every module `from` reaches.
fn reachable(graph: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(node) = todo.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen
}

/// Modules on a cycle: those that reach themselves.
fn cyclic(graph: &Graph) -> BTreeSet<String> {
    graph
        .keys()
        .filter(|m| reachable(graph, m).contains(*m))
        .cloned()
        .collect()
}

#[test]
fn the_parser_reads_use_groups_inline_paths_and_skips_comments() {
    let code = non_test_code(
        "use crate::{\n    config::{IpNet, Protocol},\n    identity::Principal,\n};\n\
         impl crate::bpf::VerdictSink for X {}\n/// see [`crate::run`]\nfn f() {} // crate::dns\n\
         use super::{reply::VIA, Inbound};\n#[cfg(test)]\nmod tests {\n use crate::kube;\n}",
    );
    let found: Vec<String> = paths_after(&code, "crate::")
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(found, ["config", "identity", "bpf"]);
    let found: Vec<(String, String)> = paths_after(&code, "super::");
    assert_eq!(found[0], ("reply".to_owned(), "VIA".to_owned()));
    assert_eq!(found[1].0, "Inbound");
}

#[test]
fn cycles_are_found_through_any_number_of_modules() {
    let mut graph = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(
        cyclic(&graph),
        ["a", "b", "c"].map(String::from).into_iter().collect()
    );
}

#[test]
fn no_import_cycle_comes_back() {
    let graph = graph();
    // The graph is read, not empty: edges every build has.
    for (a, b) in [
        ("proxy", "policy"),
        ("config", "tls"),
        ("proxy/http", "proxy/phases"),
    ] {
        assert!(
            graph.get(a).is_some_and(|n| n.contains(b)),
            "{a} -> {b} not found"
        );
    }
    for (a, b) in REMOVED {
        assert!(
            !(reachable(&graph, a).contains(*b) && reachable(&graph, b).contains(*a)),
            "{a} and {b} import each other again"
        );
    }
    let imports = |a: &str, b: &str| graph.get(a).is_some_and(|n| n.contains(b));
    for (a, b) in REMOVED_DIRECT {
        assert!(
            !(imports(a, b) && imports(b, a)),
            "{a} and {b} import each other again"
        );
    }
    let cyclic = cyclic(&graph);
    let new: Vec<&String> = cyclic
        .iter()
        .filter(|m| !STILL_CYCLIC.contains(&m.as_str()))
        .collect();
    assert!(
        new.is_empty(),
        "modules newly on an import cycle: {new:?} (graph: {graph:#?})"
    );
    let gone: Vec<&&str> = STILL_CYCLIC
        .iter()
        .filter(|m| !cyclic.contains(**m))
        .collect();
    assert!(
        gone.is_empty(),
        "{gone:?} left every cycle: remove them from STILL_CYCLIC"
    );
    let proxy: Vec<&String> = cyclic.iter().filter(|m| m.contains('/')).collect();
    assert!(proxy.is_empty(), "proxy submodules on a cycle: {proxy:?}");
}
