//! Lists the preload library's sources for `library_cache`: every file of
//! `preload/src` (a link to `mayfail-preload/src`, which `cargo package`
//! follows, so the published crate holds copies), embedded with
//! `include_str!`. The directory is the one list: a file added to
//! mayfail-preload is embedded without naming it anywhere else.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("preload")
        .join("src");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            entry.file_name().into_string().unwrap_or_else(|name| {
                panic!("{}: a file name that is not UTF-8: {name:?}", dir.display())
            })
        })
        .filter(|name| name.ends_with(".rs"))
        .collect();
    names.sort();
    let mut out = String::from("[\n");
    for name in &names {
        let path = dir.join(name);
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push(']');
    let generated = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"))
        .join("preload_sources.rs");
    std::fs::write(&generated, out)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", generated.display()));
}
