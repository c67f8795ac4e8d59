//! A tiny glob (`*` any run, `?` one char) for matching model names like `gpt-4*`.
//! Model names are short, so a backtracking matcher beats pulling in a regex engine.

/// A compiled glob pattern over chars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
}

impl Glob {
    #[must_use]
    pub fn new(pattern: &str) -> Self {
        Glob {
            pattern: pattern.chars().collect(),
        }
    }

    /// Whether `text` matches the whole pattern.
    #[must_use]
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (mut p, mut t) = (0usize, 0usize);
        // Position of the last `*` seen and the text position it was tried at.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(&c) if c == '?' || c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.pattern[p..].iter().all(|&c| c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn literal_star_and_question() {
        assert!(Glob::new("gpt-4o").matches("gpt-4o"));
        assert!(!Glob::new("gpt-4o").matches("gpt-4o-mini"));
        assert!(Glob::new("gpt-4*").matches("gpt-4o-mini"));
        assert!(Glob::new("gpt-4*").matches("gpt-4"));
        assert!(!Glob::new("gpt-4*").matches("gpt-3.5"));
        assert!(Glob::new("*mini").matches("gpt-4o-mini"));
        assert!(Glob::new("*-4?-*").matches("gpt-4o-mini"));
        assert!(!Glob::new("*-4?-*").matches("gpt-4-mini"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("a*b*c").matches("aXXbYYbc"));
        assert!(!Glob::new("a*b*c").matches("aXXbYYb"));
    }
}
