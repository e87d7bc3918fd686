//! Fuzz target `http_read`: see `tracker_fuzz::http` for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| tracker_fuzz::http::check(input));
