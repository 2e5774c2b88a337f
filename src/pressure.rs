//! Real memory pressure, for tests and demos (Linux).
//!
//! [`limit_address_space`] caps the process's address space with
//! `setrlimit(RLIMIT_AS)` a given headroom above what it maps now; a
//! [`Ballast`] then fills what is left, first with anonymous mappings and then
//! through the global allocator until it returns null for every size down to
//! 16 bytes, and gives the memory back piece by piece, typically from a
//! reclaimer. After `fill`, the next allocation that needs fresh memory fails
//! for real in the inner allocator: nothing is simulated.
//!
//! Use it in a child process (a re-run of the test binary, or a `fork`): the
//! limit is process-wide, and while the ballast is full every thread of the
//! process is out of memory.
//!
//! ```no_run
//! use mayfail::pressure::{Ballast, limit_address_space};
//!
//! let limit = limit_address_space(64 << 20)?;
//! let mut ballast = Ballast::new();
//! ballast.fill()?;
//! let mut v: Vec<u8> = Vec::new();
//! assert!(mayfail::noretry(|| v.try_reserve(4096)).is_err());
//! ballast.release(4096);
//! assert!(v.try_reserve(4096).is_ok());
//! drop(ballast);
//! drop(limit);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::alloc::Layout;
use std::io;
use std::ptr;

/// The soft `RLIMIT_AS` in force before [`limit_address_space`]; puts it
/// back when dropped.
#[derive(Debug)]
#[must_use = "the previous limit is restored as soon as this is dropped"]
pub struct AddressSpaceLimit {
    previous: libc::rlimit,
    limit: usize,
}

impl AddressSpaceLimit {
    /// The limit set, in bytes.
    pub fn bytes(&self) -> usize {
        self.limit
    }
}

impl Drop for AddressSpaceLimit {
    fn drop(&mut self) {
        // SAFETY: `previous` is a valid rlimit read by getrlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &self.previous) };
    }
}

/// The bytes of address space the process maps now (`VmSize`).
pub fn address_space_in_use() -> io::Result<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: usize = statm
        .split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/self/statm"))?;
    Ok(pages * page_size())
}

/// Sets the soft `RLIMIT_AS` to the address space in use now plus
/// `headroom` bytes (the hard limit is left alone); the returned value puts
/// the previous soft limit back when dropped.
pub fn limit_address_space(headroom: usize) -> io::Result<AddressSpaceLimit> {
    let mut previous = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `previous` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut previous) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let limit = address_space_in_use()?.saturating_add(headroom);
    let wanted = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: previous.rlim_max,
    };
    // SAFETY: `wanted` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &wanted) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(AddressSpaceLimit { previous, limit })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

fn address_space_is_limited() -> bool {
    crate::sys::address_space_limit().is_some()
}

/// The header written at the start of every block the ballast holds.
#[repr(C)]
struct Link {
    next: *mut Link,
    size: usize,
}

/// A first-in, first-out chain of blocks, linked through their own first
/// bytes so that holding them needs no other memory.
struct Chain {
    head: *mut Link,
    tail: *mut Link,
    bytes: usize,
}

impl Chain {
    const fn new() -> Self {
        Chain {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
            bytes: 0,
        }
    }

    /// # Safety
    ///
    /// `block` is writable for at least `size_of::<Link>()` bytes, aligned
    /// for `Link`, owned by the chain from now on.
    unsafe fn push(&mut self, block: *mut u8, size: usize) {
        let link = block.cast::<Link>();
        // SAFETY: `link` is writable and aligned (caller); the tail, if any,
        // is a block this chain owns.
        unsafe {
            link.write(Link {
                next: ptr::null_mut(),
                size,
            });
            if self.tail.is_null() {
                self.head = link;
            } else {
                (*self.tail).next = link;
            }
        }
        self.tail = link;
        self.bytes += size;
    }

    /// The oldest block and its size.
    fn pop(&mut self) -> Option<(*mut u8, usize)> {
        if self.head.is_null() {
            return None;
        }
        let link = self.head;
        // SAFETY: `head` is a block this chain owns, with a header written by `push`.
        let Link { next, size } = unsafe { link.read() };
        self.head = next;
        if next.is_null() {
            self.tail = ptr::null_mut();
        }
        self.bytes -= size;
        Some((link.cast(), size))
    }
}

/// Memory held on purpose to create real pressure: anonymous mappings that
/// take up address space, and blocks from the global allocator that take up
/// its free lists. See the [module docs](self).
pub struct Ballast {
    heap: Chain,
    mapped: Chain,
}

// SAFETY: a Ballast owns its blocks exclusively; heap blocks can be freed and
// mappings unmapped from any thread.
unsafe impl Send for Ballast {}

impl Default for Ballast {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Ballast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ballast")
            .field("heap_bytes", &self.heap.bytes)
            .field("mapped_bytes", &self.mapped.bytes)
            .finish()
    }
}

/// The sizes the heap is filled with, largest first, so that releasing in
/// order frees the largest blocks first.
const HEAP_SIZES: [usize; 7] = [64 << 10, 16 << 10, 4 << 10, 1 << 10, 256, 64, 16];

impl Ballast {
    /// An empty ballast.
    pub const fn new() -> Self {
        Ballast {
            heap: Chain::new(),
            mapped: Chain::new(),
        }
    }

    /// Fills the remaining address space with mappings, then takes blocks
    /// from the global allocator (inside [`noretry`](crate::noretry) and
    /// [`nowarn`](crate::nowarn) scopes)
    /// until it returns null for every size down to 16 bytes. Returns the
    /// bytes held.
    ///
    /// Refuses (with `ErrorKind::Unsupported`) when no `RLIMIT_AS` is set:
    /// without a limit it would take all the machine's memory.
    pub fn fill(&mut self) -> io::Result<usize> {
        if !address_space_is_limited() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Ballast::fill needs an address-space limit: call limit_address_space first",
            ));
        }
        let page = page_size();
        let mut chunk = 1usize << 30;
        while chunk >= page {
            match crate::sys::map_anonymous(chunk) {
                // SAFETY: a fresh, page-aligned, writable mapping of `chunk` bytes.
                Some(block) => unsafe { self.mapped.push(block, chunk) },
                None => chunk /= 2,
            }
        }
        let _scope = crate::noretry_guard();
        let _quiet = crate::nowarn_guard();
        for size in HEAP_SIZES {
            let layout = Layout::from_size_align(size, 16).expect("valid layout");
            loop {
                // SAFETY: `layout` has a non-zero size.
                let block = unsafe { std::alloc::alloc(layout) };
                if block.is_null() {
                    break;
                }
                // SAFETY: a fresh block of at least 16 bytes, 16-aligned.
                unsafe { self.heap.push(block, size) };
            }
        }
        Ok(self.held())
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.heap.bytes + self.mapped.bytes
    }

    /// Gives back blocks, largest heap blocks first, then mappings, until at
    /// least `bytes` are freed (at least one block, if any is held). Returns
    /// the bytes freed. Does not allocate.
    pub fn release(&mut self, bytes: usize) -> usize {
        let mut freed = 0;
        loop {
            if let Some((block, size)) = self.heap.pop() {
                let layout = Layout::from_size_align(size, 16).expect("valid layout");
                // SAFETY: allocated in `fill` with this very layout.
                unsafe { std::alloc::dealloc(block, layout) };
                freed += size;
            } else if let Some((block, size)) = self.mapped.pop() {
                // SAFETY: mapped in `fill` with this very length.
                unsafe { libc::munmap(block.cast(), size) };
                freed += size;
            } else {
                return freed;
            }
            if freed >= bytes {
                return freed;
            }
        }
    }

    /// Gives back everything; returns the bytes freed.
    pub fn release_all(&mut self) -> usize {
        self.release(usize::MAX)
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        self.release_all();
    }
}
