//! Fuzz target: see `ttlstore::fuzzing::decode_hint`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ttlstore::fuzzing::decode_hint(data));
