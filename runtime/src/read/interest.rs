//! What a subscriber wants of the global log: the events its filter
//! matches (after upcasting), and the deletions of the streams it reads.
//!
//! A deletion is an event of the store's `$deletions` stream (see
//! [`eventfold_storage::lifecycle`]). Projections and event handlers are
//! told of the deletions of streams in the categories their filter reads
//! (of every stream when it names none), whatever event types it names;
//! the store is asked for `$deletions` too. A process manager gets them
//! only when its filter names the `$deletions` category or the
//! `$stream-deleted` type, as plain events for its `associate`.

use crate::evolution::Upcasters;
use eventfold_domain::RecordedEvent;
use eventfold_storage::{DELETIONS_STREAM, Filter, STREAM_DELETED_EVENT, StreamDeletion};

/// The category of the deletions stream.
const DELETIONS_CATEGORY: &str = DELETIONS_STREAM;

/// A subscriber's filter and whether it is told of deletions.
#[derive(Clone, Debug)]
pub(crate) struct Interest {
    filter: Filter,
    /// Told of the deletions of the streams its filter reads.
    deletions: bool,
    /// Its filter names deletions itself.
    named: bool,
}

/// Whether `event` is a deletion the store recorded.
pub(crate) fn is_deletion(event: &RecordedEvent) -> bool {
    event.event_type == STREAM_DELETED_EVENT && event.stream_id.as_str() == DELETIONS_STREAM
}

impl Interest {
    /// The events `filter` matches; deletions only when it names them.
    pub(crate) fn events(filter: Filter) -> Self {
        let named = filter.categories.iter().any(|c| c == DELETIONS_CATEGORY)
            || filter.event_types.iter().any(|t| t == STREAM_DELETED_EVENT);
        Self {
            filter,
            deletions: false,
            named,
        }
    }

    /// The events `filter` matches and the deletions of the streams it
    /// reads.
    pub(crate) fn with_deletions(filter: Filter) -> Self {
        Self {
            deletions: true,
            ..Self::events(filter)
        }
    }

    /// What to ask the store for: widened to the stored type names steps
    /// take, and to the deletions stream when deletions are wanted.
    pub(crate) fn store_filter(&self, upcasters: &Upcasters) -> Filter {
        let mut filter = upcasters.widen(&self.filter);
        if self.deletions {
            if !filter.categories.is_empty()
                && !filter.categories.iter().any(|c| c == DELETIONS_CATEGORY)
            {
                filter.categories.push(DELETIONS_CATEGORY.to_owned());
            }
            if !filter.event_types.is_empty()
                && !filter.event_types.iter().any(|t| t == STREAM_DELETED_EVENT)
            {
                filter.event_types.push(STREAM_DELETED_EVENT.to_owned());
            }
        }
        filter
    }

    /// Whether the subscriber gets every event: no event need be checked.
    pub(crate) fn takes_all(&self) -> bool {
        self.filter.is_all() && self.deletions
    }

    /// Whether the subscriber gets `event` read from the store with
    /// [`Interest::store_filter`] when no upcasting step widened it: only a
    /// deletion needs a look (the store matched the rest).
    pub(crate) fn wants_stored(&self, event: &RecordedEvent) -> bool {
        !is_deletion(event) || self.wants(event)
    }

    /// Whether the subscriber gets `event` (upcast already).
    pub(crate) fn wants(&self, event: &RecordedEvent) -> bool {
        if !is_deletion(event) {
            return self.filter.matches(event);
        }
        if self.named {
            return self.filter.matches(event);
        }
        self.deletions
            && StreamDeletion::of(event).is_some_and(|d| {
                self.filter.categories.is_empty()
                    || self.filter.categories.iter().any(|c| c == d.category())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_domain::{Metadata, StreamId, Timestamp};
    use eventfold_storage::{DeletionKind, payload};

    fn deletion_of(stream: &str) -> TestResult<RecordedEvent> {
        let deletion = StreamDeletion {
            stream: stream.into(),
            kind: DeletionKind::Deleted,
            first_version: 3,
            version: 2,
        };
        Ok(RecordedEvent {
            stream_id: StreamId::new(DELETIONS_STREAM)?,
            version: 1,
            position: 7,
            recorded_at: Timestamp::from_micros(1),
            event_type: STREAM_DELETED_EVENT.into(),
            schema_version: 1,
            payload: payload::encode(&deletion)?,
            metadata: Metadata::new(),
        })
    }

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    #[test]
    fn projections_hear_of_deletions_in_their_categories_whatever_their_types() -> TestResult {
        let account = deletion_of("account-1")?;
        let order = deletion_of("order-1")?;
        let by_type = Interest::with_deletions(Filter {
            event_types: vec!["Deposited".into()],
            categories: vec!["account".into()],
        });
        assert!(by_type.wants(&account));
        assert!(!by_type.wants(&order));
        let all = Interest::with_deletions(Filter::all());
        assert!(all.wants(&account) && all.wants(&order));
        let store = by_type.store_filter(&Upcasters::new());
        assert!(store.matches(&account));
        Ok(())
    }

    #[test]
    fn process_managers_hear_of_deletions_only_when_their_filter_names_them() -> TestResult {
        let account = deletion_of("account-1")?;
        assert!(!Interest::events(Filter::all()).wants(&account));
        assert!(!Interest::events(Filter::categories(["account"])).wants(&account));
        assert!(Interest::events(Filter::categories([DELETIONS_STREAM])).wants(&account));
        assert!(Interest::events(Filter::event_types([STREAM_DELETED_EVENT])).wants(&account));
        Ok(())
    }
}
