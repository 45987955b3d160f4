//! Which events of the global log a read returns.

use eventfold_domain::RecordedEvent;

/// Which events of the global log a read returns. Empty lists mean "all".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Keep only events of these types.
    pub event_types: Vec<String>,
    /// Keep only events of streams of these categories.
    pub categories: Vec<String>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events of these types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        Self {
            event_types: types.into_iter().map(Into::into).collect(),
            categories: Vec::new(),
        }
    }

    /// Only events of streams in these categories.
    pub fn categories<I: IntoIterator<Item = S>, S: Into<String>>(categories: I) -> Self {
        Self {
            event_types: Vec::new(),
            categories: categories.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.matches_parts(
            event.stream_id.as_str().as_bytes(),
            event.event_type.as_bytes(),
        )
    }

    /// Whether an event of stream id `stream` and type `event_type`, as
    /// their bytes, passes the filter: for a record not yet decoded.
    pub(crate) fn matches_parts(&self, stream: &[u8], event_type: &[u8]) -> bool {
        (self.event_types.is_empty() || self.event_types.iter().any(|t| t.as_bytes() == event_type))
            && (self.categories.is_empty() || {
                let category = category_of(stream);
                self.categories.iter().any(|c| c.as_bytes() == category)
            })
    }

    /// True when the filter keeps every event.
    pub fn is_all(&self) -> bool {
        self.event_types.is_empty() && self.categories.is_empty()
    }
}

/// The category of a stream id's bytes: the part before the first `-`
/// (as `eventfold_domain::category_of`).
fn category_of(stream: &[u8]) -> &[u8] {
    stream
        .iter()
        .position(|&b| b == b'-')
        .map_or(stream, |dash| &stream[..dash])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_s_parts_match_as_the_decoded_event_would() {
        let filter = Filter {
            event_types: vec!["Deposited".into()],
            categories: vec!["account".into()],
        };
        assert!(filter.matches_parts(b"account-1", b"Deposited"));
        assert!(filter.matches_parts(b"account", b"Deposited"));
        assert!(!filter.matches_parts(b"accounts-1", b"Deposited"));
        assert!(!filter.matches_parts(b"account-1", b"Withdrawn"));
        assert!(!filter.matches_parts(b"-account", b"Deposited"));
        assert!(Filter::all().matches_parts(b"", b""));
        for id in ["account-1-x", "plain", "-x", "a-"] {
            assert_eq!(
                category_of(id.as_bytes()),
                eventfold_domain::category_of(id).as_bytes()
            );
        }
    }
}
