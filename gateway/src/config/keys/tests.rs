use super::super::policy::compile_text;
use super::*;

const KEY_A: &str = "sk-sluice-test-a";

fn config(keys: &str, auth: &str) -> String {
    format!(
        "upstreams:\n  local:\n    endpoints: [{{ url: \"http://127.0.0.1:8001\" }}]\n\
         routes:\n  - name: chat\n    upstream: local\n    auth: {auth}\n  - name: embed\n    upstream: local\n\
         keys:\n{keys}"
    )
}

fn errors_of(text: &str) -> Vec<String> {
    match compile_text(text) {
        Ok(_) => panic!("compiled:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn a_key_is_found_by_what_the_caller_presents_and_only_by_that() {
    let keys = format!(
        "  - {{ name: app-a, team: red, hash: \"{}\", routes: [chat], models: [\"gpt-4o-mini*\"] }}\n",
        hash_line(KEY_A)
    );
    let p = compile_text(&config(&keys, "required")).unwrap();
    let key = p.keys.find(KEY_A.as_bytes()).expect("the key");
    assert_eq!(
        (key.name.as_str(), key.team.as_deref()),
        ("app-a", Some("red"))
    );
    assert!(p.keys.find(b"sk-sluice-test-b").is_none());
    assert!(p.keys.find(b"").is_none());
    assert!(key.allows_route("chat") && !key.allows_route("embed"));
    assert!(key.allows_model(Some("gpt-4o-mini-2024")));
    assert!(!key.allows_model(Some("gpt-4o")) && !key.allows_model(None));
    let chat = &p.routes[0];
    assert_eq!(chat.auth, Auth::Required);
    assert!(chat.needs.body, "a model rule reads the body");
    assert!(
        !p.routes[1].needs.body,
        "a route without auth reads nothing more"
    );
}

#[test]
fn an_open_key_allows_every_route_and_model_and_reads_no_body() {
    let keys = format!("  - {{ name: ops, hash: \"{}\" }}\n", hash_line(KEY_A));
    let p = compile_text(&config(&keys, "optional")).unwrap();
    let key = p.keys.find(KEY_A.as_bytes()).expect("the key");
    assert!(key.allows_route("embed") && key.allows_model(None));
    assert!(!p.routes[0].needs.body);
}

#[test]
fn the_hash_line_is_sha256_hex() {
    assert_eq!(
        hash_line("abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn every_key_mistake_is_reported_at_its_place() {
    let h = hash_line(KEY_A);
    let keys = format!(
        "  - {{ name: a, hash: \"{h}\" }}\n\
         \x20 - {{ name: \"app a\", hash: \"md5:00\" }}\n\
         \x20 - {{ name: c, hash: \"sha256:zz\" }}\n\
         \x20 - {{ name: d, team: \"r/d\", hash: \"{h}\", routes: [nope] }}\n\
         \x20 - {{ name: d, hash: \"{}\", models: [\"\"] }}\n",
        hash_line("other")
    );
    let errs = errors_of(&config(&keys, "none"));
    assert_eq!(
        errs,
        [
            "g.yaml:12:7: keys[1].name: `app a` must be 1 to 64 letters, digits, `-`, `_` or `.`",
            "g.yaml:12:22: keys[1].hash: must start with `sha256:` (as `sluice keys new` prints)",
            "g.yaml:13:16: keys[2].hash: must be `sha256:` and 64 hex digits",
            "g.yaml:14:16: keys[3].team: `r/d` must be 1 to 64 letters, digits, `-`, `_` or `.`",
            "g.yaml:14:29: keys[3].hash: the same hash as an earlier key",
            "g.yaml:14:110: keys[3].routes[0]: unknown route `nope`",
            "g.yaml:15:7: keys[4].name: duplicate key name `d`",
            "g.yaml:15:97: keys[4].models[0]: must not be empty",
        ]
    );
}

#[test]
fn requiring_keys_needs_keys() {
    let text = config("  []\n", "required").replace("keys:\n  []\n", "");
    assert_eq!(
        errors_of(&text),
        ["g.yaml:7:5: routes[0].auth: `required` needs the top-level `keys:` (no caller could pass)"]
    );
}

#[test]
fn new_keys_are_long_random_and_admitted_by_their_hash_line() {
    let (a, b) = (new_key().unwrap(), new_key().unwrap());
    assert_ne!(a, b);
    assert!(
        a.starts_with("sk-sluice-") && a.len() == "sk-sluice-".len() + 43,
        "{a}"
    );
    let keys = format!("  - {{ name: fresh, hash: \"{}\" }}\n", hash_line(&a));
    let p = compile_text(&config(&keys, "required")).unwrap();
    assert!(p.keys.find(a.as_bytes()).is_some() && p.keys.find(b.as_bytes()).is_none());
}

#[test]
fn a_budget_is_checked_and_makes_its_routes_meter_usage() {
    let ok = format!(
        "  - {{ name: a, hash: \"{}\", budget: {{ usd: 50, per: 30d }} }}\n",
        hash_line(KEY_A)
    );
    let p = compile_text(&config(&ok, "required")).unwrap();
    let budget = p
        .keys
        .find(KEY_A.as_bytes())
        .unwrap()
        .budget
        .as_ref()
        .unwrap();
    assert_eq!((budget.usd, budget.scope.as_str()), (50.0, "key:a"));
    assert_eq!(
        p.routes[0].needs,
        Needs::USAGE,
        "a budget is charged from usage"
    );
    assert_eq!(
        p.routes[1].needs,
        Needs::NONE,
        "auth: none enforces no budget"
    );
    let bad = format!(
        "  - {{ name: a, hash: \"{}\", budget: {{ usd: -1, per: 0s }} }}\n",
        hash_line(KEY_A)
    );
    assert_eq!(
        errors_of(&config(&bad, "required")),
        [
            "g.yaml:11:107: keys[0].budget.usd: must be more than 0 (and at most 1e9)",
            "g.yaml:11:116: keys[0].budget.per: must be more than 0",
        ]
    );
}

#[test]
fn a_keys_limits_are_checked_at_the_keys_place() {
    let keys = format!(
        "  - {{ name: a, hash: \"{}\", limits: [{{ name: x }}, {{ name: s, requests_per_minute: 5, shared: true }}] }}\n",
        hash_line(KEY_A)
    );
    let errs = errors_of(&config(&keys, "required"));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains("keys[0].limits[0].name: a limit needs one of"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("keys[0].limits[1].shared: a shared limit needs a top-level `redis:`"),
        "{errs:?}"
    );
    let ok = format!(
        "  - {{ name: a, hash: \"{}\", limits: [{{ name: tpm, tokens_per_minute: 100 }}] }}\n",
        hash_line(KEY_A)
    );
    let p = compile_text(&config(&ok, "required")).unwrap();
    let scope = p
        .keys
        .find(KEY_A.as_bytes())
        .unwrap()
        .limit_scope()
        .unwrap();
    assert_eq!(scope.name, "key:a");
    assert_eq!(
        p.routes[0].needs,
        Needs::USAGE,
        "a key's token budget settles on usage"
    );
}
