#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvs_node::fuzzing::resp_requests(data));
