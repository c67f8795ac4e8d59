//! Why a phase stopped the request short: the one outcome type every phase returns.

use http::header::{HeaderName, HeaderValue};
use sluice_plugins::openai_error::GatewayError;

/// A response header a phase adds to whatever answer the client gets.
pub type Header = (HeaderName, HeaderValue);

/// Why a phase stopped the request.
#[derive(Debug)]
pub enum Stop {
    /// Nothing was sent to the client yet: answer with `error`, plus `headers` (which replace
    /// earlier ones of the same name, such as a limit's `x-ratelimit-*`).
    Respond {
        error: Box<GatewayError>,
        headers: Vec<Header>,
    },
    /// The response was under way (or the client went away): drop the client connection.
    Aborted(String),
}

impl From<GatewayError> for Stop {
    fn from(error: GatewayError) -> Self {
        Stop::Respond {
            error: Box::new(error),
            headers: Vec::new(),
        }
    }
}

/// Adds `more` to `headers`, dropping earlier headers of the same names first: a later phase's
/// word on a header (a token reservation after a budget peek) is the one the client gets.
pub fn merge_headers(headers: &mut Vec<Header>, more: Vec<Header>) {
    if more.is_empty() {
        return;
    }
    headers.retain(|(name, _)| !more.iter().any(|(n, _)| n == name));
    headers.extend(more);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, value: &'static str) -> Header {
        (
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    }

    #[test]
    fn a_later_value_replaces_an_earlier_one_of_the_same_name() {
        let mut headers = vec![h("x-a", "1"), h("x-b", "1"), h("x-a", "2")];
        merge_headers(&mut headers, vec![h("x-a", "3"), h("x-c", "1")]);
        assert_eq!(headers, vec![h("x-b", "1"), h("x-a", "3"), h("x-c", "1")]);
        merge_headers(&mut headers, Vec::new());
        assert_eq!(headers.len(), 3);
    }
}
