//! Standard error, where the router speaks to whoever runs it: `warning:` and `error:` lines,
//! the server's console log. A line that cannot be written there (a pipe whose reader left, a
//! full disk) is dropped: nothing else can be done with it. Never `eprintln!`, which panics
//! then: the panic cut the request being logged (an empty reply instead of its answer), and
//! turned a command's exit status into 101, even after its change was made.

use std::io::Write;

/// Writes `text` and a newline to standard error in one locked write; a failed write is
/// dropped.
pub fn line(text: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Standard error as a writer that never fails: what it cannot write is dropped. The console
/// log's writer (so `tracing-subscriber` never sees a failed write, which it would report
/// with `eprintln!`), and the `err` of a `user` command (whose change is made by then).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
