//! The report of the call site that could not cope with an injected failure.
//!
//! On stable Rust, a null on an infallible path (`Vec::push`, `Box::new`)
//! makes std print "memory allocation of N bytes failed" and abort; there is
//! no hook. So every injected failure is recorded (`record`: what failed and
//! the raw return addresses of its stack). While injection is on, handlers for
//! `SIGABRT`, `SIGSEGV` and `SIGBUS` are installed; when the thread that got
//! the injected failure then aborts (or faults near address zero: a likely
//! unchecked null), the handler prints the report to stderr, then hands the
//! signal to the handler that was there before (the default action, mostly),
//! so the process still dies of the same signal.
//!
//! A handler the program installed itself, before mayfail's or after it, is
//! called first, as the kernel would have (with the mask the kernel would
//! give it, `SA_NODEFER` and `SA_RESETHAND` honoured): a program that
//! handles the signal (a GC's or a JIT's probe of memory that jumps back
//! out, a handler that maps the page and returns) lives on, and nothing is
//! reported. Only when
//! the process is going to die of the signal after all (the handler left the
//! default action behind, as std's does for a fault outside a guard page;
//! `abort`, which goes on to the default action; a handler that calls ours
//! as its "previous") are the site's fate and the report written.
//!
//! The report's first part (what failed, where in the thread's sequence, the
//! replay line) is written with raw `write(2)` from stack buffers. Only then
//! are the addresses turned into names and lines, which allocates (under the
//! thread's in-reclaim mark, so nothing is injected there); should that hang,
//! the first part is out already.
//!
//! Above the injection decision: it registers an observer there (to keep its
//! handlers in front and print verbose lines), and the site walk registers
//! with it (to record a process's fate, to name a replay's stack id).

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU8, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

use crate::hook::Hook;
use crate::inject;
use crate::record::{self, Cause};
use crate::scope::ReclaimGuard;
use crate::spec::Canonical;
use crate::symbols;
use crate::sys;
use crate::text::{Quoted, Replayable, ShellWord, StackBuf};
/// Faults below this address after an injected failure are reported as a
/// likely unchecked null.
const NULL_PAGE_LIMIT: usize = 1 << 20;

/// Called first by the signal handler, with the signal and the fault
/// address: the site walk records the fate of the site it failed. Filled
/// only by `sites::register` (for `sites=` and `stack=`): a slot, not a call,
/// because the site walk lies above this layer (docs/ARCHITECTURE.md) and
/// is not compiled without its feature.
static ON_FATAL_SIGNAL: Hook<fn(libc::c_int, usize)> = Hook::new();
/// The stack id a replay line names, when the site walk caused the failure.
/// Filled only by `sites::register`, a slot for the same reason as
/// [`ON_FATAL_SIGNAL`].
static REPLAY_STACK: Hook<fn() -> Option<ReplayStack>> = Hook::new();

/// What a replay line names when the site walk caused the failure: the
/// stack, and the stacks failed before it on the way to its error path
/// (`sites-after`).
#[derive(Clone, Copy)]
pub(crate) struct ReplayStack {
    pub(crate) id: u64,
    pub(crate) after: [u64; crate::spec::MAX_AFTER],
    pub(crate) after_len: usize,
}

// SAFETY: a plain `fn` pointer type.
unsafe impl crate::hook::FnPointer for fn() -> Option<ReplayStack> {}

/// Set in a sweep's child: the parent reports, the child stays quiet.
static SILENT: AtomicBool = AtomicBool::new(false);
/// Called by the signal handler of a silenced process (a sweep's child) on
/// `SIGABRT`, where it walks the abort's stack: the parent blames the
/// allocation that reached `handle_alloc_error`, which in persistent mode is
/// not the first one failed. Filled only by the sweep's child
/// (`sweep::child`): a slot because the sweep lies above this layer.
static ON_ABORT: Hook<fn()> = Hook::new();

/// Registers the function the signal handler calls first.
#[cfg(feature = "sites")]
pub(crate) fn on_fatal_signal(hook: fn(libc::c_int, usize)) {
    ON_FATAL_SIGNAL.set(Some(hook));
}

/// Registers the function that names the stack id of a replay line.
#[cfg(feature = "sites")]
pub(crate) fn replay_stack_with(hook: fn() -> Option<ReplayStack>) {
    REPLAY_STACK.set(Some(hook));
}

/// Registers the function a silenced process's handler calls on an abort,
/// to walk its stack. It runs in the signal handler: it must not allocate.
#[cfg(feature = "sweep")]
pub(crate) fn on_abort_stack(hook: fn()) {
    ON_ABORT.set(Some(hook));
}

/// No report from this process (a sweep's child: its parent reports).
#[cfg(feature = "sweep")]
pub(crate) fn silence() {
    SILENT.store(true, Relaxed);
}

/// Observes every injected failure (registered with the injection decision
/// when the handlers are installed): puts the handlers back in front if
/// std's start-up replaced them, and prints the verbose line (`verbose` is
/// already rate-limited: 0 means no line).
fn on_injected(verbose: u8) {
    reassert_handlers();
    if verbose >= 1 {
        describe_injection(verbose >= 2);
    }
}

/// The verbose line for the failure just recorded (and its backtrace).
fn describe_injection(with_backtrace: bool) {
    let Some(record) = record::latest() else {
        return;
    };
    if !record.valid {
        return;
    }
    // Resolving symbols allocates: serve those allocations without injection.
    let _reclaiming = ReclaimGuard::enter();
    let mut line = StackBuf::<400>::new();
    let _ = write!(line, "mayfail: injected failure: ");
    record::describe(&mut line, &record);
    sys::write_stderr(line.finish_line());
    if with_backtrace {
        symbols::on_big_stack(&mut || symbols::write_backtrace(&record.frames[..record.depth]));
    }
}

// ---------------------------------------------------------------------------
// Signal handlers.

/// `NOT_INSTALLED`, `INSTALLING` (one thread is filling slot 0 and
/// installing), then `INSTALLED_STATE`: `reassert_handlers` acts only then.
static INSTALLED: AtomicU8 = AtomicU8::new(NOT_INSTALLED);
const NOT_INSTALLED: u8 = 0;
const INSTALLING: u8 = 1;
const INSTALLED_STATE: u8 = 2;

const SIGNALS: [libc::c_int; 3] = [libc::SIGABRT, libc::SIGSEGV, libc::SIGBUS];

/// How many handlers per signal we remember: the one found at install time,
/// then those that replaced ours later (see [`reassert_handlers`]).
const MAX_SAVED: usize = 8;

/// The handlers to hand a signal over to, per signal. Append-only: a slot is
/// written once, before its index is published in `HAND_OVER`, so a signal
/// handler never reads a slot that is being written.
struct Saved(UnsafeCell<[[libc::sigaction; MAX_SAVED]; SIGNALS.len()]>);

// SAFETY: see the type's doc: every slot is written once, by the thread that
// claimed it in `USED`, before its index is published with Release; readers
// only read published slots, after an Acquire load.
unsafe impl Sync for Saved {}

static SAVED: Saved = Saved(UnsafeCell::new(
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask).
    unsafe { core::mem::zeroed() },
));

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
/// Slots claimed per signal.
static USED: [AtomicUsize; SIGNALS.len()] = [ZERO; SIGNALS.len()];
/// The slot of the handler to hand over to, per signal (0: the one found at
/// install time).
static HAND_OVER: [AtomicUsize; SIGNALS.len()] = [ZERO; SIGNALS.len()];

fn our_handler() -> usize {
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_signal;
    handler as usize
}

/// Installs the report handlers once per process. Does not allocate.
pub(crate) fn install_handlers() {
    if INSTALLED.load(Acquire) != NOT_INSTALLED
        || INSTALLED
            .compare_exchange(NOT_INSTALLED, INSTALLING, Acquire, Relaxed)
            .is_err()
    {
        return;
    }
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: an all-zero sigaction is valid; we fill in the handler.
        let mut action: libc::sigaction = unsafe { core::mem::zeroed() };
        action.sa_sigaction = our_handler();
        // Not on the alternate stack: std's is a few KiB, and resolving
        // symbols for the report needs far more. The price: while these
        // handlers are installed, a stack overflow is not reported by std.
        action.sa_flags = libc::SA_SIGINFO;
        USED[i].store(1, Relaxed);
        // SAFETY: `action.sa_mask` is a valid sigset. Slot 0 is written by
        // this thread only (it won `INSTALLED`), and completely before our
        // handler, its only reader, is installed by the second call: a
        // handler installed by someone else in between is found later by
        // `reassert_handlers`.
        unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            let slot = &mut (*SAVED.0.get())[i][0];
            libc::sigaction(sig, core::ptr::null(), slot);
            libc::sigaction(sig, &action, core::ptr::null_mut());
        }
        HAND_OVER[i].store(0, Release);
    }
    // Raw frames in a report are named relative to their modules.
    symbols::build_modules();
    INSTALLED.store(INSTALLED_STATE, Release);
    inject::observe(on_injected);
}

/// Puts the handlers back in front if someone replaced them since
/// [`install_handlers`], remembering the replacement as the handler to hand
/// over to. Needed because `MAYFAIL_INJECT` is read by the first allocation,
/// which can fall inside std's start-up between its read of the `SIGSEGV`
/// action (still the default) and its write of its stack-overflow handler,
/// which then silently replaces ours. Called on each injected failure; does
/// not allocate. At most `MAX_SAVED - 1` times per signal.
pub(crate) fn reassert_handlers() {
    if INSTALLED.load(Acquire) != INSTALLED_STATE {
        return;
    }
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: an all-zero sigaction is valid; sigaction fills it.
        let mut current: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: reads the current action into `current`.
        unsafe { libc::sigaction(sig, core::ptr::null(), &mut current) };
        if current.sa_sigaction == our_handler() {
            continue;
        }
        let slot = USED[i].fetch_add(1, Relaxed);
        if slot >= MAX_SAVED {
            continue;
        }
        let mut action = current;
        action.sa_sigaction = our_handler();
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `slot` was claimed by this call alone and is not published
        // yet, so nothing reads it while it is written.
        unsafe {
            (*SAVED.0.get())[i][slot] = current;
            libc::sigemptyset(&mut action.sa_mask);
        }
        HAND_OVER[i].store(slot, Release);
        // SAFETY: `action` is a valid sigaction.
        unsafe { libc::sigaction(sig, &action, core::ptr::null_mut()) };
    }
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let index = SIGNALS.iter().position(|&s| s == sig).unwrap_or(0);
    // A fault the kernel raised has a positive `si_code` (SEGV_MAPERR...);
    // one sent with kill, raise or tgkill has SI_USER, SI_TKILL or
    // SI_QUEUE, all <= 0, and its "address" is the sender's pid: not a fault
    // at all, so not blamed on an unchecked null.
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
    let fault_address = if sig == libc::SIGABRT || sent {
        0
    } else {
        // SAFETY: as above; for a kernel-raised fault `si_addr` is the address.
        unsafe { (*info).si_addr() as usize }
    };
    // Who to hand over to: the handler that was there before ours. If our
    // handler is not the installed one, or the program's handler we are
    // calling called us back, a handler that replaced ours called us as its
    // "previous" (it does not handle this signal): hand over to the one
    // found at install time, never back to the caller, or the two would
    // pass the signal to each other for ever. Where this call's frame is
    // tells a call back (deeper on the same stack) from a fresh signal.
    let frame = core::hint::black_box(&index) as *const usize as usize;
    let called_back = !disposition_is(sig, our_handler()) || Calling::is_call_back(context, frame);
    let slot = if called_back {
        0
    } else {
        HAND_OVER[index].load(Acquire)
    };
    // SAFETY: published slots are never written again (see `Saved`).
    let target = unsafe { &(*SAVED.0.get())[index][slot] };
    if !called_back && is_function(target) {
        // The program handles this signal itself (a GC's or a JIT's probe
        // of memory, a handler that jumps back out): let it, and say
        // nothing unless the process is going to die of the signal after
        // all. A handler that jumps out never comes back here.
        call_program_handler(target, sig, info, context, frame);
        if dies_after_handler(sig, sent) {
            report_fatal(sig, fault_address, sent);
        }
        return;
    }
    report_fatal(sig, fault_address, sent);
    // Hand over: install the handler that was there before (the default
    // action, mostly), and let the signal happen again (a fault
    // re-executes; an abort is raised again, pending until this handler
    // returns).
    // SAFETY: `target` is a valid sigaction.
    unsafe {
        libc::sigaction(sig, target, core::ptr::null_mut());
        // A fault happens again when the faulting instruction re-executes; a
        // sent signal (an abort is one) would not: send it again.
        if sig == libc::SIGABRT || sent {
            libc::raise(sig);
        }
    }
}

/// The process that wrote its fatal report (0: none yet), so that it is
/// written once: a program's handler that calls ours back as its
/// "previous" makes [`on_signal`] reach [`report_fatal`] twice for one
/// signal, in the call back and once that handler returns. A forked child
/// has a pid of its own, and its own report.
static REPORTED_BY: AtomicI32 = AtomicI32::new(0);

/// What a process that dies of `sig` leaves: the fate of the site it failed
/// (`sites` mode), the abort's stack for a sweep's parent, and the report.
/// Written first, without allocating; once per process.
fn report_fatal(sig: libc::c_int, fault_address: usize, sent: bool) {
    let pid = sys::getpid();
    if REPORTED_BY.swap(pid, AcqRel) == pid {
        return;
    }
    // [sites] The fate of the site this process failed in `sites` mode.
    if let Some(hook) = ON_FATAL_SIGNAL.get() {
        hook(sig, fault_address);
    }
    if sig == libc::SIGABRT
        && SILENT.load(Relaxed)
        && let Some(hook) = ON_ABORT.get()
    {
        hook();
    }
    let taken = record::take();
    if let Some(taken) = taken
        && taken.last.valid
        && (sig == libc::SIGABRT || (!sent && fault_address < NULL_PAGE_LIMIT))
        && !SILENT.load(Relaxed)
    {
        print_report(sig, fault_address, &taken);
    }
}

/// Whether the disposition of `sig` is now the handler at `handler` (or
/// `SIG_DFL`, `SIG_IGN`).
fn disposition_is(sig: libc::c_int, handler: usize) -> bool {
    disposition(sig).sa_sigaction == handler
}

/// The disposition of `sig` now.
fn disposition(sig: libc::c_int) -> libc::sigaction {
    // SAFETY: an all-zero sigaction is valid; sigaction fills it.
    let mut current: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: reads the current action into `current`.
    unsafe { libc::sigaction(sig, core::ptr::null(), &mut current) };
    current
}

/// Whether an action runs a function (neither the default action nor
/// ignoring the signal).
fn is_function(action: &libc::sigaction) -> bool {
    action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN
}

/// Whether the process is going to die of `sig` now that the program's own
/// handler returned: `abort` goes on to the default action once handlers
/// return (it resets it and raises again); a fault re-executes, and a
/// signal the handler raised again is delivered, under the disposition the
/// handler left, which kills when it is the default (std's handler resets
/// it so for a fault outside a guard page) or ignoring a fault. While a
/// handler is still installed, the signal is that handler's again.
fn dies_after_handler(sig: libc::c_int, sent: bool) -> bool {
    if sig == libc::SIGABRT && raised_by_abort() {
        return true;
    }
    if is_function(&disposition(sig)) {
        return false;
    }
    if !sent {
        return true;
    }
    // SAFETY: an all-zero sigset is valid storage; sigpending fills it.
    let mut pending: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: `pending` is valid; sigismember only reads it.
    unsafe { libc::sigpending(&mut pending) == 0 && libc::sigismember(&pending, sig) == 1 }
}

/// Whether the signal being handled was raised by `abort` (rather than by a
/// `raise` or `kill` of the program's, which it may handle and live on):
/// `abort` is among the first frames below the signal frame, by the name
/// the loader knows it by. Does not allocate.
fn raised_by_abort() -> bool {
    let mut frames = [0usize; 32];
    let depth = symbols::walk(&mut frames);
    frames[..depth].iter().any(|&ip| {
        // SAFETY: an all-zero Dl_info is valid; dladdr fills it or fails.
        let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
        // SAFETY: any address may be asked about; `info` is writable. A
        // return address points just past its call: step back into it.
        let found =
            unsafe { libc::dladdr(ip.wrapping_sub(1) as *const libc::c_void, &mut info) } != 0;
        // SAFETY: a NUL-terminated name owned by the loader, if any.
        found
            && !info.dli_sname.is_null()
            && unsafe { core::ffi::CStr::from_ptr(info.dli_sname) }.to_bytes() == b"abort"
    })
}

/// Calls the program's own handler for `sig` as the kernel would have:
/// with the mask the kernel gives a handler (see [`handler_mask`]), its
/// disposition reset first if it asked for `SA_RESETHAND`, and the thread
/// registered meanwhile (see [`Calling`]).
fn call_program_handler(
    target: &libc::sigaction,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
    frame: usize,
) {
    let _calling = Calling::enter(context, frame);
    // SAFETY: an all-zero sigset is valid storage for the old mask.
    let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
    let mask = handler_mask(target, sig);
    // SAFETY: `mask` is a valid sigset; `old` receives the mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, &mut old) };
    if target.sa_flags & libc::SA_RESETHAND != 0 {
        // SAFETY: an all-zero sigaction is the default action.
        let default: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: `default` is a valid sigaction.
        unsafe { libc::sigaction(sig, &default, core::ptr::null_mut()) };
    }
    if target.sa_flags & libc::SA_SIGINFO != 0 {
        type Action = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
        // SAFETY: with SA_SIGINFO, `sa_sigaction` is a three-argument
        // handler, not SIG_DFL nor SIG_IGN (checked by the caller).
        let handler = unsafe { core::mem::transmute::<usize, Action>(target.sa_sigaction) };
        handler(sig, info, context);
    } else {
        type Handler = extern "C" fn(libc::c_int);
        // SAFETY: without SA_SIGINFO, `sa_sigaction` is a one-argument
        // handler, not SIG_DFL nor SIG_IGN (checked by the caller).
        let handler = unsafe { core::mem::transmute::<usize, Handler>(target.sa_sigaction) };
        handler(sig);
    }
    // SAFETY: `old` is the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) };
}

/// The mask the kernel runs the handler `target` of `sig` with: the mask at
/// the signal, plus the handler's `sa_mask`, plus `sig` itself unless the
/// handler asked for `SA_NODEFER` (Linux does not take `SA_RESETHAND` for
/// it). Ours runs without `SA_NODEFER` and with an empty `sa_mask`, so the
/// mask now is the one at the signal plus `sig`, which was not blocked
/// then (a blocked signal is not delivered; a blocked fault kills). A
/// handler that asked for `SA_NODEFER` and jumps out with `_longjmp` or
/// `siglongjmp(env, 0)`, which leave the mask as it is, must not leave
/// `sig` blocked behind it: the next fault would kill the process without
/// calling any handler. Does not allocate.
fn handler_mask(target: &libc::sigaction, sig: libc::c_int) -> libc::sigset_t {
    // SAFETY: an all-zero sigset is valid storage; pthread_sigmask fills it.
    let mut mask: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: reads the current mask into `mask`; `sig` and `s` are signal
    // numbers, and both sets are valid.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, core::ptr::null(), &mut mask);
        libc::sigdelset(&mut mask, sig);
        for s in 1..=64 {
            if libc::sigismember(&target.sa_mask, s) == 1 {
                libc::sigaddset(&mut mask, s);
            }
        }
        if target.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, sig);
        }
    }
    mask
}

/// The threads running a program's handler called from ours: if that
/// handler calls ours back as its "previous" handler, the signal is not the
/// program's to handle. A fixed table without allocation or thread-locals,
/// one slot per thread: its kernel id, the context the kernel passed (the
/// program's handler passes it on when it calls back) and where our
/// handler's frame was. A handler that jumps out never unregisters: a later
/// signal is a fresh delivery, not a call back, when its context or its
/// frame differ (a call back runs deeper on the same stack, with the same
/// context).
struct Calling(Option<usize>);

const CALLING_SLOTS: usize = 32;
#[allow(clippy::declare_interior_mutable_const)]
const NO_THREAD: AtomicI32 = AtomicI32::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const NOWHERE: AtomicUsize = AtomicUsize::new(0);
static CALLING: [AtomicI32; CALLING_SLOTS] = [NO_THREAD; CALLING_SLOTS];
static CALLING_CONTEXT: [AtomicUsize; CALLING_SLOTS] = [NOWHERE; CALLING_SLOTS];
static CALLING_FRAME: [AtomicUsize; CALLING_SLOTS] = [NOWHERE; CALLING_SLOTS];

impl Calling {
    /// Registers this thread as calling the program's handler with
    /// `context`, from our handler's frame at `frame`. Not registered if
    /// every slot belongs to a live thread.
    fn enter(context: *mut libc::c_void, frame: usize) -> Calling {
        let tid = sys::gettid();
        let pid = sys::getpid();
        let own = CALLING.iter().position(|s| s.load(Relaxed) == tid);
        let slot = own.or_else(|| {
            CALLING.iter().position(|s| {
                let holder = s.load(Relaxed);
                // A free slot, or one left by a thread that has ended.
                // SAFETY: tgkill with signal 0 only checks that the thread
                // exists.
                let free =
                    holder == 0 || unsafe { libc::syscall(libc::SYS_tgkill, pid, holder, 0) } != 0;
                free && s.compare_exchange(holder, tid, Relaxed, Relaxed).is_ok()
            })
        });
        if let Some(slot) = slot {
            CALLING_CONTEXT[slot].store(context as usize, Relaxed);
            CALLING_FRAME[slot].store(frame, Relaxed);
        }
        Calling(slot)
    }

    /// Whether this call of our handler, with `context` and its frame at
    /// `frame`, is the program's handler calling us back.
    fn is_call_back(context: *mut libc::c_void, frame: usize) -> bool {
        let tid = sys::gettid();
        CALLING.iter().enumerate().any(|(slot, s)| {
            s.load(Relaxed) == tid
                && CALLING_CONTEXT[slot].load(Relaxed) == context as usize
                && frame < CALLING_FRAME[slot].load(Relaxed)
        })
    }
}

impl Drop for Calling {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            CALLING_FRAME[slot].store(0, Relaxed);
        }
    }
}

fn print_report(sig: libc::c_int, fault_address: usize, taken: &record::Taken) {
    let r = &taken.last;
    let _reclaiming = ReclaimGuard::enter();
    // Resolving symbols allocates. If the C allocator itself aborted while
    // holding its lock (heap corruption detected by glibc), that would hang
    // for ever: let SIGALRM end the process after 10 s instead.
    // SAFETY: alarm is async-signal-safe and has no preconditions.
    unsafe { libc::alarm(10) };
    // First what needs neither memory nor much stack: the failing thread's
    // stack may be small, or memory exhausted.
    let mut line = StackBuf::<300>::new();
    let _ = if sig == libc::SIGABRT {
        write!(
            line,
            "mayfail: the process is aborting after an injected allocation failure"
        )
    } else {
        let name = sys::signal_name(sig);
        write!(
            line,
            "mayfail: the process crashed ({name} at address {fault_address:#x}) after an \
             injected allocation failure: likely an unchecked null, a memory-safety bug"
        )
    };
    sys::write_stderr(line.finish_line());
    let mut line = StackBuf::<400>::new();
    let _ = write!(line, "mayfail:   failed on purpose: ");
    record::describe(&mut line, r);
    sys::write_stderr(line.finish_line());
    if let Some(first) = &taken.first {
        let mut line = StackBuf::<300>::new();
        let _ = write!(
            line,
            "mayfail:   first failed: {}, its allocation #{}; every allocation after it \
             failed too (persistent mode)",
            first.asked(),
            first.number
        );
        sys::write_stderr(line.finish_line());
    } else if r.exhausted {
        sys::write_stderr(
            b"mayfail:   every allocation after it failed too (persistent mode): an abort \
              is blamed on the one that reached handle_alloc_error\n",
        );
    }
    print_replay(r);
    symbols::write_raw_frames(&r.frames[..r.depth]);
    // Then names, on a stack of their own: the abort's cause and the
    // backtrace.
    let mut abort_frames = [0usize; record::MAX_FRAMES];
    let abort_depth = if sig == libc::SIGABRT {
        // libgcc's unwinder walks through the signal frame to the code that
        // called `abort`.
        symbols::walk(&mut abort_frames)
    } else {
        0
    };
    symbols::on_big_stack(&mut || {
        let mut below_alloc_error = None;
        if sig == libc::SIGABRT {
            below_alloc_error =
                symbols::below_named(&abort_frames[..abort_depth], &symbols::ALLOC_ERROR_FRAMES);
            sys::write_stderr(if below_alloc_error.is_some() {
                b"mayfail:   cause: std's handle_alloc_error, an infallible allocation path\n"
            } else {
                b"mayfail:   cause: not handle_alloc_error; the last injected failure on this \
                  thread was handled at the time\n"
            });
        }
        match below_alloc_error {
            // Persistent mode, and the failure that aborted was not recorded
            // on its own: the abort's stack below handle_alloc_error is that
            // allocation's caller.
            Some(at) if r.exhausted && taken.first.is_none() => {
                sys::write_stderr(
                    b"mayfail:   the allocation that aborted is a later one than the failure \
                      above; its stack:\n",
                );
                symbols::write_backtrace(&abort_frames[at..abort_depth]);
            }
            _ => symbols::write_backtrace(&r.frames[..r.depth]),
        }
    });
    // SAFETY: as above; cancels the alarm.
    unsafe { libc::alarm(0) };
}

/// Prints the command that fails the same allocation again. Under the
/// preload library the command goes through the runner, `mayfail run
/// --inject 'SPEC' -- CMD`, which puts it under the library again (a
/// plain `MAYFAIL_INJECT=... CMD` would run it without); a program with
/// mayfail of its own replays with `MAYFAIL_INJECT='SPEC' CMD`.
fn print_replay(r: &record::Record) {
    let mut line = StackBuf::<4096>::new();
    let _ = write!(line, "mayfail:   replay: ");
    // Around the spec, which is written inside single quotes.
    let (before, after) = if under_preload_library() {
        ("mayfail run --inject '", "' -- ")
    } else {
        ("MAYFAIL_INJECT='", "' ")
    };
    // [sites] A failure of `sites=` or `stack=` mode replays by its stack id.
    if r.cause == Cause::Attributes
        && r.from_env
        && let Some(stack) = REPLAY_STACK.get().and_then(|stack| stack())
    {
        let _ = write!(line, "{before}stack={:016x}", stack.id);
        for (i, id) in stack.after[..stack.after_len].iter().enumerate() {
            let lead = if i == 0 { ",sites-after=" } else { "+" };
            let _ = write!(line, "{lead}{id:016x}");
        }
        let _ = write!(line, "{after}");
        write_command_line(&mut line);
        sys::write_stderr(line.finish_line());
        return;
    }
    if r.cause == Cause::Attributes && r.from_env {
        let mut name_buf = [0u8; 16];
        let name = sys::thread_name(&mut name_buf);
        let transient = if inject::transient() {
            ",transient=Y"
        } else {
            ""
        };
        let _ = write!(
            line,
            "{before}nth={},thread={}{transient}{after}",
            r.number,
            Replayable(name)
        );
    }
    // A sweep's replay sets up its countdown from MAYFAIL_SWEEP_POINT:
    // without it, the command would rerun the whole sweep.
    let sweep_point = sys::getenv(c"MAYFAIL_SWEEP_POINT").filter(|_| r.cause == Cause::FailNth);
    if let Some(point) = sweep_point {
        let _ = write!(line, "MAYFAIL_SWEEP_POINT={} ", ShellWord(point));
    }
    write_command_line(&mut line);
    if sweep_point.is_none() && (r.cause == Cause::FailNth || !r.from_env) {
        let _ = write!(line, "   (the program sets up this injection itself)");
    }
    sys::write_stderr(line.finish_line());
    if r.cause == Cause::Attributes && r.from_env {
        let (spec, seed) = inject::current_spec();
        let mut canonical = StackBuf::<1024>::new();
        let _ = write!(canonical, "{}", Canonical { spec: &spec, seed });
        let mut line = StackBuf::<1200>::new();
        let _ = write!(
            line,
            "mayfail:   same run: MAYFAIL_INJECT={} with the same command",
            Quoted(canonical.as_bytes())
        );
        sys::write_stderr(line.finish_line());
    }
}

/// Whether this process runs under the preload library: an entry of
/// `LD_PRELOAD` (split where the loader splits it) names
/// `libmayfail_preload.so`. Reads the environment without allocating.
fn under_preload_library() -> bool {
    sys::getenv(c"LD_PRELOAD").is_some_and(|value| {
        value
            .split(|&b| b == b' ' || b == b':')
            .any(|entry| entry.rsplit(|&b| b == b'/').next() == Some(b"libmayfail_preload.so"))
    })
}

/// The command line of this process, shell-quoted, read from
/// `/proc/self/cmdline` without allocating.
fn write_command_line<const N: usize>(line: &mut StackBuf<N>) {
    // rustdoc's merged doctests (edition 2024) run one doctest by this
    // variable; without it the executable runs them all, on other stacks.
    if let Some(number) = sys::getenv(c"RUSTDOC_DOCTEST_RUN_NB_TEST") {
        let _ = write!(
            line,
            "env RUSTDOC_DOCTEST_RUN_NB_TEST={} ",
            ShellWord(number)
        );
    }
    let mut buf = [0u8; 2048];
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/proc/self/cmdline".as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return;
    }
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: writes at most the rest of `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: `fd` is open.
    unsafe { libc::close(fd) };
    // Every argument ends with a NUL: an empty argument is an empty field.
    let args = buf[..len].strip_suffix(&[0]).unwrap_or(&buf[..len]);
    for (i, arg) in args.split(|&b| b == 0).enumerate() {
        let _ = write!(line, "{}{}", if i == 0 { "" } else { " " }, ShellWord(arg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FATES: AtomicUsize = AtomicUsize::new(0);

    fn count_fate(_sig: libc::c_int, _fault_address: usize) {
        FATES.fetch_add(1, Relaxed);
    }

    /// Runs `body` in a forked child and returns its exit code.
    fn in_child(body: fn() -> i32) -> i32 {
        // SAFETY: the child only touches atomics and calls async-signal-safe
        // functions before `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child without running the parent's exit code.
            unsafe { libc::_exit(body()) };
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is writable.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// A program's handler that calls ours back makes the handler reach the
    /// report twice for one signal: it is written once, and a child forked
    /// after it writes its own.
    #[test]
    #[cfg_attr(miri, ignore = "Miri models no fork")]
    fn a_process_writes_its_fatal_report_once_and_a_forked_child_its_own() {
        if crate::sys::under_valgrind() {
            eprintln!("skipped under valgrind: its forked child reports the parent's blocks");
            return;
        }
        let code = in_child(|| {
            ON_FATAL_SIGNAL.set(Some(count_fate));
            report_fatal(libc::SIGSEGV, 0, false);
            report_fatal(libc::SIGSEGV, 0, false);
            let first = FATES.load(Relaxed) as i32;
            let forked = in_child(|| {
                report_fatal(libc::SIGABRT, 0, false);
                report_fatal(libc::SIGABRT, 0, false);
                FATES.load(Relaxed) as i32
            });
            first * 10 + forked
        });
        assert_eq!(
            code,
            12,
            "reports: parent {}, forked child's total {}",
            code / 10,
            code % 10
        );
    }
}
