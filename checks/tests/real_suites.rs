//! Real crates' own test suites walked by the runner (`mayfail sites --
//! cargo test`), unmodified: their published sources, from cargo's registry
//! cache (they are dev-dependencies of this package), copied out of this
//! workspace and walked there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The runner, built from this workspace (`target/debug/mayfail`).
fn runner() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "cargo-mayfail", "--bin", "mayfail"])
        .args(["-p", "mayfail-preload"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo starts");
    assert!(status.success(), "the runner builds");
    // This test's executable is `target/debug/deps/NAME`.
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("mayfail")
}

/// The directory of a dependency's published sources, from `cargo
/// metadata` (its `manifest_path`).
fn registry_sources(crate_dir: &str) -> PathBuf {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo metadata runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let needle = format!("/{crate_dir}/Cargo.toml\"");
    let end = text.find(&needle).expect("the crate is a dependency") + needle.len() - 1;
    let start = text[..end].rfind('"').unwrap() + 1;
    Path::new(&text[start..end]).parent().unwrap().to_owned()
}

/// A copy of `from` in a fresh directory outside this workspace.
fn copy_out(from: &Path, name: &str) -> PathBuf {
    let to = std::env::temp_dir().join(format!("mayfail-checks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success());
    to
}

#[test]
fn fallible_collections_own_suite_shows_the_io_error_abort_on_the_error_path_of_try_read_up_to() {
    let runner = runner();
    let dir = copy_out(
        &registry_sources("fallible_collections-0.5.2"),
        "fallible-collections",
    );
    let state = dir.join("walk.state");
    let output = Command::new(&runner)
        .args(["sites", "--state"])
        .arg(&state)
        .args([
            "--",
            "cargo",
            "test",
            "--offline",
            "-q",
            "--features",
            "std_io",
        ])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("MAYFAIL_INJECT")
        .env_remove("RUSTFLAGS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    println!("{text}");
    assert_eq!(output.status.code(), Some(1), "bugs: exit 1\n{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("walk.json")).unwrap()).unwrap();
    // `buf.reserve(..).map_err(|_| io::Error::new(kind, "..."))`: the
    // reserve's failure handled, the message's allocation aborts.
    let error_path = report["sites"].as_array().unwrap().iter().find(|site| {
        site["class"] == "error-path-aborted"
            && site["frames"][0]["function"]
                == "fallible_collections::vec::std_io::try_read_up_to::{{closure}}"
            && site["frames"][0]["location"]
                .as_str()
                .is_some_and(|l| l.ends_with("src/vec.rs:261"))
    });
    let Some(site) = error_path else {
        panic!("no error-path-aborted site at vec.rs:261\n{text}");
    };
    assert!(
        site["error_path_of"].as_str().unwrap().starts_with(
            "<alloc::vec::Vec<T> as fallible_collections::vec::FallibleVec<T>>::try_reserve"
        ),
        "{site:#}"
    );
    assert!(
        text.contains("on the error path of: <alloc::vec::Vec<T> as fallible_collections"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
