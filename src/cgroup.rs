//! The process's memory cgroup: its limit, and the file that reports its
//! memory pressure (Linux, cgroup v1 or v2).
//!
//! The process's cgroup comes from `/proc/self/cgroup`: the v1 line whose
//! controllers include `memory`, else the v2 line (`0::/path`). Where that
//! hierarchy is mounted comes from `/proc/self/mountinfo` (a `cgroup2`
//! mount, or a `cgroup` mount with the `memory` option); the mount's root is
//! taken off the path, as in a container without its own cgroup namespace.
//! The limit is the smallest of the cgroup's and its ancestors' (up to the
//! mount's root): v2 `memory.max` and `memory.high` (`max`: none), v1
//! `memory.limit_in_bytes` (values from 2^62 up: none).
//!
//! Runs inside the allocator (at start-up and on the slow path): it reads
//! files with `open`/`read` into buffers on the stack and never allocates,
//! locks or panics. A path too long for its buffer, or a line too long for
//! the reader's, is skipped: the answer is then "no limit".

use crate::text::parse_u64;

/// A path, NUL-terminated, on the stack.
pub(crate) struct Path {
    buf: [u8; 1024],
    len: usize,
}

impl Path {
    pub(crate) const fn new() -> Path {
        Path {
            buf: [0; 1024],
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> bool {
        if self.len + bytes.len() >= self.buf.len() || bytes.contains(&0) {
            return false;
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        self.buf[self.len] = 0;
        true
    }

    fn truncate(&mut self, len: usize) {
        self.len = len;
        self.buf[len] = 0;
    }

    pub(crate) fn as_c_ptr(&self) -> *const libc::c_char {
        self.buf.as_ptr().cast()
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Opens `path` for reading (`O_CLOEXEC`); `None` if it cannot be.
fn open(path: *const libc::c_char) -> Option<i32> {
    // SAFETY: `path` is NUL-terminated (callers pass a `Path` or a C string).
    let fd = unsafe { libc::open(path, libc::O_RDONLY | libc::O_CLOEXEC) };
    (fd >= 0).then_some(fd)
}

/// Calls `f` on each line of the file at `path` (without its newline) until
/// it returns `false`; lines longer than the buffer are skipped. `false` if
/// the file cannot be opened.
pub(crate) fn for_each_line(path: *const libc::c_char, mut f: impl FnMut(&[u8]) -> bool) -> bool {
    let Some(fd) = open(path) else {
        return false;
    };
    let mut buf = [0u8; 2048];
    let mut filled = 0usize;
    let mut skipping = false;
    'read: loop {
        // SAFETY: `buf[filled..]` is writable for its length.
        let n = unsafe { libc::read(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled) };
        if n < 0 && crate::sys::errno() == libc::EINTR {
            continue;
        }
        let n = if n <= 0 { 0 } else { n as usize };
        let end = filled + n;
        let mut start = 0;
        while let Some(nl) = buf[start..end].iter().position(|&b| b == b'\n') {
            if !skipping && !f(&buf[start..start + nl]) {
                break 'read;
            }
            skipping = false;
            start += nl + 1;
        }
        if n == 0 {
            if start < end && !skipping {
                f(&buf[start..end]);
            }
            break;
        }
        if start == 0 && end == buf.len() {
            // A line longer than the buffer: skip to its end.
            skipping = true;
            filled = 0;
        } else {
            buf.copy_within(start..end, 0);
            filled = end - start;
        }
    }
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    true
}

/// Reads a whole small file's first line into `out`; its length.
fn read_first_line(path: *const libc::c_char, out: &mut [u8]) -> Option<usize> {
    let mut len = None;
    for_each_line(path, |line| {
        let n = line.len().min(out.len());
        out[..n].copy_from_slice(&line[..n]);
        len = Some(n);
        false
    });
    len
}

/// Which cgroup version holds the process's memory controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// The directory of the process's memory cgroup (`/sys/fs/cgroup/...`),
/// the length of its mount point's part (the walk up stops there), and the
/// version.
pub(crate) fn own_dir() -> Option<(Path, usize, Version)> {
    // The process's path in each hierarchy.
    let mut v1 = Path::new();
    let mut v2 = Path::new();
    let (mut has_v1, mut has_v2) = (false, false);
    for_each_line(c"/proc/self/cgroup".as_ptr(), |line| {
        let mut fields = line.splitn(3, |&b| b == b':');
        let (Some(_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return true;
        };
        if controllers.is_empty() {
            has_v2 = v2.push(path);
        } else if controllers.split(|&b| b == b',').any(|c| c == b"memory") {
            has_v1 = v1.push(path);
        }
        true
    });
    let (version, path) = if has_v1 {
        (Version::V1, v1)
    } else if has_v2 {
        (Version::V2, v2)
    } else {
        return None;
    };
    // Where that hierarchy is mounted, and which of its directories is the
    // mount's root.
    let mut dir = Path::new();
    let mut mount_len = 0;
    let mut found = false;
    for_each_line(c"/proc/self/mountinfo".as_ptr(), |line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
        let Some(dash) = line.windows(3).position(|w| w == b" - ") else {
            return true;
        };
        let mut before = line[..dash].split(|&b| b == b' ');
        let mut after = line[dash + 3..].split(|&b| b == b' ');
        let (Some(root), Some(mount_point)) = (before.nth(3), before.next()) else {
            return true;
        };
        let (Some(fs_type), Some(_source), Some(options)) =
            (after.next(), after.next(), after.next())
        else {
            return true;
        };
        let wanted = match version {
            Version::V2 => fs_type == b"cgroup2",
            Version::V1 => {
                fs_type == b"cgroup" && options.split(|&b| b == b',').any(|o| o == b"memory")
            }
        };
        if !wanted {
            return true;
        }
        let own = path.as_bytes();
        let rest = if root == b"/" {
            own
        } else if let Some(rest) = own.strip_prefix(root) {
            rest
        } else {
            own
        };
        dir.truncate(0);
        found = dir.push(mount_point);
        mount_len = dir.len;
        if found && !rest.is_empty() && rest != b"/" {
            found = dir.push(rest);
        }
        !found
    });
    found.then_some((dir, mount_len, version))
}

/// A limit file's value: bytes, or `None` for "no limit" (v2 `max`, v1
/// values from 2^62 up) or an unreadable file.
fn limit_in(dir: &mut Path, file: &[u8]) -> Option<u64> {
    let len = dir.len;
    let mut value = None;
    if dir.push(b"/") && dir.push(file) {
        let mut line = [0u8; 32];
        if let Some(n) = read_first_line(dir.as_c_ptr(), &mut line) {
            value = parse_u64(line[..n].trim_ascii()).filter(|&v| v < 1 << 62);
        }
    }
    dir.truncate(len);
    value
}

/// The process's memory cgroup limit in bytes: the smallest limit of its
/// cgroup and of the ancestors below the mount's root. `None` when there is
/// none or it cannot be read.
pub(crate) fn memory_limit() -> Option<u64> {
    let (mut dir, mount_len, version) = own_dir()?;
    let mut smallest: Option<u64> = None;
    loop {
        let limits = match version {
            Version::V2 => [
                limit_in(&mut dir, b"memory.max"),
                limit_in(&mut dir, b"memory.high"),
            ],
            Version::V1 => [limit_in(&mut dir, b"memory.limit_in_bytes"), None],
        };
        for limit in limits.into_iter().flatten() {
            smallest = Some(smallest.map_or(limit, |s| s.min(limit)));
        }
        // Up one directory, not past the mount point.
        match dir.as_bytes()[mount_len..].iter().rposition(|&b| b == b'/') {
            Some(slash) => dir.truncate(mount_len + slash),
            None => break,
        }
        if dir.len <= mount_len {
            break;
        }
    }
    smallest
}

/// The path of the pressure file for the process's memory: the cgroup's
/// `memory.pressure` on cgroup v2, else `/proc/pressure/memory`.
pub(crate) fn pressure_file() -> Path {
    if let Some((mut dir, _, Version::V2)) = own_dir() {
        let len = dir.len;
        if dir.push(b"/memory.pressure") {
            // SAFETY: `dir` is NUL-terminated.
            if unsafe { libc::access(dir.as_c_ptr(), libc::R_OK) } == 0 {
                return dir;
            }
        }
        dir.truncate(len);
    }
    let mut path = Path::new();
    path.push(b"/proc/pressure/memory");
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc")]
    fn lines_are_read_whole_across_buffer_refills() {
        let mut lines = 0usize;
        let mut longest = 0usize;
        assert!(for_each_line(c"/proc/self/maps".as_ptr(), |line| {
            lines += 1;
            longest = longest.max(line.len());
            assert!(line.iter().all(|&b| b != b'\n'));
            true
        }));
        let expected = std::fs::read_to_string("/proc/self/maps").unwrap();
        // The file changes as the test allocates: roughly the same count.
        assert!(lines.abs_diff(expected.lines().count()) < 10, "{lines}");
        assert!(longest > 0);
        assert!(!for_each_line(c"/nonexistent/file".as_ptr(), |_| true));
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc and /sys")]
    fn the_own_cgroup_is_found_when_a_memory_hierarchy_is_mounted() {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| {
                l.contains(" - cgroup2 ") || (l.contains(" - cgroup ") && l.contains("memory"))
            });
        let found = own_dir();
        if mounted {
            let (dir, mount_len, _) = found.expect("the process's memory cgroup");
            let dir = String::from_utf8(dir.as_bytes().to_vec()).unwrap();
            assert!(std::path::Path::new(&dir).is_dir(), "{dir}");
            assert!(mount_len <= dir.len());
        }
        // Whatever the limit, reading it never fails loudly.
        let _ = memory_limit();
    }
}
