//! A realistic prompt mix: Zipf-distributed repeats over a set of distinct prompts with
//! realistic lengths, and a share of streaming requests. Deterministic for a given seed, so
//! runs compare; the repeat share it reports is the upper bound of a cache's hit rate.

use std::collections::HashSet;

/// Draws request bodies from a fixed population of prompts.
pub struct PromptMix {
    prompts: Vec<String>,
    cdf: Vec<f64>,
    stream_share: f64,
    rng: u64,
}

/// One drawn request.
pub struct Draw {
    pub prompt: usize,
    pub stream: bool,
    pub body: Vec<u8>,
}

impl PromptMix {
    /// `distinct` prompts, popularity ∝ 1/rank^`zipf_s`, `stream_share` of requests streamed.
    #[must_use]
    pub fn new(distinct: usize, zipf_s: f64, stream_share: f64, seed: u64) -> Self {
        let mut rng = seed.max(1);
        let prompts = (0..distinct.max(1))
            .map(|i| {
                // Lengths spread log-uniformly from ~200 B to ~16 KB, like chat prompts with context.
                let len = (200.0 * 80f64.powf(next_unit(&mut rng))) as usize;
                let text: String = format!("prompt {i}: ")
                    .chars()
                    .chain("Summarise the following notes. ".chars().cycle())
                    .take(len)
                    .collect();
                text
            })
            .collect::<Vec<_>>();
        let weights: Vec<f64> = (1..=prompts.len())
            .map(|r| 1.0 / (r as f64).powf(zipf_s))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        PromptMix {
            prompts,
            cdf,
            stream_share,
            rng,
        }
    }

    /// The next request of the mix.
    pub fn draw(&mut self) -> Draw {
        let u = next_unit(&mut self.rng);
        let prompt = self
            .cdf
            .partition_point(|&c| c < u)
            .min(self.prompts.len() - 1);
        let stream = next_unit(&mut self.rng) < self.stream_share;
        let body = serde_json::to_vec(&serde_json::json!({
            "model": "mock-gpt-4o", "stream": stream, "temperature": 0,
            "messages": [{"role": "user", "content": self.prompts[prompt]}]
        }))
        .unwrap_or_default();
        Draw {
            prompt,
            stream,
            body,
        }
    }
}

/// Share of requests whose prompt was already seen earlier in the sequence.
#[must_use]
pub fn repeat_share(prompts: &[usize]) -> f64 {
    if prompts.is_empty() {
        return 0.0;
    }
    let mut seen = HashSet::new();
    let repeats = prompts.iter().filter(|p| !seen.insert(**p)).count();
    repeats as f64 / prompts.len() as f64
}

/// xorshift64 to a uniform number in [0, 1).
fn next_unit(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_makes_the_top_prompt_most_common_and_repeats_likely() {
        let mut mix = PromptMix::new(1000, 1.1, 0.3, 42);
        let draws: Vec<Draw> = (0..5000).map(|_| mix.draw()).collect();
        let ids: Vec<usize> = draws.iter().map(|d| d.prompt).collect();
        let top = ids.iter().filter(|&&p| p == 0).count();
        let tenth = ids.iter().filter(|&&p| p == 9).count();
        assert!(top > 3 * tenth, "rank 1: {top}, rank 10: {tenth}");
        let share = repeat_share(&ids);
        assert!(share > 0.5 && share < 0.95, "repeat share {share}");
        let streamed = draws.iter().filter(|d| d.stream).count() as f64 / 5000.0;
        assert!((streamed - 0.3).abs() < 0.05, "stream share {streamed}");
        let lens: Vec<usize> = draws.iter().map(|d| d.body.len()).collect();
        assert!(lens.iter().any(|&l| l < 1000) && lens.iter().any(|&l| l > 4000));
    }

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (
            PromptMix::new(50, 1.0, 0.5, 7),
            PromptMix::new(50, 1.0, 0.5, 7),
        );
        for _ in 0..100 {
            assert_eq!(a.draw().body, b.draw().body);
        }
        assert_eq!(repeat_share(&[1, 2, 1, 1]), 0.5);
    }
}
