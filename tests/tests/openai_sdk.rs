//! The official OpenAI Python SDK completes a plain and a streaming chat through sluice.
//! `make test` creates `.venv` with the SDK; set SLUICE_PYTHON to use another interpreter.

use sluice_e2e::{config, workspace, Gateway, Mock};
use std::path::PathBuf;
use std::process::Command;

fn python() -> PathBuf {
    let path = std::env::var_os("SLUICE_PYTHON")
        .map_or_else(|| workspace().join(".venv/bin/python"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: run `make test`, which creates .venv with the openai SDK",
        path.display()
    );
    path
}

#[test]
fn openai_sdk_plain_and_streaming_chat() {
    let python = python();
    let a = Mock::start("a", &[]);
    let gw = Gateway::start(&config(&[&a.url], "", "  - name: chat\n    match: { model: \"mock-*\" }\n    upstream: up\n  - name: rest\n    match: { path_prefix: /v1/ }\n    upstream: up\n"));
    let out = Command::new(python)
        .arg(workspace().join("tests/python/openai_sdk_check.py"))
        .arg(&gw.url)
        .output()
        .expect("run python");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "SDK check failed:\n{stdout}\n{stderr}\nsluice log:\n{}",
        gw.log_text()
    );
    assert!(
        stdout.contains("openai sdk: plain, streaming and errors ok"),
        "{stdout}"
    );
}
