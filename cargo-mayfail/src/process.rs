//! Child processes: interrupts forwarded rather than obeyed, process
//! groups, every descendant of a run killed at its end, shell-style
//! statuses and quoting.
//!
//! A run's command leads a process group of its own, so a timeout or an
//! interrupt reaches everything it started, but a descendant can leave the
//! group (`setsid`, a daemon). On Linux the runner is therefore a *child
//! subreaper* (`PR_SET_CHILD_SUBREAPER`): a descendant whose parent dies is
//! re-parented to the runner instead of to init, so that at the end of a
//! run [`kill_leftovers`] can find every process the run left behind (the
//! runner's children, listed in `/proc`), kill and reap it.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Relaxed);
}

/// From now on, Ctrl-C (`SIGINT`) and `SIGTERM` only set a flag that
/// [`interrupted`] reads: the caller forwards them to its command.
pub(crate) fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is valid; the handler only stores to
        // an atomic, which is async-signal-safe. Handlers reset to the
        // default in the command after exec.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Whether Ctrl-C or `SIGTERM` arrived since [`catch_interrupts`].
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Relaxed)
}

/// Sends `signal` to `child` alone.
pub(crate) fn signal_child(child: &Child, signal: libc::c_int) {
    // SAFETY: `child` is ours and not reaped yet (`Child::wait` takes it
    // mutably), so its pid names it and no other process.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

/// Sends `signal` to the process group that `child` leads.
pub(crate) fn signal_group(child: &Child, signal: libc::c_int) {
    // SAFETY: the child leads its own process group (`process_group(0)`)
    // and is not reaped yet, so the group id is still ours to signal.
    unsafe { libc::kill(-(child.id() as libc::pid_t), signal) };
}

/// Makes the runner the reaper of its orphaned descendants (Linux; a no-op
/// elsewhere, where only the command's process group is killed).
pub(crate) fn adopt_orphans() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no
    // memory; it affects only how this process's descendants are re-parented.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Kills and reaps every remaining child of the runner: what a run left
/// behind, adopted through [`adopt_orphans`]. Call it only once every
/// [`Child`] of the run has been waited for (it reaps any child). Repeats
/// until no child is left (a killed process's own children are adopted in
/// turn), for at most `patience`. Returns how many processes it killed.
pub(crate) fn kill_leftovers(patience: Duration) -> usize {
    let deadline = Instant::now() + patience;
    let mut killed = 0;
    loop {
        let children = children();
        if children.is_empty() || Instant::now() > deadline {
            return killed;
        }
        for &pid in &children {
            // SAFETY: `pid` is our child and not reaped yet (only the loop
            // below reaps), so it names that process and no other; a
            // process group it leads cannot have been reused either.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
        // SAFETY: waitpid with a null status pointer touches no memory.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    }
}

/// The pids whose parent is this process, from `/proc` (empty where there
/// is none).
fn children() -> Vec<libc::pid_t> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(me)
            })
        })
        .filter_map(|pid| libc::pid_t::try_from(pid).ok())
        .collect()
}

/// A shell's exit status for a process status: its exit code, or
/// `128 + S` if signal `S` killed it.
pub(crate) fn shell_status(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// `exit 3`, `signal 6`.
pub(crate) fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "?".to_owned(),
    }
}

/// A command line as a shell would read it back.
pub(crate) fn quoted(command: &[OsString]) -> String {
    mayfail::state::quote_command(command)
}

/// One argument, quoted for a POSIX shell if it needs it.
pub(crate) fn shell_quote(arg: &OsStr) -> String {
    mayfail::state::quote_word(arg)
}

/// The file a command's program names, as `execvp` finds it: a name with a
/// slash as it is, any other the first executable file of that name in
/// `PATH`.
pub(crate) fn program_path(program: &OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
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
