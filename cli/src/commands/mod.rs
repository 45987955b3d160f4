//! One module per kind of command: the log, the readers, the actions that
//! go through the service, the store's upkeep.

pub(crate) mod actions;
pub(crate) mod log;
pub(crate) mod readers;
pub(crate) mod upkeep;
