//! Reading a blob body from a source, resumed after breaks: a body that breaks (or ends
//! before the announced size) is asked for again with `Range` from the byte reached, a
//! few times with backoff. The one resume loop, used by the fill (`fill`), by each piece
//! of a pieced fill (`pieces`) and by a client that fetches the rest on its own
//! (`blob_stream`).
//!
//! Owns: the resume rule (bounded tries, backoff, an upstream that ignored `Range` has its
//! head skipped, one that starts too late fails) and its strict form for a piece (bytes
//! `[start, end)` of a blob: every answer must be a 206 from exactly the byte reached,
//! bytes past the piece's end are cut off, the piece is complete only at its end). Must
//! not: verify, keep or send the bytes (its callers do), or choose the source (it is
//! handed one).

use super::sources::BlobSource;
use crate::oci::{BlobSpan, Digest, RepoTarget};
use crate::store::GrowthFailure;
use crate::upstream::{BlobBody, BlobResponse, UpstreamError};
use bytes::Bytes;
use futures_util::StreamExt;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;

/// How many times a broken upstream body is resumed before the read gives up.
pub(super) const RESUME_TRIES: u32 = 4;

/// A source body answering a request from byte `at`, yielding only bytes from `at` on
/// (a source that ignored the `Range` and started earlier has its head skipped) and, for
/// a piece, only bytes before `end`.
struct ResumedBody {
    body: BlobBody,
    skip: u64,
    /// Bytes still wanted, for a piece.
    left: Option<u64>,
    broke: Option<String>,
}

impl ResumedBody {
    /// `None` when `response` starts after `at` (bytes would be missing).
    fn new(response: BlobResponse, at: u64, end: Option<u64>) -> Option<ResumedBody> {
        (response.start <= at).then(|| ResumedBody {
            skip: at - response.start,
            left: end.map(|e| e.saturating_sub(at)),
            body: response.body,
            broke: None,
        })
    }

    /// The next non-empty frame; `None` at the end of the body (or of the piece) or when
    /// it broke.
    async fn next(&mut self) -> Option<Bytes> {
        if self.left == Some(0) {
            return None;
        }
        while let Some(frame) = self.body.next().await {
            let mut bytes = match frame {
                Ok(b) => b,
                Err(e) => {
                    self.broke = Some(e.to_string());
                    return None;
                }
            };
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64) as usize;
                bytes = bytes.slice(n..);
                self.skip -= n as u64;
            }
            if let Some(left) = self.left.as_mut() {
                let n = (*left).min(bytes.len() as u64);
                bytes.truncate(n as usize);
                *left -= n;
            }
            if !bytes.is_empty() {
                return Some(bytes);
            }
        }
        None
    }
}

/// An empty body, standing in for a request that failed (counted as a break).
fn no_body() -> BlobBody {
    BlobBody::from_stream(futures_util::stream::iter(Vec::<
        Result<Bytes, UpstreamError>,
    >::new()))
}

/// Where resumes go, and what they count.
#[derive(Clone)]
pub(super) struct ResumeFrom {
    pub source: Arc<dyn BlobSource>,
    pub target: RepoTarget,
    pub digest: Digest,
    /// Counted once per resume request (the fill's `fill_resumes`), if given.
    pub resumes: Option<IntCounter>,
}

impl ResumeFrom {
    /// Asks the source for `span`: a failed request is an empty body (a break, so the
    /// caller's tries count it), a source that no longer has the blob an error, and, for a
    /// piece (`strict`), an answer that breaks the protocol (a `206` from another byte) an
    /// error too: never a guess.
    async fn ask(
        &self,
        span: BlobSpan,
        size: Option<u64>,
        strict: bool,
    ) -> Result<BlobResponse, GrowthFailure> {
        match self.source.blob(&self.target, &self.digest, span).await {
            Ok(r) => Ok(r.response),
            Err(e) if e.is_not_found() => Err(GrowthFailure::Source(
                "the upstream no longer has this blob".into(),
            )),
            Err(e @ UpstreamError::BadResponse(_)) if strict => Err(GrowthFailure::Source(
                format!("upstream answered a piece request wrongly: {e}"),
            )),
            Err(e) => {
                tracing::warn!(digest = %self.digest, from = span.start(), error = %e, "blob request failed");
                Ok(BlobResponse {
                    cache_status: None,
                    size,
                    start: span.start(),
                    partial: span.end().is_some(),
                    body: no_body(),
                })
            }
        }
    }
}

/// A blob body read from byte `at` on, resumed after breaks.
///
/// Read it with `while let Some(b) = body.next_frame().await { .. }`, then ask
/// [`resume`](Self::resume): `Ok(false)` when the body is complete, `Ok(true)` when a
/// resumed body follows (read on), `Err` when the source gave up.
pub(super) struct ResumingBody {
    from: ResumeFrom,
    size: Option<u64>,
    /// For a piece: its exclusive end (every answer must be a 206 from the byte reached).
    piece_end: Option<u64>,
    body: ResumedBody,
    at: u64,
    tries: u32,
}

fn starts_late(start: u64, at: u64) -> GrowthFailure {
    GrowthFailure::Source(format!(
        "upstream resumed at byte {start} but {at} were received"
    ))
}

/// A piece's answer must be the bytes asked for: a 206 from exactly the byte reached, of a
/// blob of the size the first answer said.
fn check_piece_answer(
    response: &BlobResponse,
    at: u64,
    end: u64,
    size: u64,
) -> Result<(), GrowthFailure> {
    if let Some(total) = response.size.filter(|t| *t != size) {
        return Err(GrowthFailure::Source(format!(
            "upstream answered the piece {at}-{} of a blob of {total} bytes, first said {size}",
            end - 1
        )));
    }
    if !response.partial {
        return Err(GrowthFailure::Source(format!(
            "upstream answered the piece {at}-{} with the whole blob (200), not the range",
            end - 1
        )));
    }
    if response.start != at {
        return Err(GrowthFailure::Source(format!(
            "upstream answered the piece {at}-{} from byte {}",
            end - 1,
            response.start
        )));
    }
    Ok(())
}

impl ResumingBody {
    /// `first` answers a request from byte `at`; `size` is the blob's, when known.
    pub fn new(
        first: BlobResponse,
        at: u64,
        size: Option<u64>,
        from: ResumeFrom,
    ) -> Result<ResumingBody, GrowthFailure> {
        let start = first.start;
        let body = ResumedBody::new(first, at, None).ok_or_else(|| starts_late(start, at))?;
        Ok(ResumingBody {
            from,
            size,
            piece_end: None,
            body,
            at,
            tries: 0,
        })
    }

    /// The piece `span` (bounded) of a blob of `size` bytes, from `first` (the answer to
    /// a request for it) or, when `None`, from a request made now.
    pub async fn piece(
        span: BlobSpan,
        first: Option<BlobResponse>,
        size: u64,
        from: ResumeFrom,
    ) -> Result<ResumingBody, GrowthFailure> {
        let (at, end) = (span.start(), span.end().unwrap_or(size));
        let first = match first {
            Some(r) => r,
            None => from.ask(span, Some(size), true).await?,
        };
        check_piece_answer(&first, at, end, size)?;
        let body = ResumedBody::new(first, at, Some(end)).ok_or_else(|| starts_late(at, at))?;
        Ok(ResumingBody {
            from,
            size: Some(size),
            piece_end: Some(end),
            body,
            at,
            tries: 0,
        })
    }

    /// The byte reached.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// How many resumes were asked for so far.
    pub fn resumes(&self) -> u32 {
        self.tries
    }

    /// The next frame of the current body; `None` when it ended or broke.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        let frame = self.body.next().await?;
        self.at += frame.len() as u64;
        Some(frame)
    }

    /// After the current body ended: `Ok(false)` if the blob (or the piece) is complete,
    /// else a resumed body follows (`Ok(true)`) unless the tries are used up or the
    /// source no longer has the blob.
    pub async fn resume(&mut self) -> Result<bool, GrowthFailure> {
        let broke = self.body.broke.take();
        let end = self.piece_end.or(self.size);
        let short = end.is_some_and(|e| self.at < e);
        if (broke.is_none() || self.piece_end.is_some()) && !short {
            return Ok(false);
        }
        self.tries += 1;
        let at = self.at;
        let why = broke
            .unwrap_or_else(|| format!("body ended at byte {at} of {}", end.unwrap_or_default()));
        if self.tries > RESUME_TRIES {
            return Err(GrowthFailure::Source(format!(
                "upstream failed mid-blob; gave up after {RESUME_TRIES} resumes: {why}"
            )));
        }
        let backoff = Duration::from_millis(200 * (1 << (self.tries - 1)));
        tracing::warn!(digest = %self.from.digest, received = at, tries = self.tries, error = %why, "upstream broke mid-blob; resuming with Range");
        tokio::time::sleep(backoff).await;
        if let Some(resumes) = &self.from.resumes {
            resumes.inc();
        }
        let span = match self.piece_end {
            Some(end) => BlobSpan::between(at, end).unwrap_or(BlobSpan::starting_at(at)),
            None => BlobSpan::starting_at(at),
        };
        let response = self
            .from
            .ask(span, self.size, self.piece_end.is_some())
            .await?;
        if let (Some(end), Some(size)) = (self.piece_end, self.size) {
            check_piece_answer(&response, at, end, size)?;
        }
        let start = response.start;
        self.body =
            ResumedBody::new(response, at, self.piece_end).ok_or_else(|| starts_late(start, at))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::sources::{SourceFuture, SourcedBlob};
    use std::sync::Mutex;

    /// Answers each request with the next scripted body: `(start, bytes, breaks)`.
    struct Scripted {
        answers: Mutex<Vec<(u64, &'static [u8], bool)>>,
        asked: Mutex<Vec<BlobSpan>>,
    }

    fn body(bytes: &'static [u8], breaks: bool) -> BlobBody {
        let mut frames = vec![Ok(Bytes::from_static(bytes))];
        if breaks {
            frames.push(Err(UpstreamError::Body("reset".into())));
        }
        BlobBody::from_stream(futures_util::stream::iter(frames))
    }

    impl BlobSource for Scripted {
        fn blob<'a>(
            &'a self,
            target: &'a RepoTarget,
            _digest: &'a Digest,
            span: BlobSpan,
        ) -> SourceFuture<'a, SourcedBlob> {
            self.asked.lock().expect("lock").push(span);
            let next = self.answers.lock().expect("lock").pop();
            Box::pin(async move {
                let (start, bytes, breaks) = next.ok_or(UpstreamError::NotFound)?;
                let response = BlobResponse {
                    cache_status: None,
                    size: Some(10),
                    start,
                    partial: start > 0,
                    body: body(bytes, breaks),
                };
                Ok(SourcedBlob::for_repo(response, target))
            })
        }

        fn blob_size<'a>(
            &'a self,
            _target: &'a RepoTarget,
            _digest: &'a Digest,
        ) -> SourceFuture<'a, Option<u64>> {
            Box::pin(async { Ok(Some(10)) })
        }
    }

    /// Reads a 10-byte blob whose first body is `b"0123"` then breaks; the resumes answer
    /// `answers` (last first).
    async fn read(answers: Vec<(u64, &'static [u8], bool)>) -> (Result<Vec<u8>, String>, usize) {
        let source = Arc::new(Scripted {
            answers: Mutex::new(answers),
            asked: Mutex::new(Vec::new()),
        });
        let from = ResumeFrom {
            source: source.clone(),
            target: RepoTarget {
                upstream: "up".into(),
                repo: "r".parse().expect("name"),
            },
            digest: Digest::of(b"0123456789"),
            resumes: None,
        };
        let first = BlobResponse {
            cache_status: None,
            size: Some(10),
            start: 0,
            partial: false,
            body: body(b"0123", true),
        };
        let mut out = Vec::new();
        let result = async {
            let mut body = ResumingBody::new(first, 0, Some(10), from)?;
            loop {
                while let Some(b) = body.next_frame().await {
                    out.extend_from_slice(&b);
                }
                if !body.resume().await? {
                    return Ok(());
                }
            }
        }
        .await;
        let asked = source.asked.lock().expect("lock").len();
        (
            result
                .map(|()| out)
                .map_err(|f: GrowthFailure| f.to_string()),
            asked,
        )
    }

    #[tokio::test]
    async fn a_resume_from_a_source_that_ignored_the_range_skips_what_was_read() {
        let (got, asked) = read(vec![(0, b"0123456789", false)]).await;
        assert_eq!(got.as_deref(), Ok(&b"0123456789"[..]));
        assert_eq!(asked, 1);
    }

    #[tokio::test]
    async fn a_resume_that_starts_after_the_byte_reached_fails() {
        let (got, _) = read(vec![(6, b"6789", false)]).await;
        let err = got.expect_err("bytes 4 and 5 would be missing");
        assert!(
            err.contains("resumed at byte 6 but 4 were received"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_body_that_keeps_breaking_gives_up_after_the_tries() {
        let answers = vec![(4, &b""[..], true); RESUME_TRIES as usize];
        let (got, asked) = read(answers).await;
        let err = got.expect_err("gave up");
        assert!(err.contains("gave up after 4 resumes"), "{err}");
        assert_eq!(asked, RESUME_TRIES as usize);
    }
}
