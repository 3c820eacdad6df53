#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kvs_client::backup::read_backup(data, |_| Ok(()));
});
