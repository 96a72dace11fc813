//! The worker's layering, checked: no two modules may depend on each other, directly or through
//! others. ARCHITECTURE.md states the rule; this test keeps it true as the code changes.
//!
//! A module is a file's module path (`engine::kokoro::style_search`, `job`). A reference is any
//! `crate::…` or `super::…` path in the file's code (comments and its test module are skipped),
//! resolved to the longest module path it names. A module using its own submodules (declaring,
//! assembling or re-exporting them) is structure, not a dependency, so only the edges from a
//! submodule up to its ancestors count in that direction. The graph of top-level modules, with
//! every submodule folded into its top-level module, must be free of cycles too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One dependency: the module that uses, the module used, and the path (resolved from the crate
/// root) that shows it.
#[derive(Debug, Clone)]
struct Edge {
    from: String,
    to: String,
    via: String,
}

/// The module path of a file under `src/`: `engine/kokoro/mod.rs` is `engine::kokoro`, `lib.rs`
/// the crate root (the empty path).
fn module_of(relative: &str) -> String {
    let trimmed = relative.trim_end_matches(".rs");
    let mut parts: Vec<&str> = trimmed.split('/').collect();
    if matches!(parts.last(), Some(&"mod") | Some(&"lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map_or(String::new(), |(p, _)| p.to_string())
}

/// Whether `module` is `ancestor` or lies below it.
fn within(module: &str, ancestor: &str) -> bool {
    ancestor.is_empty() || module == ancestor || module.starts_with(&format!("{ancestor}::"))
}

/// The code of a file: without its test module (always last) and without comments, so that
/// doc links and tests do not count as dependencies.
fn code(source: &str) -> String {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path a `use` tree starting at `text` names, as segments after the prefix: `a::{b, c::d}`
/// gives `[a, b]` and `[a, c, d]`. Returns the paths and how many bytes the tree took.
fn use_tree(text: &str) -> (Vec<Vec<String>>, usize) {
    let mut segments = Vec::new();
    let mut at = 0;
    loop {
        let rest = &text[at..];
        if rest.starts_with('{') {
            let mut paths = Vec::new();
            at += 1;
            loop {
                let skipped = text[at..].len() - text[at..].trim_start().len();
                at += skipped;
                if at >= text.len() || text[at..].starts_with('}') {
                    at += 1;
                    break;
                }
                let (inner, used) = use_tree(&text[at..]);
                at += used.max(1);
                for path in inner {
                    paths.push(segments.iter().cloned().chain(path).collect());
                }
                let skipped = text[at..].len() - text[at..].trim_start().len();
                at += skipped;
                if text[at..].starts_with(',') {
                    at += 1;
                }
            }
            return (paths, at);
        }
        let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        segments.push(rest[..len].to_string());
        at += len;
        if text[at..].starts_with("::") {
            at += 2;
        } else {
            break;
        }
    }
    (vec![segments], at)
}

/// The modules `source` (the file of `module`) depends on, among `modules`.
fn dependencies(module: &str, source: &str, modules: &BTreeSet<String>) -> Vec<Edge> {
    let code = code(source);
    let mut edges = Vec::new();
    for prefix in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(found) = code[from..].find(prefix) {
            let start = from + found;
            from = start + prefix.len();
            if code[..start].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let mut base: Vec<String> = if prefix == "crate::" {
                Vec::new()
            } else {
                let up = parent(module);
                up.split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            };
            let mut at = from;
            while code[at..].starts_with("super::") {
                base.pop();
                at += "super::".len();
            }
            let (paths, _) = use_tree(&code[at..]);
            for path in paths {
                let full: Vec<String> = base.iter().cloned().chain(path).collect();
                // The longest prefix of the path that is a module is the one it names.
                let target = (0..=full.len())
                    .rev()
                    .map(|n| full[..n].join("::"))
                    .find(|candidate| candidate.is_empty() || modules.contains(candidate))
                    .unwrap_or_default();
                if within(&target, module) {
                    continue;
                }
                edges.push(Edge {
                    from: module.to_string(),
                    to: target,
                    // Shown resolved, so that a `super::` path reads as what it names.
                    via: format!("crate::{}", full.join("::")),
                });
            }
        }
    }
    edges
}

/// A cycle in the graph, as `a -> b -> a` with the path behind each step, or `None`.
fn find_cycle(edges: &[Edge]) -> Option<String> {
    let mut graph: BTreeMap<&str, Vec<&Edge>> = BTreeMap::new();
    for edge in edges {
        graph.entry(edge.from.as_str()).or_default().push(edge);
    }
    // Depth-first search; a node met again while still on the path closes a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a Edge>>,
        path: &mut Vec<&'a Edge>,
        on_path: &mut BTreeSet<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if done.contains(node) {
            return None;
        }
        on_path.insert(node);
        for edge in graph.get(node).into_iter().flatten() {
            path.push(edge);
            if on_path.contains(edge.to.as_str()) {
                let start = path.iter().position(|e| e.from == edge.to).unwrap_or(0);
                let steps: Vec<String> = path[start..]
                    .iter()
                    .map(|e| format!("{} -> {} ({})", e.from, e.to, e.via))
                    .collect();
                return Some(steps.join(", "));
            }
            if let Some(cycle) = visit(edge.to.as_str(), graph, path, on_path, done) {
                return Some(cycle);
            }
            path.pop();
        }
        on_path.remove(node);
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let mut path = Vec::new();
        let mut on_path = BTreeSet::new();
        if let Some(cycle) = visit(node, &graph, &mut path, &mut on_path, &mut done) {
            return Some(cycle);
        }
    }
    None
}

/// The same edges between top-level modules, without those inside one.
fn top_level(edges: &[Edge]) -> Vec<Edge> {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
    edges
        .iter()
        .map(|e| Edge {
            from: top(&e.from),
            to: top(&e.to),
            via: format!("{} uses {}", e.from, e.via),
        })
        .filter(|e| e.from != e.to && !e.to.is_empty())
        .collect()
}

/// The dependency edges of a crate given as (file under `src/`, source) pairs.
fn graph(files: &[(String, String)]) -> Vec<Edge> {
    let modules: BTreeSet<String> = files.iter().map(|(f, _)| module_of(f)).collect();
    files
        .iter()
        .flat_map(|(file, source)| dependencies(&module_of(file), source, &modules))
        .collect()
}

fn read_sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("the source directory is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            read_sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under src/");
            let relative = relative.to_string_lossy().replace('\\', "/");
            let source = std::fs::read_to_string(&path).expect("a source file is readable");
            out.push((relative, source));
        }
    }
}

#[test]
fn the_worker_modules_depend_on_each_other_in_one_direction_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_sources(&root, &root, &mut files);
    let edges = graph(&files);
    // The check must see the dependencies it judges, or it would pass on anything.
    assert!(
        edges
            .iter()
            .any(|e| e.from == "engine::kokoro::style_search" && e.to == "voice::speaker"),
        "the style search's use of the speaker encoder was not found"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("modules of the worker depend on each other: {cycle}");
    }
    // Rules a cycle alone would not catch, as ARCHITECTURE.md states them.
    for edge in &edges {
        let rule = if edge.from == "error" {
            "error is a leaf and uses nothing of the worker"
        } else if edge.from.starts_with("job::") && edge.from != "job::context" {
            match edge.to.as_str() {
                "job" | "job::synthesize" | "job::enroll" => {
                    "a job body uses the job context only, never job or the other body"
                }
                _ => continue,
            }
        } else {
            continue;
        };
        panic!("{rule}: {} uses {} ({})", edge.from, edge.to, edge.via);
    }
    if let Some(cycle) = find_cycle(&top_level(&edges)) {
        panic!("top-level modules of the worker depend on each other: {cycle}");
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let files = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .collect()
    };
    let direct = files(&[
        ("a.rs", "use crate::b::{self, Thing};"),
        ("b.rs", "fn f() { crate::a::g() }"),
    ]);
    let cycle = find_cycle(&graph(&direct)).expect("a and b use each other");
    assert!(
        cycle.contains("a -> b") && cycle.contains("b -> a"),
        "{cycle}"
    );

    // Through a parent: a child using its parent is fine, the parent using the child's user is not.
    let through_parent = files(&[
        ("engine/mod.rs", "use crate::job::Context;"),
        ("engine/kokoro.rs", "use super::{Engine, zh};"),
        ("engine/zh.rs", ""),
        ("job.rs", "use crate::engine::{kokoro::Kokoro, Engine};"),
    ]);
    let cycle = find_cycle(&graph(&through_parent)).expect("engine and job use each other");
    assert!(cycle.contains("job") && cycle.contains("engine"), "{cycle}");

    // A parent assembling its children, and children using their parent, is no cycle; nor are
    // comments and tests.
    let fine = files(&[
        (
            "engine/mod.rs",
            "pub mod kokoro;\nfn build() { kokoro::load(); crate::engine::kokoro::x() }",
        ),
        (
            "engine/kokoro.rs",
            "use super::Engine;\n// crate::job::x\n#[cfg(test)]\nmod tests { use crate::job::y; }",
        ),
        ("job.rs", "use crate::engine::kokoro::Kokoro;"),
    ]);
    assert_eq!(find_cycle(&graph(&fine)), None);
    assert_eq!(find_cycle(&top_level(&graph(&fine))), None);
}
