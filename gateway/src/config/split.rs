//! A route's `split:` (A/B variants) and the top-level `pricing:` (parsed in `spec`): their
//! checks with file:line:col, and the compiled forms the split phase and the cost counter read.

use super::errors::Errors;
use super::locate::{field_path, Seg};
use super::needs::Needs;
use super::spec::{PriceSpec, SplitSpec};
use super::units::header_name;
use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use sluice_plugins::ab::split::Split;
use sluice_plugins::glob::Glob;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Whose variant a request gets when it sticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    ApiKey,
    Header(HeaderName),
    Cookie(String),
    BodyUser,
}

/// A variant as the split phase applies it.
pub struct Variant {
    pub name: String,
    /// `x-sluice-variant: NAME` for the response.
    pub header: HeaderValue,
    pub set: Map<String, Value>,
}

/// A route's compiled split; variant `i` answers through the route's lane `i`.
pub struct RouteSplit {
    pub assign: Split,
    pub sticky: Option<StickyKey>,
    pub allow_override: bool,
    pub variants: Vec<Variant>,
}

impl RouteSplit {
    /// Variants are compared on tokens and cost, so their answers are metered.
    #[must_use]
    pub fn needs(&self) -> Needs {
        Needs::USAGE
    }

    /// The variant named `name`, for an override header.
    #[must_use]
    pub fn by_name(&self, name: &[u8]) -> Option<usize> {
        self.variants.iter().position(|v| v.name.as_bytes() == name)
    }
}

/// A split that passed its checks, with what each variant's lane needs.
pub(super) struct CheckedSplit<'a> {
    pub split: RouteSplit,
    pub lanes: Vec<VariantLane<'a>>,
}

/// A variant's upstream name (`None`: the route's) and the request headers it adds upstream.
pub(super) struct VariantLane<'a> {
    pub upstream: Option<&'a str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub(super) fn check_split<'a>(
    errors: &mut Errors,
    base: &[Seg],
    route: &str,
    spec: &'a SplitSpec,
    upstreams: &HashSet<&str>,
) -> Option<CheckedSplit<'a>> {
    let before = errors.count();
    let at = |field: &str| field_path![base; "split", field];
    let sticky = spec.sticky.as_deref().and_then(|s| {
        parse_sticky(s)
            .map_err(|m| errors.at(&at("sticky"), m))
            .ok()
    });
    if spec.variants.is_empty() {
        errors.at(&at("variants"), "must list at least one variant");
    } else if spec.variants.iter().all(|v| v.weight == 0) {
        errors.at(&at("variants"), "at least one weight must be above 0");
    }
    let mut seen = HashSet::new();
    let mut variants = Vec::new();
    let mut lanes = Vec::new();
    for (i, v) in spec.variants.iter().enumerate() {
        let vat = |field: &str| field_path![base; "split", "variants", i, field];
        let valid_name = !v.name.is_empty()
            && v.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            errors.at(
                &vat("name"),
                "must be non-empty letters, digits, `-`, `_` or `.`",
            );
        } else if !seen.insert(v.name.as_str()) {
            errors.at(&vat("name"), format!("duplicate variant `{}`", v.name));
        }
        if let Some(up) = &v.upstream {
            if !upstreams.contains(up.as_str()) {
                errors.at(&vat("upstream"), format!("unknown upstream `{up}`"));
            }
        }
        if v.set.keys().any(String::is_empty) {
            errors.at(&vat("set"), "field names must not be empty");
        }
        let headers = compile_headers(
            errors,
            &field_path![base; "split", "variants", i, "headers"],
            &v.headers,
        );
        variants.push(Variant {
            name: v.name.clone(),
            header: HeaderValue::from_str(&v.name).unwrap_or(HeaderValue::from_static("")),
            set: v.set.clone(),
        });
        lanes.push(VariantLane {
            upstream: v.upstream.as_deref(),
            headers,
        });
    }
    let weights: Vec<(&str, u32)> = spec
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.weight))
        .collect();
    let assign = Split::new(route, &spec.salt, &weights);
    if errors.count() != before {
        return None;
    }
    Some(CheckedSplit {
        split: RouteSplit {
            assign: assign?,
            sticky,
            allow_override: spec.allow_override,
            variants,
        },
        lanes,
    })
}

fn parse_sticky(key: &str) -> Result<StickyKey, String> {
    match key {
        "api_key" => Ok(StickyKey::ApiKey),
        "body:user" => Ok(StickyKey::BodyUser),
        _ => {
            if let Some(name) = key.strip_prefix("header:") {
                return header_name(name).map(StickyKey::Header);
            }
            match key.strip_prefix("cookie:") {
                Some(name) if !name.is_empty() && !name.contains([';', '=', ' ']) => {
                    Ok(StickyKey::Cookie(name.to_string()))
                }
                _ => Err(format!(
                    "expected api_key, header:NAME, cookie:NAME or body:user, got `{key}`"
                )),
            }
        }
    }
}

/// Headers from a `NAME: value` map at `base`, each checked.
pub(super) fn compile_headers(
    errors: &mut Errors,
    base: &[Seg],
    map: &BTreeMap<String, String>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in map {
        let at = field_path![base; name];
        let name = match header_name(name) {
            Ok(name) => name,
            Err(m) => {
                errors.at(&at, m);
                continue;
            }
        };
        let Ok(value) = HeaderValue::from_str(value) else {
            errors.at(&at, "value is not a valid header value");
            continue;
        };
        out.push((name, value));
    }
    out
}

/// Prices by model: exact names first, then the longest matching glob.
#[derive(Debug, Default)]
pub struct Pricing {
    exact: HashMap<String, PriceSpec>,
    globs: Vec<(usize, Glob, PriceSpec)>,
}

impl Pricing {
    /// What `prompt` and `completion` tokens of `model` cost, if the model has a price.
    #[must_use]
    pub fn cost(&self, model: &str, prompt: u64, completion: u64) -> Option<f64> {
        let price = self.exact.get(model).or_else(|| {
            self.globs
                .iter()
                .find(|(_, g, _)| g.matches(model))
                .map(|(_, _, p)| p)
        })?;
        Some((prompt as f64 * price.input + completion as f64 * price.output) / 1e6)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }
}

pub(super) fn compile_pricing(errors: &mut Errors, spec: &BTreeMap<String, PriceSpec>) -> Pricing {
    let mut pricing = Pricing::default();
    for (model, price) in spec {
        for (field, v) in [("input", price.input), ("output", price.output)] {
            if !v.is_finite() || v < 0.0 {
                errors.at(
                    &field_path!["pricing", model, field],
                    "must be a price per million tokens, 0 or more",
                );
            }
        }
        if model.contains('*') {
            pricing.globs.push((model.len(), Glob::new(model), *price));
        } else {
            pricing.exact.insert(model.clone(), *price);
        }
    }
    pricing.globs.sort_by_key(|g| std::cmp::Reverse(g.0));
    pricing
}

#[cfg(test)]
mod tests {
    use super::super::policy::compile_text;
    use super::StickyKey;

    const HEAD: &str = "\
upstreams:
  a: { endpoints: [{ url: \"http://127.0.0.1:8001\" }] }
  b: { endpoints: [{ url: \"http://127.0.0.1:8002\" }] }
pricing:
  gpt-4o: { input: 2.5, output: 10 }
  \"gpt-4o*\": { input: 1, output: 1 }
  \"*\": { input: 0.1, output: 0.2 }
routes:
  - name: chat
    upstream: a
    split:
";

    fn errors_of(split: &str) -> Vec<String> {
        match compile_text(&format!("{HEAD}{split}")) {
            Ok(_) => panic!("compiled:\n{split}"),
            Err(e) => e,
        }
    }

    #[test]
    fn variants_get_lanes_with_their_upstreams() {
        let p = compile_text(&format!(
            "{HEAD}      sticky: cookie:uid\n      allow_override: true\n      variants:\n        - {{ name: control, weight: 80 }}\n        - {{ name: small, weight: 20, upstream: b, set: {{ model: m }}, headers: {{ x-exp: s }} }}\n"
        ))
        .unwrap();
        let route = &p.routes[0];
        let names: Vec<_> = route
            .lanes
            .iter()
            .map(|l| (l.variant.as_str(), l.upstream.name.as_str()))
            .collect();
        assert_eq!(names, [("control", "a"), ("small", "b")]);
        let split = route.split.as_ref().unwrap();
        assert_eq!(split.sticky, Some(StickyKey::Cookie("uid".into())));
        assert!(split.allow_override && route.needs.body && route.needs.usage);
        assert_eq!(split.by_name(b"small"), Some(1));
        assert_eq!(route.lanes[1].headers.len(), 1);
        assert!(route.lanes[0].headers.is_empty());
    }

    #[test]
    fn prices_exact_then_longest_glob() {
        let p = compile_text(&format!(
            "{HEAD}      variants: [ {{ name: only, weight: 1 }} ]\n"
        ))
        .unwrap();
        let cost = |m: &str| p.pricing.cost(m, 1_000_000, 1_000_000).unwrap();
        assert!((cost("gpt-4o") - 12.5).abs() < 1e-9);
        assert!((cost("gpt-4o-mini") - 2.0).abs() < 1e-9);
        assert!((cost("llama") - 0.3).abs() < 1e-9);
    }

    #[test]
    fn bad_splits_are_located() {
        let errs = errors_of("      sticky: cookie\n      variants:\n        - { name: a, weight: 0 }\n        - { name: a, weight: 0, upstream: nowhere }\n        - { name: \"b c\", weight: 0 }\n");
        let want = [
            "g.yaml:12:7: routes[0].split.sticky: expected api_key, header:NAME, cookie:NAME or body:user, got `cookie`",
            "routes[0].split.variants: at least one weight must be above 0",
            "routes[0].split.variants[1].name: duplicate variant `a`",
            "routes[0].split.variants[1].upstream: unknown upstream `nowhere`",
            "routes[0].split.variants[2].name: must be non-empty letters, digits, `-`, `_` or `.`",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e.contains(w)), "{w} not in {errs:#?}");
        }
        let errs = errors_of("      variants: []\n");
        assert!(
            errs.iter()
                .any(|e| e.contains("must list at least one variant")),
            "{errs:?}"
        );
    }

    #[test]
    fn negative_prices_are_refused() {
        let text = "upstreams:\n  a: { endpoints: [{ url: \"http://127.0.0.1:8001\" }] }\npricing:\n  m: { input: -1, output: 1 }\nroutes:\n  - { name: r, upstream: a }\n";
        let errs = compile_text(text).err().unwrap();
        assert!(
            errs.iter()
                .any(|e| e.contains("pricing.m.input: must be a price")),
            "{errs:?}"
        );
    }
}
