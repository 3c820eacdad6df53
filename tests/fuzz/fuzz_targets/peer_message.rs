#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvs_node::fuzzing::peer_message(data));
