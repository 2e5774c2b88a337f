//! The preload library through the runner: walks of programs that know
//! nothing of mayfail (a C program, a Rust program on the default
//! allocator, a crate's whole `cargo test` suite), `cargo mayfail test`,
//! and the programs the library cannot reach, each said in one line.
//!
//! The library is the one built next to the runner if there is one (`cargo
//! build --workspace`), else built here once into this package's scratch
//! target directory and passed to the runner with `MAYFAIL_PRELOAD_LIB`
//! (`cargo test` does not build another package's `cdylib`). Programs are
//! compiled here, with debug information, by `cc` and `rustc`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use support::bounded;

const RUNNER: &str = env!("CARGO_BIN_EXE_mayfail");
const CARGO_RUNNER: &str = env!("CARGO_BIN_EXE_cargo-mayfail");

fn scratch(name: &str) -> PathBuf {
    support::scratch("preload", name)
}

/// The preload library: the one next to the runner, or one built for these
/// tests.
fn library() -> PathBuf {
    support::library(Path::new(RUNNER).with_file_name("libmayfail_preload.so"))
}

/// Makes sure the library exists before a test needs it.
fn require_library() {
    library();
}

fn runner(dir: &Path) -> Command {
    let mut command = Command::new(RUNNER);
    command
        .current_dir(dir)
        .env("MAYFAIL_PRELOAD_LIB", library())
        .env_remove("MAYFAIL_INJECT")
        .env_remove("MAYFAIL_RETRIES")
        .env_remove("LD_PRELOAD");
    command
}

/// The `site` lines of a state file: (process name, outcome, site).
fn sites_in(state: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(state).unwrap();
    let fates: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("fate\t"))
        .filter_map(|l| {
            let mut fields = l.split('\t');
            Some((fields.next()?, fields.nth(1)?))
        })
        .collect();
    text.lines()
        .filter_map(|l| l.strip_prefix("site\t"))
        .map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            let outcome = fates
                .iter()
                .find(|(stack, _)| *stack == fields[0])
                .map_or("unknown", |(_, fate)| fate);
            (
                fields[4].to_owned(),
                outcome.to_owned(),
                fields[5].to_owned(),
            )
        })
        .collect()
}

const C_PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

__attribute__((noinline)) static int checked(void) {
    char *text = malloc(100);
    if (text == NULL) {
        fprintf(stderr, "checked: no memory (errno %d), carrying on\n", errno);
        return errno == ENOMEM ? 0 : 1;
    }
    strcpy(text, "checked");
    puts(text);
    free(text);
    return 0;
}

__attribute__((noinline)) static void unchecked(void) {
    char *text = malloc(200);
    text[0] = 'u';
    text[1] = '\0';
    puts(text);
    free(text);
}

int main(void) {
    int status = checked();
    unchecked();
    return status;
}
"#;

/// Compiles `source` into `dir/program` with `cc` and `flags`.
/// The runner's arguments that walk `./program` under the preload library
/// into `walk.state`.
const WALK_PROGRAM: [&str; 6] = [
    "sites",
    "--preload",
    "--state",
    "walk.state",
    "--",
    "./program",
];

fn compile_c(dir: &Path, source: &str, flags: &[&str]) {
    support::compile_c(dir, source, &[&["-O0"], flags].concat());
}

#[test]
fn a_walk_of_a_c_program_finds_its_checked_malloc_handled_and_its_unchecked_one_crashed() {
    require_library();
    let dir = scratch("c-program");
    compile_c(&dir, C_PROGRAM, &[]);
    let output = bounded(runner(&dir).args(WALK_PROGRAM), 120);
    let text = support::output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let sites = sites_in(&dir.join("walk.state"));
    // The two mallocs, and stdout's buffer, which `puts` allocates for its
    // caller and does without when that fails.
    assert_eq!(sites.len(), 3, "{sites:?}\n{text}");
    assert!(
        sites.iter().any(|s| s.2.starts_with("checked (")
            && s.2.contains("program.c:14")
            && s.1 == "handled"),
        "{sites:?}"
    );
    let checked = sites.iter().find(|s| s.2.starts_with("checked")).unwrap();
    assert_eq!(checked.1, "handled", "{sites:?}");
    assert!(checked.2.contains("program.c:8"), "{sites:?}");
    let unchecked = sites.iter().find(|s| s.2.starts_with("unchecked")).unwrap();
    assert_eq!(unchecked.1, "crashed", "{sites:?}");
    assert!(unchecked.2.contains("program.c:20"), "{sites:?}");
}

/// An installed runner: `mayfail` copied alone into `dir/bin` (no library
/// next to it, none named), its cache in `dir/cache`. The library's build
/// shares one target directory across test runs, so only the first build
/// on a machine is slow.
fn installed_runner(dir: &Path) -> Command {
    let bin = dir.join("bin");
    if !bin.join("mayfail").is_file() {
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(RUNNER, bin.join("mayfail")).unwrap();
    }
    let mut command = Command::new(bin.join("mayfail"));
    command
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("preload-cache-build"),
        )
        .env("CARGO", env!("CARGO"))
        .env_remove("MAYFAIL_PRELOAD_LIB")
        .env_remove("MAYFAIL_INJECT")
        .env_remove("MAYFAIL_RETRIES")
        .env_remove("LD_PRELOAD")
        .env_remove("RUSTFLAGS");
    command
}

/// The lines that say the library is being built.
fn building_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("mayfail: building the preload library"))
        .collect()
}

/// The walk of [`C_PROGRAM`]: its two mallocs, handled and crashed, and
/// stdout's buffer.
fn assert_c_program_walked(dir: &Path, state: &str, output: &Output) {
    let text = support::output_text(output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let sites = sites_in(&dir.join(state));
    assert_eq!(sites.len(), 3, "{sites:?}\n{text}");
    let checked = sites.iter().find(|s| s.2.starts_with("checked")).unwrap();
    assert_eq!(checked.1, "handled", "{sites:?}");
    let unchecked = sites.iter().find(|s| s.2.starts_with("unchecked")).unwrap();
    assert_eq!(unchecked.1, "crashed", "{sites:?}");
}

#[test]
fn an_installed_runner_builds_the_library_once_into_its_cache_and_reuses_it() {
    let dir = scratch("installed");
    compile_c(&dir, C_PROGRAM, &[]);
    let walk = |state: &str| {
        let started = Instant::now();
        let output = bounded(
            installed_runner(&dir).args([
                "sites",
                "--preload",
                "--state",
                state,
                "--",
                "./program",
            ]),
            900,
        );
        println!("{state}: {:.1?}", started.elapsed());
        output
    };

    let first = walk("first.state");
    assert_c_program_walked(&dir, "first.state", &first);
    let text = support::output_text(&first);
    let building = building_lines(&text);
    assert_eq!(building.len(), 1, "{text}");
    assert!(
        building[0].contains(&dir.join("cache/mayfail/").display().to_string()),
        "{text}"
    );
    let entries: Vec<PathBuf> = std::fs::read_dir(dir.join("cache/mayfail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(concat!(env!("CARGO_PKG_VERSION"), "-")),
        "{name}"
    );
    let library = entries[0].join("libmayfail_preload.so");
    assert!(library.is_file());
    let built_at = library.metadata().unwrap().modified().unwrap();

    let second = walk("second.state");
    assert_c_program_walked(&dir, "second.state", &second);
    let text = support::output_text(&second);
    assert!(building_lines(&text).is_empty(), "{text}");
    assert_eq!(library.metadata().unwrap().modified().unwrap(), built_at);
}

#[test]
fn two_installed_runners_starting_at_once_build_the_library_once() {
    let dir = scratch("installed-twice");
    compile_c(&dir, C_PROGRAM, &[]);
    installed_runner(&dir);
    let children: Vec<_> = (0..2)
        .map(|_| {
            installed_runner(&dir)
                .args(["run", "--preload", "--", "./program"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut text = String::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let printed = support::output_text(&output);
        assert_eq!(output.status.code(), Some(0), "{printed}");
        assert!(printed.contains("checked"), "{printed}");
        text.push_str(&printed);
    }
    assert_eq!(building_lines(&text).len(), 1, "{text}");
}

#[test]
fn a_library_that_cannot_be_built_is_one_line_naming_the_failure_and_the_variable_exit_2() {
    let dir = scratch("installed-no-cargo");
    compile_c(&dir, C_PROGRAM, &[]);
    let output = bounded(
        installed_runner(&dir)
            .env("CARGO", "false")
            .args(["run", "--preload", "--", "./program"]),
        60,
    );
    let text = support::output_text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("mayfail: cannot build the preload library"))
        .collect();
    assert_eq!(failures.len(), 1, "{text}");
    assert!(failures[0].contains("`cargo metadata --no-deps`"), "{text}");
    assert!(failures[0].contains("build.log"), "{text}");
    assert!(failures[0].contains("MAYFAIL_PRELOAD_LIB=PATH"), "{text}");
    assert!(!text.contains("checked"), "the program ran: {text}");
    assert!(!text.contains("Usage"), "{text}");
}

const RUST_PROGRAM: &str = r#"
fn fallible() {
    let mut buffer: Vec<u8> = Vec::new();
    match buffer.try_reserve(5000) {
        Ok(()) => println!("reserved"),
        Err(error) => println!("try_reserve: Err({error})"),
    }
}

fn infallible() {
    let mut numbers: Vec<u64> = Vec::new();
    numbers.push(7);
    println!("{}", numbers.len());
}

fn main() {
    fallible();
    infallible();
}
"#;

/// Compiles `source` with debug info into `dir/program`.
fn compile_rust(dir: &Path, source: &str) {
    std::fs::write(dir.join("program.rs"), source).unwrap();
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(rustc)
        .current_dir(dir)
        .args(["-g", "--edition", "2021", "-o", "program", "program.rs"])
        .status()
        .expect("rustc runs");
    assert!(built.success());
}

#[test]
fn a_rust_program_on_the_default_allocator_sees_err_from_try_reserve_and_aborts_in_push() {
    require_library();
    let dir = scratch("rust-program");
    compile_rust(&dir, RUST_PROGRAM);

    // One injected failure at the try_reserve's stack: Err, exit 0.
    let output = bounded(runner(&dir).args(WALK_PROGRAM), 120);
    let text = support::output_text(&output);
    let sites = sites_in(&dir.join("walk.state"));
    let fallible = sites
        .iter()
        .find(|s| s.2.starts_with("program::fallible"))
        .unwrap_or_else(|| panic!("{sites:?}\n{text}"));
    assert_eq!(fallible.1, "handled", "{sites:?}");
    assert!(fallible.2.contains("program.rs:4"), "{sites:?}");
    let infallible = sites
        .iter()
        .find(|s| s.2.starts_with("program::infallible"))
        .unwrap_or_else(|| panic!("{sites:?}\n{text}"));
    assert_eq!(infallible.1, "aborted", "{sites:?}");
    assert!(infallible.2.contains("program.rs:12"), "{sites:?}");
    let log = std::fs::read_to_string(dir.join("walk.log")).unwrap();
    assert!(log.contains("try_reserve: Err("), "{log}");

    // The crash report of the push names its line too.
    let stack = std::fs::read_to_string(dir.join("walk.state"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("site\t"))
        .find(|l| l.contains("program::infallible"))
        .and_then(|l| l.split('\t').next().map(str::to_owned))
        .unwrap();
    let output = bounded(
        runner(&dir).args([
            "run",
            "--preload",
            "--inject",
            &format!("stack={stack},report=Y"),
            "--",
            "./program",
        ]),
        60,
    );
    let text = support::output_text(&output);
    assert_eq!(output.status.code(), Some(128 + libc::SIGABRT), "{text}");
    assert!(text.contains("program.rs:12"), "{text}");
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preload_fixture")
}

#[test]
fn a_crate_that_knows_nothing_of_mayfail_is_walked_through_cargo_test_and_only_its_tests_fail() {
    require_library();
    let dir = scratch("crate");
    let state = dir.join("walk.state");
    let output = bounded(
        Command::new(CARGO_RUNNER)
            .current_dir(fixture_dir())
            .env("MAYFAIL_PRELOAD_LIB", library())
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env_remove("MAYFAIL_INJECT")
            .env_remove("LD_PRELOAD")
            .env_remove("RUSTFLAGS")
            .args(["mayfail", "sites", "--state"])
            .arg(&state)
            .args(["--", "cargo", "test", "--offline"]),
        600,
    );
    let text = support::output_text(&output);
    let sites = sites_in(&state);
    assert!(!sites.is_empty(), "{text}");
    // Every failed allocation was in a test binary or the doctests' (the
    // merged doctests' executable, kept by rustdoc): none under cargo,
    // rustdoc, rustc or a build script.
    for (process, _, site) in &sites {
        assert!(
            process.starts_with("preload_fixture-")
                || process.starts_with("integration-")
                || process == "rust_out",
            "{process}: {site}\n{text}"
        );
    }
    let outcome = |function: &str| {
        sites
            .iter()
            .filter(|s| s.2.starts_with(function))
            .map(|s| s.1.as_str())
            .collect::<Vec<_>>()
    };
    // Handled where the test checks, failed where it panics on the
    // failure: a child forked on a test's thread tells its test's failure
    // by the panic line of its thread, whose name the kernel cut short.
    let mut fallible = outcome("preload_fixture::fallible_buffer");
    fallible.sort();
    assert_eq!(fallible, ["failed", "handled"], "{sites:?}");
    // The doctests were compiled once (not by a `cargo test --doc` per
    // site) and walked under the preload library too.
    assert!(text.contains("doctests: 1 compiled once"), "{text}");
    let doctest = outcome("preload_fixture::doc_stars");
    assert!(
        !doctest.is_empty() && doctest.iter().all(|o| *o == "aborted"),
        "{sites:?}"
    );
    let infallible = outcome("preload_fixture::infallible_list");
    assert!(
        !infallible.is_empty() && infallible.iter().all(|o| *o == "aborted"),
        "{sites:?}"
    );
    // Aborts at infallible allocations only: no bug, exit 0.
    assert_eq!(output.status.code(), Some(0), "{text}");
}

#[test]
fn cargo_mayfail_test_injects_into_the_test_binaries_and_never_into_cargo() {
    require_library();
    let dir = scratch("test");
    let cargo_mayfail = |inject: Option<&str>| {
        let mut command = Command::new(CARGO_RUNNER);
        command
            .current_dir(fixture_dir())
            .env("MAYFAIL_PRELOAD_LIB", library())
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env_remove("MAYFAIL_INJECT")
            .env_remove("LD_PRELOAD")
            .env_remove("RUSTFLAGS")
            .args(["mayfail", "test"]);
        if let Some(spec) = inject {
            command.args(["--inject", spec]);
        }
        command.args(["--", "--offline"]);
        bounded(&mut command, 600)
    };
    let clean = cargo_mayfail(None);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        support::output_text(&clean)
    );
    // Every allocation fails: the test binaries die at their first one, and
    // cargo, which is not under the library, reports it.
    let failing = cargo_mayfail(Some("probability=100,times=-1"));
    let text = support::output_text(&failing);
    assert_eq!(failing.status.code(), Some(101), "{text}");
    assert!(text.contains("process didn't exit successfully"), "{text}");
    assert!(text.contains("preload-run"), "{text}");
}

// ---------------------------------------------------------------------------
// What the library cannot reach: said in one line, never silently.

/// Every failure injected: the C program's unchecked `malloc` crashes.
const EVERY_FAILURE: &str = "probability=100,times=-1";

/// How many lines of `text` hold `needle`.
fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// `run --preload` with every failure injected, then a `sites --preload`
/// walk, of `dir/program`: their outputs.
fn run_and_walk(dir: &Path) -> (Output, Output) {
    let run = bounded(
        runner(dir).args([
            "run",
            "--preload",
            "--inject",
            EVERY_FAILURE,
            "--",
            "./program",
        ]),
        60,
    );
    let walk = bounded(
        runner(dir).args([
            "sites",
            "--preload",
            "--state",
            "walk.state",
            "--",
            "./program",
        ]),
        60,
    );
    (run, walk)
}

/// The line of a walk that no allocation of `./program` reached.
const NOTHING_REACHED: &str = concat!(
    "mayfail: no allocation of ./program reached the preload library in 1 run: ",
    "nothing was injected or walked"
);

/// `run` said `limit` once and the program ran untouched (exit 0); the walk
/// said it once, then that nothing reached the library (exit 6).
fn assert_said_once(run: &Output, walk: &Output, limit: &str) {
    let line = format!("mayfail: ./program: {limit}");
    let text = support::output_text(run);
    assert_eq!(run.status.code(), Some(0), "{text}");
    assert_eq!(lines_with(&text, "mayfail"), 1, "{text}");
    assert_eq!(lines_with(&text, &line), 1, "{text}");
    let text = support::output_text(walk);
    assert_eq!(walk.status.code(), Some(6), "{text}");
    assert_eq!(lines_with(&text, &line), 1, "{text}");
    assert_eq!(lines_with(&text, NOTHING_REACHED), 1, "{text}");
}

#[test]
fn a_static_program_is_said_to_be_out_of_reach_and_its_walk_exits_6() {
    require_library();
    let dir = scratch("static");
    compile_c(&dir, C_PROGRAM, &["-static"]);
    let limit = "statically linked: LD_PRELOAD cannot reach it, so no failure is injected \
                 (build it for a glibc target, dynamically linked)";
    let (run, walk) = run_and_walk(&dir);
    assert_said_once(&run, &walk, limit);

    // A name without a slash is looked up in PATH, as a shell does.
    let path = std::env::join_paths(std::iter::once(dir.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let run = bounded(
        runner(&dir)
            .env("PATH", path)
            .args(["run", "--preload", "--", "program"]),
        60,
    );
    let text = support::output_text(&run);
    assert_eq!(run.status.code(), Some(0), "{text}");
    assert_eq!(
        lines_with(&text, &format!("mayfail: program: {limit}")),
        1,
        "{text}"
    );
}

const ARENA_PROGRAM: &str = r#"
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* An allocator of its own: one mapped arena, never malloc. */
static char *arena;
static size_t used;

static void *take(size_t size) {
    if (arena == NULL) {
        arena = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (arena == MAP_FAILED)
            return NULL;
    }
    void *block = arena + used;
    used += (size + 15) & ~(size_t)15;
    return block;
}

int main(void) {
    char *text = take(32);
    if (text == NULL)
        return 1;
    strcpy(text, "arena\n");
    return write(1, text, strlen(text)) == 6 ? 0 : 1;
}
"#;

const BUMP_PROGRAM: &str = r#"
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Pieces of one static arena, never freed: no Rust allocation calls malloc.
struct Bump;

const ARENA: usize = 1 << 20;
static mut MEMORY: [u8; ARENA] = [0; ARENA];
static NEXT: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = &raw mut MEMORY as usize;
        let mut next = NEXT.load(Ordering::Relaxed);
        loop {
            let start = (base + next).next_multiple_of(layout.align()) - base;
            let end = start + layout.size();
            if end > ARENA {
                return std::ptr::null_mut();
            }
            match NEXT.compare_exchange(next, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => next = now,
            }
        }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static GLOBAL: Bump = Bump;

fn main() {
    let numbers: Vec<u64> = (0..100).collect();
    println!("{}", numbers.iter().sum::<u64>());
}
"#;

#[test]
fn programs_whose_allocations_never_reach_malloc_are_said_to_be_out_of_reach() {
    require_library();
    // A C program with an allocator of its own: nothing tells from outside,
    // but the walk sees no allocation at all, says so and exits 6.
    let dir = scratch("arena");
    compile_c(&dir, ARENA_PROGRAM, &[]);
    let (run, walk) = run_and_walk(&dir);
    let text = support::output_text(&run);
    assert_eq!(run.status.code(), Some(0), "{text}");
    assert_eq!(text, "arena\n");
    let text = support::output_text(&walk);
    assert_eq!(walk.status.code(), Some(6), "{text}");
    assert_eq!(lines_with(&text, NOTHING_REACHED), 1, "{text}");

    // A Rust program with a global allocator of its own: its symbols tell,
    // one line says so before it runs. glibc's own allocations (std's
    // start-up reads /proc/self/maps with fopen) still reach the library,
    // so the walk is of those: no site of the program, exit 0.
    let dir = scratch("bump");
    compile_rust(&dir, BUMP_PROGRAM);
    let (run, walk) = run_and_walk(&dir);
    let line = "mayfail: ./program: has its own Rust global allocator (jemalloc, mimalloc...): \
                its Rust allocations do not reach malloc and are not injected; only C \
                allocations are";
    let text = support::output_text(&run);
    assert_eq!(lines_with(&text, line), 1, "{text}");
    let text = support::output_text(&walk);
    assert_eq!(walk.status.code(), Some(0), "{text}");
    assert_eq!(lines_with(&text, line), 1, "{text}");
    assert!(text.contains("mayfail sites: 0 sites in"), "{text}");
}

/// Whether `path` is on a file system mounted `nosuid`.
fn on_nosuid(path: &Path) -> bool {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut info = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the type statvfs fills,
    // read only when the call succeeded.
    unsafe {
        libc::statvfs(name.as_ptr(), info.as_mut_ptr()) == 0
            && info.assume_init_ref().f_flag & libc::ST_NOSUID != 0
    }
}

#[test]
fn a_setuid_program_is_out_of_reach_only_when_it_runs_as_another_user() {
    use std::os::unix::fs::{PermissionsExt, chown};
    require_library();
    let dir = scratch("setuid");
    compile_c(&dir, C_PROGRAM, &[]);
    let program = dir.join("program");
    if on_nosuid(&dir) {
        eprintln!("{}: mounted nosuid, setuid cannot be tried", dir.display());
        return;
    }

    // Setuid, but ours: the process keeps its user, the loader honours
    // LD_PRELOAD, nothing is said and the unchecked malloc crashes.
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let (run, walk) = run_and_walk(&dir);
    let text = support::output_text(&run);
    assert_eq!(run.status.code(), Some(128 + libc::SIGSEGV), "{text}");
    assert_eq!(lines_with(&text, "setuid or setgid"), 0, "{text}");
    let text = support::output_text(&walk);
    assert_eq!(walk.status.code(), Some(1), "{text}");
    assert_eq!(lines_with(&text, "setuid or setgid"), 0, "{text}");

    // Another user's (root can give it away), or else setgid to a group we
    // are in besides our own: the process changes identity, the loader
    // ignores LD_PRELOAD, and one line says so.
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let other_user = if uid == 65534 { 65533 } else { 65534 };
    let mode = if chown(&program, Some(other_user), None).is_ok() {
        0o4755
    } else {
        let mut groups = vec![0; 256];
        // SAFETY: a buffer of 256 gids, its length passed.
        let n = unsafe { libc::getgroups(256, groups.as_mut_ptr()) };
        // SAFETY: getgid cannot fail.
        let gid = unsafe { libc::getgid() };
        match groups[..n.max(0) as usize].iter().find(|&&g| g != gid) {
            Some(&group) if chown(&program, None, Some(group)).is_ok() => 0o2755,
            _ => {
                eprintln!("not root and in no second group: only the own setuid file was tried");
                return;
            }
        }
    };
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(mode)).unwrap();
    let _ = std::fs::remove_file(dir.join("walk.state"));
    let (run, walk) = run_and_walk(&dir);
    assert_said_once(
        &run,
        &walk,
        "setuid or setgid to another user or group: the loader ignores LD_PRELOAD for it, so \
         no failure is injected",
    );
}

/// A C program whose allocations are in `main` and in the C library's
/// functions that allocate for their caller. Each line that allocates is
/// named in [`LIBC_CALLERS_LINES`].
const LIBC_CALLERS: &str = r#"#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) static char *copy(const char *s) {
    char *d = strdup(s);
    d[0] = 'X';
    return d;
}

__attribute__((noinline)) static int format(void) {
    char *p = NULL;
    if (asprintf(&p, "%d", 42) < 0) return 0;
    free(p);
    return 0;
}

__attribute__((noinline)) static int read_line(void) {
    FILE *f = fopen("/proc/self/cmdline", "r");
    if (f == NULL) return 0;
    char *line = NULL;
    size_t size = 0;
    getline(&line, &size, f);
    free(line);
    fclose(f);
    return 0;
}

int main(void) {
    char *text = malloc(64);
    text[0] = 'a';
    free(copy("hello"));
    format();
    read_line();
    fprintf(stderr, "%s\n", text);
    return 0;
}
"#;

/// Where [`LIBC_CALLERS`] allocates: (site's first function and line, its
/// outcome).
const LIBC_CALLERS_LINES: [(&str, &str); 5] = [
    ("main (program.c:31)", "crashed"),
    ("copy (program.c:7)", "crashed"),
    ("format (program.c:14)", "handled"),
    ("read_line (program.c:20)", "handled"),
    ("read_line (program.c:24)", "handled"),
];

#[test]
fn a_c_programs_main_and_the_callers_of_libcs_allocating_functions_are_sites() {
    require_library();
    let dir = scratch("allocating-for-callers");
    compile_c(&dir, LIBC_CALLERS, &[]);
    let output = bounded(runner(&dir).args(WALK_PROGRAM), 120);
    let text = support::output_text(&output);
    let sites = sites_in(&dir.join("walk.state"));
    for (place, outcome) in LIBC_CALLERS_LINES {
        let found: Vec<_> = sites
            .iter()
            .filter(|s| s.2.starts_with(place.split(" (").next().unwrap()))
            .filter(|s| {
                s.2.contains(place.split(" (").nth(1).unwrap().trim_end_matches(')'))
            })
            .collect();
        assert!(!found.is_empty(), "no site {place}: {sites:?}\n{text}");
        assert!(
            found.iter().all(|s| s.1 == outcome),
            "{place} should be {outcome}: {found:?}"
        );
    }
    // A site is its caller's: no frame of libc's, nor its start-up.
    for (_, _, place) in &sites {
        assert!(
            !place.contains("libc") && !place.contains("strdup") && !place.contains("./libio"),
            "{place}"
        );
    }
    assert!(
        text.contains("stacks of the runtime (") && !text.contains("Rust runtime and test harness"),
        "{text}"
    );
    // The crash report of `strdup`'s failure starts its backtrace at its
    // caller too.
    let log = std::fs::read_to_string(dir.join("walk.log")).unwrap();
    assert!(log.contains("trimmed):\n    0: copy\n"), "{log}");
    assert_eq!(output.status.code(), Some(1), "{text}");
}

/// A C++ program allocating through `std::vector`, `std::map`,
/// `std::string` and `new[]`; none of it checks (an uncaught `bad_alloc`
/// aborts).
const CPP_PROGRAM: &str = r#"#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace app {
struct Cache {
    std::map<int, std::string> entries;
    void insert(int key);
};

void Cache::insert(int key) {
    entries[key] = "a value long enough to need memory of its own, not the small buffer";
}
}  // namespace app

__attribute__((noinline)) static void grow(std::vector<int> &v) {
    v.push_back(1);
}

int main() {
    std::vector<int> v;
    grow(v);
    app::Cache cache;
    cache.insert(7);
    int *p = new int[4];
    p[0] = 1;
    std::fprintf(stderr, "%d %zu\n", v[0] + p[0], cache.entries.size());
    delete[] p;
    return 0;
}
"#;

#[test]
fn a_cpp_programs_sites_are_its_own_functions_demangled_not_the_cpp_librarys() {
    require_library();
    for (opt, sites_expected) in [
        (
            "-O0",
            &[
                "grow (program.cpp:18) <- main (program.cpp:23)",
                "app::Cache::insert(int) (program.cpp:13) <- main (program.cpp:25)",
                "main (program.cpp:26)",
            ][..],
        ),
        (
            "-O2",
            &[
                "grow (program.cpp:18) <- main (program.cpp:23)",
                "main (program.cpp:26)",
            ][..],
        ),
    ] {
        let dir = scratch(&format!("cpp-program{opt}"));
        support::compile_cpp(&dir, CPP_PROGRAM, &[opt]);
        let output = bounded(runner(&dir).args(WALK_PROGRAM), 120);
        let text = support::output_text(&output);
        let sites = sites_in(&dir.join("walk.state"));
        // Paths as the state file has them, absolute: compare without the
        // directory.
        let shown: Vec<String> = sites
            .iter()
            .map(|s| s.2.replace(&format!("{}/", dir.display()), ""))
            .collect();
        for expected in sites_expected {
            assert!(
                shown.iter().any(|s| s == expected),
                "{opt}: no site {expected:?} in {shown:#?}\n{text}"
            );
        }
        for (site, (_, outcome, _)) in shown.iter().zip(&sites) {
            for machinery in ["_Z", "operator new", "std::", "__gnu_cxx", "allocator"] {
                assert!(!site.contains(machinery), "{opt}: {site}");
            }
            assert_eq!(outcome, "aborted", "{opt}: {site}");
        }
        // Aborts at infallible allocations only: no bug, exit 0.
        assert_eq!(output.status.code(), Some(0), "{text}");
    }
}

/// A C program that, when its allocation fails, probes memory with its own
/// `SIGSEGV` handler, as GCs and JITs do: `sigsetjmp` before the read,
/// `siglongjmp` out of the handler; a signal sent with `raise` is only
/// counted. With an argument,
/// the handler gives up on faults instead (it resets the default action
/// and returns, so the read faults again and kills the process).
const PROBING_PROGRAM: &str = r#"#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static sigjmp_buf probe_env;
static volatile int raised;
static int give_up;

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)context;
    if (info->si_code <= 0) { raised++; return; }
    if (give_up) { signal(sig, SIG_DFL); return; }
    siglongjmp(probe_env, 1);
}

__attribute__((noinline)) static int readable(volatile char *p) {
    if (sigsetjmp(probe_env, 1)) return 0;
    (void)*p;
    return 1;
}

int main(int argc, char **argv) {
    (void)argv;
    give_up = argc > 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    char *text = malloc(100);
    if (text != NULL) {
        free(text);
        return 0;
    }
    int found = 0;
    for (int i = 0; i < 3; i++) found += readable((volatile char *)(long)(16 * i));
    raise(SIGSEGV);
    fprintf(stderr, "no memory; readable %d, raised %d\n", found, raised);
    return 0;
}
"#;

#[test]
fn a_program_that_handles_sigsegv_itself_is_handled_and_crashed_only_when_it_dies_of_it() {
    require_library();
    for (args, outcome) in [(&[][..], "handled"), (&["give-up"][..], "crashed")] {
        let dir = scratch(&format!("probing-{outcome}"));
        compile_c(&dir, PROBING_PROGRAM, &[]);
        let output = bounded(
            runner(&dir)
                .args([
                    "sites",
                    "--preload",
                    "--state",
                    "walk.state",
                    "--",
                    "./program",
                ])
                .args(args),
            120,
        );
        let text = support::output_text(&output);
        let sites = sites_in(&dir.join("walk.state"));
        let malloc = sites
            .iter()
            .find(|s| s.2.starts_with("main (") && s.2.contains("program.c:33"))
            .unwrap_or_else(|| panic!("no site at program.c:33: {sites:?}\n{text}"));
        assert_eq!(malloc.1, outcome, "{sites:?}\n{text}");
        let log = std::fs::read_to_string(dir.join("walk.log")).unwrap();
        let reported = log.contains("mayfail: the process crashed");
        assert_eq!(reported, outcome == "crashed", "{log}");
        if outcome == "handled" {
            assert!(log.contains("no memory; readable 0, raised 1"), "{log}");
            assert_eq!(output.status.code(), Some(0), "{text}");
        }
    }
}

// ---------------------------------------------------------------------------
// The library by default: every program that does not declare `MayFail`.

/// Prints `LD_PRELOAD` as the program sees it, or `(none)`.
const PRINTS_PRELOAD: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    const char *preload = getenv("LD_PRELOAD");
    printf("LD_PRELOAD=%s\n", preload ? preload : "(none)");
    return 0;
}
"#;

/// mayfail's ELF note, as a program that declares `MayFail` carries it.
const MAYFAIL_NOTE: &str = r#"
__asm__(".pushsection .note.mayfail,\"a\",@note\n.balign 4\n.long 8\n.long 4\n.long 1\n"
        ".asciz \"mayfail\"\n.balign 4\n.long 1\n.popsection\n");
"#;

#[test]
fn programs_that_do_not_declare_mayfail_run_under_the_library_without_being_asked() {
    require_library();
    // A C program: walked without --preload, its two sites found.
    let dir = scratch("default-c");
    compile_c(&dir, C_PROGRAM, &[]);
    let walk = bounded(
        runner(&dir).args(["sites", "--state", "walk.state", "--", "./program"]),
        120,
    );
    assert_c_program_walked(&dir, "walk.state", &walk);
    let run = bounded(
        runner(&dir).args(["run", "--inject", EVERY_FAILURE, "--", "./program"]),
        60,
    );
    let text = support::output_text(&run);
    assert_eq!(run.status.code(), Some(128 + libc::SIGSEGV), "{text}");

    // A shell command: the shell is no MayFail program, nor is what it runs.
    let walk = bounded(
        runner(&dir).args([
            "sites",
            "--state",
            "sh.state",
            "--",
            "sh",
            "-c",
            "./program",
        ]),
        120,
    );
    let text = support::output_text(&walk);
    let sites = sites_in(&dir.join("sh.state"));
    let unchecked = sites
        .iter()
        .find(|s| s.2.starts_with("unchecked"))
        .unwrap_or_else(|| panic!("{sites:?}\n{text}"));
    assert_eq!(unchecked.1, "crashed", "{sites:?}");
    // A script run as a program: no ELF file, the library all the same.
    std::fs::write(dir.join("script"), "#!/bin/sh\nexec ./program\n").unwrap();
    std::fs::set_permissions(
        dir.join("script"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let run = bounded(
        runner(&dir).args(["run", "--inject", EVERY_FAILURE, "--", "./script"]),
        60,
    );
    let text = support::output_text(&run);
    assert_eq!(run.status.code(), Some(128 + libc::SIGSEGV), "{text}");

    // What each program sees: the library unless it declares MayFail, and
    // with --preload even then; never with --no-preload.
    let dir = scratch("default-choice");
    compile_c(&dir, PRINTS_PRELOAD, &[]);
    let noted = scratch("default-choice-noted");
    compile_c(&noted, &format!("{MAYFAIL_NOTE}{PRINTS_PRELOAD}"), &[]);
    let library = library().display().to_string();
    for (dir, option, expected) in [
        (&dir, None, library.as_str()),
        (&dir, Some("--preload"), &library),
        (&dir, Some("--no-preload"), "(none)"),
        (&noted, None, "(none)"),
        (&noted, Some("--preload"), &library),
    ] {
        let mut command = runner(dir);
        command.arg("run").args(option).args(["--", "./program"]);
        let output = bounded(&mut command, 60);
        let text = support::output_text(&output);
        assert_eq!(output.status.code(), Some(0), "{option:?}: {text}");
        assert_eq!(
            text.lines().find_map(|l| l.strip_prefix("LD_PRELOAD=")),
            Some(expected),
            "{} {option:?}: {text}",
            dir.display()
        );
    }
}

// ---------------------------------------------------------------------------
// ELF files the runner reads before it runs them.

/// Sets the bytes at `at` in `path` to `value`.
fn patch(path: &Path, at: usize, value: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at..at + value.len()].copy_from_slice(value);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn elf_files_with_odd_headers_are_run_or_refused_in_one_line_never_a_panic() {
    use std::os::unix::fs::PermissionsExt;
    require_library();
    let dir = scratch("odd-elf");
    compile_c(&dir, C_PROGRAM, &[]);
    let program = dir.join("program");
    // Runs `name` (a copy of the program with `edit` made), with and
    // without --preload: the status and the output.
    let run = |name: &str, edit: &dyn Fn(&Path)| {
        let copy = dir.join(name);
        std::fs::copy(&program, &copy).unwrap();
        edit(&copy);
        ["--preload", "--no-preload"].map(|option| {
            let output = bounded(
                runner(&dir).args(["run", option, "--", &format!("./{name}")]),
                60,
            );
            (output.status.code(), support::output_text(&output))
        })
    };

    // An object file (no program headers, e_phentsize 0), and a program
    // whose program header size is 0: the kernel refuses both.
    let object = |path: &Path| {
        let built = Command::new("cc")
            .current_dir(&dir)
            .args(["-c", "-o"])
            .arg(path)
            .arg("program.c")
            .status()
            .unwrap();
        assert!(built.success());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let no_program_header_size = |path: &Path| patch(path, 54, &[0, 0]);
    for (name, edit) in [
        ("object.o", &object as &dyn Fn(&Path)),
        ("no-phentsize", &no_program_header_size),
    ] {
        for (code, text) in run(name, edit) {
            assert_eq!(code, Some(126), "{name}: {text}");
            assert_eq!(text.lines().count(), 1, "{name}: {text}");
            assert!(
                text.starts_with(&format!("mayfail: cannot execute ./{name}: ")),
                "{name}: {text}"
            );
        }
    }

    // Section headers of size 0 or 1: the kernel runs the program, the
    // runner reads no names from it.
    for size in [0u8, 1] {
        let name = format!("shentsize-{size}");
        for (code, text) in run(&name, &|path| patch(path, 58, &[size, 0])) {
            assert_eq!(code, Some(0), "{name}: {text}");
            assert!(text.contains("checked"), "{name}: {text}");
        }
    }

    // Another class or byte order: said in one line, not misread (a real
    // one would not run here; what the kernel makes of these copies is
    // its own business).
    for (name, at, value, said) in [
        (
            "class32",
            4,
            1u8,
            "mayfail: ./class32: a 32-bit ELF program: ",
        ),
        (
            "big-endian",
            5,
            2,
            "mayfail: ./big-endian: a big-endian ELF program: ",
        ),
    ] {
        let [(code, text), (plain_code, _)] = run(name, &|path| patch(path, at, &[value]));
        assert!(code.is_some_and(|c| c != 101), "{name}: {text}");
        assert!(plain_code.is_some_and(|c| c != 101), "{name}");
        assert_eq!(lines_with(&text, said), 1, "{name}: {text}");
        assert_eq!(
            lines_with(&text, "cannot be loaded into it, so no failure is injected"),
            1,
            "{name}: {text}"
        );
    }
}

// ---------------------------------------------------------------------------
// A library path the loader cannot take.

#[test]
fn a_library_path_with_a_space_or_a_colon_is_refused_in_one_line_naming_its_variable() {
    require_library();
    let dir = scratch("spaced");
    compile_c(&dir, C_PROGRAM, &[]);
    let spaced = dir.join("a dir");
    std::fs::create_dir_all(&spaced).unwrap();
    let colon = dir.join("a:dir");
    std::fs::create_dir_all(&colon).unwrap();
    for place in [&spaced, &colon] {
        std::fs::copy(library(), place.join("libmayfail_preload.so")).unwrap();
    }
    // Each way to name the library, with the line that must name it.
    let named = |place: &Path| {
        let mut command = runner(&dir);
        command.env("MAYFAIL_PRELOAD_LIB", place.join("libmayfail_preload.so"));
        command
    };
    let cache = |variable: &str, place: &Path| {
        let mut command = installed_runner(&dir);
        command.env_remove("XDG_CACHE_HOME").env(variable, place);
        command
    };
    let ways: [(&dyn Fn() -> Command, &str); 4] = [
        (&|| named(&spaced), "(named by MAYFAIL_PRELOAD_LIB)"),
        (&|| named(&colon), "(named by MAYFAIL_PRELOAD_LIB)"),
        (
            &|| cache("XDG_CACHE_HOME", &spaced),
            "(the cache directory named by XDG_CACHE_HOME)",
        ),
        (
            &|| cache("HOME", &spaced),
            "(the cache directory named by HOME)",
        ),
    ];
    // The library next to a runner in such a directory.
    let beside = spaced.join("mayfail");
    std::fs::copy(RUNNER, &beside).unwrap();
    let beside_runner = || {
        let mut command = Command::new(&beside);
        command
            .current_dir(&dir)
            .env_remove("MAYFAIL_PRELOAD_LIB")
            .env_remove("MAYFAIL_INJECT")
            .env_remove("LD_PRELOAD");
        command
    };
    let ways: Vec<(&dyn Fn() -> Command, &str)> = ways
        .into_iter()
        .chain([(
            &beside_runner as &dyn Fn() -> Command,
            "(next to this program)",
        )])
        .collect();
    for (command, origin) in ways {
        for args in [
            &["run", "--inject", EVERY_FAILURE, "--", "./program"][..],
            &["run", "--preload", "--", "./program"],
            &["sites", "--state", "walk.state", "--", "./program"],
            &["sites", "--state", "walk.state", "--", "cargo", "--version"],
        ] {
            let output = bounded(command().args(args), 60);
            let text = support::output_text(&output);
            assert_eq!(output.status.code(), Some(2), "{origin} {args:?}: {text}");
            assert_eq!(text.lines().count(), 1, "{origin} {args:?}: {text}");
            assert!(
                text.starts_with("mayfail: the preload library's path ")
                    && text.contains(origin)
                    && text.contains("holds a space or a colon"),
                "{origin} {args:?}: {text}"
            );
            // Nothing ran, nothing was written.
            let state = std::fs::read(dir.join("walk.state")).unwrap_or_default();
            assert!(state.is_empty(), "{origin} {args:?}: it ran");
            assert!(!dir.join("walk.log").exists(), "{origin} {args:?}: it ran");
        }
    }
}

// ---------------------------------------------------------------------------
// A project's own target runner.

/// The host's triple, as `rustc -vV` names it.
fn host_triple() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc).arg("-vV").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .to_owned()
}

#[test]
fn a_target_runner_of_the_project_is_refused_in_one_line_naming_where_it_is_set() {
    require_library();
    let host = host_triple();
    let variable = format!(
        "CARGO_TARGET_{}_RUNNER",
        host.to_uppercase().replace(['-', '.'], "_")
    );
    let root = scratch("project-runner");
    let deep = root.join("crate/src");
    std::fs::create_dir_all(&deep).unwrap();
    let home = root.join("cargo-home");
    std::fs::create_dir_all(&home).unwrap();
    // A package of its own, should a command run after all.
    std::fs::write(
        root.join("crate/Cargo.toml"),
        "[package]\nname = \"runner-project\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(deep.join("lib.rs"), "").unwrap();
    // (file, its text, the words the refusal must hold)
    let host_runner = format!("[target.{host}]\nrunner = \"my-runner --flag\"\n");
    let cases: Vec<(PathBuf, String, String)> = vec![
        (
            root.join(".cargo/config.toml"),
            host_runner.clone(),
            format!("sets target.{host}.runner"),
        ),
        (
            root.join("crate/.cargo/config"),
            "[target.'cfg(unix)']\nrunner = [\"wrapper\"]\n".to_owned(),
            "sets target.'cfg(unix)'.runner, which may apply".to_owned(),
        ),
        (
            home.join("config.toml"),
            host_runner,
            "cargo-home/config.toml sets".to_owned(),
        ),
        (
            root.join(".cargo/config.toml"),
            "[build]\ntarget = \"aarch64-unknown-linux-gnu\"\n\
             [target.aarch64-unknown-linux-gnu]\nrunner = \"qemu-aarch64\"\n"
                .to_owned(),
            "sets target.aarch64-unknown-linux-gnu.runner".to_owned(),
        ),
    ];
    let commands: [&[&str]; 3] = [
        &["run", "--", "cargo", "test"],
        &["sites", "--state", "walk.state", "--", "cargo", "test"],
        &["test"],
    ];
    let refused = |command: &mut Command, says: &str, file: &Path| {
        let output = bounded(command, 60);
        let text = support::output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{says}: {text}");
        assert_eq!(text.lines().count(), 1, "{says}: {text}");
        assert!(text.contains(says), "{says}: {text}");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains("would silently replace"), "{text}");
        let state = std::fs::read(deep.join("walk.state")).unwrap_or_default();
        assert!(state.is_empty(), "it ran: {text}");
    };
    let cargo_mayfail = |args: &[&str]| {
        let mut command = Command::new(if args[0] == "test" {
            CARGO_RUNNER
        } else {
            RUNNER
        });
        command
            .current_dir(&deep)
            .env("MAYFAIL_PRELOAD_LIB", library())
            .env("CARGO_HOME", &home)
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove(&variable)
            .args(args);
        command
    };
    for (file, text, says) in &cases {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
        for args in commands {
            refused(&mut cargo_mayfail(args), says, file);
        }
        std::fs::remove_file(file).unwrap();
    }

    // The variable set already, and a runner given with --config.
    for args in commands {
        let mut command = cargo_mayfail(args);
        command.env(&variable, "my-runner");
        let output = bounded(&mut command, 60);
        let text = support::output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(
            text.contains(&format!("{variable} is already set")),
            "{text}"
        );
    }
    let option = format!("--config=target.{host}.runner=\"x\"");
    let mut command = cargo_mayfail(&["run", "--", "cargo", "test", &option]);
    refused(&mut command, "sets target.", Path::new("--config target."));

    // A runner for another target only, or no runner: cargo runs.
    std::fs::write(
        root.join(".cargo/config.toml"),
        "[target.aarch64-unknown-linux-gnu]\nrunner = \"qemu-aarch64\"\n",
    )
    .unwrap();
    let output = bounded(&mut cargo_mayfail(&["run", "--", "cargo", "--version"]), 60);
    let text = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.starts_with("cargo "), "{text}");
}

// ---------------------------------------------------------------------------
// Replay lines of walks under the library.

/// Runs a printed line with `bash -c` in `dir`, as a person would paste it:
/// the runner's directory in `PATH` (as an installed runner is), the
/// library named, no variable of ours set.
fn paste(dir: &Path, line: &str, secs: u64) -> Output {
    let runner_dir = Path::new(RUNNER).parent().unwrap().to_owned();
    let path = std::env::join_paths(std::iter::once(runner_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    bounded(
        Command::new("bash")
            .args(["-c", line])
            .current_dir(dir)
            .env("PATH", path)
            .env("MAYFAIL_PRELOAD_LIB", library())
            .env_remove("MAYFAIL_INJECT")
            .env_remove("LD_PRELOAD"),
        secs,
    )
}

/// The replay line of the site whose first frame starts with `function`
/// in a walk's JSON report.
fn replay_of(json: &Path, function: &str) -> String {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|site| {
            site["frames"][0]["function"]
                .as_str()
                .is_some_and(|f| f.starts_with(function))
        })
        .and_then(|site| site["replay"].as_str())
        .unwrap_or_else(|| panic!("no site {function} in {report}"))
        .to_owned()
}

/// What failed (`alloc of N bytes (align A)`) in each crash report of
/// `text`, with the report's replay line.
fn crash_replays(text: &str) -> Vec<(String, String)> {
    let mut what = String::new();
    let mut found = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("mayfail:   failed on purpose: ") {
            what = rest.split(" on thread").next().unwrap().to_owned();
        }
        if let Some(replay) = line.strip_prefix("mayfail:   replay: ") {
            found.push((what.clone(), replay.to_owned()));
        }
    }
    found
}

/// Pastes each crash report's replay line: the same allocation fails
/// again, and the process dies of `signal` again.
fn assert_crash_replays(dir: &Path, reports: &[(String, String)], signal: i32) {
    assert!(!reports.is_empty());
    for (what, line) in reports {
        assert!(line.starts_with("mayfail run --inject 'stack="), "{line}");
        let output = paste(dir, line, 120);
        let text = support::output_text(&output);
        assert_eq!(output.status.code(), Some(128 + signal), "{line}: {text}");
        let again = crash_replays(&text);
        assert_eq!(again.len(), 1, "{line}: {text}");
        assert_eq!(&again[0].0, what, "{line}: {text}");
        assert_eq!(&again[0].1, line, "{text}");
    }
}

#[test]
fn replay_lines_of_a_walk_under_the_library_fail_the_same_site_the_same_way() {
    require_library();
    // A C program with an argument that needs quoting: the crashed site
    // crashes again, the handled one is handled again.
    let dir = scratch("replay-c");
    compile_c(&dir, C_PROGRAM, &[]);
    let walk = bounded(
        runner(&dir).args(["sites", "--state", "walk.state", "--", "./program", "it's"]),
        120,
    );
    assert_c_program_walked(&dir, "walk.state", &walk);
    let crashed = replay_of(&dir.join("walk.json"), "unchecked");
    let handled = replay_of(&dir.join("walk.json"), "checked");
    let table = String::from_utf8_lossy(&walk.stdout).into_owned();
    assert!(table.contains(&format!("replay: {crashed}")), "{table}");
    for (line, code) in [(&crashed, 128 + libc::SIGSEGV), (&handled, 0)] {
        assert!(line.contains(" run --inject stack="), "{line}");
        assert!(line.ends_with(" -- ./program 'it'\\''s'"), "{line}");
        let output = paste(&dir, line, 60);
        let text = support::output_text(&output);
        assert_eq!(output.status.code(), Some(code), "{line}: {text}");
    }
    // The crash reports' own lines, in the walk's output and in the
    // replay's: through the runner, the same allocation, the same crash.
    let log = std::fs::read_to_string(dir.join("walk.log")).unwrap();
    let logged = crash_replays(&log);
    assert_eq!(logged.len(), 1, "{log}");
    assert!(logged[0].0.starts_with("alloc of 200 bytes"), "{logged:?}");
    assert_crash_replays(&dir, &logged, libc::SIGSEGV);
    let replayed = support::output_text(&paste(&dir, &crashed, 60));
    assert_eq!(crash_replays(&replayed), logged, "{replayed}");

    // A Rust program whose push aborts: SIGABRT again.
    let dir = scratch("replay-rust");
    compile_rust(&dir, RUST_PROGRAM);
    let walk = bounded(
        runner(&dir).args(["sites", "--state", "walk.state", "--", "./program"]),
        120,
    );
    let text = support::output_text(&walk);
    // Aborts at infallible allocations only: no bug, exit 0.
    assert_eq!(walk.status.code(), Some(0), "{text}");
    let aborted = replay_of(&dir.join("walk.json"), "program::infallible");
    let output = paste(&dir, &aborted, 60);
    let text = support::output_text(&output);
    assert_eq!(
        output.status.code(),
        Some(128 + libc::SIGABRT),
        "{aborted}: {text}"
    );
    assert!(text.contains("memory allocation of"), "{aborted}: {text}");
    let log = std::fs::read_to_string(dir.join("walk.log")).unwrap();
    assert_crash_replays(&dir, &crash_replays(&log), libc::SIGABRT);
}

#[test]
fn replay_lines_of_a_cargo_walk_under_the_library_abort_the_same_test_binary_again() {
    require_library();
    let dir = scratch("replay-crate");
    let target = dir.join("target");
    let walk = bounded(
        Command::new(RUNNER)
            .current_dir(fixture_dir())
            .env("MAYFAIL_PRELOAD_LIB", library())
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("MAYFAIL_INJECT")
            .env_remove("LD_PRELOAD")
            .env_remove("RUSTFLAGS")
            .args(["sites", "--state"])
            .arg(dir.join("walk.state"))
            .args(["--", "cargo", "test", "--offline"]),
        600,
    );
    let text = support::output_text(&walk);
    // Aborts at infallible allocations only: no bug, exit 0.
    assert_eq!(walk.status.code(), Some(0), "{text}");
    let line = replay_of(&dir.join("walk.json"), "preload_fixture::infallible_list");
    assert!(line.contains(" test --inject stack="), "{line}");
    // The per-test engine's line runs the test that reached the site alone.
    assert!(
        line.contains(" -- --offline ") && line.contains(" -- --exact "),
        "{line}"
    );
    // The replay: cargo runs the test binaries, the one that reached the
    // site aborts again, and cargo says so.
    let mut pasted = Command::new("bash");
    let replay = |line: &str, pasted: &mut Command| {
        let runner_dir = Path::new(RUNNER).parent().unwrap().to_owned();
        let path = std::env::join_paths(std::iter::once(runner_dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();
        bounded(
            pasted
                .args(["-c", line])
                .current_dir(fixture_dir())
                .env("PATH", path)
                .env("CARGO_TARGET_DIR", &target)
                .env("MAYFAIL_PRELOAD_LIB", library())
                .env_remove("MAYFAIL_INJECT")
                .env_remove("LD_PRELOAD")
                .env_remove("RUSTFLAGS"),
            600,
        )
    };
    let output = replay(&line, &mut pasted);
    let text = support::output_text(&output);
    assert_eq!(output.status.code(), Some(101), "{line}: {text}");
    assert!(text.contains("SIGABRT"), "{line}: {text}");
    assert!(
        text.contains("preload_fixture::infallible_list"),
        "{line}: {text}"
    );
    // The crash reports' lines name the test binary (or the doctests'
    // executable, kept beside the state file), through the runner.
    let log = std::fs::read_to_string(dir.join("walk.log")).unwrap();
    let logged = crash_replays(&log);
    assert!(
        !logged.is_empty()
            && logged
                .iter()
                .all(|(_, l)| l.contains("/deps/") || l.contains("/walk.state.doctests/")),
        "{logged:?}"
    );
    assert_crash_replays(&dir, &logged, libc::SIGABRT);
}

#[test]
fn a_walk_of_a_c_program_linked_with_jemalloc_finds_its_sites_over_jemalloc() {
    let Some(jemalloc) = support::jemalloc("a_walk_of_a_c_program_linked_with_jemalloc") else {
        return;
    };
    require_library();
    let dir = scratch("jemalloc-walk");
    support::compile_c_named(
        &dir,
        "program",
        C_PROGRAM,
        &["-O0", jemalloc.to_str().unwrap()],
    );
    let walk = bounded(runner(&dir).args(WALK_PROGRAM), 120);
    assert_c_program_walked(&dir, "walk.state", &walk);
    // Without injection it runs as it does without the library.
    let run = bounded(
        runner(&dir).args(["run", "--preload", "--", "./program"]),
        60,
    );
    let text = support::output_text(&run);
    assert_eq!(run.status.code(), Some(0), "{text}");
    assert_eq!(text, "checked\nu\n");
}

/// A C program that allocates (which starts the engine: it opens the state
/// file), closes every descriptor it has but the standard ones, then opens
/// its data file and allocates again: its two sites are walked, and its
/// file holds only what it wrote (with `write(2)`: stdio would allocate).
const CLOSING_PROGRAM: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) static void warm_up(void) {
    char *volatile block = malloc(10);
    free(block);
}

__attribute__((noinline)) static int allocate(int data) {
    char *block = malloc(100);
    const char *seen = block == NULL ? "handled\n" : "served\n";
    free(block);
    return write(data, seen, strlen(seen)) > 0 ? 0 : 4;
}

int main(void) {
    warm_up();
    for (int fd = 3; fd < 1024; fd++) close(fd);
    int data = open("data.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (data < 0) return 3;
    int status = allocate(data);
    close(data);
    return status;
}
"#;

#[test]
fn a_walk_of_a_program_that_closes_its_descriptors_finds_its_sites_and_leaves_its_file_alone() {
    require_library();
    let dir = scratch("closing");
    compile_c(&dir, CLOSING_PROGRAM, &[]);
    let walk = bounded(runner(&dir).args(WALK_PROGRAM), 120);
    let text = support::output_text(&walk);
    assert_eq!(walk.status.code(), Some(0), "{text}");
    let mut sites = sites_in(&dir.join("walk.state"));
    sites.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(sites.len(), 2, "{sites:?}\n{text}");
    assert!(sites[0].2.starts_with("allocate"), "{sites:?}");
    assert!(sites[1].2.starts_with("warm_up"), "{sites:?}");
    assert!(sites.iter().all(|s| s.1 == "handled"), "{sites:?}");
    // The last run (all sites known, nothing failed) wrote it.
    let data = std::fs::read_to_string(dir.join("data.txt")).unwrap();
    assert_eq!(data, "served\n");
}

#[test]
fn mayfail_run_leaves_a_c_program_the_null_it_expects_when_memory_runs_out() {
    require_library();
    let dir = scratch("run-fill");
    compile_c(
        &dir,
        r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>
int main(void) {
    alarm(30); /* a program that retries for ever must not outlive the test */
    struct rlimit limit = { 256 << 20, 256 << 20 };
    if (setrlimit(RLIMIT_AS, &limit) != 0) return 2;
    unsigned long blocks = 0;
    while (malloc(1000) != NULL) blocks++;
    printf("null after %s blocks\n", blocks > 1000 ? "many" : "few");
    return 0;
}
"#,
        &[],
    );
    let run = bounded(
        runner(&dir).args(["run", "--preload", "--", "./program"]),
        60,
    );
    let text = support::output_text(&run);
    assert_eq!(run.status.code(), Some(0), "{text}");
    assert_eq!(text, "null after many blocks\n");
}

// ---------------------------------------------------------------------------
// Handlers that jump out without restoring the signal mask.

/// A C program that probes three unreadable addresses with its own
/// `SIGSEGV` handler, which jumps out without restoring the signal mask, as
/// memory probes and JIT or GC recovery do, after an injected failure of
/// its `malloc(123)` (which puts mayfail's handler in front of the
/// program's). The handler asks for `SA_NODEFER`, so the kernel never
/// blocks `SIGSEGV` while it runs and the jump leaves nothing blocked. The
/// argument picks the jump: `longjmp` (`setjmp` and `_longjmp`), `sigjmp0`
/// (`sigsetjmp(env, 0)` and `siglongjmp`) or `resethand` (`_longjmp`, with
/// `SA_RESETHAND` too: the handler installs itself again each time).
const JUMPING_PROGRAM: &str = r#"#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static jmp_buf env;
static sigjmp_buf sigenv;
static const char *how;
static volatile int faults;

static void install(void);

static void on_segv(int sig) {
    (void)sig;
    faults++;
    if (strcmp(how, "resethand") == 0) install();
    if (strcmp(how, "sigjmp0") == 0) siglongjmp(sigenv, 1);
    _longjmp(env, 1);
}

static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_segv;
    sa.sa_flags = SA_NODEFER;
    if (strcmp(how, "resethand") == 0) sa.sa_flags |= SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
}

__attribute__((noinline)) static int readable(volatile char *p) {
    if (strcmp(how, "sigjmp0") == 0) {
        if (sigsetjmp(sigenv, 0)) return 0;
    } else if (_setjmp(env)) {
        return 0;
    }
    (void)*p;
    return 1;
}

int main(int argc, char **argv) {
    how = argc > 1 ? argv[1] : "longjmp";
    install();
    char *text = malloc(123);
    int found = 0;
    for (int i = 0; i < 3; i++) found += readable((volatile char *)(long)(16 * i));
    fprintf(stderr, "malloc %s; readable %d, faults %d\n", text ? "served" : "failed", found, faults);
    free(text);
    return 0;
}
"#;

#[test]
fn a_handler_that_asks_for_sa_nodefer_and_jumps_out_recovers_every_fault_after_an_injected_failure()
{
    require_library();
    let dir = scratch("jumping-handler");
    compile_c(&dir, JUMPING_PROGRAM, &[]);
    let mut problems = Vec::new();
    for how in ["longjmp", "sigjmp0", "resethand"] {
        let output = bounded(
            runner(&dir).args([
                "run",
                "--preload",
                "--inject",
                "probability=100,times=-1,min-size=123,max-size=123",
                "--",
                "./program",
                how,
            ]),
            60,
        );
        let text = support::output_text(&output);
        if output.status.code() != Some(0)
            || !text.contains("malloc failed; readable 0, faults 3")
            || text.contains("mayfail: the process crashed")
        {
            problems.push(format!("{how}: {:?}\n{text}", output.status));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
