use super::*;
use eventfold_domain::{Metadata, StreamId, Timestamp};
use serde::{Deserialize, Serialize};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[derive(Serialize, Deserialize)]
enum V1 {
    Deposited(u64),
    Moved {
        from: String,
        to: String,
        amount: u64,
    },
}

#[derive(Serialize, Deserialize, Clone)]
struct DepositedV2 {
    amount: u64,
}
impl DomainEvent for DepositedV2 {
    fn event_type(&self) -> &'static str {
        "Deposited"
    }
    fn schema_version(&self) -> u16 {
        2
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Current {
    Credited { amount: u64, memo: String },
    Debited { amount: u64 },
}
impl DomainEvent for Current {
    fn event_type(&self) -> &'static str {
        match self {
            Current::Credited { .. } => "Credited",
            Current::Debited { .. } => "Debited",
        }
    }
    fn schema_version(&self) -> u16 {
        3
    }
}

fn stored(event_type: &str, schema_version: u16, payload: Vec<u8>) -> TestResult<RecordedEvent> {
    Ok(RecordedEvent {
        stream_id: StreamId::new("account-1")?,
        version: 4,
        position: 9,
        recorded_at: Timestamp::from_micros(5),
        event_type: event_type.into(),
        schema_version,
        payload,
        metadata: Metadata::new(),
    })
}

/// v1 `Deposited` → v2 `Deposited` → v3 `Credited` (a rename); v1 `Moved`
/// → a debit and a credit (one into two).
fn chain() -> Upcasters {
    Upcasters::new()
        .step("Deposited", 1, |old: V1| match old {
            V1::Deposited(amount) => vec![DepositedV2 { amount }],
            V1::Moved { .. } => Vec::new(),
        })
        .step("Deposited", 2, |old: DepositedV2| {
            vec![Current::Credited {
                amount: old.amount,
                memo: String::new(),
            }]
        })
        .step("Moved", 1, |old: V1| match old {
            V1::Moved { amount, .. } => vec![
                Current::Debited { amount },
                Current::Credited {
                    amount,
                    memo: "moved".into(),
                },
            ],
            V1::Deposited(_) => Vec::new(),
        })
}

#[test]
fn a_chain_of_two_steps_with_a_rename_reaches_the_current_shape() -> TestResult {
    let event = stored("Deposited", 1, payload::encode(&V1::Deposited(70))?)?;
    let metadata = event.metadata.clone();
    let out = chain().upcast_all(vec![event])?;
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].event_type.as_str(), out[0].schema_version),
        ("Credited", 3)
    );
    assert_eq!((out[0].version, out[0].position), (4, 9));
    assert_eq!(out[0].metadata, metadata);
    let current = decode::<Current>(&out[0])?;
    assert_eq!(
        current,
        Current::Credited {
            amount: 70,
            memo: String::new()
        }
    );
    Ok(())
}

#[test]
fn one_event_becomes_two_sharing_its_position_in_order() -> TestResult {
    let moved = V1::Moved {
        from: "a".into(),
        to: "b".into(),
        amount: 5,
    };
    let event = stored("Moved", 1, payload::encode(&moved)?)?;
    let out = chain().upcast_all(vec![event])?;
    let types: Vec<_> = out.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Debited", "Credited"]);
    assert!(out.iter().all(|e| e.position == 9 && e.version == 4));
    Ok(())
}

#[test]
fn a_step_may_drop_an_event() -> TestResult {
    let upcasters = Upcasters::new().step("Noise", 1, |_: u8| Vec::<Current>::new());
    let noise = stored("Noise", 1, payload::encode(&1u8)?)?;
    let kept = stored(
        "Debited",
        3,
        payload::encode(&Current::Debited { amount: 1 })?,
    )?;
    let out = upcasters.upcast_all(vec![noise, kept])?;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].event_type, "Debited");
    Ok(())
}

#[test]
fn events_without_a_step_come_back_untouched() -> TestResult {
    let event = stored(
        "Debited",
        3,
        payload::encode(&Current::Debited { amount: 2 })?,
    )?;
    let out = chain().upcast_all(vec![event.clone()])?;
    assert_eq!(out, vec![event]);
    Ok(())
}

#[test]
fn a_newer_schema_than_the_code_knows_is_refused_naming_the_event() -> TestResult {
    let event = stored(
        "Debited",
        4,
        payload::encode(&Current::Debited { amount: 2 })?,
    )?;
    let error = decode::<Current>(&event)
        .err()
        .ok_or("a newer schema was accepted")?;
    assert!(matches!(error, EventError::NewerThanCode { known: 3, .. }));
    let text = error.to_string();
    for part in ["Debited", "v4", "version 4", "account-1", "position 9"] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    Ok(())
}

#[test]
fn bytes_no_step_decodes_are_a_typed_error_not_a_skip() -> TestResult {
    let event = stored("Deposited", 1, vec![0xff, 0xff, 0xff])?;
    let error = chain()
        .upcast_all(vec![event])
        .err()
        .ok_or("garbage was upcast")?;
    assert!(matches!(error, EventError::StepInput { .. }));
    assert_eq!(error.at().event_type, "Deposited");
    let event = stored("Credited", 3, vec![0xff])?;
    assert!(matches!(
        decode::<Current>(&event),
        Err(EventError::Undecodable { .. })
    ));
    Ok(())
}

#[test]
fn a_cycle_is_stopped_at_the_bound() -> TestResult {
    #[derive(Serialize, Deserialize, Clone)]
    struct Loop;
    impl DomainEvent for Loop {
        fn event_type(&self) -> &'static str {
            "Loop"
        }
    }
    let upcasters = Upcasters::new().step("Loop", 1, |_: Loop| vec![Loop]);
    let event = stored("Loop", 1, payload::encode(&Loop)?)?;
    assert!(matches!(
        upcasters.upcast_all(vec![event]),
        Err(EventError::ChainTooLong {
            limit: UPCAST_STEPS_MAX,
            ..
        })
    ));
    Ok(())
}

#[test]
fn a_panicking_step_is_a_typed_error() -> TestResult {
    let upcasters =
        Upcasters::new().step("Boom", 1, |_: u8| -> Vec<Current> { panic!("bad step") });
    let event = stored("Boom", 1, payload::encode(&1u8)?)?;
    match upcasters.upcast_all(vec![event]) {
        Err(EventError::StepPanicked { message, .. }) => assert!(message.contains("bad step")),
        other => return Err(format!("expected a panic error, got {other:?}").into()),
    }
    Ok(())
}

#[test]
fn a_second_step_for_one_type_and_version_is_a_conflict() {
    let upcasters = chain().step("Moved", 1, |_: V1| Vec::<Current>::new());
    assert_eq!(upcasters.conflicts(), [("Moved".to_owned(), 1)]);
    assert_eq!(upcasters.len(), 3);
    let merged = Upcasters::new().merge(chain()).merge(chain());
    assert_eq!(merged.conflicts().len(), 3);
}

#[test]
fn a_type_filter_is_widened_to_the_types_steps_take() {
    let widened = chain().widen(&Filter::event_types(["Credited"]));
    let mut types = widened.event_types.clone();
    types.sort();
    assert_eq!(types, ["Credited", "Deposited", "Moved"]);
    assert!(chain().widen(&Filter::all()).is_all());
}

/// The rule the README's "Evolving events" states, pinned: what bincode 2
/// (standard configuration) absorbs without an upcaster, and what not.
mod what_bincode_absorbs {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Before {
        A { n: u32, who: String },
        B(u16),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Renamed {
        Alpha { count: u64, owner: String },
        Beta(u64),
        Gamma,
    }

    #[test]
    fn renames_wider_integers_and_variants_added_at_the_end() -> TestResult {
        let bytes = payload::encode(&Before::A {
            n: 70_000,
            who: "x".into(),
        })?;
        let after: Renamed = payload::decode(&bytes)?;
        assert_eq!(
            after,
            Renamed::Alpha {
                count: 70_000,
                owner: "x".into()
            }
        );
        let after: Renamed = payload::decode(&payload::encode(&Before::B(u16::MAX))?)?;
        assert_eq!(after, Renamed::Beta(u64::from(u16::MAX)));
        let wide: i64 = payload::decode(&payload::encode(&-5i16)?)?;
        assert_eq!(wide, -5);
        Ok(())
    }

    #[test]
    fn added_fields_a_u8_widened_and_narrowed_values_do_not_decode() -> TestResult {
        #[derive(Serialize, Deserialize)]
        struct Old {
            amount: u64,
        }
        #[derive(Serialize, Deserialize, Debug)]
        struct New {
            amount: u64,
            note: String,
        }
        assert!(payload::decode::<New>(&payload::encode(&Old { amount: 1 })?).is_err());
        assert!(payload::decode::<u16>(&payload::encode(&255u8)?).is_err());
        assert!(payload::decode::<u16>(&payload::encode(&70_000u32)?).is_err());
        Ok(())
    }

    #[test]
    fn reordered_variants_of_one_shape_decode_silently_as_the_wrong_one() -> TestResult {
        #[derive(Serialize, Deserialize)]
        enum Old {
            Deposited(u64),
            Withdrawn(u64),
        }
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        enum New {
            Withdrawn(u64),
            Deposited(u64),
        }
        let read: New = payload::decode(&payload::encode(&Old::Deposited(5))?)?;
        assert_eq!(read, New::Withdrawn(5));
        Ok(())
    }
}
