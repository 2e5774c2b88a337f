//! The preload library of an installed runner: built once from sources
//! embedded in this program, into a per-user cache.
//!
//! `cargo install` installs binaries only, so a runner installed that way
//! has no `libmayfail_preload.so` next to it. Before a walk or a run that
//! needs the library, [`ensure`] finds it in
//! `$XDG_CACHE_HOME/mayfail/<version>-<hash>/` (else `~/.cache/mayfail/...`)
//! or builds it there: it writes a small cargo project whose sources are
//! `mayfail-preload`'s (`preload/src` in this package: a link to that
//! package's `src`, which `cargo package` follows, so the published crate
//! holds copies; the build script lists its files) and runs `cargo build --release` in it, once. The hash covers
//! everything the build reads from here: the sources, the manifest, the
//! lock file, and, when `mayfail` is a path dependency, that checkout's
//! sources. [`cached`] only looks: a test binary's `preload-run` never
//! builds.
//!
//! Why build at first use rather than in a build script of this package: a
//! build script runs for every `cargo check`, `clippy`, `doc`, Miri run and
//! cross-check of the workspace, and a nested cargo there would build the
//! library (and mayfail, in release) again each time, for a target that
//! may not even be the host's; built at first use, the cost is paid once
//! per user and version, by the runs that need the library.
//!
//! Concurrency and crashes: the build holds an exclusive `flock` on the
//! directory's `lock` file (a second runner waits, then finds the library
//! built), and one on `mayfail-preload.lock` in cargo's target directory
//! while it builds there and copies the library out (a target directory
//! shared through `CARGO_TARGET_DIR` has one `libmayfail_preload.so` for
//! every cache); the library is copied to a temporary name and renamed, so
//! a library in the cache is always whole.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::exit_codes;
use crate::failure::Failure;
use crate::process::shell_quote;

/// mayfail-preload's sources: (file name under `src/`, text), every file of
/// `preload/src` (listed by the build script).
const SOURCES: &[(&str, &str)] = &include!(concat!(env!("OUT_DIR"), "/preload_sources.rs"));

/// The workspace's lock file: the build starts from the versions CI tested
/// (and needs no network when they are in cargo's cache already).
const LOCK: &str = include_str!("../preload/Cargo.lock");

/// The version of this program, and of the `mayfail` it was built with
/// (the workspace keeps them equal).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The library's file name.
/// The library's file name.
pub(crate) const LIBRARY: &str = "libmayfail_preload.so";
/// Names the library's path instead of the one next to this program.
pub(crate) const LIBRARY_VARIABLE: &str = "MAYFAIL_PRELOAD_LIB";

/// The `mayfail` checkout this program was built from, if it is still
/// there: its directory holds the manifest of the package `mayfail`.
fn checkout() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).ok()?;
    (manifest.contains("\nname = \"mayfail\"\n") && root.join("src/lib.rs").is_file())
        .then(|| root.to_owned())
}

/// The manifest of the library's project: mayfail-preload's, standing
/// alone (its own workspace), with `mayfail` from `checkout` if given,
/// else from crates.io.
fn manifest(checkout: Option<&Path>) -> String {
    let mayfail = match checkout {
        Some(root) => format!(
            "{{ path = {}, version = \"{VERSION}\" }}",
            toml_string(&root.to_string_lossy())
        ),
        None => format!("\"={VERSION}\""),
    };
    format!(
        "# Written by cargo-mayfail {VERSION}: builds libmayfail_preload.so.\n\
         [package]\n\
         name = \"mayfail-preload\"\n\
         version = \"{VERSION}\"\n\
         edition = \"2024\"\n\
         publish = false\n\
         \n\
         [lib]\n\
         name = \"mayfail_preload\"\n\
         crate-type = [\"cdylib\"]\n\
         \n\
         [dependencies]\n\
         libc = \"0.2.191\"\n\
         mayfail = {mayfail}\n\
         \n\
         [workspace]\n"
    )
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// FNV-1a, 64 bits: the same bytes give the same name in every build of
/// this program.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// Adds `bytes`, preceded by their length (so that the parts cannot
    /// run into each other).
    fn add(&mut self, bytes: &[u8]) {
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Adds the files of a `mayfail` checkout that its build reads: the
/// manifest, a build script, everything under `src/`, by path order.
fn hash_checkout(hash: &mut Fnv, root: &Path) {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = vec![root.join("Cargo.toml"), root.join("build.rs")];
    walk(&root.join("src"), &mut files);
    files[2..].sort();
    for file in files {
        hash.add(file.as_os_str().as_encoded_bytes());
        hash.add(&std::fs::read(&file).unwrap_or_default());
    }
}

/// What the library is built from, and where it goes.
struct Build {
    manifest: String,
    /// `<cache>/mayfail/<version>-<hash>`.
    dir: PathBuf,
    /// The variable that named the cache: `XDG_CACHE_HOME` or `HOME`.
    variable: &'static str,
}

impl Build {
    fn new() -> Result<Build, Failure> {
        let checkout = checkout();
        let manifest = manifest(checkout.as_deref());
        let mut hash = Fnv::new();
        hash.add(manifest.as_bytes());
        hash.add(LOCK.as_bytes());
        for &(name, text) in SOURCES {
            hash.add(name.as_bytes());
            hash.add(text.as_bytes());
        }
        if let Some(root) = &checkout {
            hash_checkout(&mut hash, root);
        }
        let (root, variable) = cache_root()?;
        let dir = root
            .join("mayfail")
            .join(format!("{VERSION}-{:016x}", hash.0));
        Ok(Build {
            manifest,
            dir,
            variable,
        })
    }

    fn library(&self) -> PathBuf {
        self.dir.join(LIBRARY)
    }
}

/// `$XDG_CACHE_HOME` (an absolute path; the XDG spec ignores others), else
/// `$HOME/.cache`; with the variable's name.
fn cache_root() -> Result<(PathBuf, &'static str), Failure> {
    let absolute = |name| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    if let Some(dir) = absolute("XDG_CACHE_HOME") {
        return Ok((dir, "XDG_CACHE_HOME"));
    }
    absolute("HOME")
        .map(|home| (home.join(".cache"), "HOME"))
        .ok_or_else(|| {
            failure(
                exit_codes::BAD_INPUT,
                "neither XDG_CACHE_HOME nor HOME names a directory to build it in".to_owned(),
            )
        })
}

/// The message of every failure here: what failed, then what to do instead.
fn failure(code: i32, what: String) -> Failure {
    Failure::PreloadLibrary {
        message: format!(
            "cannot build the preload library: {what}; build it from mayfail's repository \
             (cargo build --release -p mayfail-preload) and name it with \
             {}=PATH",
            LIBRARY_VARIABLE
        ),
        code,
    }
}

/// An I/O failure on `path` while building.
fn io_failure(action: &str, path: &Path, error: std::io::Error) -> Failure {
    failure(
        exit_codes::IO_ERROR,
        format!("cannot {action} {}: {error}", shell_quote(path.as_os_str())),
    )
}

/// The library in the cache, if it has been built (never builds it), and
/// the variable that named the cache.
pub(crate) fn cached() -> Option<(PathBuf, &'static str)> {
    let build = Build::new().ok()?;
    let library = build.library();
    library.is_file().then_some((library, build.variable))
}

/// The directory the library is built in, and the variable that named it:
/// checked before anything is built there.
pub(crate) fn directory() -> Result<(PathBuf, &'static str), Failure> {
    Build::new().map(|build| (build.dir, build.variable))
}

/// The library in the cache, built first if it is not there yet.
pub(crate) fn ensure() -> Result<PathBuf, Failure> {
    let build = Build::new()?;
    let library = build.library();
    if library.is_file() {
        return Ok(library);
    }
    std::fs::create_dir_all(&build.dir).map_err(|e| io_failure("create", &build.dir, e))?;
    let _lock = lock(&build.dir.join("lock"))?;
    // Another runner may have built it while this one waited.
    if !library.is_file() {
        crate::progress::note!(
            "mayfail: building the preload library (once; later runs reuse it) in {}",
            shell_quote(build.dir.as_os_str())
        );
        let (built, _target_lock) = build.run()?;
        let temporary = build
            .dir
            .join(format!(".{LIBRARY}.{}.tmp", std::process::id()));
        std::fs::copy(&built, &temporary).map_err(|e| io_failure("copy", &built, e))?;
        std::fs::rename(&temporary, &library).map_err(|e| io_failure("rename", &temporary, e))?;
    }
    Ok(library)
}

/// Holds an exclusive `flock` on the file `path` until it is dropped; says
/// so in one line when another runner holds it.
fn lock(path: &Path) -> Result<File, Failure> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io_failure("open", path, e))?;
    // SAFETY: flock on a descriptor we own; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    crate::progress::note!(
        "mayfail: waiting for another mayfail that is building the preload library"
    );
    loop {
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(io_failure("lock", path, error));
        }
    }
}

impl Build {
    /// Writes the project and builds it; returns the library cargo built,
    /// and the lock on the target directory to hold while it is copied.
    fn run(&self) -> Result<(PathBuf, File), Failure> {
        let project = self.dir.join("project");
        let src = project.join("src");
        std::fs::create_dir_all(&src).map_err(|e| io_failure("create", &src, e))?;
        let mut files = vec![
            (project.join("Cargo.toml"), self.manifest.as_str()),
            (project.join("Cargo.lock"), LOCK),
        ];
        files.extend(SOURCES.iter().map(|&(name, text)| (src.join(name), text)));
        for (path, text) in files {
            std::fs::write(&path, text).map_err(|e| io_failure("write", &path, e))?;
        }
        let log_path = self.dir.join("build.log");
        let log = File::create(&log_path).map_err(|e| io_failure("write", &log_path, e))?;
        // Runs cargo with ARGS in the project, its stderr into the log;
        // returns its stdout.
        let cargo = |args: &[&str]| -> Result<String, Failure> {
            let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let stderr = log
                .try_clone()
                .map_err(|e| io_failure("write", &log_path, e))?;
            let output = Command::new(&program)
                .args(args)
                .current_dir(&project)
                .stdin(Stdio::null())
                .stderr(stderr)
                .output()
                .map_err(|e| {
                    failure(
                        exit_codes::BAD_INPUT,
                        format!("cannot run {}: {e}", shell_quote(&program)),
                    )
                })?;
            let failed = |what: &str| {
                failure(
                    exit_codes::BAD_INPUT,
                    format!(
                        "`cargo {}` in {} {what}; its output is in {}",
                        args[..2].join(" "),
                        shell_quote(project.as_os_str()),
                        shell_quote(log_path.as_os_str())
                    ),
                )
            };
            if !output.status.success() {
                let first_error = std::fs::read_to_string(&log_path)
                    .ok()
                    .and_then(|log| {
                        log.lines()
                            .find(|line| line.starts_with("error"))
                            .map(|line| format!(" ({line})"))
                    })
                    .unwrap_or_default();
                return Err(failed(&format!("failed{first_error}")));
            }
            String::from_utf8(output.stdout).map_err(|_| failed("wrote no UTF-8"))
        };
        // The target directory is cargo's choice (CARGO_TARGET_DIR and
        // cargo's configuration are followed), and may be shared: the
        // library cargo puts there has one name for every such project, so
        // one runner at a time builds there and copies it out.
        let metadata = cargo(&["metadata", "--no-deps", "--format-version", "1"])?;
        let target = serde_json::from_str::<serde_json::Value>(&metadata)
            .ok()
            .and_then(|m| m["target_directory"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| project.join("target"));
        std::fs::create_dir_all(&target).map_err(|e| io_failure("create", &target, e))?;
        let target_lock = lock(&target.join("mayfail-preload.lock"))?;
        let messages = cargo(&[
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])?;
        let built = messages
            .lines()
            .find_map(artifact)
            .filter(|path| path.is_file());
        let built = built.ok_or_else(|| {
            failure(
                exit_codes::BAD_INPUT,
                format!(
                    "`cargo build --release` in {} named no {LIBRARY}",
                    shell_quote(project.as_os_str())
                ),
            )
        })?;
        Ok((built, target_lock))
    }
}

/// The library's path from one line of cargo's JSON messages, if the line
/// is the artifact of the `mayfail_preload` cdylib.
fn artifact(line: &str) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" || message["target"]["name"] != "mayfail_preload" {
        return None;
    }
    message["filenames"]
        .as_array()?
        .iter()
        .filter_map(|name| name.as_str())
        .find(|name| name.ends_with(".so"))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checkout's mayfail-preload, whose files `preload/` links to.
    fn preload_package() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../mayfail-preload")
    }

    #[test]
    fn every_source_file_of_mayfail_preload_is_embedded() {
        let mut on_disk: Vec<String> = std::fs::read_dir(preload_package().join("src"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SOURCES.iter().map(|(n, _)| (*n).to_owned()).collect();
        embedded.sort();
        assert_eq!(
            on_disk, embedded,
            "cargo-mayfail/preload/src is a link to mayfail-preload/src"
        );
        for &(name, text) in SOURCES {
            let file = preload_package().join("src").join(name);
            assert_eq!(std::fs::read_to_string(file).unwrap(), text, "{name}");
        }
    }

    #[test]
    fn the_manifest_has_mayfail_preloads_dependencies() {
        let original = std::fs::read_to_string(preload_package().join("Cargo.toml")).unwrap();
        let dependencies = original
            .split("[dependencies]\n")
            .nth(1)
            .unwrap()
            .split("\n[")
            .next()
            .unwrap();
        for ours in [manifest(None), manifest(Some(Path::new("/src/mayfail")))] {
            for line in dependencies.lines().filter(|l| !l.trim().is_empty()) {
                let name = line.split(' ').next().unwrap();
                assert!(
                    ours.lines().any(|l| l.starts_with(&format!("{name} = "))),
                    "{name} is missing from:\n{ours}"
                );
                if name != "mayfail" {
                    assert!(ours.contains(line), "{line} is missing from:\n{ours}");
                }
            }
            assert!(ours.contains("name = \"mayfail_preload\""), "{ours}");
        }
        assert!(manifest(None).contains(&format!("mayfail = \"={VERSION}\"")));
        assert!(manifest(Some(Path::new("/a \"b\""))).contains(&format!(
            "mayfail = {{ path = \"/a \\\"b\\\"\", version = \"{VERSION}\" }}"
        )));
    }

    #[test]
    fn mayfail_has_this_programs_version() {
        // The crates.io dependency is `mayfail = "=VERSION"`.
        let root =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
                .unwrap();
        assert!(
            root.contains(&format!("\nname = \"mayfail\"\nversion = \"{VERSION}\"\n")),
            "mayfail and cargo-mayfail must have the same version"
        );
        assert!(checkout().is_some());
    }

    #[test]
    fn the_artifact_is_found_in_cargos_messages() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"mayfail_preload","kind":["cdylib"]},"filenames":["/t/release/libmayfail_preload.so"]}"#;
        assert_eq!(
            artifact(line),
            Some(PathBuf::from("/t/release/libmayfail_preload.so"))
        );
        assert_eq!(artifact(&line.replace("mayfail_preload\"", "libc\"")), None);
        assert_eq!(artifact("not json"), None);
    }
}
