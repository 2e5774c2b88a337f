//! The preload library on its own: C semantics of each function, threads,
//! realloc's contents and fork under injected failures, and a program that
//! has mayfail linked in (this test binary declares `MayFail` itself) run
//! under the library: one engine injects, once.
//!
//! C programs are compiled here with `cc`. The library is the one cargo
//! built for this package (`target/<profile>/libmayfail_preload.so`), or one
//! built here when there is none.

#[path = "../../cargo-mayfail/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[global_allocator]
static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();

/// The library cargo built for this package
/// (`target/<profile>/libmayfail_preload.so`), or one built for these tests.
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    support::library(profile.join("libmayfail_preload.so"))
}

fn scratch(name: &str) -> PathBuf {
    support::scratch("preload-library", name)
}

fn compile_c(dir: &Path, source: &str) -> PathBuf {
    support::compile_c(
        dir,
        source,
        &["-O1", "-pthread", "-Wno-alloc-size-larger-than"],
    )
}

/// Runs `command` under the library, killing it after `secs`.
fn preloaded(command: &mut Command, inject: Option<&str>, secs: u64) -> Output {
    command
        .env("LD_PRELOAD", library())
        .env_remove("MAYFAIL_RETRIES")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match inject {
        Some(spec) => command.env("MAYFAIL_INJECT", spec),
        None => command.env_remove("MAYFAIL_INJECT"),
    };
    support::finish_within(command.spawn().expect("starts"), secs)
}

const SEMANTICS: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { printf("FAILED line %d: %s\n", __LINE__, #c); return 1; } } while (0)

int main(void) {
    free(NULL);
    char *p = realloc(NULL, 10);
    CHECK(p != NULL);
    strcpy(p, "abcdefghi");
    p = realloc(p, 100000);
    CHECK(p != NULL && strcmp(p, "abcdefghi") == 0);
    CHECK(malloc_usable_size(p) >= 100000);
    errno = 0;
    CHECK(realloc(p, 0) == NULL && errno == 0);
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(reallocarray(NULL, SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    int *zeroed = calloc(1000, sizeof(int));
    for (int i = 0; i < 1000; i++) CHECK(zeroed[i] == 0);
    free(zeroed);
    void *a = NULL;
    CHECK(posix_memalign(&a, 3, 8) == EINVAL && a == NULL);
    CHECK(posix_memalign(&a, 4, 8) == EINVAL);
    CHECK(posix_memalign(&a, 256, 8) == 0 && ((uintptr_t)a & 255) == 0);
    free(a);
    errno = 0;
    CHECK(aligned_alloc(3, 8) == NULL && errno == EINVAL);
    a = aligned_alloc(4096, 10);
    CHECK(a != NULL && ((uintptr_t)a & 4095) == 0);
    free(a);
    a = memalign(48, 8);
    CHECK(a != NULL && ((uintptr_t)a & 63) == 0);
    free(a);
    long page = sysconf(_SC_PAGESIZE);
    a = valloc(1);
    CHECK(a != NULL && ((uintptr_t)a & (page - 1)) == 0);
    free(a);
    a = pvalloc(1);
    CHECK(a != NULL && ((uintptr_t)a & (page - 1)) == 0 && malloc_usable_size(a) >= (size_t)page);
    free(a);
    puts("semantics ok");
    return 0;
}
"#;

#[test]
fn each_function_keeps_glibcs_semantics_under_the_library() {
    let dir = scratch("semantics");
    let program = compile_c(&dir, SEMANTICS);
    let output = preloaded(&mut Command::new(&program), None, 60);
    assert!(
        support::output_text(&output).contains("semantics ok"),
        "{}",
        support::output_text(&output)
    );
    // With injection on but failing nothing (probability 0), the same.
    let output = preloaded(&mut Command::new(&program), Some("probability=0"), 60);
    assert!(
        support::output_text(&output).contains("semantics ok"),
        "{}",
        support::output_text(&output)
    );
}

/// Threads, realloc contents and a fork; ci/memcheck.sh runs it too.
const STRESS: &str = include_str!("stress.c");

#[test]
fn threads_realloc_contents_and_fork_survive_injected_failures() {
    let dir = scratch("stress");
    let program = compile_c(&dir, STRESS);
    let output = preloaded(&mut Command::new(&program), None, 120);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        support::output_text(&output)
    );
    assert!(
        support::output_text(&output).contains("failures seen: 0"),
        "{}",
        support::output_text(&output)
    );
    let output = preloaded(
        &mut Command::new(&program),
        Some("probability=5,times=-1,seed=7"),
        120,
    );
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    let seen: u64 = out
        .split("failures seen: ")
        .nth(1)
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(seen > 0, "{out}");
}

/// The child side of the next test: this test binary has its own `MayFail`.
#[test]
fn child_with_its_own_mayfail() {
    if std::env::var_os("MAYFAIL_PRELOAD_TEST_CHILD").is_none() {
        return;
    }
    let mut buffer: Vec<u8> = Vec::new();
    let first = buffer.try_reserve(4000);
    let second = buffer.try_reserve(8000);
    println!("first: {}, second: {}", first.is_err(), second.is_err());
}

#[test]
fn a_program_with_its_own_mayfail_injects_once_and_the_library_steps_aside() {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "child_with_its_own_mayfail",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MAYFAIL_PRELOAD_TEST_CHILD", "1");
    // Fails the one allocation of exactly 4000 bytes, once:
    // if both engines injected, more than one such line would appear.
    let output = preloaded(
        &mut command,
        Some("probability=100,times=1,verbose=1,min-size=4000,max-size=4000"),
        60,
    );
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(out.matches("mayfail: injected failure").count(), 1, "{out}");
    assert_eq!(
        out.matches("mayfail: injecting allocation failures")
            .count(),
        1,
        "{out}"
    );
    assert!(out.contains("first: true, second: false"), "{out}");
    assert!(
        out.contains("mayfail-preload: this program has mayfail linked in"),
        "{out}"
    );
}

/// A program linked with jemalloc: its blocks come from jemalloc's
/// `malloc` (through the library) and from jemalloc's own `mallocx`, and
/// each is freed, resized and measured by the other's functions.
const JEMALLOC_PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *mallocx(size_t size, int flags);
void dallocx(void *ptr, int flags);

int main(void) {
    int failed = 0;
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(100 + i);
        if (p == NULL) { if (errno != ENOMEM) return 3; failed++; continue; }
        memset(p, 1, 100 + i);
        if (malloc_usable_size(p) < (size_t)(100 + i)) return 4;
        char *q = realloc(p, 5000 + i);
        if (q == NULL) { failed++; q = p; }
        free(q);
        void *a = aligned_alloc(256, 512);
        if (a == NULL) failed++;
        else if ((uintptr_t)a & 255) return 5;
        free(a);
        void *x = mallocx(64, 0);
        if (x == NULL) return 6;
        free(x);
        void *y = calloc(8, 8);
        if (y == NULL) failed++;
        else dallocx(y, 0);
    }
    printf("jemalloc program done, failures seen: %d\n", failed);
    return 0;
}
"#;

/// The number after `failures seen: ` in a run's output.
fn failures_seen(out: &str) -> u64 {
    out.split("failures seen: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"))
}

#[test]
fn a_program_linked_with_jemalloc_is_served_over_jemalloc_and_injected() {
    let Some(jemalloc) = support::jemalloc("a_program_linked_with_jemalloc_is_served") else {
        return;
    };
    let dir = scratch("jemalloc-linked");
    let program = support::compile_c_named(
        &dir,
        "program",
        JEMALLOC_PROGRAM,
        &["-O1", jemalloc.to_str().unwrap()],
    );
    let output = preloaded(&mut Command::new(&program), None, 60);
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(failures_seen(&out), 0, "{out}");
    // Injected failures reach it: the engine serves its calls.
    let output = preloaded(
        &mut Command::new(&program),
        Some("probability=10,times=-1,seed=3"),
        60,
    );
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(failures_seen(&out) > 0, "{out}");
    assert!(!out.contains("mayfail-preload:"), "{out}");
}

const PLAIN_PROGRAM: &str = r#"
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    int failed = 0;
    for (int i = 0; i < 200; i++) {
        char *p = malloc(64 + i);
        if (p == NULL) { failed++; continue; }
        if (malloc_usable_size(p) < (size_t)(64 + i)) return 4;
        free(p);
    }
    printf("failures seen: %d\n", failed);
    return 0;
}
"#;

#[test]
fn jemalloc_preloaded_after_the_library_is_served_and_before_it_is_said_in_one_line() {
    let Some(jemalloc) = support::jemalloc("jemalloc_preloaded_after_the_library") else {
        return;
    };
    let dir = scratch("jemalloc-preloaded");
    let program = compile_c(&dir, PLAIN_PROGRAM);
    let inject = "probability=50,times=-1,seed=5";
    // After the library: the library's malloc is the program's, jemalloc
    // the one it wraps.
    let both = format!("{} {}", library().display(), jemalloc.display());
    let mut command = Command::new(&program);
    command
        .env("LD_PRELOAD", &both)
        .env("MAYFAIL_INJECT", inject);
    let output = support::finish_within(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        60,
    );
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(failures_seen(&out) > 0, "{out}");
    // Before it: jemalloc's malloc is every call's, nothing reaches the
    // library, and one line says so.
    let both = format!("{} {}", jemalloc.display(), library().display());
    let mut command = Command::new(&program);
    command
        .env("LD_PRELOAD", &both)
        .env("MAYFAIL_INJECT", inject);
    let output = support::finish_within(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        60,
    );
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(failures_seen(&out), 0, "{out}");
    assert_eq!(
        out.matches(
            "mayfail-preload: this program's malloc is libjemalloc.so.2's, not the preload \
             library's: nothing here is reached and no failure is injected\n"
        )
        .count(),
        1,
        "{out}"
    );
}

/// A malloc of its own in a shared library the program links with, without
/// `memalign` or `malloc_usable_size`: blocks carved from one arena, each
/// after a header that holds its size.
const PARTIAL_MALLOC: &str = r#"
#include <stddef.h>
#include <string.h>
static _Alignas(16) char arena[1 << 22];
static size_t used;
void *malloc(size_t size) {
    size_t need = 16 + ((size + 15) & ~(size_t)15);
    size_t at = __atomic_fetch_add(&used, need, __ATOMIC_RELAXED);
    if (at + need > sizeof arena) return NULL;
    *(size_t *)(arena + at) = size;
    return arena + at + 16;
}
void free(void *p) { (void)p; }
void *calloc(size_t n, size_t size) {
    void *p = malloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}
void *realloc(void *p, size_t size) {
    void *q = malloc(size);
    if (p && q) {
        size_t old = *(size_t *)((char *)p - 16);
        memcpy(q, p, old < size ? old : size);
    }
    return q;
}
"#;

#[test]
fn a_malloc_without_the_functions_the_engine_needs_is_passed_untouched_and_said_in_one_line() {
    let dir = scratch("partial-malloc");
    support::compile_c_named(
        &dir,
        "libpartial.so",
        PARTIAL_MALLOC,
        &["-O1", "-shared", "-fPIC", "-Wl,-soname,libpartial.so"],
    );
    let program = support::compile_c_named(
        &dir,
        "program",
        r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    int failed = 0;
    for (int i = 0; i < 100; i++) {
        char *p = malloc(32);
        if (p == NULL) { failed++; continue; }
        strcpy(p, "partial");
        p = realloc(p, 64);
        if (p == NULL || strcmp(p, "partial") != 0) return 3;
        free(p);
    }
    printf("failures seen: %d\n", failed);
    return 0;
}
"#,
        &["-O1", "-L.", "-lpartial", "-Wl,-rpath,$ORIGIN"],
    );
    let output = preloaded(
        &mut Command::new(&program),
        Some("probability=100,times=-1"),
        60,
    );
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(failures_seen(&out), 0, "{out}");
    assert_eq!(
        out.matches(
            "mayfail-preload: the malloc this program is linked with (libpartial.so) has no \
             memalign of its own: its calls are passed to it untouched and no failure is \
             injected\n"
        )
        .count(),
        1,
        "{out}"
    );
}

/// A program that allocates once (which starts the engine: it opens the
/// state file), rids itself of the descriptors it has (the engine's among
/// them) in the way its argument names, opens a data file of its own and
/// allocates at a new stack of its own code, writing what it saw into the
/// data file with `write(2)` (stdio would allocate: more sites).
const DESCRIPTORS_PROGRAM: &str = r#"
#define _GNU_SOURCE
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

int main(int argc, char **argv) {
    const char *how = argc > 1 ? argv[1] : "";
    warm_up();
    if (strcmp(how, "close") == 0) {
        for (int fd = 3; fd < 1024; fd++) close(fd);
    } else if (strcmp(how, "closefrom") == 0) {
        closefrom(3);
    } else if (strcmp(how, "close_range") == 0) {
        if (close_range(3, ~0U, 0) != 0) return 2;
    }
    int data = open("data.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (data < 0) return 3;
    if (strcmp(how, "dup2") == 0) {
        /* Its own file over every other open descriptor. */
        for (int fd = 3; fd < 4096; fd++)
            if (fd != data && fcntl(fd, F_GETFD) != -1) dup2(data, fd);
    }
    if (write(data, "data\n", 5) != 5) return 4;
    int status = allocate(data);
    close(data);
    return status;
}
"#;

/// Runs [`DESCRIPTORS_PROGRAM`] with `how` under a site walk's first run
/// (`sites=walk.state`, letting the warm-up's site pass) and checks that the walk's lines went to the state
/// file and the program's to its data file, whatever it did to its
/// descriptors.
fn assert_state_file_kept_apart(how: &str) {
    let dir = scratch(&format!("descriptors-{how}"));
    let program = compile_c(&dir, DESCRIPTORS_PROGRAM);
    let state = dir.join("walk.state");
    let output = preloaded(
        Command::new(&program).arg(how).current_dir(&dir),
        Some(&format!("sites={},sites-skip=1", state.display())),
        60,
    );
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{how}: {out}");
    let data = std::fs::read_to_string(dir.join("data.txt")).unwrap();
    assert_eq!(data, "data\nhandled\n", "{how}: the program's data file");
    let walk = std::fs::read_to_string(&state).unwrap();
    let sites: Vec<&str> = walk.lines().filter(|l| l.starts_with("site\t")).collect();
    assert_eq!(sites.len(), 1, "{how}: {walk}");
    assert!(sites[0].contains("allocate"), "{how}: {walk}");
    assert_eq!(
        walk.lines()
            .filter(|l| l.starts_with("fate\t") && l.contains("\thandled\texit 0"))
            .count(),
        1,
        "{how}: {walk}"
    );
}

#[test]
fn a_program_that_closes_its_descriptors_keeps_its_files_and_the_walk_its_state_file() {
    for how in ["close", "closefrom", "close_range", "dup2", "none"] {
        assert_state_file_kept_apart(how);
    }
}

/// The child side of the next test (this test binary declares `MayFail`):
/// rids itself of its descriptors as `MAYFAIL_DESCRIPTORS_CHILD` says,
/// opens a data file and allocates at a new stack of its own, without
/// allocating before that (read with `getenv`, no `String`).
#[test]
fn child_that_rids_itself_of_its_descriptors() {
    // SAFETY: a NUL-terminated name; nothing sets the environment here.
    let how = unsafe { libc::getenv(c"MAYFAIL_DESCRIPTORS_CHILD".as_ptr()) };
    if how.is_null() {
        return;
    }
    // SAFETY: a NUL-terminated string of the environment.
    let how = unsafe { std::ffi::CStr::from_ptr(how) }.to_bytes();
    if how == b"close" {
        for fd in 3..1024 {
            // SAFETY: closing descriptors this test does not use.
            unsafe { libc::close(fd) };
        }
    }
    let mut data = std::fs::File::create("data.txt").unwrap();
    if how == b"dup2" {
        use std::os::fd::AsRawFd;
        let own = data.as_raw_fd();
        for fd in 3..4096 {
            // SAFETY: putting the data file over every other open number.
            unsafe {
                if fd != own && libc::fcntl(fd, libc::F_GETFD) != -1 {
                    libc::dup2(own, fd);
                }
            }
        }
    }
    use std::io::Write;
    data.write_all(b"data\n").unwrap();
    let failed = allocate_at_a_new_stack();
    data.write_all(if failed { b"handled\n" } else { b"served\n" })
        .unwrap();
}

#[inline(never)]
fn allocate_at_a_new_stack() -> bool {
    let mut block: Vec<u8> = Vec::new();
    block.try_reserve(1000).is_err()
}

#[test]
fn a_program_with_mayfail_that_rids_itself_of_its_descriptors_keeps_its_files_apart() {
    let exe = std::env::current_exe().unwrap();
    for how in ["close", "dup2", "none"] {
        let dir = scratch(&format!("own-mayfail-descriptors-{how}"));
        let state = dir.join("walk.state");
        let output = support::finish_within(
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_that_rids_itself_of_its_descriptors",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .current_dir(&dir)
                .env("MAYFAIL_DESCRIPTORS_CHILD", how)
                .env("MAYFAIL_INJECT", format!("sites={}", state.display()))
                .env_remove("LD_PRELOAD")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            60,
        );
        let out = support::output_text(&output);
        assert_eq!(output.status.code(), Some(0), "{how}: {out}");
        let data = std::fs::read_to_string(dir.join("data.txt")).unwrap();
        assert_eq!(data, "data\nhandled\n", "{how}: the program's data file");
        let walk = std::fs::read_to_string(&state).unwrap();
        let sites: Vec<&str> = walk.lines().filter(|l| l.starts_with("site\t")).collect();
        assert_eq!(sites.len(), 1, "{how}: {walk}");
        assert!(
            sites[0].contains("allocate_at_a_new_stack"),
            "{how}: {walk}"
        );
    }
}

/// A C program that caps its own address space and calls `malloc` until it
/// returns null, then says how far it got.
const FILL_PROGRAM: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

int main(void) {
    struct rlimit limit = { 256 << 20, 256 << 20 };
    if (setrlimit(RLIMIT_AS, &limit) != 0) return 2;
    unsigned long blocks = 0;
    while (malloc(1000) != NULL) blocks++;
    printf("null after %lu blocks, errno %s\n", blocks, errno == ENOMEM ? "ENOMEM" : "other");
    return 0;
}
"#;

#[test]
fn a_c_program_that_fills_its_address_space_gets_null_and_the_retry_knob_still_applies() {
    let dir = scratch("fill");
    let program = compile_c(&dir, FILL_PROGRAM);
    // The library's default: a real failure is null at once, as in C.
    let output = preloaded(&mut Command::new(&program), None, 60);
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("errno ENOMEM"), "{out}");
    // A count still applies: null after that many retries.
    let output = preloaded(Command::new(&program).env("MAYFAIL_RETRIES", "2"), None, 60);
    let out = support::output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("errno ENOMEM"), "{out}");
    // -1 asks for retries until memory is freed: nothing frees any, so it
    // stalls, and the stall line says what to set.
    let mut child = Command::new(&program)
        .env("LD_PRELOAD", library())
        .env("MAYFAIL_RETRIES", "-1")
        .env("MAYFAIL_STALL_MS", "300")
        .env_remove("MAYFAIL_INJECT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("stalled for"))
    });
    let started = std::time::Instant::now();
    while !reader.is_finished() && started.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let line = reader.join().unwrap().expect("a stall line");
    assert!(still_running, "{line}");
    assert!(
        line.contains(
            "it retries until memory is freed: MAYFAIL_RETRIES=N in the environment (at most \
             N retries; 0: fail at once) lets it fail"
        ),
        "{line}"
    );
}

/// Threads that meet new stacks all the time (each a chain of calls ending
/// in glibc's `strdup`, a new site of the program's: resolved to be
/// classified, then let pass by `sites-skip`) while the main thread forks
/// 200 children, each of which meets new stacks of its own. A child that
/// has not ended after 3 s counts as hung: it is killed and the program
/// stops there; `alarm` ends any child the parent could not.
const FORK_PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void chain(unsigned n, int depth);
__attribute__((noinline)) static void left(unsigned n, int depth) { chain(n, depth); __asm__ volatile(""); }
__attribute__((noinline)) static void right(unsigned n, int depth) { chain(n, depth); __asm__ volatile(""); }
/* A new stack for every `n` below 2^depth. */
__attribute__((noinline)) static void chain(unsigned n, int depth) {
    if (depth == 0) { free(strdup("new stack")); return; }
    if (n & 1) left(n >> 1, depth - 1); else right(n >> 1, depth - 1);
    __asm__ volatile("");
}

static volatile int stop;

static void *meet_new_stacks(void *arg) {
    unsigned n = (unsigned)(size_t)arg << 20;
    while (!stop) chain(n++, 20);
    return NULL;
}

int main(void) {
    pthread_t threads[2];
    for (size_t i = 0; i < 2; i++) pthread_create(&threads[i], NULL, meet_new_stacks, (void *)(i + 1));
    int hung = 0;
    for (unsigned c = 0; c < 200 && !hung; c++) {
        pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) {
            alarm(20);
            for (unsigned n = 0; n < 2; n++) chain((1u << 30) + (c << 4) + n, 20);
            _exit(0);
        }
        int status = 0;
        for (int waited = 0; waitpid(pid, &status, WNOHANG) == 0; waited++) {
            if (waited == 300) { kill(pid, SIGKILL); waitpid(pid, &status, 0); hung++; break; }
            usleep(10000);
        }
    }
    stop = 1;
    for (size_t i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    printf("children hung: %d\n", hung);
    return hung != 0;
}
"#;

#[test]
fn children_forked_while_other_threads_resolve_new_stacks_never_hang() {
    let dir = scratch("fork-while-resolving");
    let program = compile_c(&dir, FORK_PROGRAM);
    let state = dir.join("walk.state");
    let output = preloaded(
        Command::new(&program).current_dir(&dir),
        Some(&format!("sites={},sites-skip=1000000000", state.display())),
        120,
    );
    let out = support::output_text(&output);
    assert!(out.contains("children hung: 0"), "{out}");
    assert_eq!(output.status.code(), Some(0), "{out}");
}

/// The child side of the next test (this test binary declares `MayFail`):
/// the same race in a Rust program, whose new stacks are its own (let pass
/// by `sites-skip`, resolved all the same to be classified).
#[test]
fn child_that_forks_while_threads_resolve() {
    if std::env::var_os("MAYFAIL_FORK_CHILD").is_none() {
        return;
    }
    #[inline(never)]
    fn chain(n: u64, depth: u32) -> usize {
        if depth == 0 {
            return std::hint::black_box(Vec::<u8>::with_capacity(24)).capacity();
        }
        if n & 1 == 1 {
            left(n >> 1, depth - 1)
        } else {
            right(n >> 1, depth - 1)
        }
    }
    #[inline(never)]
    fn left(n: u64, depth: u32) -> usize {
        chain(n, depth) + 1
    }
    #[inline(never)]
    fn right(n: u64, depth: u32) -> usize {
        chain(n, depth) + 2
    }
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let threads: Vec<_> = (1..=2u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut n = i << 20;
                while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
                    chain(n, 20);
                    n += 1;
                }
            })
        })
        .collect();
    let mut hung = 0;
    for c in 0..200u64 {
        // SAFETY: the child only allocates (glibc's malloc is fork-safe,
        // and so must the engine be) and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain calls in the child, which ends with `_exit`.
            unsafe {
                libc::alarm(20);
                chain((1 << 30) + (c << 4), 20);
                chain((1 << 30) + (c << 4) + 1, 20);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        let mut waited = 0;
        // SAFETY: waiting for our own child.
        while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
            waited += 1;
            if waited == 300 {
                // SAFETY: killing and reaping our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                hung += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if hung != 0 {
            break;
        }
    }
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    println!("children hung: {hung}");
}

#[test]
fn a_program_with_mayfail_forking_while_its_threads_resolve_new_stacks_never_hangs() {
    let exe = std::env::current_exe().unwrap();
    let dir = scratch("own-mayfail-fork");
    let state = dir.join("walk.state");
    let output = support::finish_within(
        Command::new(&exe)
            .args([
                "--exact",
                "child_that_forks_while_threads_resolve",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MAYFAIL_FORK_CHILD", "1")
            .env(
                "MAYFAIL_INJECT",
                format!("sites={},sites-skip=1000000000", state.display()),
            )
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        120,
    );
    let out = support::output_text(&output);
    assert!(out.contains("children hung: 0"), "{out}");
    assert_eq!(output.status.code(), Some(0), "{out}");
}

/// A thread that holds the program's lock while it meets new stacks, and a
/// fork prepare handler of the program's, registered before any
/// allocation, that takes the same lock: the main thread forks 100
/// children meanwhile. A fork that waits for the lock while mayfail's
/// prepare handler holds the resolver's turn, and the thread waiting for
/// that turn with the lock held, would never end: `alarm` ends the program
/// then.
const FORK_LOCK_PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void chain(unsigned n, int depth);
__attribute__((noinline)) static void left(unsigned n, int depth) { chain(n, depth); __asm__ volatile(""); }
__attribute__((noinline)) static void right(unsigned n, int depth) { chain(n, depth); __asm__ volatile(""); }
__attribute__((noinline)) static void chain(unsigned n, int depth) {
    if (depth == 0) { free(strdup("new stack")); return; }
    if (n & 1) left(n >> 1, depth - 1); else right(n >> 1, depth - 1);
    __asm__ volatile("");
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void prepare(void) { pthread_mutex_lock(&lock); }
static void release(void) { pthread_mutex_unlock(&lock); }

static volatile int stop;

static void *meet_new_stacks_locked(void *arg) {
    unsigned n = (unsigned)(size_t)arg << 20;
    while (!stop) {
        pthread_mutex_lock(&lock);
        for (int i = 0; i < 4; i++) chain(n++, 20);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

int main(void) {
    alarm(60);
    pthread_atfork(prepare, release, release);
    pthread_t threads[2];
    for (size_t i = 0; i < 2; i++) pthread_create(&threads[i], NULL, meet_new_stacks_locked, (void *)(i + 1));
    for (unsigned c = 0; c < 100; c++) {
        pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) {
            chain((1u << 30) + c, 20);
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 3;
    }
    stop = 1;
    for (size_t i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    printf("forked 100 children\n");
    return 0;
}
"#;

#[test]
fn a_fork_whose_prepare_handler_waits_for_a_lock_held_by_a_thread_meeting_new_stacks_never_hangs() {
    let dir = scratch("fork-lock");
    let program = compile_c(&dir, FORK_LOCK_PROGRAM);
    let state = dir.join("walk.state");
    let output = preloaded(
        Command::new(&program).current_dir(&dir),
        Some(&format!("sites={},sites-skip=1000000000", state.display())),
        120,
    );
    let out = support::output_text(&output);
    assert!(out.contains("forked 100 children"), "{out}");
    assert_eq!(output.status.code(), Some(0), "{out}");
}

static FORK_LOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The program's lock, taken by its fork prepare handler.
static mut PROGRAM_LOCK: libc::pthread_mutex_t = libc::PTHREAD_MUTEX_INITIALIZER;

extern "C" fn take_program_lock() {
    // SAFETY: a static mutex, initialised.
    unsafe { libc::pthread_mutex_lock(&raw mut PROGRAM_LOCK) };
}

extern "C" fn release_program_lock() {
    // SAFETY: the forking thread took it in `take_program_lock`.
    unsafe { libc::pthread_mutex_unlock(&raw mut PROGRAM_LOCK) };
}

/// The child side of the next test: the same in a Rust program that
/// registers its prepare handler first and configures the site walk after
/// (so mayfail's prepare handler runs first at a fork, holding the
/// resolver's turn while the program's waits for its lock).
#[test]
fn child_that_forks_while_a_locked_thread_resolves() {
    if std::env::var_os("MAYFAIL_FORK_LOCK_CHILD").is_none() {
        return;
    }
    // SAFETY: alarm has no preconditions; it ends a hung process.
    unsafe { libc::alarm(60) };
    #[inline(never)]
    fn chain(n: u64, depth: u32) -> usize {
        if depth == 0 {
            return std::hint::black_box(Vec::<u8>::with_capacity(24)).capacity();
        }
        if n & 1 == 1 {
            left(n >> 1, depth - 1)
        } else {
            right(n >> 1, depth - 1)
        }
    }
    #[inline(never)]
    fn left(n: u64, depth: u32) -> usize {
        chain(n, depth) + 1
    }
    #[inline(never)]
    fn right(n: u64, depth: u32) -> usize {
        chain(n, depth) + 2
    }
    // SAFETY: the handlers are `extern "C"` functions living as long as the
    // process.
    unsafe {
        libc::pthread_atfork(
            Some(take_program_lock),
            Some(release_program_lock),
            Some(release_program_lock),
        )
    };
    let state = std::env::var("MAYFAIL_FORK_LOCK_CHILD").unwrap();
    mayfail::configure_injection(&format!("sites={state},sites-skip=1000000000")).unwrap();
    let threads: Vec<_> = (1..=2u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut n = i << 20;
                while !FORK_LOCK.load(std::sync::atomic::Ordering::Relaxed) {
                    take_program_lock();
                    for _ in 0..4 {
                        chain(n, 20);
                        n += 1;
                    }
                    release_program_lock();
                }
            })
        })
        .collect();
    for c in 0..100u64 {
        // SAFETY: the child only allocates and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            chain((1 << 30) + c, 20);
            // SAFETY: ends the child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    FORK_LOCK.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    println!("forked 100 children");
}

#[test]
fn a_program_with_mayfail_whose_prepare_handler_waits_for_a_lock_held_by_a_resolving_thread_never_hangs()
 {
    let exe = std::env::current_exe().unwrap();
    let dir = scratch("own-mayfail-fork-lock");
    let state = dir.join("walk.state");
    let output = support::finish_within(
        Command::new(&exe)
            .args([
                "--exact",
                "child_that_forks_while_a_locked_thread_resolves",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MAYFAIL_FORK_LOCK_CHILD", &state)
            .env_remove("MAYFAIL_INJECT")
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        120,
    );
    let out = support::output_text(&output);
    assert!(out.contains("forked 100 children"), "{out}");
    assert_eq!(output.status.code(), Some(0), "{out}");
}
