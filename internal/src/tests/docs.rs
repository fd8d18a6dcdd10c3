//! Documentation that must follow the code: `docs/deploy.md` lists every setting with its
//! environment variable, and `docs/security-checklist.md` names tests that exist.

use std::path::Path;

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn deploy_md_lists_every_setting() {
    let doc = repo_file("docs/deploy.md");
    let config = serde_json::to_value(crate::config::Config::default()).unwrap();
    let keys: Vec<&String> = config.as_object().unwrap().keys().collect();
    assert!(keys.len() > 50);
    let missing: Vec<String> = keys
        .iter()
        .map(|key| format!("| `PATCHWORK_{}` | `{key}` |", key.to_ascii_uppercase()))
        .filter(|row| !doc.contains(row.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/deploy.md (\"Every setting\") lacks rows starting {missing:#?}"
    );
}

/// Every `path/to/file.rs::function` the checklist cites as its proof is a function there.
#[test]
fn security_checklist_cites_tests_that_exist() {
    let doc = repo_file("docs/security-checklist.md");
    let mut cited = 0;
    for (i, _) in doc.match_indices(".rs::") {
        let start = doc[..i].rfind('`').expect("a cited test is in backquotes") + 1;
        let end = i + doc[i..].find('`').expect("closing backquote");
        let (file, function) = doc[start..end].split_once("::").unwrap();
        let source = repo_file(file);
        assert!(
            source.contains(&format!("fn {function}(")),
            "docs/security-checklist.md cites {file}::{function}, which is not there"
        );
        cited += 1;
    }
    assert!(cited >= 10, "only {cited} tests cited");
}
