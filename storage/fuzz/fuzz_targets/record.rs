//! The record decoder on arbitrary bytes, as stored and with the checksum
//! recomputed (so that the parser behind it is reached).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = eventfold_storage::decoders::record(b"k", data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&crc32c::crc32c(data).to_be_bytes());
    if let Ok(event) = eventfold_storage::decoders::record(b"k", &sealed) {
        assert!(event.payload.len() <= sealed.len());
    }
});
