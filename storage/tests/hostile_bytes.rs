//! Hostile bytes for the record and snapshot decoders: valid encodings,
//! mutated (bit flips, byte changes, truncation, extension, splices, random
//! bytes), fed to the decoders with the checksum both left as it is and
//! recomputed — so that the parser behind the checksum sees them too. No
//! input may panic; a mutated input with a stale checksum must be refused;
//! whatever decodes must have come through a valid checksum.
//!
//! A deterministic, seeded mutation fuzzer that runs on stable Rust in CI
//! (`EVENTFOLD_FUZZ_ITERATIONS` per target, default 1,000,000). The
//! coverage-guided targets for the same decoders are in `storage/fuzz/`
//! (cargo fuzz, nightly).

use eventfold_domain::{EventId, Metadata, NewEvent, StreamId, Timestamp};
use eventfold_storage::decoders;
use eventfold_storage::{Snapshot, decoders::encode_record};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn iterations() -> u64 {
    std::env::var("EVENTFOLD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

fn record_seeds() -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let mut seeds = Vec::new();
    for (i, (stream, event_type, payload)) in [
        ("acc-1", "Deposited", vec![1u8, 2, 3]),
        ("a", "E", vec![]),
        (
            "order-with-a-longer-id-0001",
            "SomethingHappened",
            vec![7; 300],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut metadata = Metadata::new();
        metadata.event_id = EventId::from_name(&format!("seed-{i}"));
        if i == 2 {
            metadata.headers.push(("tenant".into(), "t1".into()));
            metadata.headers.push(("k".into(), String::new()));
        }
        let event = NewEvent::new(event_type, 1 + i as u16, payload, metadata);
        seeds.push(encode_record(
            &StreamId::new(stream)?,
            &event,
            10 + i as u64,
            1 + i as u64,
            Timestamp::from_micros(1_700_000_000_000_000),
        ));
    }
    Ok(seeds)
}

fn snapshot_seeds() -> Vec<Vec<u8>> {
    [vec![], vec![9u8; 40], (0..=255u8).collect()]
        .into_iter()
        .enumerate()
        .map(|(i, state)| {
            decoders::encode_snapshot(&Snapshot {
                snapshot_version: i as u32,
                stream_version: 1000 + i as u64,
                state,
            })
        })
        .collect()
}

/// One random mutation of `input`.
fn mutate(rng: &mut SmallRng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..7) {
            0 if !out.is_empty() => {
                let i = rng.gen_range(0..out.len());
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !out.is_empty() => {
                let i = rng.gen_range(0..out.len());
                out[i] = *[0u8, 0xff, 0x7f, 0x80, 1]
                    .get(rng.gen_range(0..5))
                    .unwrap_or(&0);
            }
            2 => {
                let len = rng.gen_range(0..=out.len());
                out.truncate(len);
            }
            3 => {
                let extra = rng.gen_range(1..64);
                out.extend((0..extra).map(|_| rng.r#gen::<u8>()));
            }
            4 if !seeds.is_empty() => {
                // Splice: a prefix of this with a suffix of another seed.
                let other = &seeds[rng.gen_range(0..seeds.len())];
                let cut = rng.gen_range(0..=out.len());
                let from = rng.gen_range(0..=other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            5 if out.len() >= 4 => {
                // A length field set huge: any 4 aligned bytes.
                let i = rng.gen_range(0..out.len() - 3);
                out[i..i + 4].copy_from_slice(&u32::MAX.to_be_bytes());
            }
            _ => {
                let len = rng.gen_range(0..128);
                out = (0..len).map(|_| rng.r#gen::<u8>()).collect();
            }
        }
    }
    out
}

/// The body of `value` with a correct checksum appended.
fn resealed(value: &[u8]) -> Vec<u8> {
    let body = &value[..value.len().saturating_sub(4)];
    let mut out = body.to_vec();
    out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    out
}

fn hammer<T>(
    name: &str,
    seeds: &[Vec<u8>],
    decode: impl Fn(&[u8], &[u8]) -> Result<T, eventfold_storage::Corruption>,
) {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let key = b"fuzzed-key";
    let (mut refused, mut decoded) = (0u64, 0u64);
    for seed in seeds {
        assert!(decode(key, seed).is_ok(), "{name}: a seed does not decode");
    }
    for i in 0..iterations() {
        let seed = &seeds[(i % seeds.len() as u64) as usize];
        let mutated = mutate(&mut rng, seed, seeds);
        // A changed value under the old checksum is refused, naming the key.
        if mutated != *seed
            && mutated.len() == seed.len()
            && mutated[..mutated.len() - 4] != seed[..seed.len() - 4]
        {
            match decode(key, &mutated) {
                Err(corruption) => assert_eq!(corruption.key, key.to_vec()),
                Ok(_) => {
                    // Only if the mutation happened to fix up the checksum too.
                    let body = &mutated[..mutated.len() - 4];
                    let stored = &mutated[mutated.len() - 4..];
                    assert_eq!(
                        stored,
                        crc32c::crc32c(body).to_be_bytes(),
                        "{name}: decoded with a bad checksum"
                    );
                }
            }
        }
        // Behind a valid checksum: the parser itself must refuse cleanly.
        match decode(key, &resealed(&mutated)) {
            Ok(_) => decoded += 1,
            Err(corruption) => {
                assert!(!corruption.keyspace.is_empty());
                refused += 1;
            }
        }
    }
    println!(
        "{name}: {} executions, {decoded} decoded, {refused} refused, no panic",
        iterations() * 2
    );
}

#[test]
fn the_record_decoder_survives_hostile_bytes() -> Result<(), Box<dyn std::error::Error>> {
    hammer("record", &record_seeds()?, decoders::record);
    Ok(())
}

#[test]
fn the_snapshot_decoder_survives_hostile_bytes() {
    hammer("snapshot", &snapshot_seeds(), decoders::snapshot);
}
