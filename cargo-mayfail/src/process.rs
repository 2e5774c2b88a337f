//! Child processes: interrupts forwarded rather than obeyed, process
//! groups, shell-style statuses and quoting.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

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
