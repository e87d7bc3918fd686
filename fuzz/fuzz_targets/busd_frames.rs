//! Fuzz target `busd_frames`: see `tracker_fuzz::busd` for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| tracker_fuzz::busd::check(input));
