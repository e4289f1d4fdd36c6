//! Any text as a configuration file: extra arguments or an error naming the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let known = [
        "listen",
        "ping_interval",
        "max_message_size",
        "allowed_origins",
        "api_key",
    ]
    .map(String::from);
    let path = std::path::Path::new("fuzz.toml");
    match wshub::config::file_args_from_str(text, path, &known, |k| k == "listen") {
        Ok(args) => assert!(args
            .iter()
            .all(|a| a.starts_with("--") && !a.starts_with("--listen="))),
        Err(e) => assert!(e.starts_with("fuzz.toml")),
    }
});
