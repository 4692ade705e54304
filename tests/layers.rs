//! The map enforces itself: every `crate::…` path in `src/` (a `use`, or a path in code) must
//! be allowed by the import table in `ARCHITECTURE.md` ("Import rules"), the table must have
//! no circle, and every top-level module must have a row. A change that adds an arrow the
//! table does not allow fails here with the file, the line and the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rows of the import table: module → the modules it may import.
fn parse_table(markdown: &str) -> BTreeMap<String, BTreeSet<String>> {
    let start = markdown
        .find("<!-- import-rules:start -->")
        .expect("ARCHITECTURE.md has an import-rules table");
    let end = markdown
        .find("<!-- import-rules:end -->")
        .expect("the import-rules table ends");
    let mut rows = BTreeMap::new();
    for line in markdown[start..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `module` | `a`, `b` | why |
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let module = cells[1].trim_matches('`').to_string();
        let allowed = cells[2]
            .split(',')
            .map(|s| s.trim().trim_matches('`').to_string())
            .filter(|s| !s.is_empty() && s != "—")
            .collect();
        assert!(
            rows.insert(module.clone(), allowed).is_none(),
            "{module} has two rows"
        );
    }
    rows
}

/// Source text without comments and string literals (a path in a doc comment or a message is
/// not an import).
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // a char literal like '"'
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The top-level modules a file's code names, with the line of each first use.
fn imports(src: &str) -> BTreeMap<String, usize> {
    let code = code_only(src);
    let mut found = BTreeMap::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if rest.starts_with('{') {
                // use crate::{a::X, b};
                let inner = &rest[1..rest.find('}').unwrap_or(rest.len())];
                for part in inner.split(',') {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.entry(name).or_insert(n + 1);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.entry(name).or_insert(n + 1);
            }
        }
    }
    found
}

/// The top-level module a file of `src/` belongs to (`src/forge/github/mod.rs` → `forge`).
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every arrow that breaks the table: (file, line, from, to).
fn violations(
    table: &BTreeMap<String, BTreeSet<String>>,
    files: &[(PathBuf, String)],
    modules: &BTreeSet<String>,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, src) in files {
        let from = module_of(rel);
        // The crate root lists the modules; the binary is the edge and may use anything.
        if from == "lib" || from == "main" || from == "cli" {
            continue;
        }
        let Some(allowed) = table.get(&from) else {
            bad.push(format!(
                "{}: module `{from}` has no row in the table",
                rel.display()
            ));
            continue;
        };
        for (to, line) in imports(src) {
            if to == from || !modules.contains(&to) {
                continue; // itself, or a root item such as `now_ms`
            }
            if !allowed.contains(&to) {
                bad.push(format!(
                    "{}:{line}: `{from}` imports `{to}`, which its row does not allow",
                    rel.display()
                ));
            }
        }
    }
    bad
}

/// A circle in the table, if any (the table must be a one-way map).
fn circle(table: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        table: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap();
                let mut c = path[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in table.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, table, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in table.keys() {
        if let Some(c) = visit(n, table, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn imports_follow_the_architecture_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = parse_table(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    assert!(table.len() > 10, "the table was not read: {table:?}");
    if let Some(c) = circle(&table) {
        panic!("the import table has a circle: {}", c.join(" → "));
    }
    let src = root.join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<(PathBuf, String)> = paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.strip_prefix(&src).unwrap().to_path_buf(), text)
        })
        .collect();
    let modules: BTreeSet<String> = files
        .iter()
        .map(|(p, _)| module_of(p))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    for m in &modules {
        if m != "cli" {
            assert!(
                table.contains_key(m),
                "module `{m}` has no row in ARCHITECTURE.md's import table"
            );
        }
    }
    for (m, allowed) in &table {
        assert!(
            modules.contains(m),
            "the table names `{m}`, which is not a module of src/"
        );
        for a in allowed {
            assert!(
                modules.contains(a),
                "`{m}`'s row names `{a}`, which is not a module"
            );
        }
    }
    let bad = violations(&table, &files, &modules);
    assert!(
        bad.is_empty(),
        "imports that break the table:\n{}",
        bad.join("\n")
    );
}

/// The checker itself: it sees `use`, braces and paths in code, and not comments or strings.
#[test]
fn the_checker_finds_a_wrong_arrow() {
    let table = parse_table(
        "<!-- import-rules:start -->\n| module | may import | why |\n|---|---|---|\n\
         | `store` | `ids` | |\n| `ids` | — | |\n| `previews` | `store`, `ids` | |\n\
         <!-- import-rules:end -->",
    );
    assert_eq!(table["previews"].len(), 2);
    assert!(table["ids"].is_empty());
    let modules: BTreeSet<String> = ["store", "ids", "previews"].map(String::from).into();
    let files = vec![
        (
            PathBuf::from("store/mod.rs"),
            "//! see crate::previews\nuse crate::ids::X;\nfn f() { let s = \"crate::previews\"; }\n\
             fn g() -> crate::previews::State { todo!() }\n"
                .to_string(),
        ),
        (
            PathBuf::from("previews/state.rs"),
            "use crate::{store::Preview, ids};\n".to_string(),
        ),
    ];
    let bad = violations(&table, &files, &modules);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("store/mod.rs:4: `store` imports `previews`"),
        "{bad:?}"
    );
    let mut circular = table.clone();
    circular.get_mut("ids").unwrap().insert("previews".into());
    assert!(circle(&circular).is_some());
    assert!(circle(&table).is_none());
}
