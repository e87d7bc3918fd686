//! Fuzz target `events_roundtrip`: see `tracker_fuzz::events` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |input: tracker_fuzz::events::Input| tracker_fuzz::events::check(input)
);
