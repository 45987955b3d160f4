//! What an aggregate actor is busy with: the commands in flight (decided,
//! answered in order once durable) and those held while it loads.

use crate::command::messages::{CommandResult, Execute, Reply};
use crate::error::LoadError;
use eventfold_domain::{Aggregate, CommandId};
use eventfold_storage::Snapshot;
use std::collections::VecDeque;
use std::time::Instant;

pub(super) enum EntryState<A: Aggregate> {
    /// The append is in the writer's hands.
    Waiting {
        events: Vec<A::Event>,
        submitted: Instant,
        /// The state as of this append's last event, saved once the append
        /// is durable (see [`Book::snapshot_taken`]).
        snapshot: Option<Box<Snapshot>>,
    },
    /// The answer is known; it leaves when every earlier entry has.
    Done(CommandResult<A>),
    /// A retry (same command id) of the append entry `seq`, still in flight.
    DuplicateOf(u64),
}

pub(super) struct Entry<A: Aggregate> {
    pub(super) seq: u64,
    pub(super) reply: Reply<A>,
    pub(super) received: Instant,
    pub(super) command_id: Option<CommandId>,
    /// True for entries whose answer comes from an append.
    pub(super) appended: bool,
    pub(super) state: EntryState<A>,
}

/// The commands an actor is busy with: those in flight (decided, their
/// answers not yet sent, in order) and those held while it loads. Boxed, and
/// only while there are any: an idle resident actor pays one pointer, not
/// two queue headers and the buffer its last burst of commands grew.
pub(super) struct Queues<A: Aggregate>(pub(super) Option<Box<Busy<A>>>);

pub(super) struct Busy<A: Aggregate> {
    pub(super) in_flight: VecDeque<Entry<A>>,
    /// Commands that arrived while a load or reload was pending.
    pub(super) held: VecDeque<Execute<A>>,
    /// The sequence number of the next in-flight entry. It starts again
    /// from 0 with each new box: the box is freed only once no entry is in
    /// flight, so no answer of an old entry can arrive after.
    pub(super) next_seq: u64,
    /// A snapshot whose events are durable, waiting for the write of the
    /// one before it to finish.
    pub(super) landed_snapshot: Option<Box<Snapshot>>,
    /// The last load failed with this error and no command was waiting:
    /// the next command is answered with it.
    pub(super) load_failed: Option<LoadError>,
}

impl<A: Aggregate> Queues<A> {
    pub(super) fn busy(&mut self) -> &mut Busy<A> {
        self.0.get_or_insert_with(|| {
            Box::new(Busy {
                in_flight: VecDeque::new(),
                held: VecDeque::new(),
                next_seq: 0,
                landed_snapshot: None,
                load_failed: None,
            })
        })
    }

    pub(super) fn in_flight_len(&self) -> usize {
        self.0.as_ref().map_or(0, |busy| busy.in_flight.len())
    }

    pub(super) fn in_flight_is_empty(&self) -> bool {
        self.in_flight_len() == 0
    }

    /// The in-flight queue, created if there is none.
    pub(super) fn in_flight(&mut self) -> &mut VecDeque<Entry<A>> {
        &mut self.busy().in_flight
    }

    pub(super) fn front_is_done(&self) -> bool {
        self.0.as_ref().is_some_and(|busy| {
            matches!(
                busy.in_flight.front(),
                Some(Entry {
                    state: EntryState::Done(_),
                    ..
                })
            )
        })
    }

    /// The sequence number of the entry with command id `id` whose append
    /// is in flight.
    pub(super) fn waiting_with_id(&self, id: CommandId) -> Option<u64> {
        self.0
            .as_ref()?
            .in_flight
            .iter()
            .find(|e| e.command_id == Some(id) && matches!(e.state, EntryState::Waiting { .. }))
            .map(|e| e.seq)
    }

    pub(super) fn held_len(&self) -> usize {
        self.0.as_ref().map_or(0, |busy| busy.held.len())
    }

    pub(super) fn held_is_empty(&self) -> bool {
        self.held_len() == 0
    }

    pub(super) fn hold(&mut self, msg: Execute<A>) {
        self.busy().held.push_back(msg);
    }

    pub(super) fn pop_held(&mut self) -> Option<Execute<A>> {
        self.0.as_mut()?.held.pop_front()
    }

    pub(super) fn take_held(&mut self) -> VecDeque<Execute<A>> {
        self.0
            .as_mut()
            .map(|busy| std::mem::take(&mut busy.held))
            .unwrap_or_default()
    }

    /// Keeps a load's error for the next command.
    pub(super) fn set_load_failed(&mut self, error: LoadError) {
        self.busy().load_failed = Some(error);
    }

    /// The error of a failed load no command has been told of.
    pub(super) fn take_load_failed(&mut self) -> Option<LoadError> {
        self.0.as_mut()?.load_failed.take()
    }

    pub(super) fn load_failed(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|busy| busy.load_failed.is_some())
    }

    /// Frees the box once both queues are empty.
    pub(super) fn release_if_idle(&mut self) {
        if self.0.as_ref().is_some_and(|busy| {
            busy.in_flight.is_empty()
                && busy.held.is_empty()
                && busy.landed_snapshot.is_none()
                && busy.load_failed.is_none()
        }) {
            self.0 = None;
        }
    }
}
