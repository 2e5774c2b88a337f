//! The preload library in the runner: finding `libmayfail_preload.so`,
//! putting only a cargo command's test binaries under it (cargo's
//! `CARGO_TARGET_<TRIPLE>_RUNNER`, set to this program's hidden
//! `preload-run` mode), and the limits checked before a binary runs.
//!
//! `preload-run BINARY ARGS...` checks the binary, then replaces itself with
//! it, `LD_PRELOAD` naming the library: cargo sees the binary's own exit
//! status. Cargo, rustc and build scripts never run under the library; nor
//! do doctests (rustdoc compiles and runs them itself, without the runner).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::failure::Failure;
use crate::library_cache;
use crate::process::shell_quote;

/// The library's file name.
pub(crate) const LIBRARY: &str = "libmayfail_preload.so";
/// Names the library's path instead of the one next to this program.
pub(crate) const LIBRARY_VARIABLE: &str = "MAYFAIL_PRELOAD_LIB";

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

/// The preload library, built first if need be: [`library`], else the one
/// [`library_cache::ensure`] builds in the per-user cache. Called once,
/// before a command starts: the build never happens in a walk's run.
pub(crate) fn library_or_build() -> Result<PathBuf, Failure> {
    match library() {
        Err(_) if std::env::var_os(LIBRARY_VARIABLE).is_none() => library_cache::ensure(),
        found => found,
    }
}

/// The preload library, never built here: `$MAYFAIL_PRELOAD_LIB`, else the
/// file next to this program (where `cargo build` of this workspace puts
/// it), else the one built in the per-user cache for this program (see
/// [`library_cache`]).
pub(crate) fn library() -> Result<PathBuf, Failure> {
    if let Some(path) = std::env::var_os(LIBRARY_VARIABLE) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            std::path::absolute(&path)
                .map_err(|e| Failure::io("find the preload library", &path, e))
        } else {
            Err(Failure::bad_input(format!(
                "{LIBRARY_VARIABLE}={}: no such file",
                path.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::io("find this program", Path::new("/proc/self/exe"), e))?;
    let path = exe.with_file_name(LIBRARY);
    if path.is_file() {
        return Ok(path);
    }
    library_cache::cached().ok_or_else(|| {
        Failure::bad_input(format!(
            "the preload library {} is missing: build it (cargo build -p mayfail-preload, in \
             the same profile) or name it with {LIBRARY_VARIABLE}=PATH",
            path.display()
        ))
    })
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
    /// Run CMD under the preload library with LD_PRELOAD (a cargo command's
    /// test binaries run under it without this option)
    #[arg(long, conflicts_with = "no_preload")]
    preload: bool,
    /// Do not use the preload library, not even for a cargo command (its
    /// test binaries must then declare mayfail::MayFail themselves)
    #[arg(long)]
    no_preload: bool,
}

impl PreloadChoice {
    /// The variable to set for `argv`, if the preload library is used.
    pub(crate) fn environment(
        &self,
        argv: &[OsString],
    ) -> Result<Option<(String, OsString)>, Failure> {
        if self.no_preload || !(self.preload || is_cargo(argv)) {
            return Ok(None);
        }
        // A cargo command without `--preload`: the library is a bonus. Its
        // test binaries that declare mayfail::MayFail work without it, so a
        // library that is missing and cannot be built is one line, not a
        // refusal.
        if !self.preload
            && let Err(missing) = library_or_build()
        {
            crate::progress::note!(
                "mayfail: note: {missing}; test binaries that do not declare \
                 mayfail::MayFail are not reached"
            );
            return Ok(None);
        }
        environment(argv).map(Some)
    }
}

impl PreloadChoice {
    /// The preload library for test binaries run directly (the per-test
    /// engine), chosen as for a cargo command: `None` with `--no-preload`,
    /// or when it is missing and cannot be built (said in one line).
    pub(crate) fn library_for_tests(&self) -> Result<Option<PathBuf>, Failure> {
        if self.no_preload {
            return Ok(None);
        }
        match library_or_build() {
            Ok(library) => Ok(Some(library)),
            Err(missing) if !self.preload => {
                crate::progress::note!(
                    "mayfail: note: {missing}; test binaries that do not declare \
                     mayfail::MayFail are not reached"
                );
                Ok(None)
            }
            Err(missing) => Err(missing),
        }
    }
}

/// `LD_PRELOAD` for a test binary run directly: `None` if it declares
/// `MayFail` (its allocator reports to the walk itself), else the library,
/// after one line on stderr for each of its [`limits`].
pub(crate) fn binary_preload(library: &Path, binary: &Path) -> Option<OsString> {
    let declares = File::open(binary)
        .ok()
        .and_then(|file| Elf::read(&file))
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

/// The file a command's program names, as `execvp` finds it: a name with a
/// slash as it is, any other the first executable file of that name in
/// `PATH`.
fn program_path(program: &OsStr) -> Option<PathBuf> {
    if program.as_encoded_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
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
/// value, for the target `argv` builds for (`--target`, else the host).
fn target_runner(argv: &[OsString]) -> Result<(String, String), Failure> {
    let triple = match target_argument(argv) {
        Some(triple) => triple,
        None => host_triple()?,
    };
    let variable = format!(
        "CARGO_TARGET_{}_RUNNER",
        triple.to_uppercase().replace(['-', '.'], "_")
    );
    if std::env::var_os(&variable).is_some() {
        return Err(Failure::bad_input(format!(
            "{variable} is already set: the preload library needs cargo's target runner; \
             unset it, or give --no-preload"
        )));
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
    let Some(elf) = Elf::read(&file) else {
        return limits;
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

/// What `limits` needs from an ELF file (64-bit, little-endian).
struct Elf {
    /// Has a `PT_INTERP` segment: loaded by the dynamic loader.
    dynamic: bool,
    /// Carries mayfail's note: has its own `MayFail`.
    mayfail: bool,
    /// The names in `.symtab` (empty when stripped).
    names: Vec<u8>,
}

impl Elf {
    fn read(file: &File) -> Option<Elf> {
        let header = read_at(file, 0, 64)?;
        if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
            return None;
        }
        let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as u64;
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let (phoff, phentsize, phnum) = (
            u64_at(&header, 32),
            u16_at(&header, 54),
            u16_at(&header, 56),
        );
        let (shoff, shentsize, shnum) = (
            u64_at(&header, 40),
            u16_at(&header, 58),
            u16_at(&header, 60),
        );
        let programs = read_at(file, phoff, phentsize.checked_mul(phnum)?)?;
        let mut dynamic = false;
        for program in programs.chunks_exact(phentsize as usize) {
            dynamic |= u32_at(program, 0) == 3; // PT_INTERP
        }
        let sections = read_at(file, shoff, shentsize.checked_mul(shnum)?).unwrap_or_default();
        let sections: Vec<&[u8]> = sections.chunks_exact(shentsize.max(1) as usize).collect();
        let mut mayfail = false;
        let mut names = Vec::new();
        for section in &sections {
            let (kind, offset, size) =
                (u32_at(section, 4), u64_at(section, 24), u64_at(section, 32));
            if kind == 7 {
                // SHT_NOTE: look for mayfail's owner name.
                let notes = read_at(file, offset, size.min(1 << 16)).unwrap_or_default();
                mayfail |= notes.windows(8).any(|w| w == b"mayfail\0");
            }
            if kind == 2 {
                // SHT_SYMTAB: its string table is the section it links to.
                let link = u32_at(section, 40) as usize;
                if let Some(strings) = sections.get(link) {
                    names =
                        read_at(file, u64_at(strings, 24), u64_at(strings, 32)).unwrap_or_default();
                }
            }
        }
        Some(Elf {
            dynamic,
            mayfail,
            names,
        })
    }

    /// Whether a symbol name holds `needle` (mangled names hold the plain
    /// one).
    fn has_symbol(&self, needle: &[u8]) -> bool {
        self.names.windows(needle.len()).any(|w| w == needle)
    }
}

fn read_at(file: &File, offset: u64, len: u64) -> Option<Vec<u8>> {
    let mut buffer = vec![0; usize::try_from(len).ok()?];
    file.read_exact_at(&mut buffer, offset).ok()?;
    Some(buffer)
}
