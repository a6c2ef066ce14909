#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    inkstone_fuzz::checks::stream(data);
});
