//! The preload library honours the heap limit (`MAYFAIL_LIMIT`): a C program
//! and an unmodified Rust program (on the default allocator), run with
//! `LD_PRELOAD`, get null from `malloc` (and `Err` from `try_reserve`) once
//! their heap would pass the limit, though the system would serve them; the
//! frees count, at the blocks' usable size. The programs are compiled here.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const RUNNER: &str = env!("CARGO_BIN_EXE_mayfail");

fn library() -> PathBuf {
    support::library(Path::new(RUNNER).with_file_name("libmayfail_preload.so"))
}

fn run(program: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    command
        .env("LD_PRELOAD", library())
        .env_remove("MAYFAIL_INJECT")
        .env_remove("MAYFAIL_RETRIES")
        .env_remove("MAYFAIL_LIMIT")
        .env_remove("MAYFAIL_LIMIT_SOFT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let output = support::finish_within(command.spawn().expect("starts"), 60);
    assert!(output.status.success(), "{}", support::output_text(&output));
    output
}

/// The number after `name ` in the program's output.
fn count(output: &Output, name: &str) -> usize {
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

const C_PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX (1 << 20)
static void *blocks[MAX];

/* malloc(size) until it returns null (or MAX blocks); the count. */
static int fill(size_t size) {
    int n = 0;
    while (n < MAX) {
        void *p = malloc(size);
        if (!p)
            break;
        memset(p, 1, size);
        blocks[n++] = p;
    }
    return n;
}

static void empty(int n) {
    for (int i = 0; i < n; i++)
        free(blocks[i]);
}

int main(void) {
    size_t size = 25;
    int first = fill(size);
    empty(first);
    int second = fill(size);
    empty(second);
    /* Growth by realloc: refused once it would pass the limit. */
    size_t grown = 4096;
    char *big = malloc(grown);
    for (;;) {
        char *bigger = realloc(big, grown * 2);
        if (!bigger)
            break;
        big = bigger;
        grown *= 2;
        if (grown >= ((size_t)1 << 32))
            break;
    }
    free(big);
    printf("first %d\nsecond %d\ngrown %zu\n", first, second, grown);
    return 0;
}
"#;

#[test]
fn a_c_program_gets_null_from_malloc_at_the_limit_and_its_frees_count() {
    let dir = support::scratch("preload-limit", "c-program");
    let program = support::compile_c(&dir, C_PROGRAM, &["-O1"]);
    // 25 bytes asked, 40 usable (a 48-byte chunk): counted at 40.
    let limited = run(
        &program,
        &[
            ("MAYFAIL_LIMIT", "8M"),
            ("MAYFAIL_RETRIES", "0"),
            ("MAYFAIL_LIMIT_SOFT", "0%"),
        ],
    );
    let first = count(&limited, "first");
    let second = count(&limited, "second");
    let limit = 8usize << 20;
    assert!(
        first * 40 <= limit,
        "{first} blocks of 40 usable bytes passed 8 MiB"
    );
    assert!(first * 40 >= limit - (1 << 20), "only {first} blocks");
    // Every free came off: the second round fits as many.
    assert!(second.abs_diff(first) <= 2048, "{first} then {second}");
    let grown = count(&limited, "grown");
    assert!((2 << 20..=8 << 20).contains(&grown), "grew to {grown}");
    // Without the limit the system serves them all.
    let free = run(&program, &[("MAYFAIL_RETRIES", "0")]);
    assert_eq!(count(&free, "first"), 1 << 20);
}

const RUST_PROGRAM: &str = r#"
fn main() {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block: Vec<u8> = Vec::new();
        if block.try_reserve_exact(16 * 1024).is_err() {
            break;
        }
        block.resize(16 * 1024, 1);
        kept.push(block);
        if kept.len() == 16384 {
            break;
        }
    }
    println!("kept {}", kept.len());
}
"#;

#[test]
fn an_unmodified_rust_program_gets_err_from_try_reserve_at_the_limit() {
    let dir = support::scratch("preload-limit", "rust-program");
    std::fs::write(dir.join("program.rs"), RUST_PROGRAM).unwrap();
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(rustc)
        .current_dir(&dir)
        .args(["-O", "--edition", "2021", "-o", "program", "program.rs"])
        .status()
        .expect("rustc runs");
    assert!(built.success());
    let program = dir.join("program");
    let limited = run(
        &program,
        &[("MAYFAIL_LIMIT", "64M"), ("MAYFAIL_RETRIES", "0")],
    );
    let kept = count(&limited, "kept");
    assert!(kept * (16 << 10) <= 64 << 20, "{kept} blocks passed 64 MiB");
    assert!(kept * (16 << 10) >= 60 << 20, "only {kept} blocks");
    let free = run(&program, &[]);
    assert_eq!(count(&free, "kept"), 16384);
}
