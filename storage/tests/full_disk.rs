//! A full disk: the store on a small filesystem of its own (a tmpfs of
//! `SMALL`), written until the disk is full. The failing append gets a typed
//! error, the store refuses writes until reopened (`Poisoned`), nothing
//! panics; after the filesystem grows, the store reopens, every acknowledged
//! event is there, positions are gapless, `verify` is clean, and it writes
//! again.
//!
//! Needs root (or CAP_SYS_ADMIN) to mount; without it the test says so and
//! is skipped, unless `EVENTFOLD_REQUIRE_MOUNT` is set, which makes a failed
//! mount fail it.

use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
use eventfold_storage::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const SMALL: &str = "size=24m";
const LARGE: &str = "size=512m";
const PAYLOAD_BYTES: usize = 16 * 1024;
const APPENDS_MAX: u64 = 100_000;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A mounted tmpfs, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(dir: &Path) -> Result<Option<Self>, String> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", SMALL, "tmpfs"])
            .arg(dir)
            .status();
        match status {
            Ok(status) if status.success() => Ok(Some(Self(dir.to_path_buf()))),
            other if std::env::var_os("EVENTFOLD_REQUIRE_MOUNT").is_some() => {
                Err(format!("could not mount a small filesystem: {other:?}"))
            }
            other => {
                eprintln!("skipped: could not mount a tmpfs (needs root): {other:?}");
                Ok(None)
            }
        }
    }

    fn grow(&self) -> Result<(), String> {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{LARGE}")])
            .arg(&self.0)
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("remount failed: {status}"))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn event(i: u64) -> NewEvent {
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&i.to_be_bytes());
    NewEvent::new("Filled", 1, payload, Metadata::new())
}

#[test]
fn a_full_disk_fails_the_append_poisons_the_store_and_loses_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let Some(mount) = Mount::new(dir.path())? else {
        return Ok(());
    };
    let path = dir.path().join("store");
    let store = RocksStore::open(&path, StoreOptions::default())?;
    let mut acknowledged = Vec::new();
    let mut failure = None;
    for i in 0..APPENDS_MAX {
        let stream = StreamId::new(format!("fill-{}", i % 8))?;
        match store.append(&stream, ExpectedVersion::Any, vec![event(i)]) {
            Ok(outcome) => acknowledged.push((stream, outcome.last_version(), i)),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let failure = failure.ok_or("the small filesystem never filled up")?;
    assert!(
        matches!(failure, AppendError::Io(_) | AppendError::Poisoned),
        "{failure:?}"
    );
    println!(
        "full after {} acknowledged appends: {failure}",
        acknowledged.len()
    );
    // Refuses writes until reopened.
    let again = store.append(
        &StreamId::new("fill-0")?,
        ExpectedVersion::Any,
        vec![event(u64::MAX)],
    );
    assert!(matches!(again, Err(AppendError::Poisoned)), "{again:?}");
    store.close();
    drop(store);

    mount.grow()?;
    let store = RocksStore::open(&path, StoreOptions::default())?;
    for (stream, version, i) in &acknowledged {
        let events = store.read_stream(stream, *version, Direction::Forward, 1)?;
        let stored = events
            .first()
            .ok_or(format!("acknowledged {stream}@{version} is missing"))?;
        assert_eq!(stored.payload[..8], i.to_be_bytes(), "{stream}@{version}");
    }
    let head = store.head();
    assert!(head >= acknowledged.len() as u64);
    let mut next = 1;
    while next <= head {
        let slice = store.read_all(next, 1024, &Filter::all())?;
        for recorded in &slice.events {
            assert_eq!(recorded.position, next, "positions are gapless");
            next += 1;
        }
    }
    assert!(store.verify()?.is_clean());
    store.append(
        &StreamId::new("fill-0")?,
        ExpectedVersion::Any,
        vec![event(0)],
    )?;
    store.close();
    Ok(())
}
