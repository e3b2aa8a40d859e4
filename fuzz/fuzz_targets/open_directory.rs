//! Fuzz target: see `ttlstore::fuzzing::open_directory`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ttlstore::fuzzing::open_directory(data));
