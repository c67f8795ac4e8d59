use super::*;
use proptest::prelude::*;

/// `stream` cut at the places `cuts` pick, in order.
pub(crate) fn cut<'a>(stream: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for at in cuts.into_iter().chain([stream.len()]) {
        pieces.push(&stream[from..at]);
        from = at;
    }
    pieces
}

/// An event as a reader sees it: its bytes, whether whole and terminated, and its data.
pub(crate) type Seen = (Vec<u8>, bool, bool, Option<Vec<u8>>);

fn seen(event: Event<'_>) -> Seen {
    let data = event.data().map(Cow::into_owned);
    (event.raw.to_vec(), event.whole, event.terminated, data)
}

fn whole(body: &[u8]) -> Vec<Seen> {
    events(body).map(seen).collect()
}

/// What a splitter hands out, fed `pieces` in turn, then finished.
pub(crate) fn split(pieces: &[&[u8]]) -> Vec<Seen> {
    let mut splitter = Splitter::default();
    let mut out = Vec::new();
    for piece in pieces {
        splitter.push(piece, |e| out.push(seen(e)));
    }
    splitter.finish(|e| out.push(seen(e)));
    out
}

fn datas(body: &[u8]) -> Vec<Option<String>> {
    let text = |e: Event<'_>| e.data().map(|d| String::from_utf8_lossy(&d).into_owned());
    events(body).map(text).collect()
}

fn some(texts: &[&str]) -> Vec<Option<String>> {
    texts.iter().map(|t| Some((*t).to_string())).collect()
}

// === lines and events ===

#[test]
fn ends_lines_in_lf_crlf_or_cr_alike() {
    for ending in ["\n", "\r\n", "\r"] {
        let body =
            "data: a{le}{le}data: b{le}data:c{le}{le}data: [DONE]{le}{le}".replace("{le}", ending);
        assert_eq!(
            datas(body.as_bytes()),
            some(&["a", "b\nc", "[DONE]"]),
            "{ending:?}"
        );
        assert!(events(body.as_bytes()).all(|e| e.terminated));
    }
    let mixed = b"data: a\r\n\ndata: b\r\rdata: c\n\r\ndata: d\r\n\r";
    assert_eq!(datas(mixed), some(&["a", "b", "c", "d"]));
}

#[test]
fn reads_data_as_the_spec_says() {
    let body =
        b": keep-alive\n\nevent: ping\nid: 7\nretry: 10\n\ndata:  two spaces\ndata\ndata:x\n\n";
    assert_eq!(
        datas(body),
        [None, None, Some(" two spaces\n\nx".to_string())],
        "comments and other fields carry no data; one space is stripped; `data` alone is empty"
    );
    let event = events(b"data: {\"a\":1}\n\n").next();
    assert!(
        matches!(event.and_then(|e| e.data()), Some(Cow::Borrowed(_))),
        "one line borrows"
    );
}

#[test]
fn keeps_an_unterminated_tail() {
    let body = b"data: a\n\ndata: b\ndata: c";
    let got: Vec<_> = events(body).collect();
    assert_eq!(got.len(), 2);
    assert!(got[0].terminated && !got[1].terminated);
    assert_eq!(got[1].data().as_deref(), Some(&b"b\nc"[..]));
    assert_eq!(got.iter().map(|e| e.raw.len()).sum::<usize>(), body.len());
    assert!(datas(b"").is_empty());
    let cut_done = b"data: [DONE]\r";
    assert!(
        !events(cut_done).next().is_some_and(|e| e.terminated),
        "one line ending is not a blank line"
    );
}

// === chunks split anywhere ===

#[test]
fn a_cr_at_a_chunk_end_waits_for_its_lf() {
    let mut splitter = Splitter::default();
    let mut got = Vec::new();
    splitter.push(b"data: a\r\n\r", |e| got.push(seen(e)));
    assert!(got.is_empty(), "the \\r may be half of \\r\\n");
    splitter.push(b"\ndata: b\r", |e| got.push(seen(e)));
    assert_eq!(got.len(), 1);
    splitter.push(b"\n", |e| got.push(seen(e)));
    assert_eq!(got.len(), 1, "\\r\\n is one line ending, not a blank line");
    splitter.push(b"\r", |e| got.push(seen(e)));
    splitter.finish(|e| got.push(seen(e)));
    assert_eq!(got, whole(b"data: a\r\n\r\ndata: b\r\n\r"));
    assert!(got[1].2, "a final \\r ends the stream's last line");
}

#[test]
fn every_split_offset_gives_the_events_of_the_whole() {
    let body = b": hi\r\n\r\ndata: {\"a\":1}\r\rdata: x\ndata: y\n\nevent: e\r\ndata: [DONE]\r\n\r\ndata: tail\r";
    let want = whole(body);
    assert_eq!(want.len(), 5);
    for cut in 0..=body.len() {
        assert_eq!(split(&[&body[..cut], &body[cut..]]), want, "cut at {cut}");
        for second in cut..=body.len() {
            let pieces = [&body[..cut], &body[cut..second], &body[second..]];
            assert_eq!(split(&pieces), want, "cuts at {cut} and {second}");
        }
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(split(&bytes), want, "a byte at a time");
}

// === any stream, split anywhere ===

/// A line of an event: (kind, text); kind 0 is `data`, 1 a comment, 2 another field.
type Line = (u8, String);

/// The stream of `events` with line `endings` (0: LF, 1: CRLF, 2: CR) in turn, its last event
/// unterminated when `tail`, and the data each event should read as.
fn built(events: &[Vec<Line>], endings: &[usize], tail: bool) -> (Vec<u8>, Vec<Option<String>>) {
    const ENDINGS: [&str; 3] = ["\n", "\r\n", "\r"];
    let mut turn = endings.iter().cycle().map(|i| ENDINGS[i % ENDINGS.len()]);
    let (mut out, mut want) = (String::new(), Vec::new());
    let mut end_line = |out: &mut String| {
        let ending = turn.next().unwrap_or("\n");
        // After a `\r`, a `\n` would join it into one line ending.
        *out += if out.ends_with('\r') && ending == "\n" {
            "\r\n"
        } else {
            ending
        };
    };
    for (n, lines) in events.iter().enumerate() {
        let open = tail && n + 1 == events.len();
        let mut data: Option<String> = None;
        for (i, (kind, text)) in lines.iter().enumerate() {
            out += &match kind {
                0 => format!("data: {text}"),
                1 => format!(":{text}"),
                _ => format!("id: {text}"),
            };
            if *kind == 0 {
                data = Some(data.map_or(text.clone(), |d| format!("{d}\n{text}")));
            }
            if !(open && i + 1 == lines.len()) {
                end_line(&mut out);
            }
        }
        if !open {
            end_line(&mut out);
        }
        want.push(data);
    }
    (out.into_bytes(), want)
}

fn line() -> impl Strategy<Value = Line> {
    (0u8..3, "[a-z :é漢{}\"]{0,6}")
}

proptest! {
    #[test]
    fn any_split_gives_the_events_of_the_whole(
        events in prop::collection::vec(prop::collection::vec(line(), 1..4), 1..6),
        endings in prop::collection::vec(0usize..3, 1..5),
        tail: bool,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let (stream, want) = built(&events, &endings, tail);
        let pieces = cut(&stream, &cuts);
        let got = whole(&stream);
        prop_assert_eq!(split(&pieces), got.clone());
        let raw: Vec<u8> = got.iter().flat_map(|(raw, ..)| raw.clone()).collect();
        prop_assert_eq!(raw, stream.clone());
        let read: Vec<Option<String>> = got
            .iter()
            .map(|(.., data)| data.as_ref().map(|d| String::from_utf8_lossy(d).into_owned()))
            .collect();
        prop_assert_eq!(read, want);
    }
}
