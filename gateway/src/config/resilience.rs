//! `health:` and `outlier:` of an upstream (parsed in `spec`): their checks, compiled into the
//! engines' plain policies.

use super::errors::Errors;
use super::locate::{field_path, Seg};
use super::spec::{HealthSpec, OutlierSpec};
use sluice_plugins::health::HealthPolicy;
use sluice_plugins::outlier::OutlierPolicy;
use std::time::Duration;

/// The probe timeout when none is set, unless the interval is shorter.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn compile_health(
    errors: &mut Errors,
    base: &[Seg],
    spec: Option<&HealthSpec>,
) -> Option<HealthPolicy> {
    let h = spec?;
    let at = |field: &str| field_path![base; "health", field];
    if !h.path.starts_with('/') || h.path.parse::<http::uri::PathAndQuery>().is_err() {
        errors.at(&at("path"), "must be a path starting with `/`");
    }
    if h.interval.0 < Duration::from_millis(50) {
        errors.at(&at("interval"), "must be at least 50ms");
    }
    let timeout = h.timeout.map_or(DEFAULT_TIMEOUT.min(h.interval.0), |t| t.0);
    if timeout.is_zero() || timeout > h.interval.0 {
        errors.at(
            &at("timeout"),
            "must be more than 0 and at most the interval",
        );
    }
    for (i, status) in h.expect_status.iter().enumerate() {
        if !(100..=599).contains(status) {
            errors.at(
                &field_path![base; "health", "expect_status", i],
                "must be a status code 100-599",
            );
        }
    }
    for (field, n) in [
        ("unhealthy_after", h.unhealthy_after),
        ("healthy_after", h.healthy_after),
    ] {
        if n == 0 {
            errors.at(&at(field), "must be at least 1");
        }
    }
    Some(HealthPolicy {
        path: h.path.clone(),
        interval: h.interval.0,
        timeout,
        expect: h.expect_status.clone(),
        unhealthy_after: h.unhealthy_after,
        healthy_after: h.healthy_after,
    })
}

pub(super) fn compile_outlier(
    errors: &mut Errors,
    base: &[Seg],
    spec: Option<&OutlierSpec>,
) -> Option<OutlierPolicy> {
    let o = spec?;
    let at = |field: &str| field_path![base; "outlier", field];
    if o.consecutive_failures == 0 {
        errors.at(&at("consecutive_failures"), "must be at least 1");
    }
    if o.base_ejection.0.is_zero() {
        errors.at(&at("base_ejection"), "must be more than 0");
    }
    if o.max_ejection.0 < o.base_ejection.0 {
        errors.at(&at("max_ejection"), "must be at least base_ejection");
    }
    if o.max_ejection_percent > 100 {
        errors.at(&at("max_ejection_percent"), "must be 0-100");
    }
    Some(OutlierPolicy {
        consecutive_failures: o.consecutive_failures,
        base_ejection: o.base_ejection.0,
        max_ejection: o.max_ejection.0,
        max_ejection_percent: o.max_ejection_percent,
    })
}

#[cfg(test)]
mod tests {
    use super::super::policy::compile_text;
    use std::time::Duration;

    const GOOD: &str = "\
upstreams:
  u:
    endpoints: [ { url: \"http://127.0.0.1:1\" }, { url: \"http://127.0.0.1:2\" } ]
    health: { path: /healthz, interval: 1s, timeout: 500ms, expect_status: [200, 204] }
    outlier: { consecutive_failures: 3, base_ejection: 10s }
  spare:
    endpoints: [ { url: \"http://127.0.0.1:3\" } ]
routes:
  - { name: r, upstream: u, fallback: [spare] }
";

    #[test]
    fn health_outlier_and_fallback_compile() {
        let p = compile_text(GOOD).unwrap();
        let up = &p.routes[0].lanes[0].upstream;
        let health = up.health.as_ref().unwrap();
        assert_eq!((health.path.as_str(), health.expect.len()), ("/healthz", 2));
        let outlier = up.outlier.unwrap();
        assert_eq!(outlier.consecutive_failures, 3);
        assert_eq!(outlier.max_ejection_percent, 50, "default");
        let names: Vec<_> = p.routes[0].lanes[0]
            .fallback
            .iter()
            .map(|f| f.upstream.name.as_str())
            .collect();
        assert_eq!(names, ["spare"]);
    }

    #[test]
    fn the_default_timeout_follows_a_short_interval() {
        let timeout = |health: &str| {
            let text = GOOD.replace(
                "health: { path: /healthz, interval: 1s, timeout: 500ms, expect_status: [200, 204] }",
                health,
            );
            let p = compile_text(&text).unwrap();
            let up = &p.routes[0].lanes[0].upstream;
            up.health.as_ref().unwrap().timeout
        };
        let ms = Duration::from_millis;
        assert_eq!(timeout("health: { interval: 1s }"), ms(1000));
        assert_eq!(timeout("health: { interval: 300ms }"), ms(300));
        assert_eq!(timeout("health: { interval: 10s }"), ms(2000));
        assert_eq!(timeout("health: {}"), ms(2000));
        assert_eq!(timeout("health: { interval: 1s, timeout: 400ms }"), ms(400));
    }

    #[test]
    fn mistakes_are_located() {
        let bad = GOOD
            .replace("path: /healthz", "path: healthz")
            .replace("timeout: 500ms", "timeout: 2s")
            .replace("expect_status: [200, 204]", "expect_status: [200, 999]")
            .replace("consecutive_failures: 3", "consecutive_failures: 0")
            .replace("fallback: [spare]", "fallback: [spare, nowhere, u]");
        let errs = compile_text(&bad).map(|_| ()).unwrap_err();
        for expected in [
            "upstreams.u.health.path: must be a path starting with `/`",
            "upstreams.u.health.timeout: must be more than 0 and at most the interval",
            "upstreams.u.health.expect_status[1]: must be a status code 100-599",
            "upstreams.u.outlier.consecutive_failures: must be at least 1",
            "routes[0].fallback[1]: unknown upstream `nowhere`",
            "routes[0].fallback[2]: `u` is the route's own upstream or listed twice",
        ] {
            assert!(
                errs.iter().any(|e| e.contains(expected)),
                "{expected} in {errs:?}"
            );
        }
    }
}
