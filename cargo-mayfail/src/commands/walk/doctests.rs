//! Doctests compiled once per walk: `cargo test --doc ARGS` runs once,
//! without injection, with rustdoc keeping each doctest's executable
//! (`--persist-doctests DIR`), and every doctest it ran then becomes a test
//! of the walk like any other: processes of its own, started directly,
//! each failing its first new stack. Without this, each run of the walk
//! paid rustdoc compiling every doctest again.
//!
//! `--persist-doctests` is unstable: cargo runs rustdoc through this
//! program (`RUSTDOC` pointing at it, [`REAL_RUSTDOC`] naming the real
//! one), which adds `-Z unstable-options --persist-doctests DIR/CRATE` to
//! the rustdoc invocations that test (`--test`) and lets them, and them
//! only, take unstable options (`RUSTC_BOOTSTRAP=1`, with the symbol
//! mangling of a stable compiler kept). Both variables are removed before
//! rustdoc starts, so nothing rustdoc runs sees them.
//!
//! What rustdoc leaves in `DIR/CRATE`: a directory per doctest compiled on
//! its own, `FILE_LINE_K/rust_out` (FILE's `/`, `\` and `.` made `_`); and
//! for doctests merged into one executable (edition 2024),
//! `merged_doctest_*/rust_out` beside the source of its runner, which names
//! the doctests in order (`mod __doctest_N` ... `new_doctest("NAME", ...)`)
//! and runs the N-th alone, on its main thread, when
//! `RUSTDOC_DOCTEST_RUN_NB_TEST=N`. Doctests that were not run (`ignore`,
//! `no_run`, `compile_fail`) are not walked. When a doctest that ran cannot
//! be matched to an executable (rustdoc changed its layout, several
//! packages' doctests), the doctests are walked as a whole command, one
//! site per run, as before; the walk says why.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::targets::{Binary, CargoTest, DocPackage};
use crate::failure::Failure;

/// The real rustdoc, for this program run as cargo's `RUSTDOC`.
pub(crate) const REAL_RUSTDOC: &str = "MAYFAIL_REAL_RUSTDOC";
/// Where rustdoc keeps the doctests' executables.
const PERSIST: &str = "MAYFAIL_PERSIST_DOCTESTS";
/// The merged runner's variable choosing the doctest to run.
const RUN_ONE: &str = "RUSTDOC_DOCTEST_RUN_NB_TEST";

/// When this program runs as cargo's `RUSTDOC` (see the module's docs):
/// runs the real rustdoc and returns its exit code; `None` otherwise.
pub(crate) fn as_rustdoc(args: &[OsString]) -> Option<i32> {
    let real = std::env::var_os(REAL_RUSTDOC)?;
    let persist = std::env::var_os(PERSIST);
    let mut command = Command::new(&real);
    command
        .args(args.iter().skip(1))
        .env_remove(REAL_RUSTDOC)
        .env_remove(PERSIST);
    if let Some(dir) = persist
        && args.iter().any(|a| a == "--test")
    {
        let krate = args
            .windows(2)
            .find(|w| w[0] == "--crate-name")
            .map_or_else(|| OsString::from("crate"), |w| w[1].clone());
        let mut into = PathBuf::from(dir);
        into.push(krate);
        command
            .args(["-Z", "unstable-options", "--persist-doctests"])
            .arg(into)
            .env("RUSTC_BOOTSTRAP", "1");
        // A compiler that takes unstable options mangles symbols as a
        // nightly one does (v0): the doctests keep a stable compiler's
        // names (and so the stacks and names of a plain `cargo test --doc`,
        // which a replay runs).
        if !args
            .iter()
            .any(|a| a.to_string_lossy().contains("symbol-mangling-version"))
        {
            command.args(["-C", "symbol-mangling-version=legacy"]);
        }
    }
    let error = command.exec();
    eprintln!(
        "mayfail: cannot run rustdoc ({}): {error}",
        Path::new(&real).display()
    );
    Some(crate::exit_codes::CANNOT_EXECUTE)
}

/// What [`compile`] made of the doctests.
pub(crate) enum Compiled {
    /// An executable per doctest that ran: a binary each, its one test
    /// named as the harness names it.
    Persisted(Vec<Binary>),
    /// Why the doctests are walked as a whole command instead.
    Unavailable(String),
}

/// Compiles and runs the doctests of `test` once, without injection,
/// keeping their executables in `dir`; cargo's output goes to `log`.
pub(crate) fn compile(
    test: &CargoTest,
    packages: &[DocPackage],
    dir: &Path,
    log: &std::fs::File,
) -> Result<Compiled, Failure> {
    let [package] = packages else {
        return Ok(Compiled::Unavailable(format!(
            "{} packages have doctests; their executables cannot be told apart",
            packages.len()
        )));
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Failure::io("remove", dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Failure::io("create", dir, e))?;
    let exe = std::env::current_exe().map_err(|e| Failure::io("find", Path::new("mayfail"), e))?;
    // The rustdoc cargo would run: `RUSTDOC`, else `build.rustdoc`.
    let rustdoc = super::super::preload::rustdoc_of(&test.cargo)?;
    let mut command = Command::new(super::targets::cargo());
    command
        .args(["test", "--doc"])
        .args(test.cargo.iter().filter(|a| *a != "-q" && *a != "--quiet"))
        .arg("--")
        .args(
            test.harness
                .iter()
                .filter(|a| *a != "-q" && *a != "--quiet"),
        )
        .env("RUSTDOC", exe)
        .env(REAL_RUSTDOC, rustdoc)
        .env(PERSIST, dir)
        .env_remove("MAYFAIL_INJECT")
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            log.try_clone()
                .map(Stdio::from)
                .map_err(|e| Failure::io("write", Path::new("the log"), e))?,
        );
    super::super::without_backtraces(&mut command);
    let output = command
        .output()
        .map_err(|e| Failure::spawn("cargo".to_owned(), e))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let ran = ran(&stdout);
    if ran.is_empty() {
        return Ok(Compiled::Unavailable(if output.status.success() {
            "`cargo test --doc` ran no doctest this walk can name".to_owned()
        } else {
            "`cargo test --doc` failed before running doctests (see the log)".to_owned()
        }));
    }
    let executables = match executables(&dir.join(&package.krate)) {
        Ok(found) => found,
        Err(why) => return Ok(Compiled::Unavailable(why)),
    };
    let mut doctests = Vec::new();
    for name in ran {
        let Some((executable, env)) = executables.find(&name) else {
            return Ok(Compiled::Unavailable(format!(
                "no executable kept for the doctest `{name}`"
            )));
        };
        let binary = Binary {
            package: package.name.clone(),
            kind: DOCTEST.to_owned(),
            target: package.krate.clone(),
            executable,
            directory: package.directory.clone(),
            version: package.version.clone(),
            preload: None,
            env: env.into_iter().collect(),
            should_panic: should_panic(&package.directory, &name),
            only: Some(name),
        };
        doctests.push(binary);
    }
    Ok(Compiled::Persisted(doctests))
}

/// The kind of a doctest's test (`Test::kind`).
pub(crate) const DOCTEST: &str = "doctest";

/// The doctests the harness ran (`test NAME ... ok` or `... FAILED`), in
/// its order; those it did not run (`ignored`, `- compile`, `- compile
/// fail`) left out.
fn ran(stdout: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        let Some((name, result)) = rest.rsplit_once(" ... ") else {
            continue;
        };
        if !(result.starts_with("ok") || result.starts_with("FAILED")) {
            continue;
        }
        if name.ends_with(" - compile") || name.ends_with(" - compile fail") {
            continue;
        }
        names.push(name.to_owned());
    }
    names
}

/// Whether the doctest `name` is `should_panic`: said by its name (merged
/// doctests), else by its code block's opening line in its file, the line
/// its name gives (```` ```should_panic ````, ```` ```rust,should_panic ````).
fn should_panic(package: &Path, name: &str) -> bool {
    if name.ends_with(" - should panic") {
        return true;
    }
    let Some((file, line)) = file_and_line(name) else {
        return false;
    };
    std::fs::read_to_string(package.join(file))
        .ok()
        .and_then(|text| {
            let fence = text.lines().nth(line.checked_sub(1)? as usize)?;
            Some(fence.contains("```") && fence.contains("should_panic"))
        })
        .unwrap_or(false)
}

/// A doctest's name without the harness's suffix (` - should panic`).
fn base_name(name: &str) -> &str {
    name.strip_suffix(" - should panic").unwrap_or(name)
}

/// `src/lib.rs - Foo::bar (line 12)`: the file and the line.
fn file_and_line(name: &str) -> Option<(&str, u32)> {
    let name = base_name(name);
    let (file, _) = name.split_once(" - ")?;
    let at = name.rfind(" (line ")?;
    let line = name[at + 7..].strip_suffix(')')?.parse().ok()?;
    Some((file, line))
}

/// rustdoc's directory name for a file: `/`, `\` and `.` made `_`.
fn folder(file: &str) -> String {
    file.chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '.') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The executables rustdoc kept for one crate.
#[derive(Default)]
struct Executables {
    /// `FILE_LINE` (as rustdoc names its folder) -> the executables of the
    /// doctests at that line, by their number K.
    alone: HashMap<String, Vec<(u32, PathBuf)>>,
    /// A merged doctest's name -> its runner and its number.
    merged: HashMap<String, (PathBuf, usize)>,
}

impl Executables {
    /// The executable that runs the doctest `name` alone, and the variable
    /// to set for it.
    fn find(&self, name: &str) -> Option<(PathBuf, Option<(OsString, OsString)>)> {
        if let Some((runner, number)) = self.merged.get(base_name(name)) {
            let env = (OsString::from(RUN_ONE), OsString::from(number.to_string()));
            return Some((runner.clone(), Some(env)));
        }
        let (file, line) = file_and_line(name)?;
        match self
            .alone
            .get(&format!("{}_{line}", folder(file)))?
            .as_slice()
        {
            // Several doctests at one line (a macro): which is which is
            // not known.
            [(_, executable)] => Some((executable.clone(), None)),
            _ => None,
        }
    }
}

/// Reads the executables rustdoc kept in `dir` (see the module's docs).
fn executables(dir: &Path) -> Result<Executables, String> {
    let mut found = Executables::default();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("rustdoc kept no doctest in {} ({e})", dir.display()))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let executable = path.join("rust_out");
        if !executable.is_file() {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("merged_doctest") {
            let runner = std::fs::read_dir(&path)
                .map_err(|e| e.to_string())?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(OsStr::to_str)
                        .is_some_and(|n| n.starts_with("doctest_runner") && n.ends_with(".rs"))
                })
                .ok_or_else(|| format!("no runner source beside {}", executable.display()))?;
            let source = std::fs::read_to_string(&runner).map_err(|e| e.to_string())?;
            let names = mayfail::state::merged_doctest_names(&source)
                .ok_or_else(|| format!("cannot read the doctests {} names", runner.display()))?;
            for (number, test) in names.into_iter().enumerate() {
                found.merged.insert(test, (executable.clone(), number));
            }
            continue;
        }
        // FILE_LINE_K
        let mut parts = name.rsplitn(3, '_');
        let (Some(k), Some(line), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(k), Ok(_)) = (k.parse::<u32>(), line.parse::<u32>()) else {
            continue;
        };
        found
            .alone
            .entry(format!("{file}_{line}"))
            .or_default()
            .push((k, executable));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doctests_the_harness_ran_are_read_from_its_output() {
        let stdout = "\nrunning 6 tests\n\
            test src/lib.rs - (line 1) ... ok\n\
            test src/lib.rs - (line 14) ... ignored\n\
            test src/lib.rs - (line 5) - compile ... ok\n\
            test src/lib.rs - (line 8) - compile fail ... ok\n\
            test src/lib.rs - (line 11) - should panic ... ok\n\
            test src/lib.rs - Foo<T>::bar (line 17) ... FAILED\n\
            \ntest result: FAILED. 4 passed; 1 failed\n";
        assert_eq!(
            ran(stdout),
            [
                "src/lib.rs - (line 1)",
                "src/lib.rs - (line 11) - should panic",
                "src/lib.rs - Foo<T>::bar (line 17)"
            ]
        );
        assert_eq!(
            file_and_line("src/a.b/lib.rs - x::y (line 42) - should panic"),
            Some(("src/a.b/lib.rs", 42))
        );
        assert_eq!(folder("src/a.b/lib.rs"), "src_a_b_lib_rs");
    }
}
