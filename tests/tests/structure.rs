//! The shape of the code, checked: no import cycle among a crate's modules, no source file over 600 lines, no
//! function over 80 lines (CODE_STYLE.md). Unit-test modules count toward a file's length, not a function's. The
//! test harness, suites and benchmarks keep to the same file length; a test scenario may run longer than 80 lines,
//! read top to bottom.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 5] = ["core", "proto", "agent", "coordinator", "cli"];
const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 80;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without its comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The top-level module a file belongs to (`None` for the crate root and binaries).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main" | "bin")).then_some(name)
}

/// Names the crate root re-exports, with the module each comes from (`pub use history::{Direction, ..}`).
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else { continue };
        let Some((module, names)) = rest.trim_end_matches(';').split_once("::") else { continue };
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = name.trim().rsplit("::").next().unwrap_or_default().to_string();
            out.insert(name, module.to_string());
        }
    }
    out
}

/// Module → the modules its code names through `crate::`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let via_root = reexports(&lib);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(src) {
        let Some(module) = module_of(src, &file) else { continue };
        let text = code(&std::fs::read_to_string(&file).expect("read"));
        let mut names = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                names.extend(group.split(',').map(|n| n.trim().split("::").next().unwrap_or("").to_string()));
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                names.insert(name);
            }
        }
        let edges = graph.entry(module.clone()).or_default();
        for name in names {
            let target = via_root.get(&name).cloned().unwrap_or(name);
            if target != module && !target.is_empty() {
                edges.insert(target);
            }
        }
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for edges in graph.values_mut() {
        edges.retain(|e| known.contains(e));
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_cycle_among_its_modules() {
    for krate in CRATES {
        let graph = graph(&root().join(krate).join("src"));
        assert!(graph.len() > 1 || krate == "proto", "{krate}: no modules found");
        if let Some(found) = cycle(&graph) {
            panic!("{krate}: modules import each other in a cycle: {}", found.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(reexports("pub use history::{AppliedMigration, Direction};")["Direction"], "history");
}

#[test]
fn no_source_file_is_over_600_lines_and_no_function_over_80() {
    let mut long = Vec::new();
    for krate in CRATES {
        for file in sources(&root().join(krate).join("src")) {
            let text = std::fs::read_to_string(&file).expect("read");
            let shown = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
            if text.lines().count() > MAX_FILE_LINES {
                long.push(format!("{shown}: {} lines", text.lines().count()));
            }
            long.extend(long_functions(&text).into_iter().map(|(name, n)| format!("{shown}: fn {name} is {n} lines")));
        }
    }
    assert!(long.is_empty(), "over the limits:\n{}", long.join("\n"));
}

#[test]
fn no_test_or_benchmark_file_is_over_600_lines() {
    let dirs = ["tests/src", "tests/tests", "tests/benches"];
    let long: Vec<String> = dirs
        .iter()
        .flat_map(|dir| sources(&root().join(dir)))
        .filter_map(|file| {
            let lines = std::fs::read_to_string(&file).expect("read").lines().count();
            let shown = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
            (lines > MAX_FILE_LINES).then(|| format!("{shown}: {lines} lines"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_FILE_LINES} lines (split by topic, as tests/tests/faults/ is):\n{}",
        long.join("\n")
    );
}

/// Functions longer than the limit, as rustfmt lays them out: from `fn` to the `}` at the same indentation.
fn long_functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code_lines(text);
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let Some(name) = fn_name(trimmed) else { continue };
        if line.trim_end().ends_with(';') {
            continue; // a declaration in a trait
        }
        let end = lines[i..].iter().position(|l| *l == format!("{indent}}}")).map_or(0, |n| n + 1);
        if end > MAX_FN_LINES {
            out.push((name, end));
        }
    }
    out
}

fn code_lines(text: &str) -> Vec<&str> {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end].lines().collect()
}

fn fn_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.next() {
        match w {
            "pub" | "async" | "const" | "unsafe" => continue,
            w if w.starts_with("pub(") => continue,
            "fn" => return words.next().map(|n| n.split(['(', '<']).next().unwrap_or(n).to_string()),
            _ => return None,
        }
    }
    None
}

#[test]
fn the_length_check_measures_functions() {
    let body = (0..90).map(|i| format!("    let x{i} = {i};\n")).collect::<String>();
    let text = format!("fn short() {{\n}}\n\npub(crate) async fn long() {{\n{body}}}\n");
    assert_eq!(long_functions(&text), [("long".to_string(), 92)]);
}
