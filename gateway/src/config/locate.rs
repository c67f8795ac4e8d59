//! Finds the line and column of a field path in YAML text. serde_yaml reports positions for
//! parse errors only; validation errors (unknown upstream, duplicate route) need them too.
//! Handles block style fully and flow style (`{ a: 1 }`) down to the line; finds where a
//! key's value starts, for errors about the value itself.

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(key: &str) -> Self {
        Seg::Key(key.to_string())
    }
}

impl From<&String> for Seg {
    fn from(key: &String) -> Self {
        Seg::Key(key.clone())
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// A field path from keys and indexes: `field_path!["routes", 1, "cache", "ttl"]`, or below a base
/// path: `field_path![base; "ttl"]`.
macro_rules! field_path {
    ($base:expr; $($seg:expr),* $(,)?) => {{
        let mut p: Vec<$crate::config::locate::Seg> = $base.to_vec();
        $(p.push($crate::config::locate::Seg::from($seg));)*
        p
    }};
    ($($seg:expr),* $(,)?) => {
        [$($crate::config::locate::Seg::from($seg)),*]
    };
}
pub(crate) use field_path;

/// Renders a path as `routes[1].match.model`.
#[must_use]
pub fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// Column (0-based) and text of the key on a line, after indentation and `- ` markers.
fn key_start(line: &str) -> (usize, &str) {
    let mut col = indent_of(line);
    let mut rest = &line[col..];
    while let Some(r) = rest.strip_prefix("- ") {
        let skipped = rest.len() - r.trim_start_matches(' ').len();
        col += skipped;
        rest = &rest[skipped..];
    }
    (col, rest)
}

fn starts_with_key(text: &str, key: &str) -> bool {
    let unquoted = text.trim_start_matches(['"', '\'']);
    unquoted.starts_with(key)
        && unquoted[key.len()..]
            .trim_start_matches(['"', '\''])
            .trim_start()
            .starts_with(':')
}

/// Column of `key:` inside a flow mapping on this line.
fn flow_key(line: &str, key: &str) -> Option<usize> {
    let open = line.find('{')?;
    let mut from = open;
    while let Some(pos) = line[from..].find(key) {
        let at = from + pos;
        let before = line[..at]
            .trim_end_matches(['"', '\''])
            .trim_end()
            .chars()
            .last();
        if matches!(before, Some('{') | Some(',')) && starts_with_key(&line[at..], key) {
            // A quoted key starts at its quote.
            let quoted = line[..at].ends_with(['"', '\'']);
            return Some(if quoted { at - 1 } else { at });
        }
        from = at + key.len();
    }
    None
}

/// End (exclusive) of the block owned by a key at `col` on line `i`.
fn block_end(lines: &[&str], i: usize, col: usize, end: usize) -> usize {
    (i + 1..end)
        .find(|&j| is_content(lines[j]) && indent_of(lines[j]) <= col)
        .unwrap_or(end)
}

/// 1-based (line, column) of the deepest part of `path` found in `text`.
#[must_use]
pub fn locate(text: &str, path: &[Seg]) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    match walk(&lines, path).0 {
        Some((i, col)) => (i + 1, col + 1),
        None => (1, 1),
    }
}

/// 1-based (line, column) where the value of the key at `path` starts: just after `key: `, in
/// block or flow style. `None` when the key is not there or its value starts on a later line.
#[must_use]
pub fn locate_value(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let Some(Seg::Key(key)) = path.last() else {
        return None;
    };
    let lines: Vec<&str> = text.lines().collect();
    let (Some((i, col)), true) = walk(&lines, path) else {
        return None;
    };
    let line = lines[i];
    let rest = line[col..].trim_start_matches(['"', '\'']);
    let rest = rest.strip_prefix(key.as_str())?;
    let rest = rest.trim_start_matches(['"', '\'']).trim_start();
    let value = rest.strip_prefix(':')?.trim_start();
    if value.is_empty() || value.starts_with('#') {
        return None;
    }
    Some((i + 1, line.len() - value.len() + 1))
}

/// Walks `path` down the lines: the 0-based (line, column) of the deepest segment found, and
/// whether every segment was.
fn walk(lines: &[&str], path: &[Seg]) -> (Option<(usize, usize)>, bool) {
    let (mut start, mut end) = (0usize, lines.len());
    let mut parent: Option<usize> = None;
    let mut found = None;
    for seg in path {
        match seg {
            Seg::Key(key) => {
                let hit = (start..end)
                    .filter(|&i| is_content(lines[i]))
                    .filter_map(|i| {
                        let (col, text) = key_start(lines[i]);
                        if parent.is_none_or(|p| col > p) && starts_with_key(text, key) {
                            Some((i, col))
                        } else {
                            flow_key(lines[i], key).map(|c| (i, c))
                        }
                    })
                    .min_by_key(|&(i, col)| (col, i));
                let Some((i, col)) = hit else {
                    return (found, false);
                };
                found = Some((i, col));
                parent = Some(col);
                end = block_end(lines, i, col, end);
                start = i;
            }
            Seg::Index(n) => {
                let items: Vec<(usize, usize)> = (start..end)
                    .filter(|&i| is_content(lines[i]))
                    .filter_map(|i| {
                        let ind = indent_of(lines[i]);
                        let is_item = lines[i][ind..].starts_with("- ") || lines[i].trim() == "-";
                        (is_item && parent.is_none_or(|p| ind >= p)).then_some((i, ind))
                    })
                    .collect();
                let Some(&(_, list_indent)) = items.first() else {
                    return (found, false);
                };
                let same: Vec<usize> = items
                    .iter()
                    .filter(|(_, ind)| *ind == list_indent)
                    .map(|(i, _)| *i)
                    .collect();
                let Some(&i) = same.get(*n) else {
                    return (found, false);
                };
                found = Some((i, list_indent));
                end = same
                    .get(n + 1)
                    .copied()
                    .unwrap_or_else(|| block_end(lines, i, list_indent, end));
                start = i;
                parent = Some(list_indent);
            }
        }
    }
    (found, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
server:
  listen: [\"127.0.0.1:8080\"]
upstreams:
  local:
    endpoints:
      - { url: \"http://127.0.0.1:8001\", weight: 3 }
      - url: http://127.0.0.1:8002
        weight: 1
routes:
  - name: chat
    match: { path_prefix: /v1/chat, methods: [POST] }
    upstream: local
  - name: other
    # a comment
    upstream: missing
";

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn finds_block_and_list_fields() {
        assert_eq!(
            locate(DOC, &[k("routes"), Seg::Index(1), k("upstream")]),
            (15, 5)
        );
        assert_eq!(
            locate(DOC, &[k("routes"), Seg::Index(0), k("upstream")]),
            (12, 5)
        );
        assert_eq!(
            locate(DOC, &[k("routes"), Seg::Index(1), k("name")]),
            (13, 5)
        );
        assert_eq!(
            locate(
                DOC,
                &[
                    k("upstreams"),
                    k("local"),
                    k("endpoints"),
                    Seg::Index(1),
                    k("weight")
                ]
            ),
            (8, 9)
        );
    }

    #[test]
    fn finds_flow_fields_on_their_line() {
        assert_eq!(
            locate(DOC, &[k("routes"), Seg::Index(0), k("match"), k("methods")]),
            (11, 37)
        );
        assert_eq!(
            locate(
                DOC,
                &[
                    k("upstreams"),
                    k("local"),
                    k("endpoints"),
                    Seg::Index(0),
                    k("url")
                ]
            ),
            (6, 11)
        );
    }

    #[test]
    fn finds_values_after_their_key() {
        assert_eq!(
            locate_value(DOC, &[k("routes"), Seg::Index(1), k("upstream")]),
            Some((15, 15))
        );
        assert_eq!(
            locate_value(DOC, &[k("server"), k("listen")]),
            Some((2, 11))
        );
        assert_eq!(
            locate_value(
                DOC,
                &[
                    k("upstreams"),
                    k("local"),
                    k("endpoints"),
                    Seg::Index(0),
                    k("weight")
                ]
            ),
            Some((6, 49))
        );
        assert_eq!(
            locate_value(DOC, &[k("upstreams"), k("local")]),
            None,
            "a block value starts on a later line"
        );
        assert_eq!(
            locate_value(DOC, &[k("routes"), Seg::Index(1), k("x")]),
            None
        );
    }

    #[test]
    fn missing_part_stops_at_deepest_found() {
        assert_eq!(
            locate(DOC, &[k("routes"), Seg::Index(7), k("name")]),
            (9, 1)
        );
        assert_eq!(
            render(&[k("routes"), Seg::Index(7), k("name")]),
            "routes[7].name"
        );
    }
}
