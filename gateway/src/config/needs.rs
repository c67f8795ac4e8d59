//! What a route's features need from a request. Each feature says what it needs
//! (`RouteCache::needs`, `RouteLimits::needs`, ...) and a route's `Needs` is their union, so no
//! list of "features that read the body" is kept by hand.

use std::ops::BitOr;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The whole request body is read (and its JSON parsed) before forwarding.
    pub body: bool,
    /// The answer's token usage is metered (token and cost metrics, budgets, variants).
    pub usage: bool,
}

impl Needs {
    /// Nothing beyond the request head: the body streams through untouched.
    pub const NONE: Needs = Needs {
        body: false,
        usage: false,
    };
    /// The request body, read whole.
    pub const BODY: Needs = Needs {
        body: true,
        usage: false,
    };
    /// The body and the answer's usage.
    pub const USAGE: Needs = Needs {
        body: true,
        usage: true,
    };

    /// [`Needs::BODY`] when `yes`, else nothing.
    #[must_use]
    pub const fn body_if(yes: bool) -> Needs {
        Needs {
            body: yes,
            usage: false,
        }
    }

    /// Completes a route's union: with prices configured a read body's answer is metered
    /// for cost (a passthrough body is never parsed, so it is not), and metering reads the body.
    #[must_use]
    pub const fn with_pricing(self, priced: bool) -> Needs {
        let usage = self.usage || (self.body && priced);
        Needs {
            body: self.body || usage,
            usage,
        }
    }
}

impl BitOr for Needs {
    type Output = Needs;

    fn bitor(self, other: Needs) -> Needs {
        Needs {
            body: self.body || other.body,
            usage: self.usage || other.usage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_union_needs_what_any_part_needs() {
        assert_eq!(Needs::NONE | Needs::BODY, Needs::BODY);
        assert_eq!(Needs::BODY | Needs::USAGE, Needs::USAGE);
        assert_eq!(Needs::NONE | Needs::NONE, Needs::NONE);
    }

    #[test]
    fn prices_meter_only_a_body_that_is_read() {
        assert_eq!(Needs::NONE.with_pricing(true), Needs::NONE);
        assert_eq!(Needs::BODY.with_pricing(true), Needs::USAGE);
        assert_eq!(Needs::BODY.with_pricing(false), Needs::BODY);
        let usage_only = Needs {
            body: false,
            usage: true,
        };
        assert_eq!(usage_only.with_pricing(false), Needs::USAGE);
    }
}
