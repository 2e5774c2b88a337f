//! What the per-test engine runs: the test binaries of `cargo test ARGS`,
//! built once as cargo-nextest finds them (`cargo test --no-run
//! --message-format=json-render-diagnostics ARGS`: every `compiler-artifact`
//! message whose profile is a test's names its executable, and its target's
//! kind and name say which `--lib`/`--test NAME`/`--bin NAME` it is), and
//! the tests each one lists (`--list --format terse`: lines `NAME: test`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::failure::Failure;
use crate::process::{quoted, shell_quote};
use crate::state::Test;

/// A test binary and how to run it.
pub(crate) struct Binary {
    pub(crate) package: String,
    /// `lib`, `bin`, `test`, `example` or `bench`.
    pub(crate) kind: String,
    pub(crate) target: String,
    pub(crate) executable: PathBuf,
    /// Its package's directory: tests run there, as under `cargo test`.
    pub(crate) directory: PathBuf,
    pub(crate) version: String,
    /// `LD_PRELOAD` for it: the preload library, unless it declares `MayFail`.
    pub(crate) preload: Option<OsString>,
    /// Variables it needs besides cargo's (a merged doctest's number).
    pub(crate) env: Vec<(OsString, OsString)>,
    /// The one test it runs, for a doctest's executable (which lists none).
    pub(crate) only: Option<String>,
    /// A `should_panic` doctest's: it passes by panicking (exit 101).
    pub(crate) should_panic: bool,
}

impl Binary {
    /// Whether it is a doctest's executable (see `doctests`).
    pub(crate) fn is_doctest(&self) -> bool {
        self.only.is_some()
    }

    /// The test `name` of this binary.
    pub(crate) fn test(&self, name: &str) -> Test {
        Test {
            package: self.package.clone(),
            kind: self.kind.clone(),
            target: self.target.clone(),
            name: name.to_owned(),
        }
    }

    /// A command running this binary with `args`, in its package's
    /// directory with the variables cargo sets for a test, under the
    /// preload library if it needs it, without injection.
    /// A doctest's executable runs its one doctest and takes no arguments.
    pub(crate) fn command(&self, args: &[OsString]) -> Command {
        let mut command = Command::new(&self.executable);
        if !self.is_doctest() {
            command.args(args);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.directory)
            .env("CARGO_MANIFEST_DIR", &self.directory)
            .env("CARGO_PKG_NAME", &self.package)
            .env("CARGO_PKG_VERSION", &self.version)
            .env_remove("MAYFAIL_INJECT")
            .stdin(Stdio::null());
        if let Some(preload) = &self.preload {
            command.env("LD_PRELOAD", preload);
        }
        super::super::without_backtraces(&mut command);
        command
    }
}

/// A `cargo test` command split: cargo's arguments and the harness's.
pub(crate) struct CargoTest {
    pub(crate) cargo: Vec<OsString>,
    pub(crate) harness: Vec<OsString>,
}

impl CargoTest {
    /// `cargo test A -- B`: A and B.
    pub(crate) fn split(argv: &[OsString]) -> CargoTest {
        let args = argv.get(2..).unwrap_or_default();
        match args.iter().position(|a| a == "--") {
            Some(at) => CargoTest {
                cargo: args[..at].to_vec(),
                harness: args[at + 1..].to_vec(),
            },
            None => CargoTest {
                cargo: args.to_vec(),
                harness: Vec::new(),
            },
        }
    }

    /// Whether cargo's arguments choose targets, so that `cargo test` runs
    /// no doctests.
    pub(crate) fn chooses_targets(&self) -> bool {
        const CHOOSING: [&str; 11] = [
            "--lib",
            "--bin",
            "--bins",
            "--test",
            "--tests",
            "--example",
            "--examples",
            "--bench",
            "--benches",
            "--all-targets",
            "--no-run",
        ];
        self.cargo.iter().any(|a| {
            let a = a.to_string_lossy();
            CHOOSING
                .iter()
                .any(|c| a == *c || a.starts_with(&format!("{c}=")))
        })
    }

    /// The harness's option about ignored tests, if it gave one.
    pub(crate) fn ignored_option(&self) -> Option<&OsString> {
        self.harness
            .iter()
            .find(|a| *a == "--ignored" || *a == "--include-ignored")
    }
}

/// What `cargo test --no-run` built.
pub(crate) struct Built {
    pub(crate) binaries: Vec<Binary>,
    /// Some package built has a library with doctests.
    pub(crate) doctests: bool,
    /// The packages whose library has doctests.
    pub(crate) doc_packages: Vec<DocPackage>,
}

/// A package whose library has doctests.
pub(crate) struct DocPackage {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) directory: PathBuf,
    /// Its library's crate name (`thin_vec`).
    pub(crate) krate: String,
}

#[derive(Deserialize)]
struct Message {
    reason: String,
    package_id: Option<String>,
    target: Option<TargetInfo>,
    profile: Option<Profile>,
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct TargetInfo {
    name: String,
    kind: Vec<String>,
    #[serde(default)]
    doctest: bool,
}

#[derive(Deserialize)]
struct Profile {
    test: bool,
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    version: String,
    manifest_path: PathBuf,
    targets: Vec<TargetInfo>,
}

/// Builds the test binaries of `cargo test ARGS` once; cargo's output goes
/// to `log`. A build that fails is [`Failure::BuildFailed`]-like: `None`.
pub(crate) fn build(test: &CargoTest, log: &File) -> Result<Option<Built>, Failure> {
    let packages = metadata(test, log)?;
    let mut command = Command::new(cargo());
    command
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(&test.cargo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_output(log)?);
    let output = command
        .output()
        .map_err(|e| Failure::spawn("cargo".to_owned(), e))?;
    if !output.status.success() {
        return Ok(None);
    }
    let mut built = Built {
        binaries: Vec::new(),
        doctests: false,
        doc_packages: Vec::new(),
    };
    let mut with_tests: Vec<&Package> = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Message>(line) else {
            continue;
        };
        let (Some(id), Some(target), Some(profile)) =
            (&message.package_id, message.target, message.profile)
        else {
            continue;
        };
        let Some(package) = packages.iter().find(|p| p.id == *id) else {
            continue;
        };
        if !with_tests.iter().any(|p| p.id == package.id) {
            with_tests.push(package);
        }
        let (Some(executable), true) = (message.executable, profile.test) else {
            continue;
        };
        if message.reason != "compiler-artifact" {
            continue;
        }
        built.binaries.push(Binary {
            package: package.name.clone(),
            kind: target_kind(&target.kind),
            target: target.name,
            preload: None,
            env: Vec::new(),
            only: None,
            should_panic: false,
            executable,
            directory: package
                .manifest_path
                .parent()
                .map_or_else(PathBuf::new, Path::to_owned),
            version: package.version.clone(),
        });
    }
    if !test.chooses_targets() {
        for package in with_tests {
            let Some(library) = package
                .targets
                .iter()
                .find(|t| t.doctest && is_library(&t.kind))
            else {
                continue;
            };
            built.doc_packages.push(DocPackage {
                name: package.name.clone(),
                version: package.version.clone(),
                directory: package
                    .manifest_path
                    .parent()
                    .map_or_else(PathBuf::new, Path::to_owned),
                krate: library.name.replace('-', "_"),
            });
        }
    }
    built.doctests = !built.doc_packages.is_empty();
    Ok(Some(built))
}

/// The packages of the workspace, from `cargo metadata --no-deps`.
fn metadata(test: &CargoTest, log: &File) -> Result<Vec<Package>, Failure> {
    let mut command = Command::new(cargo());
    command
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stdin(Stdio::null())
        .stderr(log_output(log)?);
    // The options of `cargo test` that say where the workspace is and how
    // to read it.
    let mut words = test.cargo.iter();
    while let Some(word) = words.next() {
        let text = word.to_string_lossy();
        if ["--offline", "--frozen", "--locked"].contains(&text.as_ref())
            || text.starts_with("--manifest-path=")
        {
            command.arg(word);
        } else if text == "--manifest-path" {
            command.arg(word).args(words.next());
        }
    }
    let output = command
        .output()
        .map_err(|e| Failure::spawn("cargo".to_owned(), e))?;
    let parsed: Option<Metadata> = output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).ok())
        .flatten();
    parsed.map(|m| m.packages).ok_or_else(|| {
        Failure::bad_input(
            "`cargo metadata --no-deps` failed: the command is not run in a cargo package \
             (its output is in the state file's .log)",
        )
    })
}

/// `$CARGO` (the cargo that runs `cargo mayfail`), else `cargo`.
pub(crate) fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn log_output(log: &File) -> Result<Stdio, Failure> {
    log.try_clone()
        .map(Stdio::from)
        .map_err(|e| Failure::io("write", Path::new("the log"), e))
}

/// `lib` for every kind of library, else the kind itself.
fn target_kind(kinds: &[String]) -> String {
    if is_library(kinds) {
        "lib".to_owned()
    } else {
        kinds.first().cloned().unwrap_or_else(|| "lib".to_owned())
    }
}

fn is_library(kinds: &[String]) -> bool {
    kinds.iter().any(|k| {
        ["lib", "rlib", "dylib", "cdylib", "staticlib", "proc-macro"].contains(&k.as_str())
    })
}

/// The tests `binary` lists with the harness's arguments, ignored tests
/// left out unless the harness asked for them; or why it cannot list them.
pub(crate) fn list(binary: &Binary, test: &CargoTest) -> Result<Vec<String>, String> {
    if let Some(only) = &binary.only {
        return Ok(vec![only.clone()]);
    }
    let listed = |extra: Option<&str>| -> Result<Vec<String>, String> {
        let mut args: Vec<OsString> = vec!["--list".into(), "--format".into(), "terse".into()];
        args.extend(test.harness.iter().cloned());
        args.extend(extra.map(OsString::from));
        let mut command = binary.command(&args);
        // Listing needs no preload library.
        command.env_remove("LD_PRELOAD").stderr(Stdio::null());
        let output = command.output().map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "`{} --list --format terse` ended with {}",
                shell_quote(binary.executable.as_os_str()),
                crate::process::describe_status(&output.status)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .filter(|name| !name.contains('\t'))
            .map(str::to_owned)
            .collect())
    };
    let all = listed(None)?;
    if test.ignored_option().is_some() {
        return Ok(all);
    }
    let ignored = listed(Some("--ignored"))?;
    Ok(all.into_iter().filter(|t| !ignored.contains(t)).collect())
}

/// The arguments that run `name` alone.
pub(crate) fn run_alone(name: &str, test: &CargoTest) -> Vec<OsString> {
    // `--nocapture`: a child forked at a site tells its test's failure by
    // the panic line in its own output (see `schedule`); every process of
    // the walk runs so, for the same allocations.
    let mut args: Vec<OsString> = vec![
        "--exact".into(),
        name.into(),
        "-q".into(),
        "--nocapture".into(),
    ];
    args.extend(test.ignored_option().cloned());
    args
}

/// The walk's shard of the tests: `hash:K/N` of their names, as
/// cargo-nextest's `--partition hash:K/N` splits them.
pub(crate) fn in_shard(test: &Test, shard: Option<&str>) -> bool {
    let Some((k, n)) = shard.and_then(|s| s.split_once('/')) else {
        return true;
    };
    let (Ok(k), Ok(n)) = (k.parse::<u64>(), n.parse::<u64>()) else {
        return true;
    };
    // FNV-1a, 64 bits: stable across versions and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in test.fields().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % n.max(1) == k.saturating_sub(1)
}

/// `cargo test ARGS` for messages.
pub(crate) fn shown(argv: &[OsString]) -> String {
    quoted(argv)
}

/// The cargo command that walks the doctests: `cargo test --doc ARGS`.
pub(crate) fn doctest_command(test: &CargoTest) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["cargo".into(), "test".into(), "--doc".into()];
    argv.extend(test.cargo.iter().cloned());
    if !test.harness.is_empty() {
        argv.push("--".into());
        argv.extend(test.harness.iter().cloned());
    }
    argv
}

/// Binaries per package, for messages: `thin-vec (lib, test:x)`.
pub(crate) fn describe(binaries: &[Binary]) -> String {
    let mut packages: HashMap<&str, Vec<String>> = HashMap::new();
    let mut doctests: HashMap<&str, usize> = HashMap::new();
    for b in binaries {
        if b.is_doctest() {
            *doctests.entry(&b.package).or_default() += 1;
            continue;
        }
        let name = if b.kind == "lib" {
            "lib".to_owned()
        } else {
            format!("{}:{}", b.kind, b.target)
        };
        packages.entry(&b.package).or_default().push(name);
    }
    for (package, n) in doctests {
        let noun = if n == 1 { "doctest" } else { "doctests" };
        packages
            .entry(package)
            .or_default()
            .push(format!("{n} {noun}"));
    }
    let mut parts: Vec<String> = packages
        .into_iter()
        .map(|(p, t)| format!("{p} ({})", t.join(", ")))
        .collect();
    parts.sort();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<OsString> {
        text.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn a_cargo_test_command_splits_at_its_separator() {
        let split = CargoTest::split(&words("cargo test --offline -- --skip slow"));
        assert_eq!(split.cargo, words("--offline"));
        assert_eq!(split.harness, words("--skip slow"));
        assert!(!split.chooses_targets());
        assert!(CargoTest::split(&words("cargo test --test=it")).chooses_targets());
        assert!(CargoTest::split(&words("cargo test --lib")).chooses_targets());
        let doc = doctest_command(&split);
        assert_eq!(doc, words("cargo test --doc --offline -- --skip slow"));
    }

    #[test]
    fn shards_split_the_tests_into_disjoint_parts_that_cover_them_all() {
        let tests: Vec<Test> = (0..200)
            .map(|i| Test {
                package: "p".to_owned(),
                kind: "lib".to_owned(),
                target: "p".to_owned(),
                name: format!("tests::t{i}"),
            })
            .collect();
        let mut counts = [0usize; 3];
        for test in &tests {
            let shards: Vec<usize> = (1..=3)
                .filter(|k| in_shard(test, Some(&format!("{k}/3"))))
                .collect();
            assert_eq!(shards.len(), 1, "{test:?} is in {shards:?}");
            counts[shards[0] - 1] += 1;
            assert!(in_shard(test, None));
        }
        assert!(counts.iter().all(|&n| n > 40), "{counts:?}");
    }
}
