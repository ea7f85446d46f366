//! Fuzz target `kms_request`: see `kagi_fuzz::kms_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kagi_fuzz::kms_request::check(data));
