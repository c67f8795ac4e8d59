//! `sluice check` and `--help`.

use sluice_e2e::{bin, workspace};
use std::process::Command;

fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn check_accepts_every_shipped_config() {
    let mut files = Vec::new();
    yaml_files(&workspace().join("config"), &mut files);
    assert!(
        files.len() >= 2,
        "expected the default config and examples, found {files:?}"
    );
    for f in files {
        let out = Command::new(bin("sluice"))
            .args(["check", "--config"])
            .arg(&f)
            .env("OPENAI_API_KEY", "sk-test")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_rejects_a_misspelled_field_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(workspace().join("config/gateway.yaml")).unwrap();
    let bad = good.replacen("    upstream: local-llm", "    upstreem: local-llm", 1);
    let line = bad.lines().position(|l| l.contains("upstreem")).unwrap() + 1;
    std::fs::write(&path, bad).unwrap();
    let out = Command::new(bin("sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:{line}:5: routes[0].upstreem: unknown field `upstreem`",
        path.display()
    );
    assert!(
        stderr.starts_with(&expected),
        "expected `{expected}`, got `{stderr}`"
    );
}

/// `sluice check` on a config whose upstream has this `health:` block.
fn check_health(health: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let yaml = sluice_e2e::config(
        &["http://127.0.0.1:1"],
        &format!("    health: {health}\n"),
        "  - { name: all, upstream: up }\n",
    )
    .replace("{listen}", "127.0.0.1:8080")
    .replace("{admin}", "127.0.0.1:9090");
    std::fs::write(&path, yaml).unwrap();
    Command::new(bin("sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_accepts_a_short_health_interval_without_a_timeout() {
    let out = check_health("{ interval: 1s }");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A timeout the user sets beyond the interval is still a mistake.
    let out = check_health("{ interval: 1s, timeout: 2s }");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(
                "upstreams.up.health.timeout: must be more than 0 and at most the interval"
            ),
        "{stderr}"
    );
}

#[test]
fn an_unopenable_cache_disk_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let path = dir.path().join("gateway.yaml");
    let yaml = sluice_e2e::config(
        &["http://127.0.0.1:1"],
        "",
        "  - { name: all, upstream: up, cache: { ttl: 1m } }\n",
    )
    .replace(
        "{listen}",
        &format!("127.0.0.1:{}", sluice_e2e::free_port()),
    )
    .replace("{admin}", &format!("127.0.0.1:{}", sluice_e2e::free_port()));
    let disk = format!(
        "cache:\n  disk: {{ path: \"{}\", max_bytes: 1MiB }}\n",
        not_a_dir.join("cache").display()
    );
    std::fs::write(&path, format!("{disk}{yaml}")).unwrap();
    let mut child = Command::new(bin("sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice started on a cache disk path that is a file");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cache: disk path") && !stderr.contains("cache: cache:"),
        "{stderr}"
    );
}

#[test]
fn help_explains_commands() {
    let out = Command::new(bin("sluice")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("run") && text.contains("check") && text.contains("--log-format"),
        "{text}"
    );
}

#[test]
fn keys_new_prints_a_key_once_and_the_entry_that_admits_it() {
    let out = Command::new(bin("sluice"))
        .args(["keys", "new", "--name", "app-a", "--team", "red"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key (shown once; give it to the client): "))
        .expect("the key line");
    assert!(key.starts_with("sk-sluice-") && key.len() > 40, "{key}");
    let want = format!(
        "  - {{ name: app-a, team: red, hash: \"sha256:{}\" }}",
        sluice_e2e::sha256(key.as_bytes())
    );
    assert!(text.lines().any(|l| l == want), "{text}");
}
