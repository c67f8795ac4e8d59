//! The first phase: one spelling of the request target for everything after it.

use super::stop::Stop;
use pingora::http::RequestHeader;
use sluice_plugins::openai_error::GatewayError;
use sluice_plugins::request_target;
use std::borrow::Cow;

/// Puts the normalized origin-form on the request, so routing, limits, the cache key and the
/// upstream all see one spelling of the path; a target without one is refused with 400.
pub fn normalize(req: &mut RequestHeader) -> Result<(), Stop> {
    let normal = request_target::normalize(req.raw_path())
        .map_err(|e| GatewayError::invalid_path(&e.to_string()))?;
    // Borrowed: the target was already normal and in origin-form, so the URI holds it.
    if let Cow::Owned(normal) = normal {
        let uri =
            http::Uri::try_from(normal).map_err(|e| GatewayError::invalid_path(&e.to_string()))?;
        req.set_uri(uri);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(target: &str) -> Result<String, u16> {
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        match normalize(&mut req) {
            Ok(()) => Ok(req.uri.to_string()),
            Err(Stop::Respond { error, .. }) => Err(error.status),
            Err(Stop::Aborted(why)) => panic!("{why}"),
        }
    }

    #[test]
    fn every_spelling_of_a_path_becomes_one_and_a_bad_one_is_400() {
        assert_eq!(
            normalized("/v1/chat/completions?x=1").unwrap(),
            "/v1/chat/completions?x=1"
        );
        assert_eq!(
            normalized("/public/../v1/./chat//completions").unwrap(),
            "/v1/chat/completions"
        );
        assert_eq!(normalized("/v1/%63hat").unwrap(), "/v1/chat");
        assert_eq!(normalized("/v1/a%2Fb"), Err(400));
        assert_eq!(normalized("/../etc"), Err(400));
    }
}
