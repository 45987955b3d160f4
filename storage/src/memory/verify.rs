//! `verify` in memory: the global log and the stream index agree.

use super::State;
use crate::api::{Fault, VerifyReport};
use crate::error::{Corruption, CorruptionKind};

impl State {
    pub(super) fn verify(&self) -> VerifyReport {
        let state = self;
        let mut report = VerifyReport {
            events: state.log.len() as u64,
            streams: state.streams.len() as u64,
            faults: Vec::new(),
        };
        let mut fault = |keyspace, key: Vec<u8>, what: String| {
            report.faults.push(Fault {
                corruption: Corruption {
                    keyspace,
                    key,
                    kind: CorruptionKind::Inconsistent(what),
                },
            })
        };
        for (i, event) in state.log.iter().enumerate() {
            let position = i as u64 + 1;
            if event.position != position {
                fault(
                    "global",
                    position.to_be_bytes().to_vec(),
                    format!("holds position {}", event.position),
                );
            }
            let indexed = state
                .streams
                .get(&event.stream_id)
                .and_then(|v| v.get((event.version as usize).wrapping_sub(1)));
            if indexed != Some(&position) {
                fault(
                    "global",
                    position.to_be_bytes().to_vec(),
                    "stream index disagrees".into(),
                );
            }
        }
        for (stream, positions) in &state.streams {
            for (i, position) in positions.iter().enumerate() {
                let version = i as u64 + 1;
                let ok = state
                    .log
                    .get((*position as usize).wrapping_sub(1))
                    .is_some_and(|e| e.stream_id == *stream && e.version == version);
                if !ok {
                    fault(
                        "streams",
                        crate::codec::stream_key(stream.as_str(), version),
                        "points at the wrong event".into(),
                    );
                }
            }
        }
        report
    }
}
