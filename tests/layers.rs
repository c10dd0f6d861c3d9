//! The crate's layering, checked: every top-level module sits in one layer
//! of the table in docs/architecture.md ("Layers"), and uses only modules of
//! the layers below its own. A module that names a higher layer, or one of
//! its own layer, fails the suite with the file and line that does it; so
//! does a module the table forgets. The table is read from the doc, so the
//! drawing and the code cannot drift apart.
//!
//! Uses are `crate::<module>` paths (in `use` lines, `use crate::{..}` groups
//! over one line or several, and inline paths) outside comment lines and
//! test code: an item marked `#[cfg(test)]` (a test module, a test-only
//! function), `tests.rs` files and `tests/` folders do not shape the
//! layering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const DOC: &str = "docs/architecture.md";
/// The line before the table's fenced block in [`DOC`].
const MARKER: &str = "<!-- layers: top to bottom; tests/layers.rs checks the code against this table -->";

/// Where one module names another: `file:line`.
type Edges = BTreeMap<(String, String), String>;

/// The layers of the table, top first: the module names on each line of
/// the fenced block after [`MARKER`] (a `#` starts a comment).
fn layers_from_doc(doc: &str) -> Result<Vec<Vec<String>>, String> {
    let after = doc.split_once(MARKER).ok_or_else(|| format!("{DOC} has no line {MARKER:?}"))?.1;
    let mut lines = after.lines().skip_while(|l| l.trim().is_empty());
    if !lines.next().is_some_and(|l| l.trim_start().starts_with("```")) {
        return Err(format!("{DOC}: a fenced block must follow the layers marker"));
    }
    let mut layers = Vec::new();
    for line in lines {
        if line.trim_start().starts_with("```") {
            return Ok(layers);
        }
        let names: Vec<String> = line.split('#').next().unwrap_or("").split_whitespace().map(str::to_string).collect();
        if !names.is_empty() {
            layers.push(names);
        }
    }
    Err(format!("{DOC}: the layers block is not closed"))
}

/// Every top-level module of `src` and the uses between them.
fn scan(src: &Path) -> (BTreeSet<String>, Edges) {
    let mut modules = BTreeSet::new();
    let mut edges = Edges::new();
    for path in rust_files(src) {
        let rel = path.strip_prefix(src).expect("under src");
        let parts: Vec<&str> = rel.iter().map(|p| p.to_str().expect("utf-8 path")).collect();
        let file = *parts.last().expect("a file");
        let in_tests_dir = parts[..parts.len() - 1].contains(&"tests");
        if parts.len() == 1 && (file == "lib.rs" || file == "main.rs") || file == "tests.rs" || in_tests_dir {
            continue;
        }
        let top = parts[0].trim_end_matches(".rs").to_string();
        modules.insert(top.clone());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for (used, line) in uses_in(&text) {
            if used != top {
                edges.entry((top.clone(), used)).or_insert_with(|| format!("{}:{line}", path.display()));
            }
        }
    }
    (modules, edges)
}

/// The top-level modules `text` names through `crate::`, with the line of
/// each, leaving out comment lines and every item marked `#[cfg(test)]`
/// (a test module, or a single test-only function or `use`).
fn uses_in(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept: Vec<&str> = lines.clone();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        if line.starts_with("//") {
            kept[i] = "";
        } else if line.starts_with("#[cfg(test)]") {
            let end = item_end(&lines, i + 1);
            for k in kept.iter_mut().take(end + 1).skip(i) {
                *k = "";
            }
            i = end;
        }
        i += 1;
    }
    let kept = kept.join("\n");
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(pos) = kept[at..].find("crate::") {
        let start = at + pos;
        at = start + "crate::".len();
        let boundary = kept[..start].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if !boundary {
            continue;
        }
        let line = kept[..start].matches('\n').count() + 1;
        let rest = &kept[at..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b, c::{..}}`, over several lines too: the
            // first name of each item at depth 0.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        found.push((ident(&group[i..]), line));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push((name, line));
            }
        }
    }
    found
}

/// The last line of the item that starts at `from` (attributes first):
/// where its braces close, or its `;` when it has none.
fn item_end(lines: &[&str], from: usize) -> usize {
    let mut depth = 0i32;
    let mut braced = false;
    for (k, line) in lines.iter().enumerate().skip(from) {
        if line.trim_start().starts_with("#[") && !braced {
            continue;
        }
        for c in line.chars() {
            match c {
                '{' => {
                    depth += 1;
                    braced = true;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        if (braced && depth <= 0) || (!braced && line.trim_end().ends_with(';')) {
            return k;
        }
    }
    lines.len().saturating_sub(1)
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// What is wrong with `modules` and `edges` against `layers`, one line each.
fn violations(layers: &[Vec<String>], modules: &BTreeSet<String>, edges: &Edges) -> Vec<String> {
    let mut rank = BTreeMap::new();
    let mut wrong = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        for m in layer {
            // Rank 0 is the bottom layer; the table lists the top first.
            if rank.insert(m.clone(), layers.len() - 1 - i).is_some() {
                wrong.push(format!("{m} is in two layers of the table"));
            }
        }
    }
    for m in modules.difference(&rank.keys().cloned().collect()) {
        wrong.push(format!("module {m} is in no layer: add it to the table in {DOC}"));
    }
    for m in rank.keys().filter(|m| !modules.contains(*m)) {
        wrong.push(format!("the table names {m}, which is not a module of src/"));
    }
    for ((from, to), at) in edges {
        if let (Some(a), Some(b)) = (rank.get(from), rank.get(to)) {
            if b >= a {
                let how = if a == b { "its own layer" } else { "a higher layer" };
                wrong.push(format!("{from} uses {to}, {how} ({at})"));
            }
        }
    }
    wrong
}

#[test]
fn every_module_uses_only_the_layers_below_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(DOC)).expect("docs/architecture.md");
    let layers = layers_from_doc(&doc).unwrap_or_else(|e| panic!("{e}"));
    let (modules, edges) = scan(&root.join("src"));
    assert!(modules.len() > 10, "found only {modules:?} under src/");
    let wrong = violations(&layers, &modules, &edges);
    assert!(wrong.is_empty(), "the layering of {DOC} is broken:\n  {}", wrong.join("\n  "));
}

#[test]
fn a_use_of_a_higher_or_the_same_layer_and_a_forgotten_module_are_caught() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("node")).unwrap();
    std::fs::create_dir_all(src.join("store/tests")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod node;\nuse crate::http::x;\n").unwrap();
    std::fs::write(src.join("node/mod.rs"), "use crate::{store::Store, http};\n").unwrap();
    std::fs::write(src.join("store.rs"), "// crate::node in a comment\nuse crate::clock::Millis;\n").unwrap();
    std::fs::write(src.join("store/tests/t.rs"), "use crate::node::Node;\n").unwrap();
    std::fs::write(
        src.join("clock.rs"),
        "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::node::Node;\n}\n#[cfg(test)]\nuse crate::http::X;\n\
         fn after_tests() -> crate::store::Y {}\n",
    )
    .unwrap();
    std::fs::write(src.join("http.rs"), "use crate::{\n    node::Node,\n    store::{A, B},\n};\n").unwrap();
    std::fs::write(src.join("extra.rs"), "\n").unwrap();
    let table = format!("# x\n{MARKER}\n\n```text\nhttp   # top\nnode\nstore clock # bottom\n```\n");
    let layers = layers_from_doc(&table).expect("table");
    assert_eq!(layers, [vec!["http"], vec!["node"], vec!["store", "clock"]]);
    let (modules, edges) = scan(src);
    let edge = |a: &str, b: &str| edges.contains_key(&(a.to_string(), b.to_string()));
    assert!(edge("http", "node") && edge("http", "store"), "a use group over several lines: {edges:?}");
    let wrong = violations(&layers, &modules, &edges);
    let has = |text: &str| wrong.iter().any(|w| w.contains(text));
    assert!(has("node uses http, a higher layer"), "{wrong:?}");
    assert!(has("store uses clock, its own layer"), "{wrong:?}");
    assert!(has("clock uses store, its own layer"), "code after a test module counts: {wrong:?}");
    assert!(has("module extra is in no layer"), "{wrong:?}");
    assert!(!has("http uses node"), "a use of a lower layer is fine: {wrong:?}");
    assert!(!has("uses node"), "comments, test modules and tests/ folders do not count: {wrong:?}");
    assert!(!wrong.iter().any(|w| w.starts_with("lib")), "the crate root does not count: {wrong:?}");
    assert!(!wrong.iter().any(|w| w.starts_with("clock uses http")), "a test-only use: {wrong:?}");
    assert_eq!(wrong.len(), 4, "{wrong:?}");
    assert!(layers_from_doc("no table here").unwrap_err().contains("no line"));
    assert!(layers_from_doc(&format!("{MARKER}\n```text\nnode\n")).unwrap_err().contains("not closed"));
}
