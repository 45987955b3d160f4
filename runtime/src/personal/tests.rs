use super::*;
use eventfold_storage::MemoryStore;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Opened {
    owner: Personal<String>,
    amount: u64,
}

fn keys() -> Arc<SubjectKeys> {
    Arc::new(SubjectKeys::new(Arc::new(MemoryStore::new())))
}

fn opened(subject: &str, name: &str) -> Opened {
    Opened {
        owner: Personal::new(subject, name.to_owned()),
        amount: 5,
    }
}

#[test]
fn a_value_is_sealed_on_encode_and_opened_on_decode() -> TestResult {
    let keys = keys();
    let bytes = keys.scope(|| payload::encode(&opened("ann", "Ann Example")))?;
    assert!(
        !bytes.windows(11).any(|w| w == b"Ann Example"),
        "the plaintext is not in the bytes"
    );
    let back: Opened = keys.scope(|| payload::decode(&bytes))?;
    assert_eq!(back.owner.get().map(String::as_str), Some("Ann Example"));
    assert_eq!(back.amount, 5);
    Ok(())
}

#[test]
fn a_forgotten_subject_reads_as_shredded_and_gets_nothing_new() -> TestResult {
    let keys = keys();
    let ann = keys.scope(|| payload::encode(&opened("ann", "Ann")))?;
    let bob = keys.scope(|| payload::encode(&opened("bob", "Bob")))?;
    let in_memory: Opened = keys.scope(|| payload::decode(&ann))?;
    assert!(keys.forget("ann")?);
    let back: Opened = keys.scope(|| payload::decode(&ann))?;
    assert!(back.owner.is_shredded());
    assert_eq!((back.owner.subject(), back.amount), ("ann", 5));
    let other: Opened = keys.scope(|| payload::decode(&bob))?;
    assert_eq!(other.owner.get().map(String::as_str), Some("Bob"));
    // A copy read before the forget is shredded too, inside the scope.
    keys.scope(|| assert!(in_memory.owner.get().is_none()));
    // Stored again, a shredded value stays shredded; a new one is refused.
    let again = keys.scope(|| payload::encode(&back))?;
    let back: Opened = keys.scope(|| payload::decode(&again))?;
    assert!(back.owner.is_shredded());
    let refused = keys.scope(|| payload::encode(&opened("ann", "Ann again")));
    assert!(refused.is_err_and(|e| e.to_string().contains("forgotten")));
    Ok(())
}

#[test]
fn outside_a_key_scope_personal_data_neither_encodes_nor_decodes() -> TestResult {
    assert!(payload::encode(&opened("ann", "Ann")).is_err());
    let keys = keys();
    let bytes = keys.scope(|| payload::encode(&opened("ann", "Ann")))?;
    assert!(payload::decode::<Opened>(&bytes).is_err());
    Ok(())
}

#[test]
fn damaged_ciphertext_is_an_error_not_a_value() -> TestResult {
    let keys = keys();
    let mut bytes = keys.scope(|| payload::encode(&opened("ann", "Ann")))?;
    let last = bytes.len() - 2;
    bytes[last] ^= 0x40;
    let decoded = keys.scope(|| payload::decode::<Opened>(&bytes));
    assert!(decoded.is_err());
    Ok(())
}

#[test]
fn debug_output_shows_no_personal_data() {
    let value = Personal::new("ann", "Ann Example".to_owned());
    assert_eq!(format!("{value:?}"), "Personal(ann: …)");
}
