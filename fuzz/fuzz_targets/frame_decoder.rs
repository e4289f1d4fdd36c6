//! Client bytes into the frame decoder: it decodes, waits for more, or fails with a close code.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wshub::frame::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the bytes arrive (chunk size), like a network would split them.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let mut d = Decoder::new(4096);
    let mut buf = bytes::BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    return;
                }
            }
        }
    }
});
