use super::*;
use eventfold_domain::{CausationId, CorrelationId, Metadata, NewEvent, StreamId, Timestamp};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn sample() -> Result<(StreamId, NewEvent), eventfold_domain::StreamIdError> {
    let stream = StreamId::new("account-1")?;
    let metadata = Metadata::new()
        .with_correlation(CorrelationId::random())
        .with_header("k", "v");
    Ok((stream, NewEvent::new("Deposited", 3, vec![9; 40], metadata)))
}

#[test]
fn record_round_trips() -> TestResult {
    let (stream, event) = sample()?;
    let mut record = encode_event(&stream, &event);
    seal_event(&mut record, 17, 4, Timestamp::from_micros(99));
    let decoded = decode_event("global", b"k", &record)?;
    assert_eq!(decoded.stream_id, stream);
    assert_eq!(decoded.position, 17);
    assert_eq!(decoded.version, 4);
    assert_eq!(decoded.recorded_at, Timestamp::from_micros(99));
    assert_eq!(decoded.metadata, event.metadata);
    assert_eq!(decoded.payload, event.payload);
    assert_eq!(decoded.schema_version, 3);
    Ok(())
}

#[test]
fn a_scan_shares_the_stream_id_of_the_event_before_only_when_it_is_the_same() -> TestResult {
    let (stream, event) = sample()?;
    let mut record = encode_event(&stream, &event);
    seal_event(&mut record, 1, 1, Timestamp::from_micros(1));
    let first = decode_event_after("global", b"k", &record, None)?;
    let second = decode_event_after("global", b"k", &record, Some(&first.stream_id))?;
    assert_eq!(second.stream_id, stream);
    assert!(std::ptr::eq(
        first.stream_id.as_str().as_ptr(),
        second.stream_id.as_str().as_ptr()
    ));
    // Another stream before it: the record's own id, not the one offered.
    let other = StreamId::new("account-10")?;
    let third = decode_event_after("global", b"k", &record, Some(&other))?;
    assert_eq!(third.stream_id, stream);
    Ok(())
}

#[test]
fn a_peek_finds_the_stream_and_type_a_decode_finds_and_never_reads_past_the_record() -> TestResult {
    let (stream, mut event) = sample()?;
    for ids in 0..4u8 {
        event.metadata.correlation_id = (ids & 1 != 0).then(|| CorrelationId::from_bytes([7; 16]));
        event.metadata.causation_id = (ids & 2 != 0).then(|| CausationId::from_bytes([9; 16]));
        let mut record = encode_event(&stream, &event);
        seal_event(&mut record, 3, 2, Timestamp::from_micros(1));
        let decoded = decode_event("global", b"k", &record)?;
        assert_eq!(
            peek_event(&record),
            Some((
                decoded.stream_id.as_str().as_bytes(),
                decoded.event_type.as_bytes()
            ))
        );
        for len in 0..record.len() {
            // Cut short: what it finds lies inside the bytes it was given.
            if let Some((s, t)) = peek_event(&record[..len]) {
                assert!(s.len() + t.len() < len);
            }
        }
    }
    Ok(())
}

#[test]
fn every_flipped_bit_and_every_truncation_is_a_typed_error() -> TestResult {
    let (stream, event) = sample()?;
    let mut record = encode_event(&stream, &event);
    seal_event(&mut record, 1, 1, Timestamp::from_micros(1));
    for i in 0..record.len() {
        for bit in 0..8 {
            let mut bad = record.clone();
            bad[i] ^= 1 << bit;
            assert!(
                decode_event("global", b"k", &bad).is_err(),
                "byte {i} bit {bit}"
            );
        }
        assert!(
            decode_event("global", b"k", &record[..i]).is_err(),
            "len {i}"
        );
    }
    Ok(())
}

#[test]
fn stream_keys_parse_back_and_sort_by_version() {
    let a = stream_key("s-1", 2);
    let b = stream_key("s-1", 10);
    assert!(a < b);
    assert_eq!(parse_stream_key(&b), Some(("s-1", 10)));
    let (lower, upper) = stream_key_bounds("s-1");
    assert!(lower < a && b < upper);
    // Another stream's keys, whatever its tag, are outside the bounds.
    for other in ["s-10", "s-", "s-2", "t-1"] {
        for version in [1, 2, 10, u64::MAX] {
            let key = stream_key(other, version);
            assert!(key < lower || key >= upper, "{other} {version}");
        }
    }
}

#[test]
fn stream_keys_start_with_the_tag_of_their_stream() {
    let mut keys = StreamKeys::new("acct-7");
    let first = keys.at(1).to_vec();
    let later = keys.at(300).to_vec();
    assert_eq!(first, stream_key("acct-7", 1));
    assert_eq!(later, stream_key("acct-7", 300));
    assert_eq!(first[..STREAM_TAG_BYTES], later[..STREAM_TAG_BYTES]);
    assert_eq!(
        first[..STREAM_TAG_BYTES],
        crc32c::crc32c(b"acct-7").to_be_bytes()
    );
    assert_eq!(&first[STREAM_TAG_BYTES..STREAM_TAG_BYTES + 6], b"acct-7");
    // A key whose tag is not its id's is not a stream key of that id.
    let mut forged = first.clone();
    forged[0] ^= 1;
    assert_eq!(parse_stream_key(&forged), None);
    // Neither is one cut short, or with a stray separator.
    assert_eq!(parse_stream_key(&first[..first.len() - 1]), None);
    let mut no_separator = first;
    no_separator[STREAM_TAG_BYTES + 6] = b'x';
    assert_eq!(parse_stream_key(&no_separator), None);
}

#[test]
fn stream_key_prefix_is_the_stream_part_for_every_version() {
    let (lower, _) = stream_key_bounds("acct-7");
    for version in [1, 255, 256, u64::MAX] {
        let key = stream_key("acct-7", version);
        assert!(is_stream_key(&key));
        assert_eq!(stream_key_prefix(&key), lower.as_slice());
    }
    // Versions whose bytes hold zeros do not confuse it: the separator is
    // found from the end.
    let (lower, _) = stream_key_bounds("a");
    assert_eq!(
        stream_key_prefix(&stream_key("a", 1 << 8)),
        lower.as_slice()
    );
    assert_eq!(&lower[STREAM_TAG_BYTES..], b"a\0");
    // Not the shape of a stream key: outside the domain, returned whole.
    for key in [
        &b"short"[..],
        b"",
        b"no-separator-in-here",
        b"\0\0\0\0\0\0\0\0\0",
    ] {
        assert!(!is_stream_key(key));
        assert_eq!(stream_key_prefix(key), key);
    }
}

#[test]
fn small_values_round_trip_and_detect_corruption() {
    let bytes = encode_checkpoint(9);
    let mut bad = bytes.clone();
    bad[3] ^= 4;
    assert!(decode_checkpoint(b"c", &bad).is_err());
    assert_eq!(decode_checkpoint(b"c", &encode_checkpoint(5)), Ok(5));
    assert!(decode_checkpoint(b"c", &[1, 2]).is_err());
}
