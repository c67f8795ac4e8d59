//! Replays every saved input of each fuzz target (the corpus `make fuzz` grows, and the
//! regression cases under `regressions/`) through the target's property, on stable.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // A running fuzzer may drop a corpus file between the listing and the read.
            let bytes = match std::fs::read(entry.path()) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                read => read.expect("corpus file"),
            };
            check(&bytes);
            seen += 1;
        }
    }
    assert!(
        seen > 0,
        "no saved inputs for {target}: run `make fuzz` or add regressions/{target}/"
    );
}

#[test]
fn head_scan() {
    replay("head_scan", crate::head_scan);
}

#[test]
fn config_load() {
    replay("config_load", crate::config_load);
}

#[test]
fn exposition() {
    replay("exposition", crate::exposition);
}

#[test]
fn canonical_json() {
    replay("canonical_json", crate::canonical);
}

#[test]
fn request_target() {
    replay("request_target", crate::request_target);
}

#[test]
fn sse() {
    replay("sse", crate::sse);
}
