//! Fuzz target `config`: see `kagi_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kagi_fuzz::config::check(data));
