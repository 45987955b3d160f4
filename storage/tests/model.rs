//! Model-based property test: random appends (every kind of expected version,
//! single- and multi-stream, with and without command ids), reads and reopens
//! against a `BTreeMap` model. Conflicts must be reported exactly when the
//! model says so, and every read must equal the model's.

use eventfold_domain::{CommandId, ExpectedVersion, Metadata, NewEvent, StreamId};
use eventfold_storage::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    Exact(u64),
    /// `Exact` with the stream's current version, so that most appends pass.
    Current,
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        streams: Vec<(u8, Expect, u8)>,
        command: Option<u8>,
    },
    ReadStream {
        stream: u8,
        from: u64,
        backward: bool,
        max: usize,
    },
    ReadAll {
        from: u64,
        max: usize,
        stream_filter: Option<u8>,
    },
    Reopen,
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::StreamExists),
        (0u64..6).prop_map(Expect::Exact),
        Just(Expect::Current),
        Just(Expect::Current),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            prop::collection::btree_map(0u8..4, (expect(), 1u8..4), 1..3),
            prop::option::of(0u8..4)
        )
            .prop_map(|(streams, command)| Op::Append {
                streams: streams.into_iter().map(|(s, (e, n))| (s, e, n)).collect(),
                command,
            }),
        2 => (0u8..5, 0u64..8, any::<bool>(), 0usize..5)
            .prop_map(|(stream, from, backward, max)| Op::ReadStream { stream, from, backward, max }),
        2 => (0u64..25, 0usize..8, prop::option::of(0u8..4))
            .prop_map(|(from, max, stream_filter)| Op::ReadAll { from, max, stream_filter }),
        1 => Just(Op::Reopen),
    ]
}

/// Stream `i` is `cat{i}-x`, so each stream is its own category.
fn stream(i: u8) -> StreamId {
    StreamId::new(format!("cat{i}-x")).unwrap()
}

/// Per stream (stream, first version, last version), then first and last position.
type ModelOutcome = (Vec<(u8, u64, u64)>, u64, u64);

#[derive(Default)]
struct Model {
    /// Per stream, the positions of its events.
    streams: BTreeMap<u8, Vec<u64>>,
    /// The global log: (stream, version, payload).
    log: Vec<(u8, u64, Vec<u8>)>,
    /// Applied command ids and their outcomes: per stream (first, last version), first and last position.
    commands: BTreeMap<u8, ModelOutcome>,
}

impl Model {
    fn version(&self, s: u8) -> u64 {
        self.streams.get(&s).map_or(0, |v| v.len() as u64)
    }
}

fn run<S: EventStore>(
    ops: Vec<Op>,
    mut store: S,
    reopen: impl Fn(S) -> S,
) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut payload_counter = 0u32;
    for op in ops {
        match op {
            Op::Append { streams, command } => {
                let mut parts = Vec::new();
                let mut payloads = Vec::new();
                for (s, e, n) in &streams {
                    let expected = match e {
                        Expect::Any => ExpectedVersion::Any,
                        Expect::NoStream => ExpectedVersion::NoStream,
                        Expect::StreamExists => ExpectedVersion::StreamExists,
                        Expect::Exact(v) => ExpectedVersion::Exact(*v),
                        Expect::Current => ExpectedVersion::Exact(model.version(*s)),
                    };
                    let mut events = Vec::new();
                    let mut stream_payloads = Vec::new();
                    for _ in 0..*n {
                        payload_counter += 1;
                        let payload = payload_counter.to_be_bytes().to_vec();
                        stream_payloads.push(payload.clone());
                        events.push(NewEvent::new("E", 1, payload, Metadata::new()));
                    }
                    payloads.push(stream_payloads);
                    parts.push(StreamAppend {
                        stream: stream(*s),
                        expected,
                        events,
                    });
                }
                let request = AppendRequest {
                    streams: parts.clone(),
                    command_id: command.map(|c| CommandId::from_name(&format!("cmd-{c}"))),
                };
                let result = store.submit(request).wait();
                // What the model says.
                if let Some(c) = command
                    && let Some((written, first, last)) = model.commands.get(&c)
                {
                    let outcome = result
                        .map_err(|e| TestCaseError::fail(format!("dedup expected, got {e}")))?;
                    prop_assert!(outcome.deduplicated);
                    prop_assert_eq!(
                        (outcome.first_position, outcome.last_position),
                        (*first, *last)
                    );
                    let got: Vec<_> = outcome
                        .streams
                        .iter()
                        .map(|w| (w.first_version, w.last_version))
                        .collect();
                    let want: Vec<_> = written.iter().map(|(_, f, l)| (*f, *l)).collect();
                    prop_assert_eq!(got, want);
                    continue;
                }
                let conflict = parts.iter().zip(&streams).find_map(|(part, (s, _, _))| {
                    part.expected
                        .check(model.version(*s))
                        .err()
                        .map(|m| (part.stream.clone(), m.actual))
                });
                match (conflict, result) {
                    (
                        Some((stream, actual)),
                        Err(AppendError::WrongExpectedVersion {
                            stream: got_stream,
                            actual: got_actual,
                            ..
                        }),
                    ) => {
                        prop_assert_eq!(got_stream, stream);
                        prop_assert_eq!(got_actual, actual);
                    }
                    (Some(c), other) => {
                        return Err(TestCaseError::fail(format!(
                            "model expects conflict {c:?}, store said {other:?}"
                        )));
                    }
                    (None, Ok(outcome)) => {
                        prop_assert!(!outcome.deduplicated);
                        let first_position = model.log.len() as u64 + 1;
                        prop_assert_eq!(outcome.first_position, first_position);
                        let mut written = Vec::new();
                        for ((s, _, _), stream_payloads) in streams.iter().zip(payloads) {
                            let first_version = model.version(*s) + 1;
                            for payload in stream_payloads {
                                let version = model.version(*s) + 1;
                                model.log.push((*s, version, payload));
                                let position = model.log.len() as u64;
                                model.streams.entry(*s).or_default().push(position);
                            }
                            written.push((*s, first_version, model.version(*s)));
                        }
                        let last_position = model.log.len() as u64;
                        prop_assert_eq!(outcome.last_position, last_position);
                        let got: Vec<_> = outcome
                            .streams
                            .iter()
                            .map(|w| (w.first_version, w.last_version))
                            .collect();
                        let want: Vec<_> = written.iter().map(|(_, f, l)| (*f, *l)).collect();
                        prop_assert_eq!(got, want);
                        if let Some(c) = command {
                            model
                                .commands
                                .insert(c, (written, first_position, last_position));
                        }
                    }
                    (None, Err(e)) => {
                        return Err(TestCaseError::fail(format!(
                            "model expects success, store said {e}"
                        )));
                    }
                }
            }
            Op::ReadStream {
                stream: s,
                from,
                backward,
                max,
            } => {
                let direction = if backward {
                    Direction::Backward
                } else {
                    Direction::Forward
                };
                let got = store
                    .read_stream(&stream(s), from, direction, max)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let positions = model.streams.get(&s).cloned().unwrap_or_default();
                let len = positions.len() as u64;
                let want: Vec<u64> = if backward {
                    (1..=from.min(len)).rev().take(max).collect()
                } else {
                    (from.max(1)..=len).take(max).collect()
                };
                prop_assert_eq!(
                    got.iter().map(|e| e.version).collect::<Vec<_>>(),
                    want.clone()
                );
                for (event, version) in got.iter().zip(want) {
                    let position = positions[(version - 1) as usize];
                    prop_assert_eq!(event.position, position);
                    prop_assert_eq!(&event.payload, &model.log[(position - 1) as usize].2);
                }
            }
            Op::ReadAll {
                from,
                max,
                stream_filter,
            } => {
                let filter = match stream_filter {
                    Some(s) => Filter::categories([format!("cat{s}")]),
                    None => Filter::all(),
                };
                let got = store
                    .read_all(from, max, &filter)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want: Vec<u64> = (from.max(1)..=model.log.len() as u64)
                    .filter(|p| stream_filter.is_none_or(|s| model.log[(*p - 1) as usize].0 == s))
                    .take(max)
                    .collect();
                prop_assert_eq!(
                    got.events.iter().map(|e| e.position).collect::<Vec<_>>(),
                    want
                );
                for event in &got.events {
                    let (s, version, payload) = &model.log[(event.position - 1) as usize];
                    prop_assert_eq!(&event.stream_id, &stream(*s));
                    prop_assert_eq!(event.version, *version);
                    prop_assert_eq!(&event.payload, payload);
                }
                prop_assert_eq!(got.head, model.log.len() as u64);
                // Read as stored and decoded after: the same slice.
                let stored = store
                    .read_all_stored(from, max, &filter, vec![7; 3])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(
                    (stored.next_position, stored.head),
                    (got.next_position, got.head)
                );
                let (decoded, room) = stored
                    .events
                    .decode()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decoded, got.events);
                prop_assert!(room.is_empty());
            }
            Op::Reopen => {
                store = reopen(store);
                prop_assert_eq!(store.head(), model.log.len() as u64);
            }
        }
    }
    let report = store
        .verify()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.is_clean(), "{:?}", report.faults);
    prop_assert_eq!(report.events, model.log.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn memory_store_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops, MemoryStore::new(), |s| s.reopen())?;
    }
}

proptest! {
    // Each case opens a RocksDB and fsyncs every append: fewer cases.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn rocks_store_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().to_path_buf();
        let store = RocksStore::open(&path, StoreOptions::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        run(ops, store, move |s| {
            s.close();
            drop(s);
            RocksStore::open(&path, StoreOptions::default()).expect("reopen")
        })?;
    }
}
