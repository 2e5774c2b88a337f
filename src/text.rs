//! Text without allocation: a fixed-size line buffer, the escapes messages
//! and replay lines use, the one shell quoter for anything printed to be
//! pasted, and the whole-number parser every grammar shares.
//!
//! A leaf: it depends on nothing else in the crate. Everything here runs
//! inside the allocator or a signal handler: no allocation, no lock, no
//! panic.

use core::fmt::{self, Write};

/// A `fmt::Write` sink over a fixed array; output past its end is dropped and
/// the line is marked as cut.
pub(crate) struct StackBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
    cut: bool,
}

impl<const N: usize> StackBuf<N> {
    pub(crate) const fn new() -> Self {
        StackBuf {
            bytes: [0; N],
            len: 0,
            cut: false,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The text written, up to its last whole character (a cut may have
    /// split one).
    #[cfg(feature = "sites")]
    pub(crate) fn as_str(&self) -> &str {
        let bytes = self.as_bytes();
        match core::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        }
    }

    /// Ends the buffer with a newline, replacing the tail with `...` if the
    /// text did not fit.
    pub(crate) fn finish_line(&mut self) -> &[u8] {
        const ELLIPSIS: &[u8] = b"...";
        if self.cut || self.len == N {
            let keep = N.saturating_sub(ELLIPSIS.len() + 1);
            self.len = keep.min(self.len);
            self.push(ELLIPSIS);
        }
        if self.len < N {
            self.bytes[self.len] = b'\n';
            self.len += 1;
        }
        self.as_bytes()
    }

    fn push(&mut self, s: &[u8]) {
        let room = N - self.len;
        let n = s.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        if n < s.len() {
            self.cut = true;
        }
    }
}

impl<const N: usize> Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Writes `value` for a message: printable ASCII as is, other bytes as
/// `\xNN`, at most [`Shown::MAX`] bytes of it followed by `...`.
pub(crate) struct Shown<'a>(pub(crate) &'a [u8]);

impl Shown<'_> {
    /// How many bytes of a value a message shows.
    pub(crate) const MAX: usize = 48;
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self.0.len() > Self::MAX;
        write!(f, "{}", Escaped(&self.0[..self.0.len().min(Self::MAX)]))?;
        if cut {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// Writes bytes so that they can be given back to mayfail's own grammars (a
/// replay line): printable ASCII and valid non-ASCII UTF-8 as they are;
/// controls, invalid UTF-8, and the characters that delimit values (quotes,
/// backslash, comma, equals sign) as `\xNN`, which the `thread=` value
/// decodes.
#[cfg(feature = "inject")]
pub(crate) struct Replayable<'a>(pub(crate) &'a [u8]);

#[cfg(feature = "inject")]
impl fmt::Display for Replayable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                let special = c.is_control() || matches!(c, '\'' | '"' | '\\' | ',' | '=');
                if special {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        write!(f, "\\x{b:02x}")?;
                    }
                } else {
                    f.write_char(c)?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Undoes [`Replayable`]'s `\xNN` escapes into `out`; returns the length, or
/// `None` if an escape is malformed or `out` is too small.
#[cfg(feature = "inject")]
pub(crate) fn unescape(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    let mut i = 0;
    while i < input.len() {
        let byte = if input[i] == b'\\' {
            let hex = input.get(i + 2..i + 4)?;
            if input.get(i + 1) != Some(&b'x') {
                return None;
            }
            let text = core::str::from_utf8(hex).ok()?;
            i += 4;
            u8::from_str_radix(text, 16).ok()?
        } else {
            i += 1;
            input[i - 1]
        };
        *out.get_mut(len)? = byte;
        len += 1;
    }
    Some(len)
}

/// Writes bytes as [`Shown`] does, but all of them.
pub(crate) struct Escaped<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                f.write_char(b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Bytes for a tab-separated line: tabs and line breaks become spaces,
/// invalid UTF-8 becomes `?`.
#[cfg(feature = "inject")]
pub(crate) struct Clean<'a>(pub(crate) &'a [u8]);

#[cfg(feature = "inject")]
impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                f.write_char(if c.is_control() { ' ' } else { c })?;
            }
            if !chunk.invalid().is_empty() {
                f.write_char('?')?;
            }
        }
        Ok(())
    }
}

/// One word for a POSIX shell, quoted so that the shell gives back exactly
/// these bytes: as it is when every byte is safe unquoted, else in single
/// quotes (a `'` inside becomes `'\''`); an empty word is `''`. Bytes that
/// are not UTF-8 cannot be written through `fmt`: such a word is written in
/// bash's `$'...'` form with `\xNN` escapes.
#[cfg(feature = "inject")]
pub(crate) struct ShellWord<'a>(pub(crate) &'a [u8]);

#[cfg(feature = "inject")]
impl ShellWord<'_> {
    fn plain(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b)
    }
}

#[cfg(feature = "inject")]
impl fmt::Display for ShellWord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.0;
        if !word.is_empty() && word.iter().all(|&b| Self::plain(b)) {
            // Safe: every byte is ASCII.
            for &b in word {
                f.write_char(b as char)?;
            }
            return Ok(());
        }
        Quoted(word).fmt(f)
    }
}

/// One word for a POSIX shell, always quoted (a variable's value in a
/// replay line reads better so), with [`ShellWord`]'s rules otherwise.
#[cfg(feature = "inject")]
pub(crate) struct Quoted<'a>(pub(crate) &'a [u8]);

#[cfg(feature = "inject")]
impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.0;
        if core::str::from_utf8(word).is_ok() {
            f.write_char('\'')?;
            for chunk in word.utf8_chunks() {
                for c in chunk.valid().chars() {
                    if c == '\'' {
                        f.write_str("'\\''")?;
                    } else {
                        f.write_char(c)?;
                    }
                }
            }
            return f.write_char('\'');
        }
        f.write_str("$'")?;
        for &b in word {
            if b.is_ascii_graphic() && b != b'\'' && b != b'\\' || b == b' ' {
                f.write_char(b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_char('\'')
    }
}

/// The registry crate a source file belongs to, as the frames of a `site`
/// line name it (`.../registry/src/<index>/<name>-<version>/...`): its name,
/// with the dashes cargo keeps (`allocator-api2`); `None` for a local file
/// or std's. The version starts at the first `-` followed by `digits.`.
#[cfg(feature = "inject")]
pub fn registry_crate(file: &str) -> Option<&str> {
    let at = file.find("/registry/src/")?;
    let rest = &file[at + "/registry/src/".len()..];
    let rest = &rest[rest.find('/')? + 1..];
    let dir = &rest[..rest.find('/')?];
    dir.match_indices('-').find_map(|(i, _)| {
        let version = &dir[i + 1..];
        let digits = version.bytes().take_while(u8::is_ascii_digit).count();
        (digits > 0 && version.as_bytes().get(digits) == Some(&b'.')).then(|| &dir[..i])
    })
}

/// The doctests the source of a merged doctest runner names, in its order
/// (rustdoc's `doctest_runner_*.rs`, edition 2024, which runs the N-th alone
/// when `RUSTDOC_DOCTEST_RUN_NB_TEST=N`): each `mod __doctest_N` and the
/// first string of its `new_doctest(` call. That source is rustdoc's own
/// and may change: `None` when it cannot be read so.
#[cfg(any(feature = "sweep", feature = "sites"))]
pub fn merged_doctest_names(source: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for i in 0.. {
        // The space ends the number: `__doctest_1 ` is not `__doctest_10 `.
        let module = format!("mod __doctest_{i} ");
        let Some(at) = source.find(&module) else {
            break;
        };
        let after = &source[at + module.len()..];
        let call = &after[after.find("new_doctest(")? + "new_doctest(".len()..];
        names.push(string_literal(call.trim_start())?);
    }
    Some(names)
}

/// The Rust string literal `text` starts with (`"..."`, escapes `\"`,
/// `\\`, `\'`, `\n`, `\t`); `None` for anything else.
#[cfg(any(feature = "sweep", feature = "sites"))]
fn string_literal(text: &str) -> Option<String> {
    let mut chars = text.strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => out.push(match chars.next()? {
                '"' => '"',
                '\\' => '\\',
                '\'' => '\'',
                'n' => '\n',
                't' => '\t',
                _ => return None,
            }),
            c => out.push(c),
        }
    }
}

/// Parses a whole decimal number, without sign, with overflow checking.
pub(crate) fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(feature = "sweep", feature = "sites"))]
    fn a_merged_runners_doctests_are_named_in_order() {
        let source = "mod __doctest_0 {\npub const TEST: test::TestDescAndFn = \
            test::TestDescAndFn::new_doctest(\n\"src/lib.rs - (line 1)\", false, \"src/lib.rs\", 1,\
            false, false,\n));\n}\nmod __doctest_1 {\npub const TEST: T = T::new_doctest(\n\
            \"src/lib.rs - Q<\\\"x\\\">::f (line 9)\", false,\n));\n}\nmod __doctest_mod {\n}\n";
        assert_eq!(
            merged_doctest_names(source).unwrap(),
            ["src/lib.rs - (line 1)", "src/lib.rs - Q<\"x\">::f (line 9)"]
        );
        assert_eq!(
            merged_doctest_names("no runner").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(string_literal("\"a\\u{1}\""), None);
        assert_eq!(
            merged_doctest_names("mod __doctest_0 { new_doctest(\"open").as_deref(),
            None
        );
    }

    fn text<const N: usize>(buf: &mut StackBuf<N>) -> String {
        String::from_utf8(buf.finish_line().to_vec()).unwrap()
    }

    #[test]
    fn stack_buf_holds_a_short_line() {
        let mut b = StackBuf::<32>::new();
        write!(b, "retries {}", 3).unwrap();
        assert_eq!(text(&mut b), "retries 3\n");
    }

    #[test]
    fn stack_buf_cuts_a_long_line_with_an_ellipsis() {
        let mut b = StackBuf::<16>::new();
        write!(b, "{}", "x".repeat(100)).unwrap();
        let t = text(&mut b);
        assert_eq!(t.len(), 16);
        assert!(t.ends_with("...\n"), "{t:?}");
    }

    #[test]
    fn shown_escapes_non_printable_bytes_and_cuts_long_values() {
        let mut b = StackBuf::<200>::new();
        write!(b, "{}", Shown(b"a\xffb\n\"")).unwrap();
        assert_eq!(b.as_bytes(), b"a\\xffb\\x0a\\x22");
        let long = [b'7'; 1000];
        let mut b = StackBuf::<200>::new();
        write!(b, "{}", Shown(&long)).unwrap();
        let t = String::from_utf8(b.as_bytes().to_vec()).unwrap();
        assert!(t.starts_with(&"7".repeat(48)));
        assert_eq!(t.len(), 48 + 3, "{t}");
        assert!(t.ends_with("7..."), "{t}");
    }

    #[cfg(feature = "inject")]
    #[test]
    fn replayable_text_round_trips_through_unescape() {
        for name in [
            &b"worker"[..],
            "caf\u{e9}".as_bytes(),
            b"a,b=c'd\\e\n",
            b"\xff\xfeok",
        ] {
            let text = Replayable(name).to_string();
            assert!(!text.contains(['\'', ',', '=', '\n']), "{text}");
            let mut out = [0u8; 64];
            let n = unescape(text.as_bytes(), &mut out).unwrap();
            assert_eq!(&out[..n], name, "{text}");
        }
        assert_eq!(Replayable("café".as_bytes()).to_string(), "café");
        assert_eq!(unescape(b"bad\\x4", &mut [0; 8]), None);
        assert_eq!(unescape(b"bad\\y41", &mut [0; 8]), None);
    }

    #[cfg(feature = "inject")]
    #[test]
    fn cleaned_fields_hold_no_tabs_or_line_breaks() {
        assert_eq!(Clean(b"a\tb\nc\xff").to_string(), "a b c?");
    }

    #[cfg(feature = "inject")]
    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(ShellWord(b"cargo").to_string(), "cargo");
        assert_eq!(ShellWord(b"--exact").to_string(), "--exact");
        assert_eq!(ShellWord(b"").to_string(), "''");
        assert_eq!(ShellWord(b"a b").to_string(), "'a b'");
        assert_eq!(ShellWord(b"x; touch F").to_string(), "'x; touch F'");
        assert_eq!(ShellWord(b"it's").to_string(), "'it'\\''s'");
        assert_eq!(ShellWord(b"$(id)").to_string(), "'$(id)'");
        assert_eq!(ShellWord("caf\u{e9}".as_bytes()).to_string(), "'caf\u{e9}'");
        assert_eq!(ShellWord(b"a\xffb").to_string(), "$'a\\xffb'");
        assert_eq!(Quoted(b"nth=3").to_string(), "'nth=3'");
    }

    #[test]
    fn whole_numbers_check_overflow() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"1 2"), None);
    }
}
