//! The preload library in the runner: finding `libmayfail_preload.so` (at
//! a path the loader can take), which commands go under it (by default
//! every one but a program that declares `MayFail`, whose ELF file `elf`
//! reads), putting only a cargo command's test binaries under it (cargo's
//! `CARGO_TARGET_<TRIPLE>_RUNNER`, set to this program's hidden
//! `preload-run` mode, unless the project has a runner of its own:
//! `cargo_config`), and the limits checked before a binary runs.
//!
//! `preload-run BINARY ARGS...` checks the binary, then replaces itself with
//! it, `LD_PRELOAD` naming the library: cargo sees the binary's own exit
//! status. Cargo, rustc and build scripts never run under the library; nor
//! do doctests (rustdoc compiles and runs them itself, without the runner).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::failure::Failure;
use crate::library_cache;
use crate::process::{program_path, shell_quote};
use elf::{Elf, Unread};

mod cargo_config;
mod elf;

pub(crate) use crate::library_cache::{LIBRARY, LIBRARY_VARIABLE};

/// Runs BINARY with the preload library (used as cargo's target runner)
#[derive(Args, Debug)]
pub(crate) struct PreloadRunArgs {
    /// The binary and its arguments
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "BINARY"
    )]
    command: Vec<OsString>,
}

/// Why no library can be used.
enum NoLibrary {
    /// None was found, and none could be built: a command that may not
    /// need it goes on without it.
    Missing(Failure),
    /// One is named at a path the loader cannot take: always a refusal.
    Unloadable(Failure),
}

impl From<NoLibrary> for Failure {
    fn from(reason: NoLibrary) -> Failure {
        match reason {
            NoLibrary::Missing(failure) | NoLibrary::Unloadable(failure) => failure,
        }
    }
}

/// The preload library, built first if need be: [`library`], else the one
/// [`library_cache::ensure`] builds in the per-user cache. Called once,
/// before a command starts: the build never happens in a walk's run.
pub(crate) fn library_or_build() -> Result<PathBuf, Failure> {
    find_or_build().map_err(Failure::from)
}

fn find_or_build() -> Result<PathBuf, NoLibrary> {
    match find() {
        Err(NoLibrary::Missing(_)) if std::env::var_os(LIBRARY_VARIABLE).is_none() => {
            let (directory, variable) = library_cache::directory().map_err(NoLibrary::Missing)?;
            loadable(
                &directory,
                &format!("the cache directory named by {variable}"),
            )?;
            library_cache::ensure().map_err(NoLibrary::Missing)
        }
        found => found,
    }
}

/// The preload library, never built here: `$MAYFAIL_PRELOAD_LIB`, else the
/// file next to this program (where `cargo build` of this workspace puts
/// it), else the one built in the per-user cache for this program (see
/// [`library_cache`]).
pub(crate) fn library() -> Result<PathBuf, Failure> {
    find().map_err(Failure::from)
}

fn find() -> Result<PathBuf, NoLibrary> {
    if let Some(path) = std::env::var_os(LIBRARY_VARIABLE) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(NoLibrary::Missing(Failure::bad_input(format!(
                "{LIBRARY_VARIABLE}={}: no such file",
                path.display()
            ))));
        }
        let path = std::path::absolute(&path)
            .map_err(|e| NoLibrary::Missing(Failure::io("find the preload library", &path, e)))?;
        return loadable(&path, &format!("named by {LIBRARY_VARIABLE}"));
    }
    let exe = std::env::current_exe().map_err(|e| {
        NoLibrary::Missing(Failure::io(
            "find this program",
            Path::new("/proc/self/exe"),
            e,
        ))
    })?;
    let path = exe.with_file_name(LIBRARY);
    if path.is_file() {
        return loadable(&path, "next to this program");
    }
    match library_cache::cached() {
        Some((library, variable)) => {
            loadable(&library, &format!("built in the cache named by {variable}"))
        }
        None => Err(NoLibrary::Missing(Failure::bad_input(format!(
            "the preload library {} is missing: build it (cargo build -p mayfail-preload, in \
             the same profile) or name it with {LIBRARY_VARIABLE}=PATH",
            path.display()
        )))),
    }
}

/// The bytes at which the dynamic loader splits `LD_PRELOAD`; it has no
/// way to escape them.
const LD_PRELOAD_SEPARATORS: [u8; 2] = [b' ', b':'];

/// `path`, if the loader can take it in `LD_PRELOAD`; else the refusal,
/// naming where the path came from (`origin`) and what to do.
fn loadable(path: &Path, origin: &str) -> Result<PathBuf, NoLibrary> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if !bytes.iter().any(|b| LD_PRELOAD_SEPARATORS.contains(b)) {
        return Ok(path.to_owned());
    }
    Err(NoLibrary::Unloadable(Failure::PreloadLibrary {
        message: format!(
            "the preload library's path {} ({origin}) holds a space or a colon, where the \
             loader splits LD_PRELOAD: no library would be loaded and nothing injected; give \
             a path without them: {LIBRARY_VARIABLE}=PATH, or XDG_CACHE_HOME=DIR for the \
             library built at first use",
            shell_quote(path.as_os_str())
        ),
        code: crate::exit_codes::BAD_INPUT,
    }))
}

/// Whether `command` runs cargo: its preload goes through the target runner.
pub(crate) fn is_cargo(command: &[OsString]) -> bool {
    command.first().is_some_and(|program| {
        Path::new(program)
            .file_name()
            .is_some_and(|name| name == "cargo")
    })
}

/// `--preload` and `--no-preload` of `run` and `sites`.
#[derive(Args, Debug)]
pub(crate) struct PreloadChoice {
    /// Run CMD under the preload library even if it declares
    /// mayfail::MayFail (without this option, a program that does not
    /// declare it runs under the library: a C program, a script, a Rust
    /// program on another allocator, a cargo command's test binaries)
    #[arg(long, conflicts_with = "no_preload")]
    preload: bool,
    /// Do not use the preload library, not even for a cargo command (the
    /// programs must then declare mayfail::MayFail themselves)
    #[arg(long)]
    no_preload: bool,
}

impl PreloadChoice {
    /// The variable to set for `argv`, if the preload library is used: with
    /// `--preload`, always; with `--no-preload`, never; by default, for
    /// every command but a program that declares `MayFail` itself (its ELF
    /// file carries mayfail's note).
    pub(crate) fn environment(
        &self,
        argv: &[OsString],
    ) -> Result<Option<(String, OsString)>, Failure> {
        if self.no_preload || !(self.preload || is_cargo(argv) || needs_library(&argv[0])) {
            return Ok(None);
        }
        // Without `--preload`, the library is a bonus for a command that
        // may run programs declaring mayfail::MayFail (a cargo command, a
        // script): a library that is missing and cannot be built is one
        // line, not a refusal.
        if !self.preload {
            match find_or_build() {
                Ok(_) => {}
                Err(NoLibrary::Missing(missing)) => {
                    crate::progress::note!(
                        "mayfail: note: {missing}; programs that do not declare \
                         mayfail::MayFail are not reached"
                    );
                    return Ok(None);
                }
                Err(unloadable) => return Err(unloadable.into()),
            }
        }
        environment(argv).map(Some)
    }
}

/// Whether `program` needs the preload library to be reached: it exists
/// and is not a program that declares `MayFail` (a script, any other
/// program). A program that cannot be found needs nothing: it will not
/// run.
fn needs_library(program: &OsStr) -> bool {
    let Some(path) = program_path(program) else {
        return false;
    };
    File::open(&path).is_ok_and(|file| !Elf::read(&file).is_ok_and(|elf| elf.mayfail))
}

impl PreloadChoice {
    /// The preload library for test binaries run directly (the per-test
    /// engine), chosen as for a cargo command: `None` with `--no-preload`,
    /// or when it is missing and cannot be built (said in one line).
    pub(crate) fn library_for_tests(&self) -> Result<Option<PathBuf>, Failure> {
        if self.no_preload {
            return Ok(None);
        }
        match find_or_build() {
            Ok(library) => Ok(Some(library)),
            Err(NoLibrary::Missing(missing)) if !self.preload => {
                crate::progress::note!(
                    "mayfail: note: {missing}; test binaries that do not declare \
                     mayfail::MayFail are not reached"
                );
                Ok(None)
            }
            Err(other) => Err(other.into()),
        }
    }
}

/// `LD_PRELOAD` for a test binary run directly: `None` if it declares
/// `MayFail` (its allocator reports to the walk itself), else the library,
/// after one line on stderr for each of its [`limits`].
pub(crate) fn binary_preload(library: &Path, binary: &Path) -> Option<OsString> {
    let declares = File::open(binary)
        .ok()
        .and_then(|file| Elf::read(&file).ok())
        .is_some_and(|elf| elf.mayfail);
    if declares {
        return None;
    }
    for limit in limits(binary) {
        crate::progress::note!("mayfail: {}: {limit}", shell_quote(binary.as_os_str()));
    }
    Some(ld_preload(library))
}

/// The variable that puts `argv`'s program under the preload library: for
/// cargo, its test binaries through the target runner (`preload-run` checks
/// each one); for any other program, `LD_PRELOAD` on it, after one line on
/// stderr for each of its [`limits`].
pub(crate) fn environment(argv: &[OsString]) -> Result<(String, OsString), Failure> {
    let library = library_or_build()?;
    if is_cargo(argv) {
        let (variable, runner) = target_runner(argv)?;
        Ok((variable, runner.into()))
    } else {
        if let Some(program) = program_path(&argv[0]) {
            for limit in limits(&program) {
                crate::progress::note!("mayfail: {}: {limit}", shell_quote(&argv[0]));
            }
        }
        Ok(("LD_PRELOAD".to_owned(), ld_preload(&library)))
    }
}

/// `LD_PRELOAD` with the library first, then whatever was there.
fn ld_preload(library: &Path) -> OsString {
    let mut value = library.as_os_str().to_owned();
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        value.push(":");
        value.push(existing);
    }
    value
}

/// `CARGO_TARGET_<TRIPLE>_RUNNER` and this program's `preload-run` as its
/// value, for the target `argv` builds for (`--target`, else
/// `CARGO_BUILD_TARGET`, else cargo's `build.target`, else the host). A
/// runner the project already has for it (that variable, or one in cargo's
/// configuration) would be replaced without a word: refused instead.
fn target_runner(argv: &[OsString]) -> Result<(String, String), Failure> {
    // One line, without the usage: the command line is not at fault.
    let refuse = |what: String| Failure::PreloadLibrary {
        message: format!(
            "{what}: the preload library needs cargo's target runner for \
             `cargo-mayfail preload-run`, and would silently replace that one; remove it for \
             this command, or give --no-preload to `run` or `sites` (only test binaries that \
             declare mayfail::MayFail are reached then)"
        ),
        code: crate::exit_codes::BAD_INPUT,
    };
    let config = cargo_config_of(argv)?;
    let triple = match target_argument(argv) {
        Some(triple) => triple,
        None => match (std::env::var("CARGO_BUILD_TARGET"), &config.build_target) {
            (Ok(triple), _) => triple,
            (Err(_), Some((Some(triple), _))) => triple.clone(),
            (Err(_), Some((None, file))) => {
                return Err(refuse(format!(
                    "{} sets build.target to several targets",
                    file.display()
                )));
            }
            (Err(_), None) => host_triple()?,
        },
    };
    let variable = format!(
        "CARGO_TARGET_{}_RUNNER",
        triple.to_uppercase().replace(['-', '.'], "_")
    );
    if std::env::var_os(&variable).is_some() {
        return Err(refuse(format!("{variable} is already set")));
    }
    if let Some((key, file)) = config.runner_for(&triple) {
        let key = if key == &triple {
            format!("target.{key}.runner")
        } else {
            format!("target.'{key}'.runner, which may apply to {triple},")
        };
        return Err(refuse(format!("{} sets {key}", file.display())));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::io("find this program", Path::new("/proc/self/exe"), e))?;
    let Some(exe) = exe.to_str().filter(|p| !p.contains(char::is_whitespace)) else {
        return Err(Failure::bad_input(format!(
            "this program's path {} holds white space or is not UTF-8: cargo splits its target \
             runner at white space",
            exe.display()
        )));
    };
    Ok((variable, format!("{exe} preload-run")))
}

/// Cargo's configuration for the cargo command `argv` run in the current
/// directory: its `--config` values, the files, `$CARGO_HOME`'s.
fn cargo_config_of(argv: &[OsString]) -> Result<cargo_config::Config, Failure> {
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::io("find the current directory", Path::new("."), e))?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let options: Vec<String> = config_arguments(argv).collect();
    cargo_config::Config::read(&cwd, cargo_home.as_deref(), &options)
}

/// The rustdoc cargo would run for `argv` in the current directory: the
/// `RUSTDOC` variable, else cargo's `build.rustdoc`, else `rustdoc`.
pub(crate) fn rustdoc_of(argv: &[OsString]) -> Result<OsString, Failure> {
    if let Some(rustdoc) = std::env::var_os("RUSTDOC") {
        return Ok(rustdoc);
    }
    Ok(cargo_config_of(argv)?
        .rustdoc()
        .map_or_else(|| "rustdoc".into(), PathBuf::into_os_string))
}

/// The values of `--config` in a cargo command line (before any `--`).
fn config_arguments(argv: &[OsString]) -> impl Iterator<Item = String> + '_ {
    let mut args = argv.iter().map(|a| a.to_string_lossy());
    std::iter::from_fn(move || {
        while let Some(arg) = args.next() {
            if arg == "--" {
                return None;
            }
            if arg == "--config" {
                return Some(args.next().map(|v| v.into_owned()).unwrap_or_default());
            }
            if let Some(value) = arg.strip_prefix("--config=") {
                return Some(value.to_owned());
            }
        }
        None
    })
}

/// The triple after `--target` in a cargo command line, if any.
fn target_argument(argv: &[OsString]) -> Option<String> {
    let mut args = argv.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--target" {
            return args.next().map(|t| t.into_owned());
        }
        if let Some(triple) = arg.strip_prefix("--target=") {
            return Some(triple.to_owned());
        }
    }
    None
}

/// The host's triple, from `rustc -vV` (`$RUSTC` if set).
fn host_triple() -> Result<String, Failure> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map_err(|e| Failure::spawn(shell_quote(&rustc), e))?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| Failure::bad_input("`rustc -vV` names no host triple"))
}

/// `preload-run`: checks the binary, then becomes it under the library.
pub(crate) fn execute(args: PreloadRunArgs) -> Result<i32, Failure> {
    let binary = &args.command[0];
    for limit in limits(Path::new(binary)) {
        crate::progress::note!("mayfail: {}: {limit}", shell_quote(binary));
    }
    let mut command = Command::new(binary);
    command
        .args(&args.command[1..])
        .env("LD_PRELOAD", ld_preload(&library()?));
    let error = command.exec();
    Err(Failure::spawn(shell_quote(binary), error))
}

/// What keeps the library from reaching `binary`, one line each (see the
/// guide): a static binary, a setuid or setgid one that runs as another
/// user or group, a Rust program with its own global allocator other than
/// mayfail's.
pub(crate) fn limits(binary: &Path) -> Vec<&'static str> {
    let mut limits = Vec::new();
    if std::fs::metadata(binary).is_ok_and(|m| changes_identity(&m) && !on_nosuid(binary)) {
        limits.push(
            "setuid or setgid to another user or group: the loader ignores LD_PRELOAD for it, \
             so no failure is injected",
        );
    }
    let Ok(file) = File::open(binary) else {
        return limits;
    };
    let elf = match Elf::read(&file) {
        Ok(elf) => elf,
        Err(Unread::ThirtyTwoBit) => {
            limits.push(
                "a 32-bit ELF program: the preload library, built for this machine's 64-bit \
                 programs, cannot be loaded into it, so no failure is injected",
            );
            return limits;
        }
        Err(Unread::BigEndian) => {
            limits.push(
                "a big-endian ELF program: the preload library, built for this machine's \
                 little-endian programs, cannot be loaded into it, so no failure is injected",
            );
            return limits;
        }
        Err(Unread::NotProgram | Unread::Malformed) => return limits,
    };
    if !elf.dynamic {
        limits.push(
            "statically linked: LD_PRELOAD cannot reach it, so no failure is injected \
             (build it for a glibc target, dynamically linked)",
        );
    } else if elf.has_symbol(b"__rust_alloc") && !elf.has_symbol(b"__rdl_alloc") && !elf.mayfail {
        limits.push(
            "has its own Rust global allocator (jemalloc, mimalloc...): its Rust allocations \
             do not reach malloc and are not injected; only C allocations are",
        );
    }
    limits
}

/// Whether executing a file with this mode and owner changes the process's
/// effective user or group, as the kernel does it: the setuid bit and an
/// owner other than our real user, or the setgid bit with group execute
/// permission (without it the bit means mandatory locking) and a group
/// other than our real group. Only then does the loader run in secure mode
/// and ignore `LD_PRELOAD`; a setuid file we own is preloaded as any other.
fn changes_identity(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = metadata.mode();
    // SAFETY: getuid and getgid take nothing and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let setuid = mode & libc::S_ISUID != 0 && metadata.uid() != uid;
    let setgid = mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP
        && metadata.gid() != gid;
    setuid || setgid
}

/// Whether `path` is on a file system mounted `nosuid`, where the kernel
/// ignores the setuid and setgid bits.
fn on_nosuid(path: &Path) -> bool {
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut info = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the type statvfs fills;
    // it is read only when the call succeeded.
    unsafe {
        libc::statvfs(name.as_ptr(), info.as_mut_ptr()) == 0
            && info.assume_init_ref().f_flag & libc::ST_NOSUID != 0
    }
}
