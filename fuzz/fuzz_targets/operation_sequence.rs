//! Fuzz target: see `ttlstore::fuzzing::operation_sequence`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ttlstore::fuzzing::operation_sequence(data));
