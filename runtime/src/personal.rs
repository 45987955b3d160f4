//! Personal data and crypto-shredding: a [`Personal`] value belongs to a
//! data subject and is stored encrypted with that subject's key
//! (XChaCha20-Poly1305, a random 24-byte nonce per value). Forgetting the
//! subject destroys the key, and from then on every stored copy of the
//! value (in events, snapshots, read models, process managers' states and
//! outboxes, backups taken afterwards) reads as shredded, without
//! rewriting any of them.
//!
//! ```
//! use eventfold_runtime::personal::Personal;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Clone, Debug)]
//! enum AccountEvent {
//!     // The owner's name is personal data of the subject "customer-7".
//!     Opened { owner: Personal<String> },
//!     Deposited { amount: u64 },
//! }
//!
//! let opened = AccountEvent::Opened { owner: Personal::new("customer-7", "Ann".to_string()) };
//! if let AccountEvent::Opened { owner } = &opened {
//!     // Once the subject is forgotten, `get` is `None` everywhere.
//!     assert_eq!(owner.get().map(String::as_str), Some("Ann"));
//! }
//! ```
//!
//! Values are sealed when the runtime encodes them and opened when it
//! decodes them: in aggregates, projections (through `ReadModelTx` and
//! `ReadModelView`), event handlers and process managers. Encoding one
//! anywhere else fails rather than write it in the clear; decode events
//! of your own reads inside [`SubjectKeys::scope`]
//! (`RuntimeHandle::subject_keys`).
//!
//! **Architecture Invariant:** a `Personal` value's plaintext is never
//! encoded: outside a key scope its serialization fails.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use eventfold_storage::{EventStore, SUBJECT_KEY_BYTES, SubjectKey, payload};
use foldhash::HashMap;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::sync::{Arc, RwLock};

/// Most subjects whose keys (or forgotten marks) are kept in memory; past
/// it the cache is emptied and keys are read from the store again.
pub const SUBJECT_KEYS_CACHED_MAX: usize = 65_536;

/// Bytes of a nonce.
const NONCE_BYTES: usize = 24;

/// A value of a data subject: stored encrypted with the subject's key,
/// shredded once the subject is forgotten.
#[derive(Clone, PartialEq, Eq)]
pub struct Personal<T> {
    subject: String,
    /// `None` once shredded.
    value: Option<T>,
}

impl<T> std::fmt::Debug for Personal<T> {
    // Personal data stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.value.is_some() {
            "…"
        } else {
            "shredded"
        };
        write!(f, "Personal({}: {state})", self.subject)
    }
}

impl<T> Personal<T> {
    /// `value`, belonging to data subject `subject`.
    pub fn new(subject: impl Into<String>, value: T) -> Self {
        Self {
            subject: subject.into(),
            value: Some(value),
        }
    }

    /// The data subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The value; `None` when it is shredded, or its subject has been
    /// forgotten since it was read (as far as this thread's key scope
    /// knows).
    pub fn get(&self) -> Option<&T> {
        if forgotten_in_scope(&self.subject) {
            return None;
        }
        self.value.as_ref()
    }

    /// Whether the value is gone: its subject was forgotten.
    pub fn is_shredded(&self) -> bool {
        self.get().is_none()
    }
}

/// How a value is stored: its subject, a nonce and the ciphertext (empty
/// for a value stored after it was shredded).
#[derive(Serialize, Deserialize)]
struct Sealed {
    subject: String,
    nonce: [u8; NONCE_BYTES],
    ciphertext: Vec<u8>,
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sealed = match &self.value {
            None => Sealed {
                subject: self.subject.clone(),
                nonce: [0; NONCE_BYTES],
                ciphertext: Vec::new(),
            },
            Some(value) => in_scope(|keys| keys.seal(&self.subject, value))
                .ok_or_else(|| S::Error::custom(OUT_OF_SCOPE))?
                .map_err(S::Error::custom)?,
        };
        sealed.serialize(serializer)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let sealed = Sealed::deserialize(deserializer)?;
        if sealed.ciphertext.is_empty() {
            return Ok(Self {
                subject: sealed.subject,
                value: None,
            });
        }
        let value = in_scope(|keys| keys.open::<T>(&sealed))
            .ok_or_else(|| D::Error::custom(OUT_OF_SCOPE))?
            .map_err(D::Error::custom)?;
        Ok(Self {
            subject: sealed.subject,
            value,
        })
    }
}

const OUT_OF_SCOPE: &str =
    "personal data is encoded and decoded by the runtime only (outside it, use SubjectKeys::scope)";

/// Why a personal value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersonalError {
    /// The subject was forgotten: nothing may be stored for it again.
    #[error("data subject {0:?} was forgotten: nothing personal may be stored for it again")]
    Forgotten(String),
    /// Its key could not be read or created.
    #[error("the key of data subject {subject:?} could not be read or created: {reason}")]
    Key {
        /// The subject.
        subject: String,
        /// The store's error.
        reason: String,
    },
    /// The ciphertext does not open with the subject's key (damaged bytes).
    #[error("a value of data subject {0:?} does not decrypt with its key")]
    Damaged(String),
    /// The value did not encode or decode.
    #[error(transparent)]
    Payload(#[from] payload::PayloadError),
}

/// The subjects' keys of one runtime: read from the store and cached,
/// created on first use, forgotten on request.
pub struct SubjectKeys {
    store: Arc<dyn EventStore>,
    cache: RwLock<HashMap<String, SubjectKey>>,
}

impl std::fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKeys")
    }
}

thread_local! {
    static SCOPE: RefCell<Option<Arc<SubjectKeys>>> = const { RefCell::new(None) };
}

fn in_scope<R>(f: impl FnOnce(&SubjectKeys) -> R) -> Option<R> {
    let keys = SCOPE.with(|scope| scope.borrow().clone())?;
    Some(f(&keys))
}

fn forgotten_in_scope(subject: &str) -> bool {
    SCOPE.with(|scope| {
        scope.borrow().as_ref().is_some_and(|keys| {
            let cache = keys.cache.read().unwrap_or_else(|p| p.into_inner());
            matches!(cache.get(subject), Some(SubjectKey::Forgotten))
        })
    })
}

/// Makes `keys` this thread's key scope for as long as the thread runs
/// (a consumer's, a process manager's or a shard's own thread).
pub(crate) fn install(keys: &Arc<SubjectKeys>) {
    SCOPE.with(|scope| *scope.borrow_mut() = Some(Arc::clone(keys)));
}

impl SubjectKeys {
    pub(crate) fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            cache: RwLock::new(HashMap::default()),
        }
    }

    /// Runs `f` with these keys as the thread's key scope: personal values
    /// encoded or decoded in it are sealed and opened with them.
    pub fn scope<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<SubjectKeys>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                SCOPE.with(|scope| *scope.borrow_mut() = previous);
            }
        }
        let previous = SCOPE.with(|scope| scope.borrow_mut().replace(Arc::clone(self)));
        let _restore = Restore(previous);
        f()
    }

    fn cached(&self, subject: &str) -> Option<SubjectKey> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
            .copied()
    }

    fn remember(&self, subject: &str, key: SubjectKey) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= SUBJECT_KEYS_CACHED_MAX {
            cache.clear();
        }
        cache.insert(subject.to_owned(), key);
    }

    /// The subject's key (`None`: forgotten), created when `create` and it
    /// has none. A read or a write of the store the first time a subject
    /// is met, on the calling thread: a point lookup in a small keyspace,
    /// and a write that waits for no sync.
    fn key(
        &self,
        subject: &str,
        create: bool,
    ) -> Result<Option<[u8; SUBJECT_KEY_BYTES]>, PersonalError> {
        let failed = |reason: String| PersonalError::Key {
            subject: subject.to_owned(),
            reason,
        };
        let key = match self.cached(subject) {
            Some(key) => key,
            None => match self
                .store
                .subject_key(subject)
                .map_err(|e| failed(e.to_string()))?
            {
                Some(key) => key,
                None if create => {
                    let fresh: [u8; SUBJECT_KEY_BYTES] =
                        XChaCha20Poly1305::generate_key(&mut OsRng).into();
                    self.store
                        .create_subject_key(subject, fresh)
                        .map_err(|e| failed(e.to_string()))?
                }
                None => return Err(failed("it has no key".into())),
            },
        };
        self.remember(subject, key);
        Ok(match key {
            SubjectKey::Active(bytes) => Some(bytes),
            SubjectKey::Forgotten => None,
        })
    }

    fn seal<T: Serialize>(&self, subject: &str, value: &T) -> Result<Sealed, PersonalError> {
        let key = self
            .key(subject, true)?
            .ok_or_else(|| PersonalError::Forgotten(subject.to_owned()))?;
        let plaintext = payload::encode(value)?;
        let cipher = XChaCha20Poly1305::new(&key.into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(&nonce, plaintext.as_slice())
            .map_err(|_| PersonalError::Damaged(subject.to_owned()))?;
        Ok(Sealed {
            subject: subject.to_owned(),
            nonce: nonce.into(),
            ciphertext,
        })
    }

    /// The value, or `None` when its subject was forgotten.
    fn open<T: DeserializeOwned>(&self, sealed: &Sealed) -> Result<Option<T>, PersonalError> {
        let Some(key) = self.key(&sealed.subject, false)? else {
            return Ok(None);
        };
        let cipher = XChaCha20Poly1305::new(&key.into());
        let plaintext = cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                sealed.ciphertext.as_slice(),
            )
            .map_err(|_| PersonalError::Damaged(sealed.subject.clone()))?;
        Ok(Some(payload::decode(&plaintext)?))
    }

    /// Forgets `subject` (see [`EventStore::forget_subject`]): its key is
    /// destroyed, and its values read as shredded from now on. True when it
    /// had a key (or had been forgotten) before.
    pub fn forget(&self, subject: &str) -> Result<bool, eventfold_storage::WriteError> {
        let before = self.store.forget_subject(subject)?;
        self.remember(subject, SubjectKey::Forgotten);
        Ok(before)
    }
}

#[cfg(test)]
mod tests;
