//! What the tests of the preload library share, in this package and in
//! `mayfail-preload`: the library itself, scratch directories, C programs
//! compiled for a test, and runs bounded in time.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The preload library: `beside` if cargo built it there, else built once
/// for these tests, in a target directory of their own (`cargo test` does
/// not build another package's `cdylib`, and keeps its own target directory
/// locked while tests run).
pub fn library(beside: PathBuf) -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            if beside.is_file() {
                return beside;
            }
            let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preload-build");
            // Both packages that include this module sit at the workspace's top.
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "mayfail-preload",
                    "--manifest-path",
                ])
                .arg(workspace.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target)
                .env_remove("RUSTFLAGS")
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building mayfail-preload failed");
            let built = target.join("debug/libmayfail_preload.so");
            assert!(built.is_file(), "{} is missing", built.display());
            built
        })
        .clone()
}

/// A fresh, empty directory `area/name` under the package's scratch target
/// directory.
pub fn scratch(area: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(area).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `source` into `dir/program` with `cc -g` and `flags`.
pub fn compile_c(dir: &Path, source: &str, flags: &[&str]) -> PathBuf {
    std::fs::write(dir.join("program.c"), source).unwrap();
    let built = Command::new("cc")
        .current_dir(dir)
        .arg("-g")
        .args(flags)
        .args(["-o", "program", "program.c"])
        .status()
        .expect("cc runs");
    assert!(built.success(), "cc {flags:?} failed");
    dir.join("program")
}

/// Runs `command` with no input and its output captured, killing it (and
/// failing the test) after `secs`.
pub fn bounded(command: &mut Command, secs: u64) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    finish_within(child, secs)
}

/// Waits for `child`, killing it (and failing the test) after `secs`.
pub fn finish_within(mut child: Child, secs: u64) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A run's standard output, then its standard error.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Compiles the C++ `source` into `dir/program` with `g++ -g` and `flags`.
pub fn compile_cpp(dir: &Path, source: &str, flags: &[&str]) -> PathBuf {
    std::fs::write(dir.join("program.cpp"), source).unwrap();
    let built = Command::new("g++")
        .current_dir(dir)
        .arg("-g")
        .args(flags)
        .args(["-o", "program", "program.cpp"])
        .status()
        .expect("g++ runs");
    assert!(built.success(), "g++ {flags:?} failed");
    dir.join("program")
}

/// The full path of Debian's `libjemalloc.so.2` as the C compiler finds it
/// (`.ci/run` installs the package), or `None` when it is absent outside CI.
/// Absent with `CI=true`, the test fails instead: nothing may be skipped in
/// CI.
pub fn jemalloc(test: &str) -> Option<PathBuf> {
    let found = Command::new("cc")
        .arg("-print-file-name=libjemalloc.so.2")
        .output()
        .ok()
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|path| path.is_absolute() && path.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none_or(|ci| ci != "true"),
            "{test}: libjemalloc.so.2 is missing (Debian's libjemalloc2, which .ci/run installs)"
        );
        eprintln!("{test}: SKIPPED: libjemalloc.so.2 is missing (apt-get install libjemalloc2)");
    }
    found
}

/// Compiles `source` into `dir/name` with `cc -g` and `flags` (after the
/// source, so libraries named there resolve its symbols).
pub fn compile_c_named(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let file = format!("{name}.c");
    std::fs::write(dir.join(&file), source).unwrap();
    let built = Command::new("cc")
        .current_dir(dir)
        .args(["-g", "-o", name, &file])
        .args(flags)
        .status()
        .expect("cc runs");
    assert!(built.success(), "cc {name} {flags:?} failed");
    dir.join(name)
}
