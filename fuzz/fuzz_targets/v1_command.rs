//! Any text as a wshub.v1 command: parsed or rejected with an error reply, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wshub::protocol::v1;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match v1::parse(text) {
        Ok((id, _cmd)) => {
            let frame = v1::ack(id, v1::AckExtra::default());
            assert!(frame.len() > 2);
        }
        Err(rejected) => {
            let frame = v1::error(rejected.id, rejected.code, &rejected.message);
            // The reply must itself be valid JSON (syntax; numbers may exceed f64).
            let hlen = match frame[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            let text = std::str::from_utf8(&frame[hlen..]).expect("UTF-8 reply");
            assert!(
                serde_json::from_str::<Box<serde_json::value::RawValue>>(text).is_ok(),
                "{text}"
            );
        }
    }
    let _ = v1::command_id(text);
});
