//! The command a sweep's report prints to replay a point: under cargo, the
//! `cargo test` line that runs the same test alone (its package, its
//! profile, its target and its name); elsewhere, the process's own command line. Runs in the
//! parent, never inside the allocator.

use std::fmt::Write as _;
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

/// `cargo test -p PACKAGE [PROFILE] TARGET -- --exact TEST` for a sweep on
/// a libtest test's thread, `cargo test -p PACKAGE [PROFILE] --doc -- WORDS`
/// in a doctest (see [`doctest_args`]); `None` when the process was not started by cargo (no `CARGO_PKG_NAME`)
/// or the sweep runs on a thread the test spawned.
fn cargo_test(caller: &Caller) -> Option<String> {
    let package = std::env::var("CARGO_PKG_NAME").ok()?;
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let package_word = ShellWord(package.as_bytes());
    if in_doctest() {
        let profile = profile_option(None);
        let args = merged_doctests()
            .and_then(|(names, ours)| doctest_args(&names, ours))
            .or_else(|| Some(vec![doctest_file(caller, manifest_dir.as_deref())?]));
        let mut line = format!("cargo test -p {package_word}{profile} --doc");
        if let Some(args) = args {
            line.push_str(" --");
            for arg in args {
                let _ = write!(line, " {}", ShellWord(arg.as_bytes()));
            }
        }
        return Some(line);
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
    let profile = profile_option(Some(&exe));
    Some(format!(
        "cargo test -p {package_word}{profile} {target} -- --exact {}",
        ShellWord(test.as_bytes())
    ))
}

/// The cargo option that picks the profile the test binary `exe` was built
/// with (with a leading space), told by the directory cargo put it in:
/// `target/debug/deps` (none), `target/release/deps` (`--release`), else
/// `target/NAME/deps` (`--profile NAME`). A doctest's binary is rustdoc's,
/// elsewhere: there the build's debug assertions tell a release build
/// (`--release`), unless the profile turned them on. Features, and a
/// `--target`, cannot be told from inside the process: the guide says so.
fn profile_option(exe: Option<&Path>) -> String {
    let profile_dir = exe
        .and_then(Path::parent)
        .filter(|dir| dir.file_name().is_some_and(|name| name == "deps"))
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|name| name.to_str());
    match profile_dir {
        Some("debug") => String::new(),
        Some("release") => " --release".to_owned(),
        Some(name) => format!(" --profile {}", ShellWord(name.as_bytes())),
        None if cfg!(debug_assertions) => String::new(),
        None => " --release".to_owned(),
    }
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

/// The doctests of this process's binary when rustdoc merged the
/// package's doctests into one (edition 2024), and which of them this
/// process runs: rustdoc runs each in a process of its own, numbered by
/// `RUSTDOC_DOCTEST_RUN_NB_TEST`, and the source of its runner, next to
/// the binary, names them in that order (`mod __doctest_N` with a
/// `new_doctest("NAME", ...)`). That source is rustdoc's own and may
/// change: when it cannot be read so, `None`.
fn merged_doctests() -> Option<(Vec<String>, usize)> {
    let number: usize = std::env::var("RUSTDOC_DOCTEST_RUN_NB_TEST")
        .ok()?
        .parse()
        .ok()?;
    let exe = std::env::current_exe().ok()?;
    let runner = std::fs::read_dir(exe.parent()?)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("doctest_runner") && name.ends_with(".rs"))
        })?;
    let names = crate::text::merged_doctest_names(&std::fs::read_to_string(runner).ok()?)?;
    (number < names.len()).then_some((names, number))
}

/// The libtest arguments that run only `names[ours]` of the doctests
/// `names`. `cargo test --doc -- ARGS` hands ARGS to rustdoc, which splits
/// them at white space, and rustdoc names doctests `FILE - ITEM (line N)`:
/// so no argument can hold a whole name, and `--exact` cannot be used.
/// Filters match any part of a name, skips exclude: a word of its name as
/// the filter, and for each other doctest that word matches, a `--skip`
/// with a word of that one's name that is not part of ours. The choice
/// with the fewest skips; `None` if no word picks it alone.
fn doctest_args(names: &[String], ours: usize) -> Option<Vec<String>> {
    let name = &names[ours];
    name.split_whitespace()
        .filter_map(|filter| {
            let mut args = vec![filter.to_owned()];
            for (i, other) in names.iter().enumerate() {
                if i == ours || !other.contains(filter) {
                    continue;
                }
                let skip = other.split_whitespace().find(|word| !name.contains(word))?;
                args.extend(["--skip".to_owned(), skip.to_owned()]);
            }
            Some(args)
        })
        .min_by_key(Vec::len)
}

/// The file of the doctest this process runs, relative to the package, as
/// a filter that runs the doctests of that file: rustdoc says it in the
/// environment of a doctest it runs as a binary of its own
/// (`UNSTABLE_RUSTDOC_TEST_PATH`), else the caller's file tells it.
fn doctest_file(caller: &Caller, manifest_dir: Option<&Path>) -> Option<String> {
    let file = std::env::var_os("UNSTABLE_RUSTDOC_TEST_PATH")
        .map(PathBuf::from)
        .or_else(|| caller.file.clone())?;
    let file = match manifest_dir {
        Some(dir) => file
            .strip_prefix(dir)
            .map(Path::to_path_buf)
            .unwrap_or(file),
        None => file,
    };
    let file = file.to_str()?;
    let usable = (file.ends_with(".rs") || file.ends_with(".md"))
        && !file.contains(char::is_whitespace)
        && !file.starts_with('/');
    usable.then(|| file.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doctests are picked by words of their names, never a whole name
    /// (rustdoc splits the arguments at white space): a file's word where
    /// it alone has doctests, else skips for the others it matches.
    #[test]
    fn a_doctest_is_picked_by_words_of_its_name() {
        let names: Vec<String> = [
            "src/lib.rs - (line 3)",
            "src/lib.rs - (line 13)",
            "src/more.rs - more (line 3)",
            "src/more.rs - more::Holder::again (line 13)",
            "src/one.rs - one (line 7)",
        ]
        .map(str::to_owned)
        .to_vec();
        let args = |ours| doctest_args(&names, ours).unwrap().join(" ");
        assert_eq!(args(4), "src/one.rs");
        assert_eq!(args(3), "more::Holder::again");
        // "src/lib.rs - (line 3)": every word of it is in another's name
        // too, but those have words of their own to skip.
        for ours in 0..names.len() {
            let args = doctest_args(&names, ours).unwrap();
            let (filter, skips) = (&args[0], args[1..].iter().skip(1).step_by(2));
            let skips: Vec<&String> = skips.collect();
            let ran: Vec<usize> = (0..names.len())
                .filter(|&i| {
                    names[i].contains(filter.as_str())
                        && !skips.iter().any(|s| names[i].contains(s.as_str()))
                })
                .collect();
            assert_eq!(ran, [ours], "{args:?}");
            assert!(args.iter().all(|a| !a.contains(char::is_whitespace)));
        }
    }

    #[test]
    fn the_profile_is_told_by_the_binarys_directory() {
        let option = |path: &str| profile_option(Some(Path::new(path)));
        assert_eq!(option("/w/target/debug/deps/app-0123abcd"), "");
        assert_eq!(option("/w/target/release/deps/app-0123abcd"), " --release");
        assert_eq!(
            option("/w/target/x86_64-unknown-linux-gnu/fast/deps/app-0123abcd"),
            " --profile fast"
        );
    }

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
