//! A client key's dollar budget: before the upstream call the request's most possible cost (the
//! prompt's estimate and its `max_tokens`, at `pricing:` prices) is reserved in micro-dollars;
//! when the answer ends the reservation is settled at what it really cost. In Redis the budget is
//! one bucket for every instance, so the budget holds across them.

use super::buckets::{self, Reserved};
use crate::config::keys::{ClientKey, KeyBudget, MICROS_PER_USD};
use crate::config::limits::DEFAULT_MAX_TOKENS;
use crate::config::split::Pricing;
use crate::proxy::body::Body;
use crate::proxy::identity::Caller;
use crate::proxy::stop::Stop;
use sluice_plugins::limits::shared::SharedBuckets;
use sluice_plugins::limits::usage::{estimate_prompt_tokens, requested_completion_tokens};
use sluice_plugins::openai_error::GatewayError;
use std::sync::Arc;
use std::time::Instant;

/// What a request holds in its key's budget until its answer ends.
#[derive(Debug)]
pub struct BudgetHold {
    key: Arc<ClientKey>,
    reserved: Reserved,
}

/// Reserves the request's most possible cost in the caller's budget: 429 `insufficient_quota`
/// when it does not fit, 403 when the model has no price (its cost could not be charged).
pub async fn reserve_budget(
    shared: Option<&SharedBuckets>,
    caller: Caller<'_>,
    pricing: &Pricing,
    body: &mut Body,
) -> Result<Option<BudgetHold>, Stop> {
    let Some((key, budget)) = caller.and_then(|k| Some((k, k.budget.as_ref()?))) else {
        return Ok(None);
    };
    let json = body.json()?;
    let model = json
        .and_then(|j| j.get("model"))
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    let prompt = json.map_or(0, estimate_prompt_tokens);
    let completion = json
        .and_then(requested_completion_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let Some(cost) = pricing.cost(model, prompt, completion) else {
        let shown: String = model.chars().take(64).collect();
        return Err(GatewayError::new(
            403,
            "invalid_request_error",
            "model_not_priced",
            format!(
                "The key `{}` has a budget and the model `{shown}` has no price in pricing:.",
                key.name
            ),
        )
        .into());
    };
    let want = micros(cost);
    let Some(limit) = budget.limits.tokens.first() else {
        return Ok(None);
    };
    let now = Instant::now();
    match buckets::reserve(shared, &budget.scope, limit, 0, 0, want, now).await {
        Ok((_, reservation)) => {
            limit.common.metrics.decided(true);
            Ok(Some(BudgetHold {
                key: Arc::clone(key),
                reserved: Reserved {
                    reservations: vec![reservation],
                    prompt_estimate: 0,
                },
            }))
        }
        Err(_) => {
            limit.common.metrics.decided(false);
            Err(spent(&key.name, budget).into())
        }
    }
}

/// Settles the hold at what the answer cost (`None`: nothing, as for an error answer) and
/// counts it in `sluice_key_spend_usd_total`.
pub async fn settle_budget(shared: Option<&SharedBuckets>, hold: BudgetHold, cost: Option<f64>) {
    let Some(budget) = hold.key.budget.as_ref() else {
        return;
    };
    let cost = cost.unwrap_or(0.0);
    if cost > 0.0 {
        budget.spend.inc_by(cost);
    }
    buckets::settle(
        shared,
        &budget.scope,
        &budget.limits,
        hold.reserved,
        micros(cost),
    )
    .await;
}

/// Gives the hold back (the request was refused or failed before an answer).
pub async fn release_budget(shared: Option<&SharedBuckets>, hold: BudgetHold) {
    settle_budget(shared, hold, None).await;
}

/// Dollars in whole micro-dollars, rounded up so no answer is free.
fn micros(usd: f64) -> u64 {
    (usd * MICROS_PER_USD).ceil() as u64
}

fn spent(key: &str, budget: &KeyBudget) -> GatewayError {
    GatewayError::new(
        429,
        "insufficient_quota",
        "insufficient_quota",
        format!(
            "You exceeded your current quota: the key `{key}` has spent its budget of ${} per {}.",
            budget.usd,
            sluice_plugins::openai_error::human_duration(budget.per)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::hash_line;
    use crate::config::policy::compile_text;
    use bytes::Bytes;

    fn refused(result: Result<Option<BudgetHold>, Stop>) -> (u16, &'static str) {
        match result {
            Err(Stop::Respond { error, .. }) => (error.status, error.code),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_budget_reserves_the_most_possible_cost_and_keeps_what_was_spent() {
        // $1 per million completion tokens; a $0.001 budget is 1,000 completion tokens.
        let p = compile_text(&format!(
            "upstreams:\n  u: {{ endpoints: [{{ url: \"http://127.0.0.1:1\" }}] }}\n\
             routes:\n  - {{ name: chat, upstream: u, auth: required }}\n\
             pricing:\n  m: {{ input: 0, output: 1 }}\n\
             keys:\n  - {{ name: a, hash: \"{}\", budget: {{ usd: 0.001, per: 30d }} }}\n",
            hash_line("sk-a")
        ))
        .unwrap();
        let caller = p.keys.find(b"sk-a");
        let body = |json: &'static str| Body::of(Bytes::from_static(json.as_bytes()));
        let ask = r#"{"model":"m","max_tokens":600}"#;
        let hold = reserve_budget(None, caller, &p.pricing, &mut body(ask))
            .await
            .unwrap()
            .expect("held");
        // 600 reserved: another 600 does not fit while it is held.
        assert_eq!(
            refused(reserve_budget(None, caller, &p.pricing, &mut body(ask)).await),
            (429, "insufficient_quota")
        );
        // The answer cost 100 tokens ($0.0001): 900 left, so 600 fits again.
        settle_budget(None, hold, Some(0.0001)).await;
        let again = reserve_budget(None, caller, &p.pricing, &mut body(ask)).await;
        release_budget(None, again.unwrap().expect("held")).await;
        let budget = caller.unwrap().budget.as_ref().unwrap();
        assert!((budget.spend.get() - 0.0001).abs() < 1e-12);
        assert_eq!(
            refused(reserve_budget(None, caller, &p.pricing, &mut body(r#"{"model":"x"}"#)).await),
            (403, "model_not_priced")
        );
        assert!(reserve_budget(None, None, &p.pricing, &mut body(ask))
            .await
            .unwrap()
            .is_none());
    }
}
