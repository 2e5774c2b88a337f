//! The library's layers, as `docs/ARCHITECTURE.md` draws them, hold in its
//! sources: every `crate::` path of a module names a module of the same
//! layer or a lower one, and every module has a layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The library's modules: `src/NAME.rs`, and `src/NAME/` as one module.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .collect();
            files.sort();
            modules.entry(name).or_default().extend(files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            modules.entry(name).or_default().push(path);
        }
    }
    modules
}

/// The layer of each module named in the diagram: the text of each layer's
/// rows, without what stands in parentheses (descriptions, a directory's
/// files), and the words that are module names.
fn layers(architecture: &str, known: &BTreeMap<String, Vec<PathBuf>>) -> BTreeMap<String, u32> {
    let start = architecture
        .find("```text\n ┌")
        .expect("ARCHITECTURE.md draws the layers in a text block");
    let block = &architecture[start..];
    let block = &block[..block[3..].find("```").unwrap() + 3];
    let mut rows: BTreeMap<u32, String> = BTreeMap::new();
    let mut current = None;
    for line in block.lines().filter(|l| l.contains('│')) {
        let inner = line.trim().trim_matches('│').trim();
        let inner = match inner.split_once(char::is_whitespace) {
            Some((number, rest)) if number.parse::<u32>().is_ok() => {
                current = number.parse().ok();
                rest
            }
            _ => inner,
        };
        if let Some(layer) = current {
            let row = rows.entry(layer).or_default();
            row.push(' ');
            row.push_str(inner);
        }
    }
    let mut layers = BTreeMap::new();
    for (layer, text) in rows {
        let mut depth = 0;
        let mut outside = String::new();
        for c in text.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => outside.push(c),
                _ => {}
            }
        }
        for word in outside.split(|c: char| !(c.is_ascii_lowercase() || c == '_')) {
            if known.contains_key(word) {
                layers.insert(word.to_owned(), layer);
            }
        }
    }
    layers
}

/// The modules a source names with `crate::NAME`, its tests left out.
fn uses(source: &str) -> Vec<String> {
    let source = source.split("#[cfg(test)]\nmod tests").next().unwrap();
    let mut used = Vec::new();
    for (at, _) in source.match_indices("crate::") {
        let name: String = source[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() && !used.contains(&name) {
            used.push(name);
        }
    }
    used
}

#[test]
fn every_crate_path_names_a_module_of_the_same_layer_or_below() {
    let root = repository();
    let known = modules(&root.join("src"));
    let architecture = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let layers = layers(&architecture, &known);
    let missing: Vec<&String> = known.keys().filter(|m| !layers.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in docs/ARCHITECTURE.md: {missing:?}"
    );
    let mut upward = Vec::new();
    for (module, files) in &known {
        for file in files {
            let source = std::fs::read_to_string(file).unwrap();
            for used in uses(&source) {
                if let Some(&their) = layers.get(&used)
                    && their > layers[module]
                {
                    upward.push(format!(
                        "{} (layer {}) uses crate::{used} (layer {their})",
                        file.strip_prefix(&root).unwrap().display(),
                        layers[module]
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "paths up the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_layer_reader_sees_a_path_that_goes_up() {
    let known: BTreeMap<String, Vec<PathBuf>> = ["alloc", "sys", "sweep", "report"]
        .into_iter()
        .map(|m| (m.to_owned(), Vec::new()))
        .collect();
    let drawn = "```text\n ┌──┐\n │ 1  alloc   sweep/ (child,   │\n │        report)   │\n \
                 ├──┤\n │ 0  sys (OS calls, not alloc)  report │\n └──┘\n```\n";
    let layers = layers(drawn, &known);
    assert_eq!(layers["alloc"], 1);
    assert_eq!(layers["sweep"], 1);
    assert_eq!(layers["sys"], 0);
    // In parentheses, a word is a description, not the module.
    assert_eq!(layers["report"], 0);
    assert_eq!(
        uses(
            "use crate::sys;\nfn f() { crate::alloc::g() }\n#[cfg(test)]\nmod tests { use crate::report; }"
        ),
        ["sys", "alloc"]
    );
}
