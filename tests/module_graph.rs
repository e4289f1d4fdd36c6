//! The crate's modules depend on each other one way only, at every level: among the top-level
//! modules (what `lib.rs` lists), and among the modules inside each of them (`hub::recovery`
//! and `hub::authorize`, `hub::pusher::subscribe` and `hub::pusher::presence`, ...).
//!
//! The graph is read from the sources: every path through `crate::` or `super::` a file names
//! (in `use` lines and in code, `{...}` groups expanded) is resolved to the module it reaches.
//! A file depends on a sibling module (or anything inside it) when it names it; naming an
//! ancestor's own items (`super::Hub`) is not an edge (a parent is above its children).
//! A file's `#[cfg(test)] mod` (its last part) is left out: tests may look anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of the crate, as its path from the root (`["hub", "pusher", "subscribe"]`),
/// with its source text.
fn modules(root: &Path) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), Vec::<String>::new())];
    while let Some((dir, path)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                let mut sub = path.clone();
                sub.push(name);
                dirs.push((p, sub));
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut m = path.clone();
                if !matches!(stem, "mod" | "lib" | "main") {
                    m.push(stem.to_owned());
                }
                if path.is_empty() && stem == "main" {
                    continue; // the binary is another crate
                }
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                out.push((m, text));
            }
        }
    }
    out
}

/// The text without comments, and without its `#[cfg(test)] mod ...` (the test modules end
/// a file here; any other `#[cfg(test)]` item is read like the rest).
fn code(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            let next = lines.peek().map_or("", |l| l.trim_start());
            if next.starts_with("mod ") || next.starts_with("pub mod ") {
                break;
            }
            continue;
        }
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        s.push_str(line);
        s.push('\n');
    }
    s
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths named after `crate::`/`super::` starts, each as segments (`super` resolved by the
/// caller), `{...}` groups expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let b: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts_word = i == 0 || !is_ident(b[i - 1]) && b[i - 1] != ':';
        let rest: String = b[i..b.len().min(i + 7)].iter().collect();
        if starts_word && (rest.starts_with("crate::") || rest.starts_with("super::")) {
            let (found, end) = tree(&b, i);
            out.extend(found);
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Reads a path (or a `{...}` group of them) at `i`: the expanded paths and where it ended.
fn tree(b: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        while i < b.len() && b[i].is_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == '{' {
            let mut all = Vec::new();
            i += 1;
            loop {
                while i < b.len() && (b[i].is_whitespace() || b[i] == ',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == '}' {
                    break;
                }
                let (sub, end) = tree(b, i);
                for s in sub {
                    let mut p = prefix.clone();
                    p.extend(s);
                    all.push(p);
                }
                // Skip what ends the item (`as x`, a `*`).
                i = end;
                while i < b.len() && b[i] != ',' && b[i] != '}' {
                    if b[i] == '{' {
                        break;
                    }
                    i += 1;
                }
                if i < b.len() && b[i] == '{' {
                    i += 1;
                }
            }
            return (all, (i + 1).min(b.len()));
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if start == i {
            return (vec![prefix], i);
        }
        prefix.push(b[start..i].iter().collect());
        if b.get(i) == Some(&':') && b.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// `path` as named from module `from`: absolute segments.
fn resolve(from: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut segs = path.iter().peekable();
    let mut base: Vec<String>;
    match segs.next().map(String::as_str) {
        Some("crate") => base = Vec::new(),
        Some("super") => {
            // A file's `super` is its parent module (for `x/mod.rs`, `x`'s parent).
            base = from.to_vec();
            base.pop()?;
        }
        _ => return None,
    }
    while segs.peek().map(|s| s.as_str()) == Some("super") {
        segs.next();
        base.pop()?;
    }
    base.extend(segs.cloned());
    Some(base)
}

fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components.
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.g.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let l = t.low[w].min(t.low[v]);
                    t.low.insert(v, l);
                } else if t.on.contains(w) {
                    let l = t.index[w].min(t.low[v]);
                    t.low.insert(v, l);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let keys: Vec<&String> = graph.keys().collect();
    for k in keys {
        if !t.index.contains_key(k.as_str()) {
            visit(&mut t, k.as_str());
        }
    }
    t.out
}

#[test]
fn no_module_depends_on_another_that_depends_back_at_any_level() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&root);
    let known: BTreeSet<Vec<String>> = mods.iter().map(|(m, _)| m.clone()).collect();
    assert!(
        known.len() > 20,
        "the sources were not found under {root:?}"
    );
    // For each parent module, the graph among its child modules.
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, text) in &mods {
        for p in paths(&code(text)) {
            let Some(to) = resolve(from, &p) else {
                continue;
            };
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common >= from.len() || common >= to.len() {
                continue; // an ancestor or a descendant
            }
            let mut child = from[..=common].to_vec();
            let a = child.pop().unwrap_or_default();
            let mut target = to[..common].to_vec();
            target.push(to[common].clone());
            if !known.contains(&target) {
                continue; // an item of the common parent (`super::Hub`), not a module
            }
            if a == to[common] {
                continue;
            }
            graphs
                .entry(child)
                .or_default()
                .entry(a)
                .or_default()
                .insert(to[common].clone());
        }
    }
    let mut found = Vec::new();
    for (parent, g) in &graphs {
        for c in cycles(g) {
            let at = if parent.is_empty() {
                "crate".to_owned()
            } else {
                format!("crate::{}", parent.join("::"))
            };
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    g[a].iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            found.push(format!("in {at}: {}", edges.join(", ")));
        }
    }
    assert!(found.is_empty(), "import loops:\n{}", found.join("\n"));
}

#[test]
fn the_reader_expands_groups_and_resolves_super() {
    let p = paths("use crate::{a, b::{c, d as e}, f::*};\nlet x = super::super::g::h();");
    assert_eq!(
        p,
        vec![
            vec!["crate", "a"],
            vec!["crate", "b", "c"],
            vec!["crate", "b", "d"],
            vec!["crate", "f"],
            vec!["super", "super", "g", "h"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );
    // A test-only item mid-file is read; the test module at the end is not.
    let c = code("use crate::a;\n#[cfg(test)]\nfn h() {}\nuse crate::b; // crate::x\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\n");
    assert!(c.contains("crate::b") && !c.contains("crate::c") && !c.contains("crate::x"));
    let from: Vec<String> = ["hub", "pusher", "subscribe"].map(String::from).to_vec();
    assert_eq!(
        resolve(&from, &p[4]),
        Some(["hub", "g", "h"].map(String::from).to_vec())
    );
}
