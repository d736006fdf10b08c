//! The spool: a local file of rows that are waiting for the database, so that nothing is lost
//! while the database is unreachable, at shutdown, or across a crash.
//!
//! The file is JSON lines, one [`Row`] per line, oldest first. Rows are appended at the end and
//! replayed from the front in chunks; a chunk counts as replayed only once the database has
//! taken it ([`Spool::commit`]). The offset of the first row not yet replayed is kept next to
//! the spool in `<spool>.pos` (`"<offset> <line>"`), so a restart replays only what is left. When
//! everything has been replayed the file and its `.pos` are removed; a long replay under
//! continuous appends is compacted by rewriting the remainder once the replayed part is big.
//!
//! Durability: every append and rewrite is fsynced before it returns. The `.pos` file is not,
//! so after a power cut (not a mere crash of the process) a chunk may be replayed twice.
//!
//! Damage never stops a replay: a line that is not a valid row is logged with its line number
//! and skipped; a partial last line (a crash in the middle of an append) is terminated at open
//! so that later appends do not glue onto it.
//!
//! All of this is blocking file I/O: the storage actor runs it on tokio's blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use log::{info, warn};
use serde::Deserialize;

use crate::storage::rows::{Row, TelemetryRow};

/// Once the replayed part of the file is at least this big and at least half of the file, the
/// remainder is rewritten to a fresh file.
const COMPACT_AFTER: u64 = 16 * 1024 * 1024;

/// Where a chunk ends: what [`Spool::commit`] needs once the chunk is in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolPos {
    /// Changes whenever the file is rewritten or removed; a position from an older generation
    /// is ignored.
    generation: u64,
    /// Byte offset just after the chunk.
    offset: u64,
    /// Line number (1-based) of the line after the chunk.
    line: u64,
    /// Lines the chunk covers, corrupt and blank ones included.
    lines: u64,
    /// Corrupt lines skipped in the chunk.
    corrupt: u64,
}

/// Rows read from the front of the spool.
#[derive(Debug)]
pub struct Chunk {
    pub rows: Vec<Row>,
    pub pos: SpoolPos,
}

/// A spool file. See the module documentation.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    pos_path: PathBuf,
    tmp_path: PathBuf,
    generation: u64,
    /// Byte offset of the first line not yet replayed.
    start: u64,
    /// Its line number, 1-based.
    start_line: u64,
    /// Length of the file.
    len: u64,
    /// Lines from `start` to the end of the file.
    waiting: u64,
    /// Corrupt lines before this offset have been logged already.
    warned_to: u64,
    /// Corrupt lines skipped so far.
    skipped: u64,
    /// See [`COMPACT_AFTER`].
    compact_after: u64,
    /// See [`Spool::set_max_bytes`].
    max_bytes: u64,
}

/// Rows a bounded [`Spool::append`] left out, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub packets: u64,
    pub telemetry: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.packets + self.telemetry
    }
}

/// What may be left out of a full spool, in the order it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Droppable {
    Packet,
    Telemetry,
}

fn droppable(row: &Row) -> Option<Droppable> {
    match row {
        Row::Packet(_) => Some(Droppable::Packet),
        Row::Telemetry(_) => Some(Droppable::Telemetry),
        Row::Event(_) | Row::Device(_) | Row::Command(_) | Row::Delivery(_) => None,
    }
}

impl Spool {
    /// A spool at `path`, without touching the disk; call [`Spool::recover`] before use.
    pub fn new(path: impl Into<PathBuf>) -> Spool {
        let path = path.into();
        let with_suffix = |suffix: &str| {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        Spool {
            pos_path: with_suffix(".pos"),
            tmp_path: with_suffix(".tmp"),
            path,
            generation: 0,
            start: 0,
            start_line: 1,
            len: 0,
            waiting: 0,
            warned_to: 0,
            skipped: 0,
            compact_after: COMPACT_AFTER,
            max_bytes: u64::MAX,
        }
    }

    /// [`Spool::new`] + [`Spool::recover`].
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Spool> {
        let mut spool = Spool::new(path);
        spool.recover()?;
        Ok(spool)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows (lines) waiting to be replayed.
    pub fn waiting(&self) -> u64 {
        self.waiting
    }

    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Corrupt lines skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Takes over whatever an earlier run left at the path: creates the parent directory,
    /// terminates a partial last line, finds where the replay stopped and counts what is left.
    /// A spool with nothing left is removed.
    pub fn recover(&mut self) -> io::Result<()> {
        self.reset();
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let mut file = match OpenOptions::new().read(true).append(true).open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                remove_if_exists(&self.pos_path)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let _ = fs::remove_file(&self.tmp_path);
        let mut len = file.metadata()?.len();
        if len > 0 && byte_at(&mut file, len - 1)? != b'\n' {
            warn!(
                "storage: spool {} ends in a partial line (interrupted write?); it will be skipped",
                self.path.display()
            );
            file.write_all(b"\n")?;
            file.sync_data()?;
            len += 1;
        }
        self.len = len;
        let (start, line) = self.saved_position(&mut file)?;
        file.seek(SeekFrom::Start(start))?;
        self.start = start;
        self.start_line = line;
        self.waiting = count_lines(file)?;
        if self.waiting == 0 {
            self.remove()?;
        }
        Ok(())
    }

    /// Bounds the file to `max` bytes for later appends ([`Spool::append`]); unbounded until
    /// set.
    pub fn set_max_bytes(&mut self, max: u64) {
        self.max_bytes = max;
    }

    /// Bytes of rows waiting to be replayed.
    pub fn bytes(&self) -> u64 {
        self.len.saturating_sub(self.start)
    }

    /// Appends `rows` at the end and fsyncs. On error the file is cut back to where it was and
    /// nothing counts as spooled.
    ///
    /// The file stays within its bound ([`Spool::set_max_bytes`]; the part already replayed
    /// but not yet compacted away counts, it is disk all the same). Raw packets go first: a
    /// packet is left out once the file holds half the bound, so telemetry, worth more,
    /// keeps the other half for itself; telemetry is left out once the file is full. Both
    /// are counted in the answer. Connection events, device states, commands and deliveries
    /// are few and are what an operator audits: they are always kept, past the bound if need
    /// be.
    pub fn append(&mut self, rows: &[Row]) -> io::Result<Dropped> {
        if rows.is_empty() {
            return Ok(Dropped::default());
        }
        let mut size = self.len;
        let mut dropped = Dropped::default();
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows {
            let mut line = serde_json::to_vec(row).map_err(io::Error::other)?;
            line.push(b'\n');
            let after = size.saturating_add(line.len() as u64);
            // Once a kind stops, it stops for the rest of the rows too: no holes where a
            // smaller row would still fit.
            match droppable(row) {
                Some(Droppable::Packet) if dropped.packets > 0 || after > self.max_bytes / 2 => {
                    dropped.packets += 1
                }
                Some(Droppable::Telemetry) if dropped.telemetry > 0 || after > self.max_bytes => {
                    dropped.telemetry += 1
                }
                _ => {
                    size = after;
                    kept.push(line);
                }
            }
        }
        if kept.is_empty() {
            return Ok(dropped);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let before = file.metadata()?.len();
        let written = write_lines(&file, &kept).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(before);
            return Err(e);
        }
        if before == 0 {
            sync_dir(&self.path);
        }
        self.len = file.metadata()?.len();
        self.waiting += kept.len() as u64;
        Ok(dropped)
    }

    /// Puts `rows` in front of everything waiting (they are older), by writing them and the
    /// rest of the spool to a new file that then replaces the old one.
    pub fn prepend(&mut self, rows: &[Row]) -> io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.rewrite(rows)?;
        self.waiting += rows.len() as u64;
        Ok(())
    }

    /// Up to `max` rows from the front, without consuming them: they stay in the spool until
    /// [`Spool::commit`] is called with the chunk's position. Corrupt lines are logged (once)
    /// and skipped; the chunk may hold no rows but still cover lines. A spool file that has
    /// disappeared is logged and forgotten.
    pub fn read_chunk(&mut self, max: usize) -> io::Result<Chunk> {
        let mut pos = SpoolPos {
            generation: self.generation,
            offset: self.start,
            line: self.start_line,
            lines: 0,
            corrupt: 0,
        };
        let mut rows = Vec::new();
        if self.waiting == 0 {
            return Ok(Chunk { rows, pos });
        }
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                warn!(
                    "storage: spool {} has disappeared; the {} rows it held are lost",
                    self.path.display(),
                    self.waiting
                );
                self.reset();
                let _ = fs::remove_file(&self.pos_path);
                pos.generation = self.generation;
                return Ok(Chunk { rows, pos });
            }
            Err(e) => return Err(e),
        };
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        reader.seek(SeekFrom::Start(self.start))?;
        let mut buf = Vec::new();
        while rows.len() < max.max(1) {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            let line_no = pos.line;
            pos.offset += n as u64;
            pos.line += 1;
            pos.lines += 1;
            let text = trim_line_end(&buf);
            if text.is_empty() {
                continue;
            }
            match parse_line(text) {
                Ok(row) => rows.push(row),
                Err(e) => {
                    pos.corrupt += 1;
                    if pos.offset > self.warned_to {
                        warn!(
                            "storage: spool {} line {line_no} is not a valid row, skipped: {e} ({:.80})",
                            self.path.display(),
                            String::from_utf8_lossy(text)
                        );
                    }
                }
            }
        }
        if pos.lines == 0 {
            // Nothing after `start` although lines were expected: the count was off.
            self.waiting = 0;
            if self.start >= self.len {
                self.remove()?;
                pos.generation = self.generation;
            }
        }
        self.warned_to = self.warned_to.max(pos.offset);
        Ok(Chunk { rows, pos })
    }

    /// Marks everything up to `pos` as replayed. Removes the file once all of it is replayed,
    /// compacts it when the replayed part is large. A stale position is ignored.
    pub fn commit(&mut self, pos: SpoolPos) -> io::Result<()> {
        if pos.generation != self.generation || pos.offset <= self.start {
            return Ok(());
        }
        self.start = pos.offset;
        self.start_line = pos.line;
        self.waiting = self.waiting.saturating_sub(pos.lines);
        self.skipped += pos.corrupt;
        if self.start >= self.len {
            return self.remove();
        }
        if self.start >= self.compact_after && self.start.saturating_mul(2) >= self.len {
            info!(
                "storage: compacting spool {} ({} rows left)",
                self.path.display(),
                self.waiting
            );
            return self.rewrite(&[]);
        }
        fs::write(
            &self.pos_path,
            format!("{} {}\n", self.start, self.start_line),
        )
    }

    /// Forgets the position state (not the counters).
    fn reset(&mut self) {
        self.generation += 1;
        self.start = 0;
        self.start_line = 1;
        self.len = 0;
        self.waiting = 0;
        self.warned_to = 0;
    }

    /// Everything replayed: the file and its position go.
    fn remove(&mut self) -> io::Result<()> {
        remove_if_exists(&self.path)?;
        remove_if_exists(&self.pos_path)?;
        self.reset();
        Ok(())
    }

    /// Replaces the file with `front` followed by what is still waiting in it.
    fn rewrite(&mut self, front: &[Row]) -> io::Result<()> {
        let result = self.write_tmp(front);
        let file = match result {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&self.tmp_path);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&self.tmp_path, &self.path) {
            let _ = fs::remove_file(&self.tmp_path);
            return Err(e);
        }
        sync_dir(&self.path);
        remove_if_exists(&self.pos_path)?;
        let waiting = self.waiting;
        self.reset();
        self.len = file.metadata()?.len();
        self.waiting = waiting;
        Ok(())
    }

    fn write_tmp(&self, front: &[Row]) -> io::Result<File> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp_path)?;
        write_rows(&file, front)?;
        if self.len > self.start {
            match File::open(&self.path) {
                Ok(mut old) => {
                    old.seek(SeekFrom::Start(self.start))?;
                    let mut rest = old.take(self.len - self.start);
                    io::copy(&mut rest, &mut file)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        file.sync_all()?;
        Ok(file)
    }

    /// The replay position saved by an earlier run, if it is plausible: inside the file and
    /// just after a line end. Anything else replays from the start (duplicates rather than
    /// losses).
    fn saved_position(&self, file: &mut File) -> io::Result<(u64, u64)> {
        let text = match fs::read_to_string(&self.pos_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 1)),
            Err(e) => {
                warn!(
                    "storage: cannot read {} ({e}); replaying the whole spool",
                    self.pos_path.display()
                );
                return Ok((0, 1));
            }
        };
        let mut parts = text.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(offset)), Some(Ok(line))) = (parts.next(), parts.next()) {
            if offset == 0 {
                return Ok((0, 1));
            }
            if offset <= self.len && line > 1 && byte_at(file, offset - 1)? == b'\n' {
                return Ok((offset, line));
            }
        }
        warn!(
            "storage: {} does not fit the spool ({:?}); replaying the whole spool",
            self.pos_path.display(),
            text.trim()
        );
        Ok((0, 1))
    }
}

/// One spool line back to a row. Besides a plain `Row`, accepts telemetry whose `value` or
/// `raw` was not finite: serde_json writes NaN and infinities as `null`, which `f64` refuses.
fn parse_line(line: &[u8]) -> Result<Row, String> {
    #[derive(Deserialize)]
    struct NonFiniteTelemetry {
        t: String,
        device_id: String,
        point: String,
        value: Option<f64>,
        raw: Option<f64>,
        at: DateTime<Utc>,
        #[serde(default)]
        unit: String,
    }
    match serde_json::from_slice::<Row>(line) {
        Ok(row) => Ok(row),
        Err(e) => match serde_json::from_slice::<NonFiniteTelemetry>(line) {
            Ok(t) if t.t == "telemetry" => Ok(Row::Telemetry(TelemetryRow {
                device_id: t.device_id,
                point: t.point,
                value: t.value.unwrap_or(f64::NAN),
                raw: t.raw.unwrap_or(f64::NAN),
                at: t.at,
                unit: t.unit,
            })),
            _ => Err(e.to_string()),
        },
    }
}

fn write_lines(file: &File, lines: &[Vec<u8>]) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    for line in lines {
        out.write_all(line)?;
    }
    out.flush()
}

fn write_rows(file: &File, rows: &[Row]) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    for row in rows {
        serde_json::to_writer(&mut out, row).map_err(io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

fn byte_at(file: &mut File, offset: u64) -> io::Result<u8> {
    let mut b = [0u8; 1];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut b)?;
    Ok(b[0])
}

/// Lines (line ends) from the reader's position to the end.
fn count_lines(file: File) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut lines = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(lines);
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = buf.len();
        reader.consume(n);
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a created or renamed directory entry durable (best effort; not possible everywhere).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::rows::{ConnEvent, ConnEventRow, Direction, PacketKind, PacketRow};
    use chrono::TimeZone;

    fn row(i: u32) -> Row {
        Row::Telemetry(TelemetryRow {
            device_id: format!("dev{}", i % 7),
            point: "temperature".into(),
            value: f64::from(i) * 0.5,
            raw: f64::from(i),
            at: Utc
                .timestamp_opt(1_700_000_000 + i64::from(i), 0)
                .single()
                .expect("valid time"),
            unit: if i % 2 == 0 {
                "°C".into()
            } else {
                String::new()
            },
        })
    }

    fn rows(range: std::ops::Range<u32>) -> Vec<Row> {
        range.map(row).collect()
    }

    /// Reads and commits everything, `max` rows at a time.
    fn drain(spool: &mut Spool, max: usize) -> Vec<Row> {
        let mut out = Vec::new();
        while !spool.is_empty() {
            let chunk = spool.read_chunk(max).expect("read");
            assert!(chunk.rows.len() <= max);
            out.extend(chunk.rows);
            spool.commit(chunk.pos).expect("commit");
        }
        out
    }

    #[test]
    fn append_replay_and_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("spool.jsonl");
        let mut spool = Spool::open(&path).expect("open");
        assert!(spool.is_empty());
        spool.append(&rows(0..10)).expect("append");
        spool.append(&rows(10..25)).expect("append");
        assert_eq!(spool.waiting(), 25);
        assert!(path.exists());

        let first = spool.read_chunk(10).expect("read");
        assert_eq!(first.rows, rows(0..10));
        // Not consumed until committed.
        let again = spool.read_chunk(10).expect("read");
        assert_eq!(again.rows, rows(0..10));
        spool.commit(first.pos).expect("commit");
        assert_eq!(spool.waiting(), 15);
        // Committing the same position twice changes nothing.
        spool.commit(again.pos).expect("commit");
        assert_eq!(spool.waiting(), 15);

        // Appends during the replay land behind it.
        spool.append(&rows(25..30)).expect("append");
        assert_eq!(drain(&mut spool, 10), rows(10..30));
        assert!(!path.exists());
        assert!(!spool.pos_path.exists());
        assert_eq!(spool.skipped(), 0);
    }

    #[test]
    fn a_restart_resumes_where_the_replay_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.jsonl");
        let mut spool = Spool::open(&path).expect("open");
        spool.append(&rows(0..30)).expect("append");
        let chunk = spool.read_chunk(12).expect("read");
        spool.commit(chunk.pos).expect("commit");
        drop(spool);

        let mut spool = Spool::open(&path).expect("reopen");
        assert_eq!(spool.waiting(), 18);
        assert_eq!(drain(&mut spool, 100), rows(12..30));

        // A position that does not fit the file replays everything rather than losing rows.
        let mut spool = Spool::open(&path).expect("open");
        spool.append(&rows(0..5)).expect("append");
        fs::write(&spool.pos_path, "7 2\n").expect("write pos");
        let mut spool = Spool::open(&path).expect("reopen");
        assert_eq!(spool.waiting(), 5);
        assert_eq!(drain(&mut spool, 100), rows(0..5));
        fs::write(&spool.pos_path, "garbage").expect("write pos");
        let mut spool = Spool::open(&path).expect("reopen");
        assert!(spool.is_empty(), "a stray .pos without a spool is removed");
        assert!(!spool.pos_path.exists());
        spool.append(&rows(0..1)).expect("append");
        assert_eq!(drain(&mut spool, 1), rows(0..1));
    }

    #[test]
    fn corrupt_and_partial_lines_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.jsonl");
        let mut spool = Spool::open(&path).expect("open");
        spool.append(&rows(0..3)).expect("append");
        let mut text = fs::read(&path).expect("read");
        text.extend_from_slice(b"{\"t\":\"telemetry\",\"device_id\":\n\xff\xfe not json\n\n");
        fs::write(&path, &text).expect("write");
        drop(spool);
        let mut spool = Spool::open(&path).expect("reopen");
        spool.append(&rows(3..5)).expect("append");
        // A crash in the middle of a write leaves a partial line.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"t\":\"telem").expect("write");
        drop(f);
        let mut spool = Spool::open(&path).expect("reopen");
        spool.append(&rows(5..6)).expect("append");
        assert_eq!(drain(&mut spool, 2), rows(0..6));
        assert_eq!(spool.skipped(), 3);
        assert!(!path.exists());
    }

    #[test]
    fn prepend_puts_rows_in_front() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.jsonl");
        let mut spool = Spool::open(&path).expect("open");
        // Into an empty spool.
        spool.prepend(&rows(0..2)).expect("prepend");
        assert_eq!(drain(&mut spool, 10), rows(0..2));

        spool.append(&rows(10..20)).expect("append");
        let chunk = spool.read_chunk(4).expect("read");
        spool.commit(chunk.pos).expect("commit");
        let stale = spool.read_chunk(4).expect("read");
        spool.prepend(&rows(0..3)).expect("prepend");
        assert_eq!(spool.waiting(), 9);
        // A position from before the rewrite no longer applies.
        spool.commit(stale.pos).expect("commit");
        assert_eq!(spool.waiting(), 9);
        let expected: Vec<Row> = rows(0..3).into_iter().chain(rows(14..20)).collect();
        assert_eq!(drain(&mut spool, 4), expected);
        assert!(!path.exists());
    }

    #[test]
    fn compaction_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.jsonl");
        let mut spool = Spool::open(&path).expect("open");
        spool.compact_after = 4096;
        let all = rows(0..1000);
        spool.append(&all).expect("append");
        let generation = spool.generation;
        let mut out = Vec::new();
        while spool.generation == generation {
            let chunk = spool.read_chunk(50).expect("read");
            out.extend(chunk.rows);
            spool.commit(chunk.pos).expect("commit");
        }
        assert!(path.exists(), "compacted, not finished");
        assert_eq!(spool.start, 0);
        assert!(out.len() >= 500 && out.len() < 1000);
        // Compaction again later, and a restart in between, lose nothing.
        let chunk = spool.read_chunk(50).expect("read");
        out.extend(chunk.rows);
        spool.commit(chunk.pos).expect("commit");
        let mut spool = Spool::open(&path).expect("reopen");
        spool.compact_after = 4096;
        out.extend(drain(&mut spool, 50));
        assert_eq!(out, all);
        assert!(!path.exists());
    }

    #[test]
    fn non_finite_telemetry_survives_the_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.jsonl");
        let mut spool = Spool::open(&path).expect("open");
        let at = Utc.timestamp_opt(1_700_000_000, 0).single().expect("time");
        let nan = Row::Telemetry(TelemetryRow {
            device_id: "1".into(),
            point: "p".into(),
            value: f64::NAN,
            raw: f64::INFINITY,
            at,
            unit: String::new(),
        });
        let event = Row::Event(ConnEventRow {
            device_id: "1".into(),
            event: ConnEvent::Connect,
            remote_addr: "10.0.0.1:5000".into(),
            detail: String::new(),
            at,
        });
        spool.append(&[nan, event.clone()]).expect("append");
        let back = drain(&mut spool, 10);
        assert_eq!(back.len(), 2);
        match &back[0] {
            Row::Telemetry(t) => assert!(t.value.is_nan() && t.raw.is_nan()),
            other => panic!("expected telemetry, got {other:?}"),
        }
        assert_eq!(back[1], event);
        assert_eq!(spool.skipped(), 0);
    }

    /// Lines as the release before units were stored wrote them (no `unit`), a non-finite
    /// one included: they replay, with an empty unit.
    #[test]
    fn a_spool_of_the_previous_release_replays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"t":"telemetry","device_id":"1001","point":"temperature","value":23.5,"raw":235.0,"at":"2026-11-30T10:00:00.123456Z"}"#,
                "\n",
                r#"{"t":"telemetry","device_id":"1001","point":"flow","value":null,"raw":7.0,"at":"2026-11-30T10:00:01Z"}"#,
                "\n",
            ),
        )
        .expect("write");
        let mut spool = Spool::open(&path).expect("open");
        let back = drain(&mut spool, 10);
        let at = Utc
            .with_ymd_and_hms(2026, 11, 30, 10, 0, 0)
            .single()
            .expect("time");
        assert_eq!(
            back[0],
            Row::Telemetry(TelemetryRow {
                device_id: "1001".into(),
                point: "temperature".into(),
                value: 23.5,
                raw: 235.0,
                at: at + chrono::Duration::microseconds(123_456),
                unit: String::new(),
            })
        );
        match &back[1] {
            Row::Telemetry(t) => {
                assert!(t.value.is_nan());
                assert_eq!((t.raw, t.unit.as_str()), (7.0, ""));
            }
            other => panic!("expected telemetry, got {other:?}"),
        }
        assert_eq!(back.len(), 2);
        assert_eq!(spool.skipped(), 0);
    }

    #[test]
    fn a_unit_is_spooled_and_an_empty_one_is_left_out() {
        let line = serde_json::to_string(&row(0)).expect("json");
        assert!(line.contains(r#""unit":"°C""#), "{line}");
        let line = serde_json::to_string(&row(1)).expect("json");
        assert!(!line.contains("unit"), "{line}");
    }

    #[test]
    fn packets_stop_at_half_the_bound_telemetry_at_the_bound_and_the_rest_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path().join("s.jsonl")).expect("open");
        let at = Utc.timestamp_opt(1_700_000_000, 0).single().expect("time");
        let packet = |i: u32| {
            Row::Packet(PacketRow {
                device_id: format!("dev{i}"),
                direction: Direction::In,
                kind: PacketKind::Modbus,
                bytes: vec![7; 16],
                at,
            })
        };
        let event = Row::Event(ConnEventRow {
            device_id: "1".into(),
            event: ConnEvent::Connect,
            remote_addr: "10.0.0.1:5000".into(),
            detail: String::new(),
            at,
        });
        let line = |r: &Row| serde_json::to_vec(r).expect("json").len() as u64 + 1;
        let max = 10_000;
        spool.set_max_bytes(max);

        // Packets only: they stop at half the bound.
        let packets: Vec<Row> = (0..200).map(packet).collect();
        let dropped = spool.append(&packets).expect("append");
        let p = line(&packets[0]);
        assert!(spool.bytes() <= max / 2 && spool.bytes() > max / 2 - p);
        let kept_packets = 200 - dropped.packets as usize;
        assert_eq!(dropped.telemetry, 0);
        assert_eq!(spool.waiting(), kept_packets as u64);

        // Telemetry fills the other half, then stops too.
        let telemetry: Vec<Row> = (0..200).map(row).collect();
        let dropped = spool.append(&telemetry).expect("append");
        let t = telemetry.iter().map(line).max().expect("rows");
        assert!(
            spool.bytes() <= max && spool.bytes() > max - t,
            "{}",
            spool.bytes()
        );
        assert_eq!(dropped.packets, 0);
        let kept_telemetry = 200 - dropped.telemetry as usize;
        assert!(kept_telemetry > 0 && dropped.telemetry > 0);

        // Full: an event is kept all the same, past the bound; more packets are not.
        let dropped = spool.append(&[packet(1), event.clone()]).expect("append");
        assert_eq!((dropped.packets, dropped.telemetry), (1, 0));
        assert!(spool.bytes() > max);

        // What was kept comes back in order, oldest first.
        let mut expected: Vec<Row> = packets.into_iter().take(kept_packets).collect();
        expected.extend(telemetry.into_iter().take(kept_telemetry));
        expected.push(event);
        assert_eq!(drain(&mut spool, 1000), expected);
        assert_eq!(spool.bytes(), 0);
    }
}
