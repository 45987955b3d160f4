//! How a store comes back after a crash or a damaged disk: the engine's
//! errors at open made typed (a damaged file, a store in use), and
//! [`RocksStore::open_salvaging`], the explicit way to open a store whose
//! write-ahead log is damaged before its end.
//!
//! RocksDB's default recovery of the write-ahead log (point in time) stops
//! replay at the first damaged record and keeps whatever came before: right
//! for a torn tail after a crash, wrong for damage before the last synced
//! record, which would drop acknowledged events without a word. `open`
//! therefore recovers with `TolerateCorruptedTailRecords`: an incomplete
//! record at the end of the log (a write cut short, never acknowledged) is
//! dropped, any other damage refuses the open before anything is written.

use super::RocksStore;
use super::options::db_options;
use crate::codec;
use crate::error::{DamagedFile, OpenError};
use crate::keyspaces::CF_GLOBAL;
use crate::options::StoreOptions;
use rocksdb::{DB, DBRecoveryMode, ErrorKind, IteratorMode};
use std::path::{Path, PathBuf};

/// How the write-ahead log is replayed at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Drop only an incomplete last record; refuse any other damage.
    Strict,
    /// Keep the longest consistent prefix (`open_salvaging`).
    Salvage,
}

impl Recovery {
    pub(crate) fn mode(self) -> DBRecoveryMode {
        match self {
            Recovery::Strict => DBRecoveryMode::TolerateCorruptedTailRecords,
            Recovery::Salvage => DBRecoveryMode::PointInTime,
        }
    }
}

/// The typed form of an engine error at open: damage, a held lock, or the
/// engine's own words.
pub(crate) fn open_error(path: &Path, error: rocksdb::Error) -> OpenError {
    let message = error.as_ref();
    if error.kind() == ErrorKind::Corruption {
        let mut damage = damage_from(error.into_string());
        if damage.file.is_none() {
            damage.file = damaged_file_in_info_log(path);
        }
        return OpenError::Damaged(damage);
    }
    // RocksDB's lock file: "While lock file: {dir}/LOCK: Resource
    // temporarily unavailable" when another process holds it, "lock hold by
    // current process ... {dir}/LOCK: No locks available" when this one does.
    if error.kind() == ErrorKind::IOError
        && (message.contains("/LOCK:") || message.contains("lock hold by current process"))
    {
        return OpenError::InUse(path.to_path_buf());
    }
    OpenError::Engine(error.into_string())
}

/// A damaged file as RocksDB's message names it: the first word that is a
/// path ending in one of the store's file kinds (`.log`, `.sst`,
/// `MANIFEST-*`); the whole message is kept as the detail.
pub(super) fn damage_from(detail: String) -> DamagedFile {
    let file = detail
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '\'' || c == '"')
        .map(|word| word.trim_end_matches([':', '.', ')']))
        .find(|word| {
            word.contains('/')
                && (word.ends_with(".log")
                    || word.ends_with(".sst")
                    || word
                        .rsplit('/')
                        .next()
                        .is_some_and(|name| name.starts_with("MANIFEST-")))
        })
        .map(std::path::PathBuf::from);
    DamagedFile { file, detail }
}

/// Bytes read from the end of RocksDB's info log to find a damaged file.
const INFO_LOG_TAIL_BYTES_MAX: u64 = 1 << 20;

/// The damaged file as RocksDB's info log (`LOG` in the store's directory)
/// names it. For a damaged write-ahead log the engine's error says only
/// "Corruption: checksum mismatch"; the recovery's warning in the info log,
/// written just before, names the `.log` file ("…/000004.log: dropping 2421
/// bytes; Corruption: checksum mismatch"). The last such line of the log's
/// tail is the open that just failed.
fn damaged_file_in_info_log(path: &Path) -> Option<PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    let mut log = std::fs::File::open(path.join("LOG")).ok()?;
    let length = log.metadata().ok()?.len();
    log.seek(SeekFrom::Start(
        length.saturating_sub(INFO_LOG_TAIL_BYTES_MAX),
    ))
    .ok()?;
    let mut tail = Vec::new();
    log.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .filter(|line| line.contains("Corruption"))
        .find_map(|line| damage_from(line.to_owned()).file)
}

/// What [`RocksStore::open_salvaging`] kept and what it could not.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SalvageReport {
    /// The damage that a plain `open` refused, or `None` when the store
    /// opened cleanly and nothing was lost.
    pub damage: Option<DamagedFile>,
    /// The last position kept: the store holds positions 1 to `head`, gapless.
    pub head: u64,
    /// The highest position readable anywhere in the store's files,
    /// skipping damaged records (at least `head`).
    pub last_position_found: u64,
    /// Positions past `head` that were found and could not be kept, because
    /// a damaged record precedes them: `last_position_found - head`. Records
    /// inside the damage itself cannot be counted; a gap shows there too.
    pub positions_lost: u64,
    /// Where the write-ahead log files were copied, as they were, before the
    /// salvage replaced them (`None` when nothing was damaged).
    pub kept_logs: Option<PathBuf>,
}

impl RocksStore {
    /// Opens a store that [`RocksStore::open`] refused with
    /// [`OpenError::Damaged`] because its write-ahead log is damaged before
    /// its end, keeping the longest consistent prefix: every event up to
    /// the first damaged record, gapless, and nothing after it.
    ///
    /// Before it changes anything it copies the store's `.log` files into
    /// `salvaged-logs-{unix ms}/` inside `path` (a folder RocksDB ignores),
    /// and it reports how many positions were found past the damage and
    /// dropped. A store that opens cleanly is opened as `open` does, with
    /// nothing lost and nothing copied. Damage that no prefix can repair (a
    /// MANIFEST cut short, table files the log's prefix does not explain) is
    /// still refused.
    ///
    /// ```
    /// use eventfold_storage::{RocksStore, StoreOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (store, report) = RocksStore::open_salvaging(dir.path(), StoreOptions::default())?;
    /// assert_eq!((report.head, report.positions_lost), (0, 0));
    /// assert!(report.damage.is_none());
    /// # drop(store);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_salvaging(
        path: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<(Self, SalvageReport), OpenError> {
        let path = path.as_ref();
        let damage = match Self::open_with(path, options.clone(), Recovery::Strict) {
            Ok(store) => {
                let head = crate::api::EventStore::head(&store);
                let report = SalvageReport {
                    damage: None,
                    head,
                    last_position_found: head,
                    positions_lost: 0,
                    kept_logs: None,
                };
                return Ok((store, report));
            }
            Err(OpenError::Damaged(damage)) => damage,
            Err(other) => return Err(other),
        };
        let last_position_found = last_position_readable(path, &options)?;
        let kept_logs = keep_logs(path)?;
        let store = Self::open_with(path, options, Recovery::Salvage)?;
        let head = crate::api::EventStore::head(&store);
        tracing::warn!(
            path = %path.display(),
            head,
            last_position_found,
            damage = %damage,
            "salvaged a damaged store"
        );
        let report = SalvageReport {
            damage: Some(damage),
            head,
            last_position_found: last_position_found.max(head),
            positions_lost: last_position_found.saturating_sub(head),
            kept_logs: Some(kept_logs),
        };
        Ok((store, report))
    }
}

/// The highest position in the global log when the log is replayed
/// skipping every damaged record, read-only: nothing is written.
fn last_position_readable(path: &Path, options: &StoreOptions) -> Result<u64, OpenError> {
    let (mut db_options, families) = db_options(options)?;
    db_options.create_if_missing(false);
    db_options.set_wal_recovery_mode(DBRecoveryMode::SkipAnyCorruptedRecord);
    let db = DB::open_cf_descriptors_read_only(&db_options, path, families, false)
        .map_err(|e| open_error(path, e))?;
    let cf = db
        .cf_handle(CF_GLOBAL)
        .ok_or_else(|| OpenError::Engine("column family global is missing".into()))?;
    // Skipping damage, the last key may be unreadable too: walk back to the
    // last one that parses.
    for item in db.iterator_cf(cf, IteratorMode::End) {
        let (key, _) = item.map_err(|e| open_error(path, e))?;
        if let Some(position) = codec::parse_u64_key(&key) {
            return Ok(position);
        }
    }
    Ok(0)
}

/// Copies the store's write-ahead log files into a new folder of `path`.
fn keep_logs(path: &Path) -> Result<PathBuf, OpenError> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let kept = path.join(format!("salvaged-logs-{millis}"));
    std::fs::create_dir(&kept)?;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".log") && entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), kept.join(&name))?;
        }
    }
    if let Ok(dir) = std::fs::File::open(&kept) {
        dir.sync_all()?;
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_messages_name_their_file() {
        let sst = damage_from(
            "Corruption: block checksum mismatch: stored = 1, computed = 2, type = 1  in /tmp/s/000012.sst offset 0 size 3863".into(),
        );
        assert_eq!(sst.file, Some(PathBuf::from("/tmp/s/000012.sst")));
        let manifest =
            damage_from("Corruption: truncated record body in file /tmp/s/MANIFEST-000005".into());
        assert_eq!(manifest.file, Some(PathBuf::from("/tmp/s/MANIFEST-000005")));
        let none = damage_from("Corruption: checksum mismatch".into());
        assert_eq!(none.file, None);
    }
}
