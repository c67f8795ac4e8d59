//! Server-Sent Events, read one way for everyone. The cache (recording, replay, the stream ⇄
//! JSON conversions) and the usage meter and filter all cut streams into events here, so they
//! cannot disagree on where an event ends: lines end in `\r\n`, `\n` or `\r`, an event at a
//! blank line, wherever a stream's chunks happen to split it.

use std::borrow::Cow;

/// The data of the event that ends an OpenAI stream.
pub const DONE: &[u8] = b"[DONE]";

/// The most bytes of one event a [`Splitter`] holds; a longer one passes in pieces.
pub const MAX_HELD: usize = 8 << 20;

/// One event of a stream, as its bytes came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The event's bytes, its blank line included when it has one.
    pub raw: &'a [u8],
    /// False for a piece of an event too long to hold: its data cannot be read.
    pub whole: bool,
    /// Whether a blank line ended it (false for a stream's unterminated last bytes).
    pub terminated: bool,
}

impl<'a> Event<'a> {
    /// The `data` lines joined by `\n`, or None when it has none (a comment, say).
    #[must_use]
    pub fn data(&self) -> Option<Cow<'a, [u8]>> {
        let mut data: Option<Cow<'a, [u8]>> = None;
        for line in lines(self.raw) {
            // `field: value` with one optional space; a line with no colon is a field alone.
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(0) => continue,
                Some(colon) => (&line[..colon], &line[colon + 1..]),
                None => (line, &b""[..]),
            };
            if field != b"data" {
                continue;
            }
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match &mut data {
                None => data = Some(Cow::Borrowed(value)),
                Some(joined) => {
                    let joined = joined.to_mut();
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                }
            }
        }
        data
    }
}

/// Whether event data names `"usage"`: most chunks do not, and those need no parse for it.
#[must_use]
pub fn names_usage(data: &[u8]) -> bool {
    data.windows(7).any(|w| w == b"\"usage\"")
}

/// The lines of an event, each without its ending.
fn lines(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        let end = end.unwrap_or(rest.len());
        let width = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            usize::from(end < rest.len())
        };
        let line = &rest[..end];
        rest = &rest[end + width..];
        Some(line)
    })
}

/// The events of a whole body, in order; the last may be unterminated. Their bytes add up to
/// the body, so each event's place in it is the sum of the lengths before it.
#[must_use]
pub fn events(body: &[u8]) -> Events<'_> {
    Events { body, pos: 0 }
}

/// See [`events`].
#[derive(Debug, Clone)]
pub struct Events<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Events<'a> {
    type Item = Event<'a>;

    fn next(&mut self) -> Option<Event<'a>> {
        let rest = self.body.get(self.pos..).filter(|r| !r.is_empty())?;
        let (len, terminated) = match Scan::default().end(rest, true) {
            Some(end) => (end, true),
            None => (rest.len(), false),
        };
        self.pos += len;
        Some(Event {
            raw: &rest[..len],
            whole: true,
            terminated,
        })
    }
}

/// How far the search for the end of the event in progress has got.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    /// Bytes of the event already searched (a trailing `\r` is left until the next byte).
    pos: usize,
    /// Whether the line in progress has any bytes yet.
    line_started: bool,
}

impl Scan {
    /// Where the event that `buf` starts ends (after its blank line), when `buf` holds it.
    /// `last`: nothing follows `buf`, so a final `\r` ends its line instead of waiting.
    fn end(&mut self, buf: &[u8], last: bool) -> Option<usize> {
        loop {
            let rest = buf.get(self.pos..)?;
            let Some(offset) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.line_started |= !rest.is_empty();
                self.pos = buf.len();
                return None;
            };
            let at = self.pos + offset;
            self.line_started |= offset > 0;
            let width = match (rest[offset], rest.get(offset + 1)) {
                // A last `\r` may be the first half of `\r\n`: wait for the next byte.
                (b'\r', None) if !last => {
                    self.pos = at;
                    return None;
                }
                (b'\r', Some(b'\n')) => 2,
                _ => 1,
            };
            if !self.line_started {
                *self = Scan::default();
                return Some(at + width);
            }
            self.pos = at + width;
            self.line_started = false;
        }
    }
}

/// Cuts a stream that arrives in chunks, split anywhere, into its events, holding only the
/// incomplete last one (up to [`MAX_HELD`] bytes).
#[derive(Debug, Default)]
pub struct Splitter {
    /// Bytes of the event in progress not yet handed out.
    held: Vec<u8>,
    scan: Scan,
    /// The event in progress outgrew [`MAX_HELD`]: its bytes are handed out as they come.
    overflow: bool,
}

impl Splitter {
    /// Bytes held for the event in progress.
    #[must_use]
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Hands `each` every event `chunk` completes, in stream order.
    pub fn push(&mut self, chunk: &[u8], mut each: impl FnMut(Event<'_>)) {
        if self.held.is_empty() {
            // The common case: events straight from the chunk, no copy.
            let done = self.split(chunk, false, &mut each);
            self.held.extend_from_slice(&chunk[done..]);
        } else {
            let mut buf = std::mem::take(&mut self.held);
            buf.extend_from_slice(chunk);
            let done = self.split(&buf, false, &mut each);
            buf.drain(..done);
            self.held = buf;
        }
    }

    /// At the stream's end: hands `each` what is held, a final `\r` ending its line, and
    /// starts over.
    pub fn finish(&mut self, mut each: impl FnMut(Event<'_>)) {
        let held = std::mem::take(&mut self.held);
        let done = self.split(&held, true, &mut each);
        if done < held.len() {
            each(Event {
                raw: &held[done..],
                whole: !self.overflow,
                terminated: false,
            });
        }
        *self = Splitter::default();
    }

    /// Hands out what `buf` (starting where the event in progress does) completes; returns
    /// how many of its bytes were handed out.
    fn split(&mut self, buf: &[u8], last: bool, each: &mut impl FnMut(Event<'_>)) -> usize {
        let mut start = 0;
        while let Some(end) = self.scan.end(&buf[start..], last) {
            each(Event {
                raw: &buf[start..start + end],
                whole: !self.overflow,
                terminated: true,
            });
            self.overflow = false;
            start += end;
        }
        if self.overflow || buf.len() - start > MAX_HELD {
            self.overflow = true;
            let searched = start + self.scan.pos;
            if searched > start {
                each(Event {
                    raw: &buf[start..searched],
                    whole: false,
                    terminated: false,
                });
            }
            self.scan.pos = 0;
            start = searched;
        }
        start
    }
}

#[cfg(test)]
pub(crate) mod tests;
