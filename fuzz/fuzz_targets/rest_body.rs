//! Any bytes as a REST body: a message or a precise error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wshub::api::connections::{BroadcastRequest, MessageBody};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<MessageBody>(data) {
        if let Ok(m) = body.into_message() {
            // What is forwarded verbatim is valid JSON (syntax; numbers may exceed f64).
            assert!(serde_json::from_str::<Box<serde_json::value::RawValue>>(m.get()).is_ok());
        }
    }
    let _ = serde_json::from_slice::<BroadcastRequest>(data);
});
