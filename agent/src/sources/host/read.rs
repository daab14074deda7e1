//! How the host source reads `/proc`: a file whole into a buffer that keeps its allocation from
//! one collection to the next, or, for files that can run to megabytes (`/proc/net/tcp`), line
//! by line through a fixed window, so that a busy host does not grow the agent's resident size.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::{HostError, ParseError};

/// Size of the window [`for_each_line`] reads through.
pub const STREAM_CHUNK: usize = 32 << 10;

/// A whole file into a new string (for the one read at start-up).
pub fn read(path: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|cause| HostError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// Replaces `buf`'s contents with the file's, keeping its allocation.
pub fn read_into(buf: &mut String, path: &Path) -> Result<(), HostError> {
    buf.clear();
    File::open(path)
        .and_then(|mut f| f.read_to_string(buf))
        .map(drop)
        .map_err(|cause| HostError::Read {
            path: path.to_owned(),
            cause,
        })
}

/// A file that is not there, or that the kernel refuses because the feature is off.
pub fn is_absent(err: &HostError) -> bool {
    let HostError::Read { cause, .. } = err else {
        return false;
    };
    cause.kind() == io::ErrorKind::NotFound
        || rustix::io::Errno::from_io_error(cause) == Some(rustix::io::Errno::OPNOTSUPP)
}

#[derive(Debug)]
pub enum LineError {
    Read(io::Error),
    Parse(ParseError),
}

/// Calls `f` with each line (without its `\n`) and its number from 1, reading through `window`,
/// which keeps its allocation between calls and grows only for a line longer than itself.
pub fn for_each_line(
    file: &mut impl Read,
    window: &mut Vec<u8>,
    mut f: impl FnMut(&str, usize) -> Result<(), ParseError>,
) -> Result<(), LineError> {
    if window.len() < STREAM_CHUNK {
        window.resize(STREAM_CHUNK, 0);
    }
    let mut line = 0;
    let mut filled = 0;
    loop {
        if filled == window.len() {
            window.resize(window.len() * 2, 0);
        }
        let n = match file.read(&mut window[filled..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(LineError::Read(err)),
        };
        let old = filled;
        filled += n;
        // The bytes kept from the last read hold no newline: only the new ones can end a line.
        let Some(last) = window[old..filled].iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let end = old + last + 1;
        for bytes in window[..end].split_inclusive(|&b| b == b'\n') {
            line += 1;
            call(&bytes[..bytes.len() - 1], line, &mut f)?;
        }
        window.copy_within(end..filled, 0);
        filled -= end;
    }
    if filled > 0 {
        call(&window[..filled], line + 1, &mut f)?;
    }
    Ok(())
}

fn call(
    bytes: &[u8],
    line: usize,
    f: &mut impl FnMut(&str, usize) -> Result<(), ParseError>,
) -> Result<(), LineError> {
    let reason = "not UTF-8";
    let text = std::str::from_utf8(bytes)
        .map_err(|_| LineError::Parse(ParseError::Malformed { line, reason }))?;
    f(text, line).map_err(LineError::Parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_whole_files_into_the_same_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let (big, small) = (dir.path().join("big"), dir.path().join("small"));
        std::fs::write(&big, "x".repeat(10_000)).unwrap();
        std::fs::write(&small, "ok\n").unwrap();
        let mut buf = String::new();
        read_into(&mut buf, &big).unwrap();
        let capacity = buf.capacity();
        read_into(&mut buf, &small).unwrap();
        assert_eq!(buf, "ok\n");
        assert_eq!(buf.capacity(), capacity, "no new allocation");
        let err = read_into(&mut buf, &dir.path().join("absent")).unwrap_err();
        assert!(is_absent(&err), "{err}");
        assert!(err.to_string().starts_with("cannot read "), "{err}");
        let err = read_into(&mut buf, dir.path()).unwrap_err();
        assert!(!is_absent(&err), "a directory is not an absent file: {err}");
        let parse = HostError::Parse {
            path: big,
            cause: ParseError::MissingLine("x"),
        };
        assert!(!is_absent(&parse));
        let unsupported = HostError::Read {
            path: small,
            cause: io::Error::from_raw_os_error(rustix::io::Errno::OPNOTSUPP.raw_os_error()),
        };
        assert!(is_absent(&unsupported), "PSI with psi=0");
    }

    /// Hands out its text a few bytes per read, as a slow file would.
    struct Trickle<'a> {
        text: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.text.len());
            buf[..n].copy_from_slice(&self.text[..n]);
            self.text = &self.text[n..];
            Ok(n)
        }
    }

    fn lines_of(
        text: &[u8],
        step: usize,
        window: &mut Vec<u8>,
    ) -> Result<Vec<(usize, String)>, LineError> {
        let mut lines = Vec::new();
        let mut file = Trickle { text, step };
        for_each_line(&mut file, window, |line, n| {
            lines.push((n, line.to_owned()));
            Ok(())
        })?;
        Ok(lines)
    }

    #[test]
    fn streams_lines_across_reads() {
        let long = "x".repeat(3 * STREAM_CHUNK + 5);
        let text = format!("first\n\nthird line\n{long}\nlast without newline");
        let mut window = Vec::new();
        for step in [1, 3, 7, 4096, usize::MAX] {
            let lines = lines_of(text.as_bytes(), step, &mut window).unwrap();
            let expected = [
                (1, "first"),
                (2, ""),
                (3, "third line"),
                (4, long.as_str()),
                (5, "last without newline"),
            ];
            let expected: Vec<_> = expected.iter().map(|(n, l)| (*n, l.to_string())).collect();
            assert_eq!(lines, expected, "step {step}");
        }
        assert!(window.len() >= 3 * STREAM_CHUNK, "grew for the long line");
        assert_eq!(lines_of(b"", 1, &mut window).unwrap(), Vec::new());
        assert_eq!(
            lines_of(b"a\n", 1, &mut window).unwrap(),
            [(1, "a".to_owned())]
        );
    }

    #[test]
    fn stream_errors_name_the_line() {
        let mut window = Vec::new();
        let err = lines_of(b"ok\n\xff\xfe\n", 2, &mut window).unwrap_err();
        assert!(matches!(
            err,
            LineError::Parse(ParseError::Malformed { line: 2, .. })
        ));
        let mut file = Trickle {
            text: b"a\nb\nc\n",
            step: 1,
        };
        let err = for_each_line(&mut file, &mut window, |_, n| {
            if n == 2 {
                Err(ParseError::NotANumber { line: n, field: 1 })
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(
            err,
            LineError::Parse(ParseError::NotANumber { line: 2, .. })
        ));
    }
}
