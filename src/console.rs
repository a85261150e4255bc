//! Standard error, where the router speaks to whoever runs it: `warning:` and `error:` lines,
//! the server's console log. A line that cannot be written there (a pipe whose reader left, a
//! full disk) is dropped: nothing else can be done with it. Never `eprintln!`, which panics
//! then: the panic cut the request being logged (an empty reply instead of its answer), and
//! turned a command's exit status into 101, even after its change was made.

use std::io::Write;

/// Writes `text` and a newline to standard error in one locked write; a failed write is
/// dropped. A router key in it (a key pasted where a name, a path or a value goes, which a
/// message quotes) is written `[redacted]`: standard error ends up in shell logs and CI
/// output.
pub fn line(text: std::fmt::Arguments<'_>) {
    let text = text.to_string();
    let shown = crate::sinks::redact::Redactor::default().redact(&text, &[]);
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{shown}");
}

/// Standard error as a writer that never fails: what it cannot write is dropped. The console
/// log's writer (so `tracing-subscriber` never sees a failed write, which it would report
/// with `eprintln!`), and the `err` of a `user` command (whose change is made by then).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    /// Writes `buf` with any router key in it `[redacted]`, as [`line`] does.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shown = crate::sinks::redact::Redactor::default().redact_bytes(buf, &[]);
        let _ = std::io::stderr().write_all(&shown);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
