#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    inkstone_fuzz::checks::configs(data);
});
