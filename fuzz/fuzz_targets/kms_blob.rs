//! Fuzz target `kms_blob`: see `kagi_fuzz::kms_blob`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kagi_fuzz::kms_blob::check(data));
