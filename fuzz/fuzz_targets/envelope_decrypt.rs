//! Fuzz target `envelope_decrypt`: see `kagi_fuzz::envelope_decrypt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kagi_fuzz::envelope_decrypt::check(data));
