//! Fuzz target `policy`: see `kagi_fuzz::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kagi_fuzz::policy::check(data));
