//! The settings loader (settings/mod.rs): server.toml and data.toml as an operator writes
//! them, read from a directory and validated as `dtu-supervisor check` and the server do.
//!
//! Input: server.toml, a NUL byte, data.toml. Without a NUL the input is data.toml and
//! there is no server.toml (all defaults).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dtu_supervisor::conn::listener;
use dtu_supervisor::settings;
use libfuzzer_sys::fuzz_target;

/// One directory per fuzzing process, rewritten for every input.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dtu-fuzz-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let server = dir.join("server.toml");
    let (server_text, data_text) = match data.iter().position(|b| *b == 0) {
        Some(at) => (Some(&data[..at]), &data[at + 1..]),
        None => (None, data),
    };
    match server_text {
        Some(text) => std::fs::write(&server, text).expect("write server.toml"),
        None => {
            let _ = std::fs::remove_file(&server);
        }
    }
    std::fs::write(dir.join("data.toml"), data_text).expect("write data.toml");

    match settings::load(dir) {
        Ok(settings) => {
            // Settings that load start every listener: its profile exists and its protocol
            // makes a codec from it.
            for l in &settings.server.listeners {
                let profile = l.profile.as_ref().map(|name| {
                    settings
                        .data
                        .profiles
                        .get(name)
                        .expect("a listener's profile")
                });
                listener::check(&l.name, l.protocol, profile.map(|p| &**p))
                    .expect("a listener that loads starts");
            }
        }
        Err(errors) => {
            // Failing says why.
            assert!(!errors.is_empty(), "settings refused without a reason");
            for e in &errors {
                assert!(!e.file.is_empty() && !e.message.is_empty(), "{e:?}");
            }
        }
    }
});
