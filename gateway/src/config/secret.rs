//! Keeping credentials out of everything sluice shows (`/admin/config`, config errors, logs,
//! metric labels). A config holds them in two forms: userinfo in a URL
//! (`http://user:password@host`, `redis://:password@host`) and header values (`set_headers`,
//! a variant's `headers:`). Here both are replaced before anything is displayed.

pub const REDACTED: &str = "<redacted>";

/// `url` fit to show: its userinfo replaced, the user name kept only when a password follows
/// it. Everything before the last `@` after the scheme counts as userinfo, so a password with
/// unescaped `/`, `?`, `#` or `@` is hidden too (a URL with `@` in its path loses a little).
#[must_use]
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (&url[..scheme.len() + 3], rest),
        None => ("", url),
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) if !user.contains(['/', '?', '#']) => {
            format!("{scheme}{user}:{REDACTED}@{host}")
        }
        _ => format!("{scheme}{REDACTED}@{host}"),
    }
}

/// `text` with the userinfo of every URL in it replaced, for messages sluice did not word
/// itself (a parser's error that quotes a value). A URL runs to a quote, backtick or line end.
#[must_use]
pub fn redact_urls_in(text: &str) -> String {
    if !text.contains('@') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme starts after the last character that cannot be in one (of any width).
        let start = rest[..at]
            .char_indices()
            .rfind(|(_, c)| !(c.is_ascii_alphanumeric() || "+-.".contains(*c)))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[at..]
            .find(['"', '`', '\'', '\n'])
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("redis://:pw@host:6379/0"),
            "redis://:<redacted>@host:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:p@ss@host"),
            "rediss://user:<redacted>@host"
        );
        assert_eq!(
            redact_url("http://user:s3cret@127.0.0.1:8001/base"),
            "http://user:<redacted>@127.0.0.1:8001/base"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("http://h:1/v1"), "http://h:1/v1");
    }

    #[test]
    fn userinfo_without_a_colon_may_be_a_token_and_is_hidden() {
        assert_eq!(
            redact_url("https://sk-abc@api.example"),
            "https://<redacted>@api.example"
        );
    }

    #[test]
    fn malformed_userinfo_is_hidden_whole() {
        for (url, shown) in [
            (
                "http://user:pa/ss@host/v1",
                "http://user:<redacted>@host/v1",
            ),
            ("http://user:pa ss@host", "http://user:<redacted>@host"),
            ("http://us/er:pw@host", "http://<redacted>@host"),
            ("user:pw@127.0.0.1:1", "user:<redacted>@127.0.0.1:1"),
            ("http://u:p?w#x@h", "http://u:<redacted>@h"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_inside_messages_are_redacted() {
        assert_eq!(
            redact_urls_in("invalid type: string \"http://u:pw@h:1\", expected struct X"),
            "invalid type: string \"http://u:<redacted>@h:1\", expected struct X"
        );
        assert_eq!(
            redact_urls_in("`redis://:pw@h` and `http://a:b c@d/e` fail"),
            "`redis://:<redacted>@h` and `http://a:<redacted>@d/e` fail"
        );
        assert_eq!(
            redact_urls_in("mail a@b, see http://h/x"),
            "mail a@b, see http://h/x"
        );
        assert_eq!(redact_urls_in("no urls"), "no urls");
    }

    #[test]
    fn a_wide_character_before_a_url_is_no_panic() {
        assert_eq!(
            redact_urls_in("bad: \u{a0}http://u:pw@h` and é→https://x:y@z`"),
            "bad: \u{a0}http://u:<redacted>@h` and é→https://x:<redacted>@z`"
        );
    }
}
