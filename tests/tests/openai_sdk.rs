//! The official OpenAI Python SDK completes a plain and a streaming chat through sluice.
//! `make test` creates `.venv` with the SDK; set SLUICE_PYTHON to use another interpreter.

use sluice_e2e::{config, run_python_check, Gateway, Mock};

#[test]
fn openai_sdk_plain_and_streaming_chat() {
    let a = Mock::start("a", &[]);
    let gw = Gateway::start(&config(&[&a.url], "", "  - name: chat\n    match: { model: \"mock-*\" }\n    upstream: up\n  - name: rest\n    match: { path_prefix: /v1/ }\n    upstream: up\n"));
    let stdout = run_python_check("openai_sdk_check.py", &gw);
    assert!(
        stdout.contains("openai sdk: plain, streaming and errors ok"),
        "{stdout}"
    );
}
