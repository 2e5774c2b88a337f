//! What cargo's configuration says about the target runner the preload
//! library needs, read from the files cargo reads (cargo's own `cargo
//! config get` is unstable): `.cargo/config.toml` (or `.cargo/config`) in
//! the current directory and each of its parents, then the one in
//! `$CARGO_HOME` (`~/.cargo`).
//!
//! The runner takes cargo's target runner for the test binaries; a project
//! that sets one of its own (`target.<triple>.runner`, or a
//! `target.'cfg(...)'.runner` that may apply) would be silently replaced,
//! so [`Config::runner_for`] names it and the command is refused. The
//! triple comes from `build.target` when the command line gives no
//! `--target`.

use std::path::{Path, PathBuf};

use crate::failure::Failure;

/// The settings that matter here, each with the file that set it.
#[derive(Debug, Default)]
pub(super) struct Config {
    /// `build.target`: the triple, or `None` for several.
    pub(super) build_target: Option<(Option<String>, PathBuf)>,
    /// Every `target.<key>.runner`: the key and its file, in the order
    /// cargo gives them precedence (nearest first).
    runners: Vec<(String, PathBuf)>,
    /// `build.rustdoc`: the value, and the directory a relative path in it
    /// is taken from (the one holding the file's `.cargo`, or the current
    /// directory for a `--config` value).
    rustdoc: Option<(String, PathBuf)>,
}

impl Config {
    /// Reads the configuration cargo reads from `cwd`: the values of its
    /// `--config` options (`KEY=VALUE` in TOML, or a file's path) first,
    /// then the files, then `cargo_home`'s. A file that is not valid TOML
    /// is refused.
    pub(super) fn read(
        cwd: &Path,
        cargo_home: Option<&Path>,
        options: &[String],
    ) -> Result<Config, Failure> {
        let mut config = Config::default();
        let mut files: Vec<PathBuf> = Vec::new();
        for option in options {
            match option.parse::<toml::Table>() {
                Ok(table) => config.add(&table, Path::new(&format!("--config {option}")), cwd),
                Err(_) => files.push(cwd.join(option)),
            }
        }
        for dir in cwd.ancestors() {
            // Cargo prefers the name without extension when both exist.
            let file = ["config", "config.toml"]
                .iter()
                .map(|name| dir.join(".cargo").join(name))
                .find(|file| file.is_file());
            files.extend(file);
        }
        if let Some(home) = cargo_home {
            let file = ["config", "config.toml"]
                .iter()
                .map(|name| home.join(name))
                .find(|file| file.is_file());
            if let Some(file) = file.filter(|file| !files.contains(file)) {
                files.push(file);
            }
        }
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::io("read cargo's configuration", &file, e))?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                Failure::bad_input(format!(
                    "cargo's configuration {} does not read as TOML ({}): the preload \
                     library needs to know whether it sets a target runner",
                    file.display(),
                    e.message()
                ))
            })?;
            // `DIR/.cargo/config.toml` (or `$CARGO_HOME/config.toml`):
            // relative paths are taken from `DIR` (`$CARGO_HOME`'s parent).
            let base = file.parent().and_then(Path::parent).unwrap_or(cwd);
            config.add(&table, &file, base);
        }
        Ok(config)
    }

    /// Adds one file's settings, below those of the files read before;
    /// `base` is where its relative paths start.
    fn add(&mut self, table: &toml::Table, file: &Path, base: &Path) {
        if self.rustdoc.is_none()
            && let Some(rustdoc) = table
                .get("build")
                .and_then(|build| build.get("rustdoc"))
                .and_then(toml::Value::as_str)
        {
            self.rustdoc = Some((rustdoc.to_owned(), base.to_owned()));
        }
        if self.build_target.is_none()
            && let Some(target) = table.get("build").and_then(|build| build.get("target"))
        {
            let triple = match target {
                toml::Value::String(triple) => Some(triple.clone()),
                toml::Value::Array(triples) if triples.len() == 1 => {
                    triples[0].as_str().map(str::to_owned)
                }
                _ => None,
            };
            self.build_target = Some((triple, file.to_owned()));
        }
        if let Some(targets) = table.get("target").and_then(toml::Value::as_table) {
            for (key, settings) in targets {
                if settings.get("runner").is_some() {
                    self.runners.push((key.clone(), file.to_owned()));
                }
            }
        }
    }

    /// The rustdoc `build.rustdoc` names, as cargo runs it: a value with a
    /// slash is a path (a relative one taken from where its file's
    /// `.cargo` is), a bare name is looked up in `PATH` when run.
    pub(super) fn rustdoc(&self) -> Option<PathBuf> {
        let (value, base) = self.rustdoc.as_ref()?;
        Some(if value.contains('/') {
            base.join(value)
        } else {
            PathBuf::from(value)
        })
    }

    /// The first runner set for `triple`: `target.<triple>.runner`, or
    /// any `target.'cfg(...)'.runner` (whether its expression holds for
    /// the triple is not worked out here: it may).
    pub(super) fn runner_for(&self, triple: &str) -> Option<&(String, PathBuf)> {
        self.runners
            .iter()
            .find(|(key, _)| key == triple || key.starts_with("cfg("))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn build_rustdoc_is_a_path_from_where_its_cargo_directory_is_or_a_name() {
        let root = std::env::temp_dir().join(format!(
            "mayfail-cargo-config-rustdoc-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        let deep = root.join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        write(
            &root.join("a/.cargo/config.toml"),
            "[build]\nrustdoc = \"tools/my-rustdoc\"\n",
        );
        write(
            &root.join(".cargo/config.toml"),
            "[build]\nrustdoc = \"other-rustdoc\"\n",
        );
        let config = Config::read(&deep, None, &[]).unwrap();
        assert_eq!(config.rustdoc(), Some(root.join("a/tools/my-rustdoc")));
        std::fs::remove_file(root.join("a/.cargo/config.toml")).unwrap();
        let config = Config::read(&deep, None, &[]).unwrap();
        assert_eq!(config.rustdoc(), Some(PathBuf::from("other-rustdoc")));
        // The command line's --config comes first; its paths start here.
        let options = ["build.rustdoc=\"./rd\"".to_owned()];
        let config = Config::read(&deep, None, &options).unwrap();
        assert_eq!(config.rustdoc(), Some(deep.join("./rd")));
        std::fs::remove_file(root.join(".cargo/config.toml")).unwrap();
        assert_eq!(Config::read(&deep, None, &[]).unwrap().rustdoc(), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn runners_and_the_build_target_are_found_in_every_file_cargo_reads_nearest_first() {
        let root =
            std::env::temp_dir().join(format!("mayfail-cargo-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let deep = root.join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        write(
            &root.join("a/.cargo/config.toml"),
            "[build]\ntarget = \"aarch64-unknown-linux-gnu\"\n\
             [target.aarch64-unknown-linux-gnu]\nrunner = \"qemu-aarch64\"\n",
        );
        write(
            &root.join(".cargo/config"),
            "[build]\ntarget = \"x86_64-unknown-linux-musl\"\n\
             [target.'cfg(target_os = \"none\")']\nrunner = [\"probe-rs\", \"run\"]\n",
        );
        write(&root.join(".cargo/config.toml"), "not = [valid\n");
        let home = root.join("home");
        write(
            &home.join("config.toml"),
            "[target.x86_64-unknown-linux-gnu]\nlinker = \"cc\"\n",
        );
        let config = Config::read(&deep, Some(&home), &[]).unwrap();
        let (triple, file) = config.build_target.clone().unwrap();
        assert_eq!(triple.as_deref(), Some("aarch64-unknown-linux-gnu"));
        assert_eq!(file, root.join("a/.cargo/config.toml"));
        let (key, file) = config.runner_for("aarch64-unknown-linux-gnu").unwrap();
        assert_eq!(
            (key.as_str(), file),
            (
                "aarch64-unknown-linux-gnu",
                &root.join("a/.cargo/config.toml")
            )
        );
        let (key, file) = config.runner_for("x86_64-unknown-linux-gnu").unwrap();
        assert_eq!(key, "cfg(target_os = \"none\")");
        assert_eq!(file, &root.join(".cargo/config"));

        // Without the cfg runner, a linker alone is no runner.
        write(&root.join(".cargo/config"), "[build]\njobs = 2\n");
        let config = Config::read(&deep, Some(&home), &[]).unwrap();
        assert!(config.runner_for("x86_64-unknown-linux-gnu").is_none());
        // The command line's --config comes first.
        write(
            &root.join("extra.toml"),
            "[target.x86_64-unknown-linux-gnu]\nrunner = \"x\"\n",
        );
        let options = [
            "build.target=\"x86_64-unknown-linux-gnu\"".to_owned(),
            "extra.toml".to_owned(),
        ];
        let config = Config::read(&root, Some(&home), &options).unwrap();
        let (triple, _) = config.build_target.clone().unwrap();
        assert_eq!(triple.as_deref(), Some("x86_64-unknown-linux-gnu"));
        let (_, file) = config.runner_for("x86_64-unknown-linux-gnu").unwrap();
        assert_eq!(file, &root.join("extra.toml"));

        // The file with the extension is read when it is the only one, and
        // one that is not TOML is refused, naming it.
        std::fs::remove_file(root.join(".cargo/config")).unwrap();
        let refused = Config::read(&deep, Some(&home), &[])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains(&root.join(".cargo/config.toml").display().to_string()),
            "{refused}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
