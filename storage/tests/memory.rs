//! The conformance suite against the in-memory backend.

mod conformance;

use conformance::Backend;
use eventfold_storage::{MemoryStore, StoreOptions};

struct Memory;

impl Backend for Memory {
    type Store = MemoryStore;
    fn open(&mut self, options: StoreOptions) -> MemoryStore {
        MemoryStore::with_options(options)
    }
    fn reopen(&mut self, store: MemoryStore) -> MemoryStore {
        store.reopen()
    }
}

conformance_suite!(Memory);
