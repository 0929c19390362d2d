//! The module graph, read from the sources: data flows server -> route -> upstream,
//! migrate drives route and never sees client traffic, admin sits beside, and no two
//! modules import each other in a circle (a child using its own parent's items aside).
//! Run alone with `cargo test --test it layers::`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`route::fence`) -> source text without its unit tests.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            out.insert(parts.join("::"), text);
        }
    }
    out
}

/// Every path a source names through `crate::` or `super::`, with `use` groups
/// (`use crate::a::{b, c::d}`) expanded, resolved against `module`.
fn referenced(module: &str, text: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let (base, skip): (Vec<String>, usize) = if rest.starts_with("crate::") {
            (Vec::new(), 7)
        } else if rest.starts_with("super::") {
            // `super` is the parent module, for a mod.rs as for a plain file.
            let mut base: Vec<String> = module.split("::").map(String::from).collect();
            base.pop();
            (base, 7)
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        // Not part of a longer identifier (`my_crate::`).
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
            i += skip;
            continue;
        }
        let (tree, used) = path_tree(&text[i + skip..]);
        for p in tree {
            let mut full = base.clone();
            full.extend(p);
            paths.push(full);
        }
        i += skip + used.max(1);
    }
    paths
}

/// Parses `a::b::{c, d::e}` (or a plain path) into its leaf paths; returns how many bytes
/// it read.
fn path_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i > start {
            prefix.push(s[start..i].to_string());
        }
        let group = if s[i..].starts_with("::{") {
            3
        } else if i == 0 && s.starts_with('{') {
            1
        } else {
            0
        };
        if group > 0 {
            i += group;
            let mut out = Vec::new();
            loop {
                while i < b.len() && (b[i] as char).is_whitespace() {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                let (sub, used) = path_tree(&s[i..]);
                for p in sub {
                    let mut full = prefix.clone();
                    full.extend(p);
                    out.push(full);
                }
                i += used;
                while i < b.len() && b[i] != b',' && b[i] != b'}' {
                    i += 1;
                }
                if i < b.len() && b[i] == b',' {
                    i += 1;
                }
            }
            return (out, i);
        }
        if s[i..].starts_with("::") {
            i += 2;
            continue;
        }
        return (vec![prefix], i);
    }
}

/// module -> the modules it imports (resolved to the longest module path named).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &mods {
        let mut to = BTreeSet::new();
        for path in referenced(m, text) {
            let mut p = path.clone();
            while !p.is_empty() && !mods.contains_key(&p.join("::")) {
                p.pop();
            }
            let target = p.join("::");
            if !target.is_empty() && &target != m {
                to.insert(target);
            }
        }
        g.insert(m.clone(), to);
    }
    g
}

fn is_ancestor(ancestor: &str, of: &str) -> bool {
    of.starts_with(&format!("{ancestor}::"))
}

/// A cycle in `g`, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // 0 unseen, 1 on the stack, 2 done.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, g, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_parser_reads_use_groups_and_paths() {
    let text = "use crate::a::{b, c::{d, e}};\nlet x = crate::f::g(1);\nuse super::{h, Context};";
    let got = referenced("m::n", text);
    let want: Vec<Vec<String>> = [
        vec!["a", "b"],
        vec!["a", "c", "d"],
        vec!["a", "c", "e"],
        vec!["f", "g"],
        vec!["m", "h"],
        vec!["m", "Context"],
    ]
    .iter()
    .map(|p| p.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(got, want);
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&g), Some(vec!["a".into(), "b".into(), "a".into()]));
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let mut g = graph();
    assert!(
        g.contains_key("route::fence") && g["server::watch"].contains("route"),
        "the graph reads the sources: {g:?}"
    );
    // A child may use its parent's (or an ancestor's) items: that is one module.
    for (m, to) in g.iter_mut() {
        to.retain(|t| !is_ancestor(t, m));
    }
    assert_eq!(find_cycle(&g), None, "an import cycle");
    // Whole top-level modules too.
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, to) in &g {
        let tm = m.split("::").next().unwrap().to_string();
        let entry = top.entry(tm.clone()).or_default();
        for t in to {
            let tt = t.split("::").next().unwrap().to_string();
            if tt != tm {
                entry.insert(tt);
            }
        }
    }
    assert_eq!(find_cycle(&top), None, "a cycle between top-level modules: {top:?}");
}

#[test]
fn data_flows_server_route_upstream_and_migrate_never_sees_client_traffic() {
    let g = graph();
    // (The gateway sits above server, migrate and rbac: it builds a context per tenant
    // and decides who may do what; nothing below it knows it is there.)
    let never: &[(&str, &[&str])] = &[
        (
            "error",
            &[
                "config", "route", "server", "upstream", "migrate", "admin", "app", "gateway",
            ],
        ),
        (
            "keys",
            &[
                "config", "route", "server", "upstream", "migrate", "admin", "app", "gateway",
            ],
        ),
        (
            "rbac",
            &[
                "config", "route", "server", "upstream", "migrate", "admin", "app", "gateway",
            ],
        ),
        (
            "config",
            &["route", "server", "upstream", "migrate", "admin", "app", "gateway"],
        ),
        ("upstream", &["route", "server", "migrate", "admin", "app", "gateway"]),
        ("route", &["server", "migrate", "admin", "app", "gateway"]),
        ("server", &["migrate", "admin", "app", "gateway"]),
        ("migrate", &["server", "admin", "app", "gateway"]),
        ("gateway", &["admin", "app"]),
        ("admin", &["server", "app"]),
    ];
    let mut wrong = Vec::new();
    for (m, to) in &g {
        let top = m.split("::").next().unwrap();
        for (from, forbidden) in never {
            if top != *from {
                continue;
            }
            for t in to {
                let tt = t.split("::").next().unwrap();
                if forbidden.contains(&tt) {
                    wrong.push(format!("{m} -> {t}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering: {wrong:#?}");
}

#[test]
fn grpc_statuses_are_made_in_error_rs_only() {
    let mut elsewhere = Vec::new();
    for (m, text) in modules() {
        if m == "error" || m == "proto" {
            continue;
        }
        for (i, _) in text.match_indices("Status::") {
            let name: String = text[i + 8..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `Status::from` converts a ProxyError through the table.
            if name.starts_with(|c: char| c.is_ascii_lowercase()) && name != "from" {
                elsewhere.push(format!("{m}: Status::{name}"));
            }
        }
    }
    assert!(elsewhere.is_empty(), "statuses built outside error.rs: {elsewhere:#?}");
}
