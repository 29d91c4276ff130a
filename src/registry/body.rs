//! The response body type every handler returns: a boxed stream of `Bytes` frames whose
//! error aborts the response (HTTP/1.1 connection closed before the end, h2 RST_STREAM),
//! so a client never sees a clean end on a partial or wrong blob.
//!
//! Owns: that type and its three makers (full, empty, streamed). Must not: set headers.

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};

pub type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn stream<S>(s: S) -> ResponseBody
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    use futures_util::StreamExt;
    StreamBody::new(s.map(|r| r.map(hyper::body::Frame::data))).boxed_unsync()
}
