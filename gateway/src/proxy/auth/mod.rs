//! The auth phase: who is calling, checked against the route's `auth:` and the gateway's keys
//! (`keys:`). A known key's credential is taken off the request, so the upstream sees only the
//! route's own (`set_headers`), and from here on the caller is known by the key's name.

use super::body::Body;
use super::identity::{api_key, Caller};
use super::stop::Stop;
use crate::config::keys::{Auth, Keys};
use crate::config::policy::Route;
use pingora::http::RequestHeader;
use sluice_plugins::openai_error::GatewayError;

/// The headers a caller's key can come in (`identity::api_key` reads the same ones).
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "api-key", "x-api-key"];

/// Finds the caller's key and checks it may use `route`: 401 when the route's `auth:` wants a
/// key it did not get, 403 when the key may not use the route.
pub fn authenticate<'p>(
    keys: &'p Keys,
    route: &Route,
    req: &mut RequestHeader,
) -> Result<Caller<'p>, Stop> {
    let presented = api_key(&req.headers);
    let key = presented.and_then(|p| keys.find(p));
    let presented = presented.is_some();
    let Some(key) = key else {
        return match (route.auth, presented) {
            (Auth::None, _) | (Auth::Optional, false) => Ok(None),
            (_, false) => Err(unauthorized("You didn't provide an API key.")),
            (_, true) => Err(unauthorized("Incorrect API key provided.")),
        };
    };
    if route.auth != Auth::None && !key.allows_route(&route.name) {
        return Err(forbidden(
            "route_not_allowed",
            format!("The key `{}` may not use this route.", key.name),
        ));
    }
    for name in CREDENTIAL_HEADERS {
        req.remove_header(name);
    }
    Ok(Some(key))
}

/// 403 when the caller's key may not ask for the body's model (routes with `auth:` only).
pub fn allow_model(caller: Caller<'_>, route: &Route, body: &mut Body) -> Result<(), Stop> {
    let Some(key) = caller.filter(|k| k.models.is_some() && route.auth != Auth::None) else {
        return Ok(());
    };
    let json = body.json()?;
    let model = json.and_then(|j| j.get("model")).and_then(|m| m.as_str());
    if key.allows_model(model) {
        return Ok(());
    }
    let shown: String = model.unwrap_or("(none)").chars().take(64).collect();
    Err(forbidden(
        "model_not_allowed",
        format!("The key `{}` may not use the model `{shown}`.", key.name),
    ))
}

fn unauthorized(message: &str) -> Stop {
    GatewayError::new(401, "invalid_request_error", "invalid_api_key", message).into()
}

fn forbidden(code: &'static str, message: String) -> Stop {
    GatewayError::new(403, "invalid_request_error", code, message).into()
}

#[cfg(test)]
mod tests;
