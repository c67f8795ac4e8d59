//! Request-target normalization. Routing, limits, the cache and the split all key on the
//! path, so a path that means the same resource to an upstream must also look the same to
//! sluice: `/public/../v1/chat/completions`, `/v1//chat/completions`,
//! `/v1/chat/%63ompletions` and `http://host/v1/chat/completions` are all
//! `/v1/chat/completions`. Otherwise a route's limits, cache and split could be skipped by
//! spelling its path differently. A target that has no single meaning is refused instead.
//!
//! The rules: an absolute-form `http(s)://authority/p?q` becomes `/p?q` (the authority is
//! dropped); unreserved characters are percent-decoded (decoding first, so `%2E%2E` is a dot
//! segment), other escapes get uppercase hex, bytes a URI may not hold are percent-encoded;
//! dot segments are removed (RFC 3986 5.2.4) and `//` merged; the query is kept as sent
//! except for the encoding of bytes a URI may not hold. Refused ([`TargetError`]): `*` and
//! authority-form targets, `..` above the root, `%2F`, `%5C` and `\` (a separator for some
//! servers and not for others), `%00`, a `%` not followed by two hex digits in the path,
//! control bytes and `#`.

use std::borrow::Cow;

/// Why a request target cannot be normalized; the gateway answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request target must be a path (`/...`) or an http(s) URL")]
    NotAPath,
    #[error("`..` goes above the root")]
    AboveRoot,
    #[error("`%2F`, `%5C` and `\\` are ambiguous path separators")]
    AmbiguousSeparator,
    #[error("`%00` is not allowed in a path")]
    EncodedNul,
    #[error("`%` must be followed by two hex digits")]
    BadEscape,
    #[error("control characters and `#` are not allowed in a request target")]
    ForbiddenByte,
}

/// The normalized origin-form (path and query) of a raw request target. Borrows the input
/// when it is already normal, which is the common case and costs one scan.
///
/// # Errors
/// [`TargetError`] when the target cannot be normalized.
pub fn normalize(target: &[u8]) -> Result<Cow<'_, str>, TargetError> {
    if is_normal(target) {
        // A normal target is ASCII, so this cannot fail.
        return std::str::from_utf8(target)
            .map(Cow::Borrowed)
            .map_err(|_| TargetError::ForbiddenByte);
    }
    rewrite(target).map(Cow::Owned)
}

// === byte classes ===

const UNRESERVED: u8 = 1;
/// sub-delims, `:` and `@`: pchar besides unreserved and escapes.
const PCHAR_OTHER: u8 = 2;
/// Control bytes and `#`: never in a target.
const FORBIDDEN: u8 = 4;

const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            UNRESERVED
        } else if matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        ) {
            PCHAR_OTHER
        } else if c < 0x20 || c == 0x7f || c == b'#' {
            FORBIDDEN
        } else {
            0
        };
        b += 1;
    }
    t
};

fn is(b: u8, class: u8) -> bool {
    CLASS[usize::from(b)] & class != 0
}

/// An uppercase hex digit's value; the fast path accepts nothing else.
fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex(b: u8) -> Option<u8> {
    upper_hex(b.to_ascii_uppercase())
}

/// Whether an escape that stays encoded in a normal path (not unreserved, not refused).
fn stays_encoded(v: u8) -> bool {
    !is(v, UNRESERVED) && !matches!(v, 0 | b'/' | b'\\')
}

// === the fast path: scan, no allocation ===

/// Whether `target` is an origin-form that [`rewrite`] would return unchanged: one pass that
/// checks each segment when it ends.
fn is_normal(target: &[u8]) -> bool {
    if target.first() != Some(&b'/') {
        return false;
    }
    let mut seg_start = 1;
    let mut i = 1;
    while i < target.len() {
        let b = target[i];
        if is(b, UNRESERVED | PCHAR_OTHER) {
            i += 1;
        } else if b == b'%' {
            match (
                target.get(i + 1).copied().and_then(upper_hex),
                target.get(i + 2).copied().and_then(upper_hex),
            ) {
                (Some(h), Some(l)) if stays_encoded(h << 4 | l) => i += 3,
                _ => return false,
            }
        } else if b == b'/' {
            if i == seg_start || is_dot_segment(&target[seg_start..i]) {
                return false;
            }
            i += 1;
            seg_start = i;
        } else if b == b'?' {
            return !is_dot_segment(&target[seg_start..i])
                && target[i + 1..].iter().all(|&b| keeps_in_query(b));
        } else {
            return false;
        }
    }
    !is_dot_segment(&target[seg_start..])
}

fn is_dot_segment(seg: &[u8]) -> bool {
    matches!(seg, b"." | b"..")
}

/// A query byte kept as sent: anything a URI may hold there (escapes are not checked).
fn keeps_in_query(b: u8) -> bool {
    is(b, UNRESERVED | PCHAR_OTHER) || matches!(b, b'/' | b'?' | b'%')
}

// === the slow path ===

fn rewrite(target: &[u8]) -> Result<String, TargetError> {
    let origin = origin_form(target)?;
    let (path, query) = match origin.iter().position(|&b| b == b'?') {
        Some(q) => (&origin[..q], Some(&origin[q + 1..])),
        None => (origin, None),
    };
    let mut out = String::with_capacity(target.len());
    push_path(path, &mut out)?;
    if let Some(query) = query {
        out.push('?');
        for &b in query {
            if is(b, FORBIDDEN) {
                return Err(TargetError::ForbiddenByte);
            }
            push_kept_or_encoded(b, keeps_in_query(b), &mut out);
        }
    }
    Ok(out)
}

/// The path and query of an origin-form or absolute-form target; an absolute-form's
/// empty path is the root.
fn origin_form(target: &[u8]) -> Result<&[u8], TargetError> {
    if target.first() == Some(&b'/') {
        return Ok(target);
    }
    let colon = target
        .iter()
        .position(|&b| b == b':')
        .ok_or(TargetError::NotAPath)?;
    let (scheme, rest) = (&target[..colon], &target[colon + 1..]);
    let web = scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https");
    let Some(after) = rest.strip_prefix(b"//").filter(|_| web) else {
        return Err(TargetError::NotAPath);
    };
    let end = after
        .iter()
        .position(|&b| matches!(b, b'/' | b'?'))
        .unwrap_or(after.len());
    let authority = &after[..end];
    if authority.is_empty() {
        return Err(TargetError::NotAPath);
    }
    if authority.iter().any(|&b| is(b, FORBIDDEN)) {
        return Err(TargetError::ForbiddenByte);
    }
    Ok(&after[end..])
}

/// Decodes each segment, then removes dot segments and empty ones (a trailing `/` stays).
fn push_path(path: &[u8], out: &mut String) -> Result<(), TargetError> {
    let rest = path.strip_prefix(b"/").unwrap_or(path);
    if !rest.is_empty() {
        let mut segments = rest.split(|&b| b == b'/').peekable();
        while let Some(seg) = segments.next() {
            let last = segments.peek().is_none();
            let mark = out.len();
            out.push('/');
            push_segment(seg, out)?;
            match &out[mark + 1..] {
                "" if !last => out.truncate(mark),
                "." => {
                    out.truncate(mark + usize::from(last));
                }
                ".." => {
                    out.truncate(mark);
                    let parent = out.rfind('/').ok_or(TargetError::AboveRoot)?;
                    out.truncate(parent);
                    if last {
                        out.push('/');
                    }
                }
                _ => {}
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(())
}

fn push_segment(seg: &[u8], out: &mut String) -> Result<(), TargetError> {
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                seg.get(i + 1).copied().and_then(hex),
                seg.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::BadEscape);
            };
            let v = h << 4 | l;
            match v {
                0 => return Err(TargetError::EncodedNul),
                b'/' | b'\\' => return Err(TargetError::AmbiguousSeparator),
                _ => push_kept_or_encoded(v, is(v, UNRESERVED), out),
            }
            i += 3;
        } else if is(b, FORBIDDEN) {
            return Err(TargetError::ForbiddenByte);
        } else if b == b'\\' {
            return Err(TargetError::AmbiguousSeparator);
        } else {
            push_kept_or_encoded(b, is(b, UNRESERVED | PCHAR_OTHER), out);
            i += 1;
        }
    }
    Ok(())
}

fn push_kept_or_encoded(b: u8, keep: bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if keep {
        out.push(char::from(b));
    } else {
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

#[cfg(test)]
mod tests;
