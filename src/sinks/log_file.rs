//! The request log's file: which file a line goes to (the UTC day's `name.YYYY-MM-DD.ext`, or a
//! device or pipe written as it is), opening it, noticing that it was deleted or moved, and
//! counting the lines it could not write. Whatever the filesystem does, it never panics and
//! never falls back to another day's file: a line it cannot write is counted and reported.
//!
//! Only the request log's writer thread uses it, never a request. What it costs per batch of
//! lines is one `write()`; once a second at most, a `stat()` of the path.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use time::Date;

use crate::sinks::clock::{parse_day, utc_date};
use crate::sinks::loss::LossWarnings;

/// Daily files kept up to today, today's included (one dated later is kept besides).
pub const KEPT_FILES: usize = 7;

/// How often the path is compared with the open file: a rename or delete is noticed within
/// about this long (lines written meanwhile go to the moved or deleted file).
const RECHECK: Duration = Duration::from_secs(1);

/// Splits `dir/name.ext` into the directory, prefix and suffix, so files are
/// `name.YYYY-MM-DD.ext` next to where the user pointed.
pub fn file_parts(path: &Path) -> (PathBuf, String, Option<String>) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "api_proxy.log".to_owned());
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => {
            (dir, stem.to_owned(), Some(ext.to_owned()))
        }
        _ => (dir, name, None),
    }
}

/// Where `LLMSROUTER_LOG_FILE` sends lines.
#[derive(Debug, Clone)]
pub enum Target {
    /// A file name: one file per UTC day next to it, [`KEPT_FILES`] kept.
    Daily(DailyFiles),
    /// A character device or a named pipe (`/dev/null`, `/dev/stdout`, a FIFO a collector
    /// reads), or a link in `/dev` (`/dev/stdout` when standard output is a file): written to
    /// as it is, never rotated or pruned. A dated sibling of `/dev/null` would be a regular
    /// file in RAM holding every prompt.
    AsIs(PathBuf),
}

impl Target {
    /// What `path` names; an error (one line) for a folder: the Python version's setting is a
    /// file, and a folder's dated sibling (`logs.2025-01-31`) is never what was meant.
    pub fn of(path: &Path) -> Result<Self, String> {
        let ends_in_slash = path.as_os_str().as_encoded_bytes().last() == Some(&b'/');
        let names_folder = ends_in_slash
            || path.file_name().is_none()
            || std::fs::metadata(path).is_ok_and(|m| m.is_dir());
        if names_folder {
            return Err("is a folder; name a file in it, such as logs/api_proxy.log".to_owned());
        }
        if is_device_or_pipe(path) {
            return Ok(Self::AsIs(path.to_path_buf()));
        }
        let (dir, prefix, suffix) = file_parts(path);
        Ok(Self::Daily(DailyFiles {
            dir,
            prefix,
            suffix,
        }))
    }
}

#[cfg(unix)]
fn is_device_or_pipe(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(meta) => {
            let kind = meta.file_type();
            // `/dev/stdout` links to a regular file when standard output was sent to one.
            let dev_link = path.starts_with("/dev")
                && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            kind.is_char_device() || kind.is_fifo() || dev_link
        }
        Err(_) => false,
    }
}

#[cfg(not(unix))]
fn is_device_or_pipe(_path: &Path) -> bool {
    false
}

/// The request log's daily files, `prefix.YYYY-MM-DD.suffix` (`prefix.YYYY-MM-DD` when the
/// configured name has no extension) in `dir`.
#[derive(Debug, Clone)]
pub struct DailyFiles {
    dir: PathBuf,
    prefix: String,
    suffix: Option<String>,
}

impl DailyFiles {
    /// The file of `day`.
    fn path(&self, day: Date) -> PathBuf {
        let name = match &self.suffix {
            Some(suffix) => format!("{}.{day}.{suffix}", self.prefix),
            None => format!("{}.{day}", self.prefix),
        };
        self.dir.join(name)
    }

    /// The day in `name` when `name` is exactly one of these files' names; `None` for anything
    /// else (`api_proxy.log` itself, `api_proxy.2025-01-31.log.gz`, `api_proxy.old.log`).
    fn day_of(&self, name: &str) -> Option<Date> {
        let rest = name.strip_prefix(self.prefix.as_str())?.strip_prefix('.')?;
        let day = match &self.suffix {
            Some(suffix) => rest.strip_suffix(suffix.as_str())?.strip_suffix('.')?,
            None => rest,
        };
        parse_day(day)
    }

    /// Deletes the oldest of these files until the [`KEPT_FILES`] newest up to today (by the
    /// day in their names) remain, today's counted among them whether or not it exists yet.
    /// A file dated after today (written while the clock was set ahead) holds requests' lines:
    /// it is never deleted, and not counted, until its day comes (counted, it took a past
    /// day's place, and fewer than 6 past days were kept until its date). Only regular files
    /// with exactly such a name are looked at; anything else in the directory stays. Returns
    /// how many were deleted; failures are logged, never fatal.
    fn prune(&self, today: Date) -> usize {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("request log: cannot list {}: {e}", self.dir.display());
                return 0;
            }
        };
        let mut older: Vec<(Date, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let day = self.day_of(entry.file_name().to_str()?)?;
                // Today's is being written to, a later day's is left alone (see above); a
                // symlink or a directory is not the router's.
                let is_file = entry.file_type().ok()?.is_file();
                (day < today && is_file).then(|| (day, entry.path()))
            })
            .collect();
        // Newest first.
        older.sort_unstable_by_key(|(day, _)| std::cmp::Reverse(*day));
        let mut deleted = 0;
        for (_, path) in older.iter().skip(KEPT_FILES - 1) {
            match std::fs::remove_file(path) {
                Ok(()) => deleted += 1,
                Err(e) => tracing::warn!(
                    "request log: cannot delete old file {}: {e}",
                    path.display()
                ),
            }
        }
        deleted
    }
}

/// Lines written and lost, for `/metrics` and the shutdown summary.
#[derive(Debug, Default)]
pub struct LogStats {
    written: AtomicU64,
    failed: AtomicU64,
}

impl LogStats {
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Lines lost because their file could not be opened or written (a full disk, a deleted
    /// folder that cannot be made again, a pipe nobody reads).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// A file open for appending, and which it is, to tell when the path names another one.
struct OpenFile {
    file: File,
    /// The day it is the file of; `None` for an [`Target::AsIs`] path.
    day: Option<Date>,
    /// Device and inode.
    id: (u64, u64),
}

/// Most pieces one [`LogFile::write_pieces`] takes: Linux's `IOV_MAX`, what one `writev()`
/// accepts.
pub const MAX_PIECES: usize = 1024;

/// The file lines go to now. See the module documentation.
pub struct LogFile {
    target: Target,
    open: Option<OpenFile>,
    /// When the path was last compared with the open file (or it was opened).
    checked_at: Option<Instant>,
    /// A write stopped inside a line of this file: the next write starts with a line break,
    /// so that piece stays a line of its own instead of spoiling the next one.
    torn: Option<(u64, u64)>,
    /// The UTC day old files were last deleted for.
    pruned_for: Option<Date>,
    loss_warnings: LossWarnings,
    /// What the latest lost lines could not be written for, for the warning.
    loss_reason: String,
    /// Lines are written again since the latest were lost: a warning due after that says the
    /// loss is over, not that it goes on.
    recovered: bool,
    stats: std::sync::Arc<LogStats>,
}

impl LogFile {
    pub fn new(target: Target, stats: std::sync::Arc<LogStats>) -> Self {
        Self {
            target,
            open: None,
            checked_at: None,
            torn: None,
            pruned_for: None,
            loss_warnings: LossWarnings::default(),
            loss_reason: String::new(),
            recovered: false,
            stats,
        }
    }

    /// This log with its loss warnings given at most every `interval`.
    pub fn warning_every(mut self, interval: std::time::Duration) -> Self {
        self.loss_warnings = LossWarnings::every(interval);
        self
    }

    /// Opens the file of `day` now (creating the directory): start-up fails when this does, so
    /// a wrong setting is seen at once. A named pipe nobody reads yet is no failure: it is
    /// opened when a reader comes.
    pub fn open_at_start(&mut self, day: Date) -> std::io::Result<()> {
        match self.open(Some(day)) {
            Err(e) if self.is_pipe_without_reader(&e, Some(day)) => Ok(()),
            other => other,
        }
    }

    /// What [`Self::open_at_start`] would meet, as its error, found without leaving anything
    /// behind: `check` asks this, so that it refuses what `serve` refuses, in its words. The
    /// nearest folder's permission bits did not tell: root may write any folder by them, and a
    /// pseudo file system (`/proc`, `/sys`) still refuses every new folder or file. So the
    /// folders are made, as `serve` makes them, and removed again; a file yet to be made is
    /// made unnamed where the system can (`O_TMPFILE`), else made and deleted again; one that
    /// exists is opened as `serve` opens it, and nothing written. A device or a named pipe is
    /// not opened (a pipe's reader would read an end of file when it closes).
    pub fn check_at_start(&self, day: Date) -> std::io::Result<()> {
        let Target::Daily(files) = &self.target else {
            return Ok(());
        };
        // Deepest first: the order to remove them in.
        let missing: Vec<&Path> = files
            .dir
            .ancestors()
            .take_while(|folder| {
                !folder.as_os_str().is_empty() && std::fs::symlink_metadata(folder).is_err()
            })
            .collect();
        make_folders(&files.dir)?;
        let result = check_file(&files.dir, &files.path(day));
        for folder in missing {
            // One a starting `serve` has just put its file in is left to it.
            if std::fs::remove_dir(folder).is_err() {
                break;
            }
        }
        result
    }

    /// ENXIO from a named pipe: no reader. A device fails with ENXIO for its own reasons
    /// (no such unit), which are said in the error's words.
    #[cfg(unix)]
    fn is_pipe_without_reader(&self, e: &std::io::Error, day: Option<Date>) -> bool {
        use std::os::unix::fs::FileTypeExt as _;
        e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error())
            && std::fs::metadata(self.path_of(day)).is_ok_and(|m| m.file_type().is_fifo())
    }

    #[cfg(not(unix))]
    fn is_pipe_without_reader(&self, _e: &std::io::Error, _day: Option<Date>) -> bool {
        false
    }

    /// Deletes old daily files at start and then once on each new UTC day.
    pub fn prune_once_a_day(&mut self, now: SystemTime) {
        let Target::Daily(files) = &self.target else {
            return;
        };
        let today = utc_date(now);
        if self.pruned_for == Some(today) {
            return;
        }
        self.pruned_for = Some(today);
        files.prune(today);
    }

    /// Appends `lines` whole lines (`bytes`, each ending in `\n`) dated `day` in one
    /// `write()`, so another process appending to the same file cannot come between a line's
    /// parts. A write that stops short is not continued (its rest would be written apart from
    /// its start): the lines it did not finish are counted as lost.
    pub fn write_lines(&mut self, day: Date, bytes: &[u8], lines: u64, now: Instant) {
        self.write_pieces(day, &[IoSlice::new(bytes)], lines, now);
    }

    /// [`Self::write_lines`] of the text `pieces` make joined, in one `writev()`: a long
    /// line is written from its parts where they are (a body is not copied into it). At
    /// most [`MAX_PIECES`].
    pub fn write_pieces(&mut self, day: Date, pieces: &[IoSlice<'_>], lines: u64, now: Instant) {
        debug_assert!(pieces.len() <= MAX_PIECES);
        let day = matches!(self.target, Target::Daily(_)).then_some(day);
        if let Err(e) = self.ready(day, now) {
            self.lost(lines, day, "cannot open", &e, now);
            return;
        }
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if self.torn == Some(open.id) {
            // The torn line stays torn (and this mark set) until its end is written: a disk
            // still full fails this too, and the next line must not be glued onto it.
            match open.file.write(b"\n") {
                Ok(1) => self.torn = None,
                Ok(_) => {
                    let e = std::io::Error::new(std::io::ErrorKind::WriteZero, "short write");
                    self.lost(lines, day, "cannot write", &e, now);
                    return;
                }
                Err(e) => {
                    self.open = None;
                    self.checked_at = Some(now);
                    self.lost(lines, day, "cannot write", &e, now);
                    return;
                }
            }
        }
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        match open.file.write_vectored(pieces) {
            Ok(n) if n == total => {
                self.stats.written.fetch_add(lines, Ordering::Relaxed);
                self.recovered = true;
            }
            Ok(n) => {
                let (mut done, mut left, mut last) = (0, n, None);
                for piece in pieces {
                    let written = &piece[..left.min(piece.len())];
                    done += memchr::memchr_iter(b'\n', written).count() as u64;
                    last = written.last().copied().or(last);
                    left -= written.len();
                }
                if last.is_some_and(|b| b != b'\n') {
                    self.torn = Some(open.id);
                }
                self.stats.written.fetch_add(done, Ordering::Relaxed);
                let e = std::io::Error::new(std::io::ErrorKind::WriteZero, "short write");
                self.lost(lines.saturating_sub(done), day, "cannot write", &e, now);
            }
            Err(e) => {
                // Opened again for the next batch: a pipe whose reader left needs it.
                self.open = None;
                self.checked_at = Some(now);
                self.lost(lines, day, "cannot write", &e, now);
            }
        }
    }

    /// Makes the open file the one for `day`, and at most once a [`RECHECK`] makes sure the
    /// path still names it (a deleted or moved file is opened again, its folder made again).
    /// With no file open (the last try failed, or a write did), it tries to open one.
    fn ready(&mut self, day: Option<Date>, now: Instant) -> std::io::Result<()> {
        let due = self
            .checked_at
            .is_none_or(|at| now.duration_since(at) >= RECHECK);
        match &self.open {
            Some(open) if open.day == day => {
                if !due {
                    return Ok(());
                }
                self.checked_at = Some(now);
                if self.path_names(open) {
                    return Ok(());
                }
                tracing::info!(
                    "request log: {} was deleted or moved; writing to a new one",
                    self.path_of(day).display()
                );
                self.open = None;
                self.open(day)
            }
            // Another day: that day's file, at once (never the other day's meanwhile).
            Some(_) => {
                self.open = None;
                self.checked_at = Some(now);
                self.open(day)
            }
            // Tried at every batch: a day's file that could not be made is made as soon as
            // it can be. Lines are being lost meanwhile, so what the try costs matters less.
            None => {
                self.checked_at = Some(now);
                self.open(day)
            }
        }
    }

    fn path_of(&self, day: Option<Date>) -> PathBuf {
        match (&self.target, day) {
            (Target::Daily(files), Some(day)) => files.path(day),
            (Target::Daily(files), None) => files.dir.clone(),
            (Target::AsIs(path), _) => path.clone(),
        }
    }

    /// Whether the path still names the open file. A device or pipe is not checked: it is
    /// not rotated, and a pipe's reader leaving shows as a failed write.
    fn path_names(&self, open: &OpenFile) -> bool {
        if matches!(self.target, Target::AsIs(_)) {
            return true;
        }
        std::fs::metadata(self.path_of(open.day)).is_ok_and(|m| file_id(&m) == open.id)
    }

    fn open(&mut self, day: Option<Date>) -> std::io::Result<()> {
        let file = match &self.target {
            Target::Daily(files) => {
                make_folders(&files.dir)?;
                let Some(day) = day else {
                    return Err(std::io::Error::other("no day"));
                };
                // Without waiting too: a dated name someone made a named pipe would
                // otherwise hold start-up (and the writer) until a reader came.
                let mut options = std::fs::OpenOptions::new();
                options.append(true).create(true);
                make_private(&mut options);
                open_without_waiting(&mut options, &files.path(day))?
            }
            Target::AsIs(path) => {
                open_without_waiting(std::fs::OpenOptions::new().write(true), path)?
            }
        };
        let id = file_id(&file.metadata()?);
        if self.torn.is_some_and(|torn| torn != id) {
            self.torn = None;
        }
        self.open = Some(OpenFile { file, day, id });
        Ok(())
    }

    /// Counts `lines` as lost, keeps the reason for the warning, and warns if one is due.
    fn lost(
        &mut self,
        lines: u64,
        day: Option<Date>,
        doing: &str,
        error: &std::io::Error,
        now: Instant,
    ) {
        self.stats.failed.fetch_add(lines, Ordering::Relaxed);
        // A named pipe no process reads yet: opened without waiting, it fails with ENXIO,
        // whose words ("No such device or address") say nothing of that.
        let error = if self.is_pipe_without_reader(error, day) {
            "no process has the named pipe open for reading yet".to_owned()
        } else {
            error.to_string()
        };
        self.loss_reason = format!("{doing} {}: {error}", self.path_of(day).display());
        self.recovered = false;
        self.warn_lost(now);
    }

    /// Warns about lines lost since the last warning, at most once per interval (see
    /// [`crate::sinks::loss`]) and at the latest when it has passed (the writer calls this whenever it wakes), with the
    /// total so far and the latest reason.
    pub fn warn_lost(&mut self, now: Instant) {
        let Some(lost) = self.loss_warnings.due(self.stats.failed(), now) else {
            return;
        };
        let state = if self.recovered {
            "lines were lost until it worked again; they are written again now"
        } else {
            "lines are lost until it works again"
        };
        tracing::warn!(
            failed = lost.total,
            since_last_warning = lost.new,
            "request log: {}; {state}",
            self.loss_reason
        );
    }

    /// The last warning, before the writer ends: every line lost so far is in one, whether
    /// or not the interval has passed.
    pub fn warn_lost_at_exit(&mut self) {
        self.loss_warnings.closing();
        self.warn_lost(Instant::now());
    }

    /// When [`Self::warn_lost`] should run next.
    pub fn next_loss_check(&self, now: Instant) -> Instant {
        self.loss_warnings.next_check(self.stats.failed(), now)
    }
}

/// Makes the daily files' folder and the folders above it that are missing; the error names
/// the folder.
fn make_folders(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot make its folder {}: {e}", dir.display()),
        )
    })
}

/// What opening `path` in `dir` (which exists) as [`LogFile::open`] does would meet, leaving
/// nothing behind: see [`LogFile::check_at_start`].
fn check_file(dir: &Path, path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::metadata(path) {
        #[cfg(unix)]
        Ok(meta)
            if meta.file_type().is_fifo()
                || meta.file_type().is_char_device()
                || meta.file_type().is_block_device()
                || meta.file_type().is_socket() =>
        {
            return Ok(());
        }
        // Opened as `serve` opens it (it exists: nothing is made), and closed.
        Ok(_) => {
            let mut options = std::fs::OpenOptions::new();
            options.append(true).create(true);
            return open_without_waiting(&mut options, path).map(drop);
        }
        // A link to a file yet to be made: `serve` would make that file; not made here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_symlink() => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // The path itself is refused (a file where a folder belongs, a name too long): the
        // open would meet the same.
        Err(e) => return Err(e),
    }
    if made_unnamed(dir) {
        return Ok(());
    }
    make_and_delete(path)
}

/// Makes the file at `path` (which did not exist) as [`LogFile::open`] would, and deletes it.
fn make_and_delete(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create_new(true);
    match open_without_waiting(&mut options, path) {
        Ok(file) => {
            drop(file);
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        // Made since it was looked for (by a `serve` starting): it opens.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a file could be made in `dir`, found by making one without a name, which is gone
/// when closed: no name appears that a starting `serve` could open (and lose its lines to
/// when it is deleted). `false` also where the file system cannot make one so (it may still
/// make a named one).
#[cfg(target_os = "linux")]
fn made_unnamed(dir: &Path) -> bool {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .is_ok()
}

#[cfg(not(target_os = "linux"))]
fn made_unnamed(_dir: &Path) -> bool {
    false
}

/// A new dated file is made readable by its owner only (mode 600, as the users database):
/// its lines hold every user's prompts and answers. A file that is already there keeps the
/// mode an admin gave it.
#[cfg(unix)]
fn make_private(options: &mut std::fs::OpenOptions) {
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
}

#[cfg(not(unix))]
fn make_private(_options: &mut std::fs::OpenOptions) {}

/// Opens `path` for writing with `options`. A named pipe is opened without waiting for a
/// reader (none yet: `ENXIO`, tried again later), then writes wait for the reader as usual;
/// for a file or a device the flag changes nothing.
#[cfg(unix)]
fn open_without_waiting(options: &mut std::fs::OpenOptions, path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = options
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

#[cfg(not(unix))]
fn open_without_waiting(options: &mut std::fs::OpenOptions, path: &Path) -> std::io::Result<File> {
    options.open(path)
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// No inode to compare: a file whose path still exists is taken to be the open one.
#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// A named pipe `log.pipe` in `dir`, nobody reading it yet.
    #[cfg(unix)]
    pub(crate) fn named_pipe(dir: &Path) -> PathBuf {
        let fifo = dir.join("log.pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        fifo
    }

    /// A reader of `fifo` that never blocks, and reads only when the test does: the pipe
    /// takes writes until it is full.
    #[cfg(unix)]
    pub(crate) fn pipe_reader(fifo: &Path) -> std::fs::File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(fifo)
            .expect("reader")
    }

    /// A line torn by a short write (a full disk) is ended before the next line is written,
    /// also when the line break itself failed first (the disk still full) and the file was
    /// opened again: the next line was glued onto the torn one.
    #[test]
    fn a_torn_line_is_ended_even_after_its_line_break_failed() {
        let dir = tempfile::tempdir().expect("dir");
        let files = daily(dir.path(), "api_proxy", Some("log"));
        let today = day("2025-01-31");
        let path = files.path(today);
        let mut log = LogFile::new(Target::Daily(files), Arc::new(LogStats::default()));
        let now = Instant::now();
        log.ready(Some(today), now).expect("opens");
        std::fs::write(&path, "{\"torn\":").expect("the torn piece");
        let open = log.open.as_mut().expect("open");
        log.torn = Some(open.id);
        // Writes now fail, as on a full disk.
        open.file = File::open(&path).expect("read-only");
        log.write_lines(today, b"{\"lost\":1}\n", 1, now);
        log.write_lines(today, b"{\"next\":2}\n", 1, now);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"torn\":\n{\"next\":2}\n");
    }

    #[test]
    fn file_names_keep_the_extension() {
        assert_eq!(
            file_parts(Path::new("./api_proxy.log")),
            (
                PathBuf::from("."),
                "api_proxy".to_owned(),
                Some("log".to_owned())
            )
        );
        assert_eq!(
            file_parts(Path::new("requests")),
            (PathBuf::from("."), "requests".to_owned(), None)
        );
        assert_eq!(
            file_parts(Path::new("/var/log/llm/.hidden")),
            (PathBuf::from("/var/log/llm"), ".hidden".to_owned(), None)
        );
    }

    fn daily(dir: &Path, prefix: &str, suffix: Option<&str>) -> DailyFiles {
        DailyFiles {
            dir: dir.to_path_buf(),
            prefix: prefix.to_owned(),
            suffix: suffix.map(str::to_owned),
        }
    }

    fn day(text: &str) -> Date {
        parse_day(text).expect("day")
    }

    /// File names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn only_names_the_router_gives_are_its_files() {
        let files = daily(Path::new("."), "api_proxy", Some("log"));
        assert_eq!(
            files.day_of("api_proxy.2025-01-31.log"),
            Some(day("2025-01-31"))
        );
        for other in [
            "api_proxy.log",
            "api_proxy.old.log",
            "api_proxy.2025-01-31.log.gz",
            "api_proxy.2025-02-30.log",
            "api_proxy.2025-1-31.log",
            "api_proxy2025-01-31.log",
            "api_proxy.2025-01-31log",
            "api_proxy.x.2025-01-31.log",
            "other.2025-01-31.log",
            "api_proxy.2025-01-31",
        ] {
            assert_eq!(files.day_of(other), None, "{other}");
        }
        let bare = daily(Path::new("."), "requests", None);
        assert_eq!(bare.day_of("requests.2025-01-31"), Some(day("2025-01-31")));
        assert_eq!(bare.day_of("requests"), None);
        assert_eq!(bare.day_of("requests.2025-01-31.log"), None);
    }

    #[test]
    fn pruning_keeps_the_seven_newest_dated_files_and_touches_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        let others = [
            "api_proxy.log",
            "api_proxy.old.log",
            "api_proxy.2020-01-01.log.gz",
            "api_proxy.2020-13-01.log",
            "api_proxy.2020-01-01.txt",
            "other.2020-01-01.log",
        ];
        for name in others {
            std::fs::write(path.join(name), "not the router's").expect("write");
        }
        // Named like the router's files, but not files.
        std::fs::create_dir(path.join("api_proxy.2020-01-02.log")).expect("mkdir");
        #[cfg(unix)]
        std::os::unix::fs::symlink("api_proxy.log", path.join("api_proxy.2020-01-03.log"))
            .expect("symlink");
        for d in 1..=10 {
            std::fs::write(path.join(format!("api_proxy.2025-01-{d:02}.log")), "{}\n")
                .expect("write");
        }
        let files = daily(path, "api_proxy", Some("log"));
        let ours = |names: &[String]| -> Vec<String> {
            names
                .iter()
                .filter(|n| files.day_of(n).is_some() && path.join(n).is_file())
                .filter(|n| !path.join(n).is_symlink())
                .cloned()
                .collect()
        };

        // Today's file exists (a restart): it and the 6 before it stay.
        assert_eq!(files.prune(day("2025-01-10")), 3);
        let expected: Vec<String> = (4..=10)
            .map(|d| format!("api_proxy.2025-01-{d:02}.log"))
            .collect();
        assert_eq!(ours(&names(path)), expected);
        // The same day again: nothing more goes.
        assert_eq!(files.prune(day("2025-01-10")), 0);
        // The next day, before its file is written: room is left for it.
        assert_eq!(files.prune(day("2025-01-11")), 1);
        assert_eq!(ours(&names(path)), expected[1..]);

        for name in others {
            assert_eq!(
                std::fs::read_to_string(path.join(name)).expect("still there"),
                "not the router's"
            );
        }
        assert!(path.join("api_proxy.2020-01-02.log").is_dir());
        #[cfg(unix)]
        assert!(path.join("api_proxy.2020-01-03.log").is_symlink());
    }

    #[test]
    fn a_file_dated_after_today_is_kept_and_takes_no_past_days_place() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        // Written while the clock was set ahead, and already within the 7 kept by date.
        for name in ["api_proxy.2025-01-11.log", "api_proxy.2026-06-01.log"] {
            std::fs::write(path.join(name), "lines of requests").expect("write");
        }
        for d in 1..=10 {
            std::fs::write(path.join(format!("api_proxy.2025-01-{d:02}.log")), "{}\n")
                .expect("write");
        }
        let files = daily(path, "api_proxy", Some("log"));

        // Today and the 6 days before it stay, as with no later file.
        assert_eq!(files.prune(day("2025-01-10")), 3);
        let mut expected: Vec<String> = (4..=11)
            .map(|d| format!("api_proxy.2025-01-{d:02}.log"))
            .collect();
        expected.push("api_proxy.2026-06-01.log".to_owned());
        assert_eq!(names(path), expected);
        // Its day come, the once later file is one of the 7 as any other.
        assert_eq!(files.prune(day("2025-01-11")), 1);
        assert_eq!(names(path), expected[1..]);
        assert_eq!(
            std::fs::read_to_string(path.join("api_proxy.2026-06-01.log")).expect("kept"),
            "lines of requests"
        );
    }

    #[test]
    fn a_name_without_extension_prunes_its_own_files_only() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        for name in ["requests", "requests.2020-01-01.log"] {
            std::fs::write(path.join(name), "x").expect("write");
        }
        for d in 1..=9 {
            std::fs::write(path.join(format!("requests.2025-01-{d:02}")), "x").expect("write");
        }
        assert_eq!(daily(path, "requests", None).prune(day("2025-01-09")), 2);
        let mut expected = vec!["requests".to_owned()];
        expected.extend((3..=9).map(|d| format!("requests.2025-01-{d:02}")));
        expected.push("requests.2020-01-01.log".to_owned());
        expected.sort();
        assert_eq!(names(path), expected);
    }

    #[test]
    fn the_writer_prunes_at_start_and_once_on_each_new_day() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        let now = SystemTime::now();
        let one_day = Duration::from_secs(86_400);
        let dated = |t: SystemTime| format!("api_proxy.{}.log", crate::sinks::clock::utc_day(t));
        for back in 1..=8 {
            std::fs::write(path.join(dated(now - one_day * back)), "x").expect("write");
        }
        let mut file = log_file(&path.join("api_proxy.log"));
        file.open_at_start(utc_date(now)).expect("open");
        file.prune_once_a_day(now);
        assert_eq!(names(path).len(), KEPT_FILES);
        assert!(path.join(dated(now)).is_file(), "today's");
        assert!(!path.join(dated(now - one_day * 7)).exists());
        // A day later: once, when the day changes.
        std::fs::write(path.join(dated(now + one_day)), "x").expect("write");
        file.prune_once_a_day(now + one_day);
        assert_eq!(names(path).len(), KEPT_FILES);
        assert!(!path.join(dated(now - one_day * 6)).exists());
        std::fs::write(path.join(dated(now - one_day * 20)), "x").expect("write");
        file.prune_once_a_day(now + one_day);
        assert!(path.join(dated(now - one_day * 20)).exists(), "once a day");
    }

    fn log_file(path: &Path) -> LogFile {
        LogFile::new(
            Target::of(path).expect("a file name"),
            Arc::new(LogStats::default()),
        )
    }

    /// `n` lines `{"n":i}` (whole lines, as the writer hands them over).
    fn lines(from: usize, n: usize) -> Vec<u8> {
        (from..from + n)
            .flat_map(|i| format!("{{\"n\":{i}}}\n").into_bytes())
            .collect()
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn a_line_goes_to_the_file_of_its_day_even_when_days_go_back() {
        let dir = tempfile::tempdir().expect("dir");
        let mut file = log_file(&dir.path().join("api_proxy.log"));
        let now = Instant::now();
        for (i, d) in ["2026-12-31", "2027-02-01", "2026-12-31", "2027-01-01"]
            .into_iter()
            .enumerate()
        {
            file.write_lines(day(d), &lines(i, 1), 1, now);
        }
        let at = |d: &str| read(&dir.path().join(format!("api_proxy.{d}.log")));
        assert_eq!(at("2026-12-31"), "{\"n\":0}\n{\"n\":2}\n");
        assert_eq!(at("2027-02-01"), "{\"n\":1}\n");
        assert_eq!(at("2027-01-01"), "{\"n\":3}\n");
        assert_eq!((file.stats.written(), file.stats.failed()), (4, 0));
    }

    #[test]
    fn a_deleted_file_or_folder_is_made_again_at_the_next_check() {
        let dir = tempfile::tempdir().expect("dir");
        let logs = dir.path().join("logs");
        let mut file = log_file(&logs.join("api_proxy.log"));
        let today = day("2026-12-02");
        let dated = logs.join("api_proxy.2026-12-02.log");
        let t0 = Instant::now();
        file.open_at_start(today).expect("open");
        file.write_lines(today, &lines(0, 1), 1, t0);
        std::fs::remove_dir_all(&logs).expect("rm -rf");
        // Within the second: still the open (deleted) file, no stat per write.
        file.write_lines(today, &lines(1, 1), 1, t0 + Duration::from_millis(10));
        assert!(!logs.exists());
        file.write_lines(today, &lines(2, 1), 1, t0 + RECHECK);
        assert_eq!(read(&dated), "{\"n\":2}\n");
        // Moved away (logrotate): a new file, the moved one keeps its lines.
        std::fs::rename(&dated, logs.join("moved.log")).expect("mv");
        file.write_lines(today, &lines(3, 1), 1, t0 + RECHECK * 2);
        assert_eq!(read(&dated), "{\"n\":3}\n");
        assert_eq!(read(&logs.join("moved.log")), "{\"n\":2}\n");
        assert_eq!(file.stats.failed(), 0);
    }

    #[test]
    fn lines_that_cannot_be_written_are_counted_and_the_day_is_tried_again() {
        let dir = tempfile::tempdir().expect("dir");
        let logs = dir.path().join("logs");
        let mut file = log_file(&logs.join("api_proxy.log"));
        let (yesterday, today) = (day("2026-12-31"), day("2027-01-01"));
        let t0 = Instant::now();
        file.open_at_start(yesterday).expect("open");
        file.write_lines(yesterday, &lines(0, 2), 2, t0);
        // The folder is replaced by a file at midnight: today's file cannot be made.
        std::fs::rename(&logs, dir.path().join("logs.old")).expect("mv");
        std::fs::write(&logs, "x").expect("a file");
        file.write_lines(today, &lines(2, 3), 3, t0 + Duration::from_millis(1));
        // Before the next try, lines are lost too, and never go to yesterday's file.
        file.write_lines(today, &lines(5, 1), 1, t0 + Duration::from_millis(2));
        assert_eq!((file.stats.written(), file.stats.failed()), (2, 4));
        std::fs::remove_file(&logs).expect("rm");
        std::fs::create_dir(&logs).expect("mkdir");
        // The folder is back: the next lines go to today's file.
        file.write_lines(today, &lines(7, 1), 1, t0 + Duration::from_millis(3));
        assert_eq!(read(&logs.join("api_proxy.2027-01-01.log")), "{\"n\":7}\n");
        assert_eq!(
            read(&dir.path().join("logs.old/api_proxy.2026-12-31.log")),
            "{\"n\":0}\n{\"n\":1}\n"
        );
        assert_eq!((file.stats.written(), file.stats.failed()), (3, 4));
    }

    /// `check`'s look at the log leaves nothing behind: the folders it made, a file it made
    /// named (where the system cannot make one unnamed) or unnamed, are gone; a file that
    /// exists is opened, not changed; a named pipe is not opened (its reader would read an
    /// end of file when it is closed). A folder where the day's file belongs is refused as
    /// `serve`'s open refuses it.
    #[cfg(unix)]
    #[test]
    fn checking_the_log_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("dir");
        let day = Date::from_calendar_date(2025, time::Month::January, 31).expect("day");
        let listed = || {
            let entries = std::fs::read_dir(dir.path()).expect("list");
            entries
                .map(|e| e.expect("entry").file_name())
                .collect::<Vec<_>>()
        };
        let check = |path: &Path| {
            let target = Target::of(path).expect("target");
            LogFile::new(target, Arc::new(LogStats::default())).check_at_start(day)
        };
        check(&dir.path().join("a/b/api.log")).expect("folders to make");
        assert_eq!(listed(), Vec::<std::ffi::OsString>::new());
        make_and_delete(&dir.path().join("api.2025-01-31.log")).expect("named");
        assert_eq!(listed(), Vec::<std::ffi::OsString>::new());

        std::fs::write(dir.path().join("api.2025-01-31.log"), "old\n").expect("file");
        check(&dir.path().join("api.log")).expect("a file that exists");
        let text = std::fs::read_to_string(dir.path().join("api.2025-01-31.log"));
        assert_eq!(text.expect("read"), "old\n");

        // Nobody reads it: opened, it would refuse (ENXIO).
        let fifo = named_pipe(dir.path());
        std::fs::rename(&fifo, dir.path().join("pipe.2025-01-31.log")).expect("rename");
        check(&dir.path().join("pipe.log")).expect("a pipe is not opened");

        std::fs::create_dir(dir.path().join("folder.2025-01-31.log")).expect("folder");
        let refused = check(&dir.path().join("folder.log")).expect_err("a folder");
        let mut file = LogFile::new(
            Target::of(&dir.path().join("folder.log")).expect("target"),
            Arc::new(LogStats::default()),
        );
        let serve = file.open_at_start(day).expect_err("serve refuses it too");
        assert_eq!(refused.to_string(), serve.to_string());
    }

    #[test]
    fn a_folder_is_no_log_file_and_devices_are_written_as_they_are() {
        let dir = tempfile::tempdir().expect("dir");
        let folder = dir.path().join("logs");
        std::fs::create_dir(&folder).expect("mkdir");
        for path in [folder.clone(), dir.path().join("new/"), PathBuf::from("..")] {
            let error = Target::of(&path).expect_err("a folder");
            assert!(error.contains("folder"), "{error}");
        }
        assert!(matches!(
            Target::of(&folder.join("api_proxy.log")),
            Ok(Target::Daily(_))
        ));
        #[cfg(unix)]
        {
            assert!(matches!(
                Target::of(Path::new("/dev/null")),
                Ok(Target::AsIs(_))
            ));
            let mut file = log_file(Path::new("/dev/null"));
            file.open_at_start(day("2026-12-02")).expect("open");
            file.write_lines(day("2026-12-02"), &lines(0, 2), 2, Instant::now());
            assert_eq!((file.stats.written(), file.stats.failed()), (2, 0));
            assert_eq!(names(dir.path()), ["logs"]);
        }
    }

    /// A named pipe nobody reads yet does not stop start-up; once a reader comes, it gets
    /// whole lines, and none are written beside it.
    #[cfg(unix)]
    #[test]
    fn a_named_pipe_is_written_once_it_has_a_reader() {
        use std::io::Read;
        let dir = tempfile::tempdir().expect("dir");
        let fifo = named_pipe(dir.path());
        let mut file = log_file(&fifo);
        let today = day("2026-12-02");
        let t0 = Instant::now();
        file.open_at_start(today).expect("no reader is no error");
        file.write_lines(today, &lines(0, 1), 1, t0);
        assert_eq!(file.stats.failed(), 1);
        let mut reader = pipe_reader(&fifo);
        file.write_lines(today, &lines(1, 2), 2, t0 + RECHECK);
        assert_eq!(file.stats.written(), 2);
        drop(file);
        let mut got = String::new();
        reader.read_to_string(&mut got).expect("read");
        assert_eq!(got, "{\"n\":1}\n{\"n\":2}\n");
        assert_eq!(names(dir.path()), ["log.pipe"]);
    }
}
