//! The documents stay true to the repository: every relative link in
//! README.md, ARCHITECTURE.md and tuning.md names a file or directory inside
//! the repository (a clone has nothing outside it), and every source path
//! ARCHITECTURE.md names exists, while every top-level module under `src/`
//! appears in its code map.

use std::path::{Path, PathBuf};

const DOCS: [&str; 3] = ["README.md", "ARCHITECTURE.md", "tuning.md"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(doc: &str) -> String {
    std::fs::read_to_string(root().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

/// Targets of the inline Markdown links `[text](target)` of `text`, with the
/// line each is on.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n + 1, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// A relative link's path inside the repository, or why it is broken; `None`
/// for links that are not file paths (URLs, in-page anchors).
fn check_link(target: &str) -> Option<Result<PathBuf, String>> {
    if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
        return None;
    }
    let path = target.split('#').next().unwrap_or(target);
    let root = root().canonicalize().expect("repository root");
    let full = root.join(path);
    Some(match full.canonicalize() {
        Ok(p) if p.starts_with(&root) => Ok(p),
        Ok(p) => Err(format!("{} is outside the repository", p.display())),
        Err(e) => Err(format!("{}: {e}", full.display())),
    })
}

fn broken_links(doc: &str, text: &str) -> Vec<String> {
    links(text)
        .into_iter()
        .filter_map(|(line, target)| match check_link(&target)? {
            Ok(_) => None,
            Err(why) => Some(format!("{doc}:{line}: ({target}) {why}")),
        })
        .collect()
}

#[test]
fn the_link_checker_tells_broken_links_from_good_ones() {
    let text = "see [a](ARCHITECTURE.md#the-shape), [b](../shared/DESIGN.md),\n\
                [c](https://example.com/x) and [d](#here), [e](src/nope.rs), [f](src/shard/)";
    let broken = broken_links("t.md", text);
    assert_eq!(broken.len(), 2, "{broken:#?}");
    assert!(
        broken[0].starts_with("t.md:1: (../shared/DESIGN.md)"),
        "{broken:#?}"
    );
    assert!(
        broken[1].starts_with("t.md:2: (src/nope.rs)"),
        "{broken:#?}"
    );
}

#[test]
fn relative_links_in_the_docs_exist_in_the_repository() {
    let broken: Vec<String> = DOCS
        .iter()
        .flat_map(|doc| broken_links(doc, &read(doc)))
        .collect();
    assert!(
        broken.is_empty(),
        "links to paths that are not in the repository:\n{}",
        broken.join("\n")
    );
}

/// The text of `doc`'s section under `heading` (up to the next `## `).
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} section"));
    let body = &doc[start + heading.len()..];
    body.find("\n## ").map_or(body, |end| &body[..end])
}

/// Backticked repository paths (`src/...`, `tests/...`, `benches/...`) in `text`.
fn code_paths(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            ["src/", "tests/", "benches/"]
                .iter()
                .any(|p| s.starts_with(p))
        })
        .filter(|s| !s.contains(char::is_whitespace))
        .map(str::to_string)
        .collect()
}

/// Bare file names in the code map (`engine.rs`, `serve/tests.rs`) that do
/// not exist in the directory of their `### ` heading (its first
/// backticked `src/.../` path; `src/` when it names only files).
fn missing_bare_names(map: &str) -> Vec<String> {
    let mut dir = String::from("src/");
    let mut missing = Vec::new();
    for line in map.lines() {
        if line.starts_with("### ") {
            let paths = code_paths(line);
            dir = paths
                .iter()
                .find(|p| p.ends_with('/'))
                .cloned()
                .unwrap_or_else(|| "src/".into());
            continue;
        }
        for name in line.split('`').skip(1).step_by(2) {
            let bare = name.ends_with(".rs") && !name.starts_with("src/");
            if bare && !root().join(&dir).join(name).exists() {
                missing.push(format!("{dir}{name}"));
            }
        }
    }
    missing
}

/// A path, or a glob like `benches/*.py` matching at least one file.
fn exists(path: &str) -> bool {
    let Some((dir, pattern)) = path.rsplit_once("/*") else {
        return root().join(path).exists();
    };
    std::fs::read_dir(root().join(dir)).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(pattern))
    })
}

#[test]
fn every_path_architecture_names_exists_and_the_code_map_covers_src() {
    let arch = read("ARCHITECTURE.md");
    let missing: Vec<String> = code_paths(&arch)
        .into_iter()
        .filter(|p| !exists(p))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
    let map = section(&arch, "## Code map");
    let named = code_paths(map);
    let missing = missing_bare_names(map);
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map names files its sections' directories do not have: {missing:?}"
    );
    let mut unmapped = Vec::new();
    for entry in std::fs::read_dir(root().join("src")).expect("src/") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if entry.path().is_dir() {
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        };
        if !named
            .iter()
            .any(|n| Path::new(n).starts_with(path.trim_end_matches('/')))
        {
            unmapped.push(path);
        }
    }
    assert!(
        unmapped.is_empty(),
        "modules under src/ missing from ARCHITECTURE.md's code map: {unmapped:?}"
    );
}
