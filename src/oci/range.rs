//! `Range: bytes=...` request headers for blobs. One range is honoured; a multi-range
//! request is answered whole (allowed by RFC 9110), a malformed one is ignored the same way.
//! [`BlobSpan`]: the bytes of a blob the edge asks a source for (a resume, a piece).

/// A single byte range as the client wrote it, before the blob's size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRangeSpec {
    /// `bytes=a-b` (inclusive end)
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes
    Suffix(u64),
}

/// The range cannot be served for a blob of this size (416).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

impl ByteRangeSpec {
    /// Parses a `Range` header value; `None` means "serve the whole blob".
    pub fn parse(value: &str) -> Option<ByteRangeSpec> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match (a.is_empty(), b.is_empty()) {
            (true, false) => Some(ByteRangeSpec::Suffix(num(b)?)),
            (false, true) => Some(ByteRangeSpec::From(num(a)?)),
            (false, false) => {
                let (x, y) = (num(a)?, num(b)?);
                (x <= y).then_some(ByteRangeSpec::FromTo(x, y))
            }
            (true, true) => None,
        }
    }

    /// The half-open range `[start, end)` of a blob of `size` bytes.
    pub fn resolve(self, size: u64) -> Result<(u64, u64), Unsatisfiable> {
        match self {
            ByteRangeSpec::FromTo(a, b) if a < size => Ok((a, b.saturating_add(1).min(size))),
            ByteRangeSpec::From(a) if a < size => Ok((a, size)),
            ByteRangeSpec::Suffix(n) if n > 0 && size > 0 => Ok((size.saturating_sub(n), size)),
            _ => Err(Unsatisfiable),
        }
    }

    /// Where the range starts, if known before the size is.
    pub fn start_hint(self) -> Option<u64> {
        match self {
            ByteRangeSpec::FromTo(a, _) | ByteRangeSpec::From(a) => Some(a),
            ByteRangeSpec::Suffix(_) => None,
        }
    }
}

/// The bytes of a blob asked of a source: from `start` to the blob's end, or to `end`
/// (exclusive, and after `start`: a span is never empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobSpan {
    start: u64,
    end: Option<u64>,
}

impl BlobSpan {
    /// The whole blob (no `Range` header).
    pub const WHOLE: BlobSpan = BlobSpan {
        start: 0,
        end: None,
    };

    /// From byte `start` to the blob's end.
    pub fn starting_at(start: u64) -> BlobSpan {
        BlobSpan { start, end: None }
    }

    /// Bytes `[start, end)`; `None` when that is empty.
    pub fn between(start: u64, end: u64) -> Option<BlobSpan> {
        (start < end).then_some(BlobSpan {
            start,
            end: Some(end),
        })
    }

    pub fn start(self) -> u64 {
        self.start
    }

    /// The exclusive end, when bounded.
    pub fn end(self) -> Option<u64> {
        self.end
    }

    pub fn is_whole(self) -> bool {
        self == BlobSpan::WHOLE
    }

    /// `(start, inclusive end)` as a `Range` header says it; `None` for the whole blob.
    pub fn header_bounds(self) -> Option<(u64, Option<u64>)> {
        (!self.is_whole()).then(|| (self.start, self.end.map(|e| e - 1)))
    }

    /// How many bytes, when bounded.
    pub fn bounded_len(self) -> Option<u64> {
        self.end.map(|e| e - self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_spans_are_never_empty_and_say_their_range_header_inclusively() {
        assert_eq!(BlobSpan::between(5, 5), None);
        assert_eq!(BlobSpan::between(6, 5), None);
        let piece = BlobSpan::between(0, 8).expect("not empty");
        assert_eq!(piece.header_bounds(), Some((0, Some(7))));
        assert_eq!(piece.bounded_len(), Some(8));
        assert_eq!(BlobSpan::starting_at(10).header_bounds(), Some((10, None)));
        assert_eq!(BlobSpan::WHOLE.header_bounds(), None);
        assert_eq!(BlobSpan::starting_at(0), BlobSpan::WHOLE);
    }

    #[test]
    fn parse_and_resolve() {
        assert_eq!(
            ByteRangeSpec::parse("bytes=0-99"),
            Some(ByteRangeSpec::FromTo(0, 99))
        );
        assert_eq!(
            ByteRangeSpec::parse("bytes=100-"),
            Some(ByteRangeSpec::From(100))
        );
        assert_eq!(
            ByteRangeSpec::parse("bytes=-10"),
            Some(ByteRangeSpec::Suffix(10))
        );
        for bad in [
            "bytes=5-1",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=-",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(ByteRangeSpec::parse(bad), None, "{bad}");
        }
        assert_eq!(ByteRangeSpec::FromTo(0, 99).resolve(50), Ok((0, 50)));
        assert_eq!(ByteRangeSpec::From(50).resolve(50), Err(Unsatisfiable));
        assert_eq!(ByteRangeSpec::Suffix(10).resolve(50), Ok((40, 50)));
        assert_eq!(ByteRangeSpec::Suffix(100).resolve(50), Ok((0, 50)));
        assert_eq!(ByteRangeSpec::Suffix(0).resolve(50), Err(Unsatisfiable));
    }
}
