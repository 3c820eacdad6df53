//! The RESP2 wire format: requests in (multibulk `*N\r\n$L\r\n...` or a Redis "inline" line
//! such as `SET k v\r\n` typed into telnet), replies out.
//!
//! [`RequestParser`] never blocks and never buffers on its own: it looks at the bytes received so
//! far and answers "a complete request of this many bytes", "not complete yet", or a
//! [`ProtocolError`]. It remembers how far it got, so bytes arriving one read at a time are each
//! examined once: the work for a request is linear in its size however it is split. Every size a
//! client declares is checked against [`Limits`] *before* anything waits for or allocates those
//! bytes, so a client can make the connection hold at most one bounded request. Protocol errors use Redis's own wording where Redis has one; the
//! connection answers `-ERR Protocol error: ...` and closes, as Redis does.

use std::fmt;

use bytes::Bytes;
use bytes::BytesMut;

// Integer arguments and `*N` / `$N` headers are integers by the store's rule, so a number the
// face reads and a value INCR counts on are the same thing; the commands import it from here.
pub(crate) use crate::store::integer::parse_i64;

/// A request: the command name and its arguments, as sent.
pub(crate) type Args = Vec<Bytes>;

/// How much one request may claim.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Longest bulk string (one argument).
    pub(crate) max_bulk: usize,
    /// Most arguments in one request, the command name included.
    pub(crate) max_args: usize,
    /// Most bytes of one request: all its arguments and framing.
    pub(crate) max_request: usize,
    /// Longest inline request line, and longest `*N` / `$N` header line.
    pub(crate) max_inline: usize,
}

/// Why the bytes received are not RESP; the connection is closed after saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    TooBigInline,
    UnbalancedQuotes,
    TooBigMultibulkCount,
    InvalidMultibulkLength,
    TooBigBulkCount,
    ExpectedDollar(u8),
    InvalidBulkLength,
    ExpectedCrlf,
    RequestTooLarge(usize),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Protocol error: ")?;
        match self {
            ProtocolError::TooBigInline => f.write_str("too big inline request"),
            ProtocolError::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
            ProtocolError::TooBigMultibulkCount => f.write_str("too big mbulk count string"),
            ProtocolError::InvalidMultibulkLength => f.write_str("invalid multibulk length"),
            ProtocolError::TooBigBulkCount => f.write_str("too big bulk count string"),
            ProtocolError::ExpectedDollar(got) => {
                write!(f, "expected '$', got '{}'", char::from(*got))
            }
            ProtocolError::InvalidBulkLength => f.write_str("invalid bulk length"),
            ProtocolError::ExpectedCrlf => f.write_str("expected CRLF after a bulk string"),
            ProtocolError::RequestTooLarge(max) => {
                write!(f, "request is larger than {max} bytes")
            }
        }
    }
}

/// What the bytes at the front of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A complete request taking `len` bytes; `args` is empty for an empty request (a blank
    /// inline line or `*0`), which Redis silently skips.
    Request { args: Args, len: usize },
    /// More bytes are needed.
    Incomplete,
}

/// The parser of one connection's requests. It keeps how far the request at the front of the
/// buffer was examined across reads — the line end searched for so far, the arguments already
/// complete, the length of the bulk being received — so each byte is examined once however the
/// request is split, and a request trickled in byte by byte costs what it costs in one read.
pub(crate) struct RequestParser {
    limits: Limits,
    progress: Progress,
    /// Bytes examined since the parser was made: what tests check the work by.
    #[cfg(test)]
    examined: usize,
}

/// How far the request at the front of the buffer was parsed.
enum Progress {
    /// Its first line (inline request or `*N`) was searched `scanned` bytes for its end.
    FirstLine { scanned: usize },
    /// A multibulk request with `remaining` arguments to come; the complete ones lie at
    /// `args`; the next `$N` line (or, once `bulk` is known, bulk) starts at `at`, and a `$N`
    /// line was searched `scanned` bytes for its end.
    Multibulk {
        remaining: usize,
        args: Vec<(usize, usize)>,
        at: usize,
        bulk: Option<usize>,
        scanned: usize,
    },
}

const START: Progress = Progress::FirstLine { scanned: 0 };

impl RequestParser {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            progress: START,
            #[cfg(test)]
            examined: 0,
        }
    }

    /// Parses the request at the front of `buf`, which holds what an earlier call saw (the
    /// caller removes a request's bytes only after it was returned) and perhaps more.
    pub(crate) fn parse(&mut self, buf: &[u8]) -> Result<Parsed, ProtocolError> {
        let parsed = self.advance(buf);
        if !matches!(parsed, Ok(Parsed::Incomplete)) {
            self.progress = START;
        }
        parsed
    }

    fn advance(&mut self, buf: &[u8]) -> Result<Parsed, ProtocolError> {
        let limits = self.limits;
        if let Progress::FirstLine { scanned } = self.progress {
            match buf.first() {
                None => return Ok(Parsed::Incomplete),
                Some(b'*') => {
                    let Some(cr) =
                        self.line_end(buf, 0, scanned, ProtocolError::TooBigMultibulkCount)?
                    else {
                        return Ok(Parsed::Incomplete);
                    };
                    let remaining = match parse_i64(&buf[1..cr]) {
                        Some(n) if n <= 0 => {
                            return Ok(Parsed::Request {
                                args: vec![],
                                len: cr + 2,
                            });
                        }
                        Some(n) if (n as u64) <= limits.max_args as u64 => n as usize,
                        _ => return Err(ProtocolError::InvalidMultibulkLength),
                    };
                    self.progress = Progress::Multibulk {
                        remaining,
                        args: Vec::new(),
                        at: cr + 2,
                        bulk: None,
                        scanned: 0,
                    };
                }
                Some(_) => return self.inline(buf, scanned),
            }
        }
        self.multibulk(buf)
    }

    fn inline(&mut self, buf: &[u8], scanned: usize) -> Result<Parsed, ProtocolError> {
        let limits = self.limits;
        self.count_examined(buf.len() - scanned);
        let Some(newline) = buf[scanned..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| scanned + i)
        else {
            self.progress = Progress::FirstLine { scanned: buf.len() };
            return if buf.len() > limits.max_inline {
                Err(ProtocolError::TooBigInline)
            } else {
                Ok(Parsed::Incomplete)
            };
        };
        if newline > limits.max_inline {
            return Err(ProtocolError::TooBigInline);
        }
        let line = buf[..newline]
            .strip_suffix(b"\r")
            .unwrap_or(&buf[..newline]);
        let args = split_inline(line)?;
        if args.len() > limits.max_args {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        Ok(Parsed::Request {
            args,
            len: newline + 1,
        })
    }

    /// Goes on with a multibulk request from where the last call stopped.
    fn multibulk(&mut self, buf: &[u8]) -> Result<Parsed, ProtocolError> {
        let limits = self.limits;
        loop {
            let Progress::Multibulk {
                remaining,
                args,
                at,
                bulk,
                scanned,
            } = &mut self.progress
            else {
                unreachable!("called for a multibulk request only")
            };
            if *remaining == 0 {
                // No argument is copied until every one of them is here.
                let args = args
                    .iter()
                    .map(|&(start, end)| Bytes::copy_from_slice(&buf[start..end]))
                    .collect();
                return Ok(Parsed::Request { args, len: *at });
            }
            let Some(len) = *bulk else {
                match buf.get(*at) {
                    None => return Ok(Parsed::Incomplete),
                    Some(b'$') => {}
                    Some(&other) => return Err(ProtocolError::ExpectedDollar(other)),
                }
                let (line_start, searched) = (*at, *scanned);
                let Some(cr) =
                    self.line_end(buf, line_start, searched, ProtocolError::TooBigBulkCount)?
                else {
                    return Ok(Parsed::Incomplete);
                };
                let len = match parse_i64(&buf[line_start + 1..cr]) {
                    Some(n) if n >= 0 && (n as u64) <= limits.max_bulk as u64 => n as usize,
                    _ => return Err(ProtocolError::InvalidBulkLength),
                };
                if cr + 2 + len + 2 > limits.max_request {
                    return Err(ProtocolError::RequestTooLarge(limits.max_request));
                }
                if let Progress::Multibulk {
                    at, bulk, scanned, ..
                } = &mut self.progress
                {
                    *at = cr + 2;
                    *bulk = Some(len);
                    *scanned = 0;
                }
                continue;
            };
            let end = *at + len;
            match buf.get(end..end + 2) {
                None => return Ok(Parsed::Incomplete),
                Some(b"\r\n") => {}
                Some(_) => return Err(ProtocolError::ExpectedCrlf),
            }
            args.push((*at, end));
            *at = end + 2;
            *bulk = None;
            *remaining -= 1;
        }
    }

    /// Finds the `\r\n` ending the line that starts at `start`, whose first `scanned` bytes
    /// were searched before: `None` while it has not arrived (then remembers how far it
    /// searched), else where its `\r` is. A line longer than the inline limit is `too_big`.
    fn line_end(
        &mut self,
        buf: &[u8],
        start: usize,
        scanned: usize,
        too_big: ProtocolError,
    ) -> Result<Option<usize>, ProtocolError> {
        let rest = &buf[start..];
        // A `\r` that ended the last read may be followed by the `\n` of this one.
        let from = scanned.saturating_sub(1);
        self.count_examined(rest.len() - from);
        let Some(cr) = rest[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i)
        else {
            match &mut self.progress {
                Progress::FirstLine { scanned } | Progress::Multibulk { scanned, .. } => {
                    *scanned = rest.len();
                }
            }
            return if rest.len() > self.limits.max_inline {
                Err(too_big)
            } else {
                Ok(None)
            };
        };
        if cr > self.limits.max_inline {
            return Err(too_big);
        }
        Ok(Some(start + cr))
    }

    #[cfg(test)]
    fn count_examined(&mut self, bytes: usize) {
        self.examined += bytes;
    }

    #[cfg(not(test))]
    fn count_examined(&mut self, _bytes: usize) {}
}

/// Splits an inline line into arguments as Redis's `sdssplitargs` does: blanks separate,
/// `"..."` understands `\n \r \t \b \a \\ \"` and `\xHH`, `'...'` understands `\'`, and a
/// closing quote must be followed by a blank or the end of the line.
fn split_inline(line: &[u8]) -> Result<Args, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        let mut quote = None;
        loop {
            let Some(&c) = line.get(i) else {
                if quote.is_some() {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            match quote {
                None if c.is_ascii_whitespace() => break,
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None => arg.push(c),
                Some(q) if c == q => {
                    if line.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                Some(b'"') if c == b'\\' && i + 1 < line.len() => {
                    let hex = line
                        .get(i + 2..i + 4)
                        .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                        .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                    match (line[i + 1], hex) {
                        (b'x', Some(byte)) => {
                            arg.push(byte);
                            i += 2;
                        }
                        (escaped, _) => arg.push(match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        }),
                    }
                    i += 1;
                }
                Some(b'\'') if c == b'\\' && line.get(i + 1) == Some(&b'\'') => {
                    arg.push(b'\'');
                    i += 1;
                }
                Some(_) => arg.push(c),
            }
            i += 1;
        }
        args.push(Bytes::from(arg));
    }
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Simple(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Frame>),
}

impl Frame {
    /// A bulk string from anything byte-like.
    pub(crate) fn bulk(bytes: impl Into<Bytes>) -> Frame {
        Frame::Bulk(bytes.into())
    }

    /// `+OK`.
    pub(crate) fn ok() -> Frame {
        Frame::Simple("OK")
    }

    /// A bulk string or a null, for an optional value.
    pub(crate) fn optional(value: Option<Bytes>) -> Frame {
        value.map_or(Frame::Null, Frame::Bulk)
    }

    /// The length of the RESP2 encoding, computed without encoding: a reply is measured
    /// against the connection's reply limit before it is copied into the output.
    pub(crate) fn encoded_len(&self) -> usize {
        let number = |n: i64| {
            n.unsigned_abs()
                .checked_ilog10()
                .map_or(1, |d| d as usize + 1)
                + usize::from(n < 0)
        };
        match self {
            Frame::Simple(text) => 3 + text.len(),
            Frame::Error(text) => 3 + text.len(),
            Frame::Integer(n) => 3 + number(*n),
            Frame::Bulk(bytes) => 5 + number(bytes.len() as i64) + bytes.len(),
            Frame::Null => 5,
            Frame::Array(items) => {
                3 + number(items.len() as i64) + items.iter().map(Frame::encoded_len).sum::<usize>()
            }
        }
    }

    /// Appends the RESP2 encoding. An error's text cannot hold a line break (it would end the
    /// reply early and desynchronise the client), so line breaks become spaces, as in Redis.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Simple(text) => line(out, b'+', text.as_bytes()),
            Frame::Error(text) => {
                let text: Vec<u8> = text
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(out, b'-', &text);
            }
            Frame::Integer(n) => number_line(out, b':', *n),
            Frame::Bulk(bytes) => {
                number_line(out, b'$', bytes.len() as i64);
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::Array(items) => {
                number_line(out, b'*', items.len() as i64);
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}

/// A tag and a number: formatted straight into the reply, with no string per reply.
fn number_line(out: &mut BytesMut, tag: u8, n: i64) {
    use std::fmt::Write as _;
    out.extend_from_slice(&[tag]);
    write!(out, "{n}").expect("formatting into a BytesMut cannot fail");
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut BytesMut, tag: u8, text: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk: 64,
        max_args: 8,
        max_request: 256,
        max_inline: 32,
    };

    fn multibulk(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn parse(buf: &[u8]) -> Result<Parsed, ProtocolError> {
        RequestParser::new(LIMITS).parse(buf)
    }

    /// Feeds `bytes` to one parser `step` bytes at a time, as reads would deliver them, and
    /// returns the requests it found (empty ones skipped), the error that ended it if any, and
    /// the bytes it examined.
    fn trickle(
        bytes: &[u8],
        step: usize,
        limits: Limits,
    ) -> (Vec<Args>, Option<ProtocolError>, usize) {
        let mut parser = RequestParser::new(limits);
        let mut buf = BytesMut::new();
        let mut requests = Vec::new();
        for chunk in bytes.chunks(step) {
            buf.extend_from_slice(chunk);
            loop {
                match parser.parse(&buf) {
                    Ok(Parsed::Request { args, len }) => {
                        bytes::Buf::advance(&mut buf, len);
                        if !args.is_empty() {
                            requests.push(args);
                        }
                    }
                    Ok(Parsed::Incomplete) => break,
                    Err(e) => return (requests, Some(e), parser.examined),
                }
            }
        }
        (requests, None, parser.examined)
    }

    fn request(args: &[&str], len: usize) -> Result<Parsed, ProtocolError> {
        Ok(Parsed::Request {
            args: args
                .iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect(),
            len,
        })
    }

    #[test]
    fn a_multibulk_request_parses_and_reports_its_length() {
        let bytes = multibulk(&[b"SET", b"k", b"v"]);
        let mut pipelined = bytes.clone();
        pipelined.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(parse(&pipelined), request(&["SET", "k", "v"], bytes.len()));
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let bytes = multibulk(&[b"SET", b"key", b"a\r\nb"]);
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
    }

    #[test]
    fn requests_fed_byte_by_byte_parse_as_when_sent_at_once() {
        let mut bytes = multibulk(&[b"SET", b"key", b"a\r\nb"]);
        bytes.extend_from_slice(b"PING\r\n*0\r\n  get \"k\\x41\"\n");
        bytes.extend_from_slice(&multibulk(&[b"", b"x"]));
        let (whole, error, _) = trickle(&bytes, bytes.len(), LIMITS);
        assert_eq!(error, None);
        assert_eq!(whole.len(), 4);
        for step in 1..8 {
            let (requests, error, _) = trickle(&bytes, step, LIMITS);
            assert_eq!((requests, error), (whole.clone(), None), "step {step}");
        }
    }

    #[test]
    fn the_work_for_a_trickled_request_is_linear_in_its_size() {
        let limits = Limits {
            max_bulk: 1 << 20,
            max_args: 1 << 16,
            max_request: 4 << 20,
            max_inline: 1 << 16,
        };
        let big = vec![b'v'; 200_000];
        let many: Vec<&[u8]> = std::iter::repeat_n(&b"ab"[..], 5_000).collect();
        let mut inline = vec![b'x'; 60_000];
        inline.extend_from_slice(b"\r\n");
        for bytes in [multibulk(&[b"SET", b"k", &big]), multibulk(&many), inline] {
            let (requests, error, examined) = trickle(&bytes, 1, limits);
            assert_eq!((requests.len(), error), (1, None));
            assert!(
                examined <= 2 * bytes.len(),
                "{examined} bytes examined for a request of {}",
                bytes.len()
            );
        }
    }

    #[test]
    fn inline_requests_split_like_redis() {
        assert_eq!(parse(b"PING\r\n"), request(&["PING"], 6));
        assert_eq!(parse(b"  set  k v\n"), request(&["set", "k", "v"], 11));
        assert_eq!(
            parse(b"set \"a b\\x41\\n\" 'it\\'s'\r\n"),
            request(&["set", "a bA\n", "it's"], 25)
        );
        assert_eq!(parse(b"\r\n"), request(&[], 2));
        assert_eq!(parse(b"PING"), Ok(Parsed::Incomplete));
    }

    #[test]
    fn protocol_errors_are_worded_as_redis_words_them() {
        let cases: &[(&[u8], &str)] = &[
            (b"*x\r\n", "Protocol error: invalid multibulk length"),
            (b"*9\r\n", "Protocol error: invalid multibulk length"),
            (b"*1\r\n+PING\r\n", "Protocol error: expected '$', got '+'"),
            (b"*1\r\n$-3\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$65\r\n", "Protocol error: invalid bulk length"),
            (
                b"*1\r\n$1\r\nab\r\n",
                "Protocol error: expected CRLF after a bulk string",
            ),
            (
                b"set \"a\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
            (
                b"set \"a\"b\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
            (&[b'x'; 40], "Protocol error: too big inline request"),
            (
                b"*111111111111111111111111111111111",
                "Protocol error: too big mbulk count string",
            ),
        ];
        for (bytes, message) in cases {
            let err = parse(bytes).expect_err("an error");
            assert_eq!(
                &err.to_string(),
                message,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_request_larger_than_the_limit_is_refused_before_it_arrives() {
        let header = b"*8\r\n$60\r\n";
        let mut bytes = header.to_vec();
        for _ in 0..4 {
            bytes.extend_from_slice(&[b'a'; 60]);
            bytes.extend_from_slice(b"\r\n$60\r\n");
        }
        assert_eq!(parse(&bytes), Err(ProtocolError::RequestTooLarge(256)));
    }

    #[test]
    fn an_empty_multibulk_is_skipped() {
        assert_eq!(parse(b"*0\r\n"), request(&[], 4));
        assert_eq!(parse(b"*-1\r\n"), request(&[], 5));
    }

    #[test]
    fn replies_encode_as_resp2() {
        let mut out = BytesMut::new();
        Frame::Array(vec![
            Frame::ok(),
            Frame::Error("ERR a\r\nb".into()),
            Frame::Integer(-3),
            Frame::bulk("hi"),
            Frame::Null,
            Frame::Array(vec![]),
        ])
        .encode(&mut out);
        assert_eq!(
            &out[..],
            b"*6\r\n+OK\r\n-ERR a  b\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*0\r\n"
        );
    }

    #[test]
    fn a_reply_is_measured_as_it_encodes() {
        let frames = [
            Frame::ok(),
            Frame::Error("ERR a\r\nb".into()),
            Frame::Integer(0),
            Frame::Integer(-10),
            Frame::Integer(i64::MIN),
            Frame::Integer(i64::MAX),
            Frame::bulk(vec![b'x'; 1000]),
            Frame::Null,
            Frame::Array(vec![
                Frame::Array(vec![]),
                Frame::bulk(""),
                Frame::Integer(99),
            ]),
        ];
        for frame in frames {
            let mut out = BytesMut::new();
            frame.encode(&mut out);
            assert_eq!(frame.encoded_len(), out.len(), "{frame:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            match parse(&bytes) {
                Ok(Parsed::Request { args, len }) => {
                    prop_assert!(len <= bytes.len());
                    prop_assert!(args.len() <= LIMITS.max_args);
                }
                Ok(Parsed::Incomplete) | Err(_) => {}
            }
        }

        #[test]
        fn multibulk_requests_round_trip(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..8),
            tail in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let mut bytes = multibulk(&refs);
            let len = bytes.len();
            bytes.extend_from_slice(&tail);
            let expected: Args = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            prop_assert_eq!(parse(&bytes), Ok(Parsed::Request { args: expected, len }));
        }

        #[test]
        fn splitting_the_bytes_never_changes_what_they_parse_to(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            step in 1usize..20,
        ) {
            let (whole, whole_error, _) = trickle(&bytes, bytes.len().max(1), LIMITS);
            let (split, split_error, _) = trickle(&bytes, step, LIMITS);
            prop_assert_eq!((split, split_error), (whole, whole_error));
        }

        #[test]
        fn inline_words_round_trip(words in proptest::collection::vec("[a-zA-Z0-9]{1,5}", 1..6)) {
            let line = format!("{}\r\n", words.join(" "));
            let expected: Args = words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect();
            prop_assert_eq!(parse(line.as_bytes()), Ok(Parsed::Request { args: expected, len: line.len() }));
        }
    }
}
