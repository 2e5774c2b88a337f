//! Why a subcommand stopped before it could finish, and the exit code and
//! the message each reason gets (see [`crate::exit_codes`]).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::exit_codes;

/// A reason to stop, with everything its one-line message needs.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input (an argument or a state file): the message names the input
    /// and the forms it accepts.
    BadInput(String),
    /// A file could not be read or written.
    Io {
        /// What was being done: `read the state file`, `write`...
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// Waiting for a child process failed.
    Wait(io::Error),
    /// Another walk holds the state file: its path and the holder's pid.
    StateInUse(PathBuf, Option<u32>),
    /// The command to run does not exist.
    CommandNotFound(String),
    /// The command exists but cannot be executed.
    CannotExecute(String, io::Error),
    /// The preload library could not be built: what failed, what to do
    /// instead, and the exit code (bad input, or an I/O error on the cache).
    PreloadLibrary { message: String, code: i32 },
}

impl Failure {
    pub(crate) fn bad_input(message: impl Into<String>) -> Failure {
        Failure::BadInput(message.into())
    }

    /// A failed read or write of `path`.
    pub(crate) fn io(action: &'static str, path: &Path, error: io::Error) -> Failure {
        Failure::Io {
            action,
            path: path.to_owned(),
            error,
        }
    }

    /// A failure to start `command` (already quoted for a shell).
    pub(crate) fn spawn(command: String, error: io::Error) -> Failure {
        match error.kind() {
            io::ErrorKind::NotFound => Failure::CommandNotFound(command),
            _ => Failure::CannotExecute(command, error),
        }
    }

    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Failure::BadInput(_) => exit_codes::BAD_INPUT,
            Failure::Io { .. } | Failure::Wait(_) => exit_codes::IO_ERROR,
            Failure::StateInUse(..) => exit_codes::STATE_IN_USE,
            Failure::CommandNotFound(_) => exit_codes::COMMAND_NOT_FOUND,
            Failure::CannotExecute(..) => exit_codes::CANNOT_EXECUTE,
            Failure::PreloadLibrary { code, .. } => *code,
        }
    }

    /// Whether a usage line should follow the message.
    pub(crate) fn wants_usage(&self) -> bool {
        matches!(self, Failure::BadInput(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::BadInput(message) | Failure::PreloadLibrary { message, .. } => {
                f.write_str(message)
            }
            Failure::Io {
                action,
                path,
                error,
            } => write!(f, "cannot {action} {}: {error}", path.display()),
            Failure::Wait(error) => write!(f, "waiting for the command failed: {error}"),
            Failure::StateInUse(path, holder) => {
                write!(
                    f,
                    "the state file {} is in use by another walk",
                    path.display()
                )?;
                if let Some(pid) = holder {
                    write!(f, " (pid {pid})")?;
                }
                f.write_str("; wait for it to end, or give another --state")
            }
            Failure::CommandNotFound(command) => write!(f, "command not found: {command}"),
            Failure::CannotExecute(command, error) => {
                write!(f, "cannot execute {command}: {error}")
            }
        }
    }
}
