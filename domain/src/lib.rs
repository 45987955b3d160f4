//! The modelling API of eventfold: the types every layer agrees on.
//!
//! This crate has no I/O, no actors and no storage. It defines what an event
//! is ([`NewEvent`] before it is stored, [`RecordedEvent`] after), the
//! identifiers that travel with it ([`Metadata`]), and the optimistic
//! concurrency check an append carries ([`ExpectedVersion`]).
//!
//! ```
//! use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
//!
//! let stream = StreamId::new("account-42")?;
//! assert_eq!(stream.category(), "account");
//! let event = NewEvent::new("Deposited", 1, vec![1, 2, 3], Metadata::new());
//! assert!(ExpectedVersion::NoStream.check(0).is_ok());
//! assert!(ExpectedVersion::Exact(3).check(2).is_err());
//! # let _ = event;
//! # Ok::<(), eventfold_domain::StreamIdError>(())
//! ```
#![deny(missing_docs)]

mod aggregate;
mod event;
mod fixture;
mod ids;
mod stream;
mod time;
mod version;

pub use aggregate::{Aggregate, DomainEvent};
pub use event::{Headers, Metadata, NewEvent, RecordedEvent};
pub use fixture::{AggregateFixture, FixtureOutcome};
pub use ids::{CausationId, CommandId, CorrelationId, EventId};
pub use stream::{STREAM_ID_BYTES_MAX, StreamId, StreamIdError, category_of};
pub use time::{Clock, SystemClock, Timestamp, VirtualClock};
pub use version::{ExpectedVersion, VersionMismatch};
