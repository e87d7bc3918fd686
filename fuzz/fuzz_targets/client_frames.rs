//! Fuzz target `client_frames`: see `tracker_fuzz::client` for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| tracker_fuzz::client::check(input));
