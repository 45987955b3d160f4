//! A consumer's dead letters: events its error policy parked (in
//! `$parked.{id}`, keyed by position), the streams held behind them, and
//! their retry or skip on request.

use super::consumer::{Consumer, PARKED_LIST_MAX, Run};
use crate::error::{ParkedError, ProjectionError};
use crate::read::interest::Interest;
use crate::read::projection::ParkedEvent;
use crate::read::subscription::read_at;
use eventfold_domain::RecordedEvent;
use eventfold_storage::{Corruption, EventStore, payload};
use std::sync::atomic::Ordering;

pub(super) fn parked_key(position: u64) -> Vec<u8> {
    position.to_be_bytes().to_vec()
}

impl Consumer {
    pub(super) fn park(&mut self, run: &mut Run, parked: ParkedEvent) {
        match payload::encode(&parked) {
            Ok(bytes) => {
                *run.held.entry(parked.stream.clone()).or_default() += 1;
                run.parked.push((parked_key(parked.position), Some(bytes)));
                self.shared.parked.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(consumer = %self.shared.id, %error, "a parked event could not be encoded")
            }
        }
    }

    /// Retries (or skips) a parked event, then the events held behind it.
    pub(super) fn retry_parked(
        &mut self,
        run: &mut Run,
        position: u64,
        skip: bool,
    ) -> Result<(), ProjectionError> {
        // Start from a clean slate: what is pending is committed first.
        let through = run.sub.next() - 1;
        self.commit(run, through, false)?;
        let model = self.shared.parked_model.clone();
        let entries = self.store.read_model_scan(&model, b"", PARKED_LIST_MAX)?;
        let parked: Vec<ParkedEvent> = entries
            .iter()
            .filter_map(|(_, v)| payload::decode::<ParkedEvent>(v).ok())
            .collect();
        let Some(target) = parked.iter().find(|p| p.position == position).cloned() else {
            return Err(ParkedError::NotParked(position).into());
        };
        if parked
            .iter()
            .any(|p| p.stream == target.stream && p.position < position)
        {
            return Err(ParkedError::HeldBehind {
                position,
                stream: target.stream,
            }
            .into());
        }
        // The target, then every event held behind it, in order, until one fails.
        let mut queue: Vec<ParkedEvent> = parked
            .into_iter()
            .filter(|p| p.stream == target.stream && p.position >= position)
            .collect();
        queue.sort_by_key(|p| p.position);
        let mut result = Ok(());
        for (i, entry) in queue.into_iter().enumerate() {
            let skipping = skip && i == 0;
            if !skipping {
                let interest = Interest::with_deletions(self.filter.clone());
                let events = read_at(&*self.store, &self.upcasters, entry.position, &interest)?
                    .ok_or(ParkedError::Missing(entry.position))?;
                let events: Vec<&RecordedEvent> = events.iter().collect();
                if let Err(error) = self.attempt(run, &events) {
                    let reason = error.to_string();
                    let updated = ParkedEvent {
                        reason: reason.clone(),
                        attempts: entry.attempts + 1,
                        ..entry
                    };
                    if let Ok(bytes) = payload::encode(&updated) {
                        run.parked.push((parked_key(updated.position), Some(bytes)));
                    }
                    result = if i == 0 {
                        Err(ParkedError::FailedAgain { position, reason }.into())
                    } else {
                        Ok(())
                    };
                    break;
                }
            }
            run.parked.push((parked_key(entry.position), None));
            self.shared.parked.fetch_sub(1, Ordering::Relaxed);
            if let Some(count) = run.held.get_mut(&entry.stream) {
                *count -= 1;
                if *count == 0 {
                    run.held.remove(&entry.stream);
                }
            }
        }
        self.commit(run, through, true)?;
        result
    }
}

/// Reads parked events of a consumer.
pub(crate) fn list_parked(
    store: &dyn EventStore,
    model: &str,
) -> Result<Vec<ParkedEvent>, ProjectionError> {
    let entries = store.read_model_scan(model, b"", PARKED_LIST_MAX)?;
    let decoded = entries.iter().map(|(key, value)| {
        payload::decode::<ParkedEvent>(value)
            .map_err(|e| Corruption::read_model_value(model, key, e).into())
    });
    decoded.collect()
}
