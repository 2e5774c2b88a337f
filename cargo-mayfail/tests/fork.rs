//! The fork-at-site engine of `mayfail sites` on any program: one run forks
//! at each new site (the child fails it, the parent goes on), and finds the
//! sites, with the same outcomes, that one process per site finds; a lock
//! held across the allocation, a hung child, a standard input read by
//! parent and children, and a program with threads (no fork, said).
//!
//! The programs are C, compiled here, walked under the preload library.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RUNNER: &str = env!("CARGO_BIN_EXE_mayfail");

fn library() -> PathBuf {
    support::library(Path::new(RUNNER).with_file_name("libmayfail_preload.so"))
}

/// Runs the runner with `args` in `dir`, killed after `secs`.
fn walk(dir: &Path, args: &[&str], secs: u64) -> Output {
    support::bounded(
        Command::new(RUNNER)
            .current_dir(dir)
            .args(args)
            .env("MAYFAIL_PRELOAD_LIB", library())
            .env_remove("MAYFAIL_INJECT")
            .env_remove("MAYFAIL_RETRIES")
            .env_remove("LD_PRELOAD"),
        secs,
    )
}

/// The program's own sites in a state file: where (its first frame) to
/// outcome, for the sites the file gives a fate that was not asked for
/// again; and how many runs the walk took.
fn outcomes(state: &Path) -> (BTreeMap<String, String>, usize) {
    let text = std::fs::read_to_string(state).unwrap();
    let mut place_of: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields[0] {
            "site" if fields[5] == "program" => {
                // Its first frame's function, without its file and line.
                let first = fields[6].split(" <- ").next().unwrap();
                let first = first.split(" (").next().unwrap();
                place_of.insert((fields[1], fields[2]), first);
            }
            "fate" => {
                if let Some(place) = place_of.get(&(fields[1], fields[2])) {
                    found.insert(place.to_string(), fields[3].to_owned());
                }
            }
            "retry" => found.retain(|place, _| {
                !place_of
                    .iter()
                    .any(|((id, _), p)| *id == fields[1] && p == place)
            }),
            _ => {}
        }
    }
    let runs = text.lines().filter(|l| l.starts_with("run\t")).count();
    (found, runs)
}

/// Six handled sites reached once per line of standard input, one taken
/// under a recursive mutex (its child cannot release it), an unchecked
/// null, an abort and a hang.
const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SITE(k) \
    __attribute__((noinline)) static void site##k(void) { \
        char *p = malloc(10 + k); \
        if (p == NULL) { fprintf(stderr, "site%d: no memory\n", k); return; } \
        free(p); \
    }
SITE(0) SITE(1) SITE(2) SITE(3) SITE(4) SITE(5)
static void (*sites[6])(void) = { site0, site1, site2, site3, site4, site5 };

static pthread_mutex_t lock;

__attribute__((noinline)) static void under_lock(void) {
    pthread_mutex_lock(&lock);
    char *p = malloc(64);
    pthread_mutex_unlock(&lock);
    pthread_mutex_lock(&lock);
    if (p == NULL) fprintf(stderr, "under_lock: no memory\n");
    pthread_mutex_unlock(&lock);
    free(p);
}

__attribute__((noinline)) static void unchecked(void) {
    char *p = malloc(200);
    p[0] = 'u';
    free(p);
}

__attribute__((noinline)) static void aborts(void) {
    char *p = malloc(300);
    if (p == NULL) abort();
    free(p);
}

__attribute__((noinline)) static void hangs(void) {
    char *p = malloc(400);
    while (p == NULL) pause();
    free(p);
}

static void *idle(void *arg) { (void)arg; for (;;) pause(); return NULL; }

int main(int argc, char **argv) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&lock, &attr);
    if (argc > 1 && strcmp(argv[1], "threads") == 0) {
        pthread_t thread;
        pthread_create(&thread, NULL, idle, NULL);
    }
    /* Each line names a site, read with read(2) a byte at a time: a
       child that moved the parent's offset would leave it lines short. */
    char line[32];
    size_t len = 0;
    char c;
    while (read(0, &c, 1) == 1) {
        if (c != '\n' && len < sizeof line - 1) { line[len++] = c; continue; }
        line[len] = '\0';
        len = 0;
        sites[atoi(line) % 6]();
    }
    under_lock();
    aborts();
    hangs();
    unchecked();
    return 0;
}
"#;

/// One site per line.
fn input(dir: &Path) {
    let lines: String = (0..6).map(|k| format!("{k}\n")).collect();
    std::fs::write(dir.join("input.txt"), lines).unwrap();
}

fn expected() -> BTreeMap<String, String> {
    let mut expected: BTreeMap<String, String> = (0..6)
        .map(|k| (format!("site{k}"), "handled".to_owned()))
        .collect();
    for (place, outcome) in [
        ("under_lock", "handled"),
        ("aborts", "aborted"),
        ("hangs", "hung"),
        ("unchecked", "crashed"),
    ] {
        expected.insert(place.to_owned(), outcome.to_owned());
    }
    expected
}

/// The walk's command: the program reading its input through a shell
/// redirection (standard input a regular file).
fn command(extra: &str) -> String {
    format!("./program {extra} < input.txt")
}

#[test]
fn a_walk_forking_at_each_site_finds_what_one_process_per_site_finds_in_a_few_runs() {
    let dir = support::scratch("fork", "same-sites");
    support::compile_c(&dir, PROGRAM, &["-O0", "-pthread"]);
    input(&dir);
    let forked = walk(
        &dir,
        &[
            "sites",
            "--timeout",
            "2",
            "--state",
            "fork.state",
            "--",
            "sh",
            "-c",
            &command(""),
        ],
        300,
    );
    let text = support::output_text(&forked);
    // The unchecked null, the abort and the hang are bugs: exit 1.
    assert_eq!(forked.status.code(), Some(1), "{text}");
    let (fork_found, fork_runs) = outcomes(&dir.join("fork.state"));
    assert_eq!(fork_found, expected(), "{text}");
    let state = std::fs::read_to_string(dir.join("fork.state")).unwrap();
    // Every site but the locked one was failed by a forked child; the
    // locked one's child deadlocked, was asked for again, and a process of
    // its own walked it.
    assert!(state.contains("\tforked,parent="), "{state}");
    assert!(state.lines().any(|l| l.starts_with("retry\t")), "{state}");
    assert!(!state.contains("no-fork\t"), "{state}");
    // The forking runs (the sites, then one that finds none) and the runs
    // of the sites asked for again (one each, then one that finds none),
    // against one run per site.
    assert!(fork_runs <= 6, "{fork_runs} runs: {text}");

    let one_each = walk(
        &dir,
        &[
            "sites",
            "--no-fork",
            "--timeout",
            "2",
            "--state",
            "each.state",
            "--",
            "sh",
            "-c",
            &command(""),
        ],
        600,
    );
    let text = support::output_text(&one_each);
    assert_eq!(one_each.status.code(), Some(1), "{text}");
    let (each_found, each_runs) = outcomes(&dir.join("each.state"));
    assert_eq!(each_found, fork_found, "{text}");
    assert!(each_runs > 10, "{each_runs} runs: {text}");
    let state = std::fs::read_to_string(dir.join("each.state")).unwrap();
    assert!(!state.contains("\tforked\t"), "{state}");
}

#[test]
fn a_program_with_threads_or_a_pipe_is_walked_one_site_per_process_and_the_report_says_why() {
    for (name, command, reason) in [
        ("threads", "./program threads < input.txt", "2 threads ("),
        // Its standard input a pipe: a child would read what the parent
        // is to read.
        (
            "pipe",
            "cat input.txt | ./program",
            "a pipe or a socket is open (descriptor 0) (",
        ),
    ] {
        let dir = support::scratch("fork", name);
        support::compile_c(&dir, PROGRAM, &["-O0", "-pthread"]);
        input(&dir);
        let output = walk(
            &dir,
            &[
                "sites",
                "--timeout",
                "2",
                "--state",
                "walk.state",
                "--",
                "sh",
                "-c",
                command,
            ],
            600,
        );
        let text = support::output_text(&output);
        assert_eq!(output.status.code(), Some(1), "{name}: {text}");
        let (found, runs) = outcomes(&dir.join("walk.state"));
        assert_eq!(found, expected(), "{name}: {text}");
        assert!(runs > 10, "{name}: {runs} runs: {text}");
        let state = std::fs::read_to_string(dir.join("walk.state")).unwrap();
        assert!(state.contains("no-fork\t"), "{name}: {state}");
        let table_line = text
            .lines()
            .find(|l| l.contains("processes that could not fork at their sites"))
            .unwrap_or_else(|| panic!("{name}: {text}"));
        assert!(table_line.contains(reason), "{name}: {table_line}");
    }
}
