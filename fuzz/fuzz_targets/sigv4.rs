//! Fuzz target `sigv4`: see `kagi_fuzz::sigv4`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kagi_fuzz::sigv4::check(data));
