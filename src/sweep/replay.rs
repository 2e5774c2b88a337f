//! The command a sweep's report prints to replay a point: under cargo, the
//! `cargo test` line that runs the same test alone (its package, its target
//! and its name); elsewhere, the process's own command line. Runs in the
//! parent, never inside the allocator.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::symbols;
use crate::text::ShellWord;

/// Where a sweep was started from, found on its thread before any child is
/// forked.
#[derive(Clone, Debug, Default)]
pub(super) struct Caller {
    /// Whether the thread runs a libtest test: libtest calls each test
    /// through its own functions (`test::run_test`...), which a thread the
    /// test spawned does not have on its stack.
    pub(super) on_test_thread: bool,
    /// The source file of the test (or doctest) that started the sweep:
    /// the outermost function with a file on the stack outside mayfail,
    /// std and the harness, whichever helper it called the sweep through.
    pub(super) file: Option<PathBuf>,
    /// Its line in that file.
    pub(super) line: Option<u32>,
}

impl Caller {
    /// Walks the current stack.
    pub(super) fn find() -> Caller {
        let mut frames = [0usize; symbols::MAX_FRAMES];
        let depth = symbols::walk(&mut frames);
        let mut caller = Caller::default();
        for &ip in &frames[..depth] {
            symbols::resolve(ip, |frame| {
                caller.on_test_thread |= frame.name.starts_with("test::");
                if !caller.on_test_thread
                    && frame.named
                    && !frame.is_machinery()
                    && let Some(file) = frame.file
                {
                    caller.file = Some(file.to_path_buf());
                    caller.line = frame.line;
                }
            });
            if caller.on_test_thread {
                break;
            }
        }
        caller
    }
}

/// `MAYFAIL_SWEEP_POINT=point` and the command that runs this sweep again:
/// see [`cargo_test`]; the process's own command line when that does not
/// apply (not under cargo, or on a thread the test spawned: it reruns the
/// whole process, and only the named sweep replays).
pub(super) fn replay_line(point: &str, caller: &Caller) -> String {
    let command = cargo_test(caller).unwrap_or_else(|| {
        let args: Vec<String> = std::env::args_os()
            .map(|arg| ShellWord(arg.as_bytes()).to_string())
            .collect();
        args.join(" ")
    });
    format!(
        "MAYFAIL_SWEEP_POINT={} {command}",
        ShellWord(point.as_bytes())
    )
}

/// `cargo test -p PACKAGE TARGET -- --exact TEST` for a sweep on a libtest
/// test's thread, `cargo test -p PACKAGE --doc -- FILTER` in a doctest;
/// `None` when the process was not started by cargo (no `CARGO_PKG_NAME`)
/// or the sweep runs on a thread the test spawned.
fn cargo_test(caller: &Caller) -> Option<String> {
    let package = std::env::var("CARGO_PKG_NAME").ok()?;
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let package_word = ShellWord(package.as_bytes());
    if in_doctest() {
        let filter = match (&caller.file, caller.line, &manifest_dir) {
            (Some(file), Some(line), Some(dir)) => doctest_filter(file, line as usize, dir),
            _ => None,
        };
        return Some(match filter {
            Some(filter) => format!(
                "cargo test -p {package_word} --doc -- {}",
                ShellWord(filter.as_bytes())
            ),
            None => format!("cargo test -p {package_word} --doc"),
        });
    }
    let thread = std::thread::current();
    let test = thread
        .name()
        .filter(|&name| caller.on_test_thread && name != "main")?;
    let exe = std::env::current_exe().ok()?;
    let target = target_of(
        &exe,
        caller.file.as_deref(),
        manifest_dir.as_deref(),
        &package,
    );
    Some(format!(
        "cargo test -p {package_word} {target} -- --exact {}",
        ShellWord(test.as_bytes())
    ))
}

/// Whether this process is a doctest rustdoc runs: rustdoc tells it in
/// the environment, and builds it in a directory of its own.
fn in_doctest() -> bool {
    std::env::var_os("RUSTDOC_DOCTEST_RUN_NB_TEST").is_some()
        || std::env::var_os("UNSTABLE_RUSTDOC_TEST_PATH").is_some()
        || std::env::current_exe().ok().is_some_and(|exe| {
            exe.parent()
                .and_then(Path::file_name)
                .is_some_and(|dir| dir.as_bytes().starts_with(b"rustdoctest"))
        })
}

/// The cargo target option (`--lib`, `--bin NAME`, `--test NAME`,
/// `--example NAME`, `--bench NAME`) of the test binary `exe`, told by
/// where the sweep's caller is (`file`) in the package at `manifest_dir`:
/// `tests/`, `benches/`, `examples/`, `src/bin/` or `src/main.rs`, else
/// the library's sources. The name is the binary's (cargo names it after
/// the target, dashes made underscores), spelt as the target's file is.
/// Without a file, by the binary's name and directory alone.
fn target_of(
    exe: &Path,
    file: Option<&Path>,
    manifest_dir: Option<&Path>,
    package: &str,
) -> String {
    let stem = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.rsplit_once('-').map_or(s, |(stem, _)| stem))
        .unwrap_or_default();
    let in_examples = exe
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|dir| dir == "examples");
    let relative = file.map(|file| match manifest_dir {
        Some(dir) => file.strip_prefix(dir).unwrap_or(file),
        None => file,
    });
    let mut parts = relative.into_iter().flat_map(Path::components);
    let first = parts.next().and_then(|c| c.as_os_str().to_str());
    let second = parts.next().and_then(|c| c.as_os_str().to_str());
    let named = |kind: &str, dir: &str| {
        let name = spelt_as_file(stem, manifest_dir.map(|d| d.join(dir)).as_deref());
        format!("--{kind} {}", ShellWord(name.as_bytes()))
    };
    let lib_name = package.replace('-', "_");
    match (first, second) {
        (Some("tests"), _) => named("test", "tests"),
        (Some("benches"), _) => named("bench", "benches"),
        (Some("examples"), _) => named("example", "examples"),
        (Some("src"), Some("bin")) => named("bin", "src/bin"),
        (Some("src"), Some("main.rs")) => bin_named(stem, package),
        (Some("src"), _) if manifest_dir.is_none_or(|dir| dir.join("src/lib.rs").is_file()) => {
            "--lib".to_owned()
        }
        (Some("src"), _) => bin_named(stem, package),
        _ if in_examples => named("example", "examples"),
        _ if stem == lib_name => "--lib".to_owned(),
        _ => named("test", "tests"),
    }
}

/// `--bin NAME` for the binary of `src/main.rs`, named after the package.
fn bin_named(stem: &str, package: &str) -> String {
    let name = if package.replace('-', "_") == stem {
        package
    } else {
        stem
    };
    format!("--bin {}", ShellWord(name.as_bytes()))
}

/// A target's name from its binary's `stem`: cargo turns the dashes of a
/// target's name into underscores; the name is the one whose file
/// (`NAME.rs` or `NAME/main.rs` in `dir`) exists, else the stem.
fn spelt_as_file(stem: &str, dir: Option<&Path>) -> String {
    let Some(dir) = dir else {
        return stem.to_owned();
    };
    let dashed = stem.replace('_', "-");
    [stem, dashed.as_str()]
        .into_iter()
        .find(|name| {
            dir.join(format!("{name}.rs")).is_file() || dir.join(name).join("main.rs").is_file()
        })
        .unwrap_or(stem)
        .to_owned()
}

/// The libtest filter that picks one doctest: rustdoc names each after its
/// file, its item and the line of its opening fence (`src/lib.rs -
/// parse (line 12)`), and maps the doctest's lines back onto its file, so
/// the fence is the last one at or above the caller's line. `None` if the
/// file cannot be read.
fn doctest_filter(file: &Path, line: usize, manifest_dir: &Path) -> Option<String> {
    let source = std::fs::read_to_string(manifest_dir.join(file)).ok()?;
    let fence = source
        .lines()
        .take(line)
        .enumerate()
        .filter(|(_, text)| {
            let text = text.trim_start();
            let doc = ["///", "//!"]
                .iter()
                .find_map(|marker| text.strip_prefix(marker))
                .unwrap_or(text);
            doc.trim_start().starts_with("```")
        })
        .map(|(i, _)| i + 1)
        .last()?;
    Some(format!("(line {fence})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_told_by_the_callers_file() {
        let exe = Path::new("/w/target/debug/deps/sweep_it-0123abcd");
        let dir = Path::new("/nonexistent/app");
        for (file, target) in [
            ("/nonexistent/app/tests/sweep_it.rs", "--test sweep_it"),
            ("/nonexistent/app/tests/common/mod.rs", "--test sweep_it"),
            ("/nonexistent/app/benches/sweep_it.rs", "--bench sweep_it"),
            (
                "/nonexistent/app/examples/sweep_it.rs",
                "--example sweep_it",
            ),
            ("/nonexistent/app/src/bin/sweep_it.rs", "--bin sweep_it"),
        ] {
            assert_eq!(
                target_of(exe, Some(Path::new(file)), Some(dir), "app"),
                target
            );
        }
        let app = Path::new("/w/target/debug/deps/app-0123abcd");
        assert_eq!(
            target_of(
                app,
                Some(Path::new("/nonexistent/app/src/main.rs")),
                Some(dir),
                "app"
            ),
            "--bin app"
        );
        assert_eq!(target_of(app, None, None, "app"), "--lib");
        let example = Path::new("/w/target/debug/examples/ex-0123abcd");
        assert_eq!(target_of(example, None, None, "app"), "--example ex");
    }
}
