//! An event stream the upstream compressed although asked for `identity`, decoded as it
//! arrives, so the SSE tee, the usage-chunk drop and the client all see plain events.
//!
//! Only such streams pass through here (decided once from the answer's headers); an
//! uncompressed stream goes to the tee as it came, at no cost. Each upstream chunk is
//! decoded and handed on before the next one is awaited, in pieces of bounded size
//! ([`crate::content_coding::STREAM_PIECE`]), so events are not held back and a small chunk
//! that decodes to gigabytes is relayed as fast as the client reads, never held whole.
//! Corrupt or cut compressed data ends the stream with an error the tee reports as the
//! upstream's ([`UpstreamError::is_undecodable`]). A chunk that decodes to nothing yet (a
//! gzip header alone) is not handed on: until output comes the tee counts the upstream as
//! silent (keep-alive comments, `timeout_secs`), as the client sees it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::Stream;

use crate::content_coding::StreamDecoder;
use crate::proxy::stream::UpstreamBody;
use crate::upstream::UpstreamError;

pub struct Decoded {
    upstream: UpstreamBody,
    decoder: StreamDecoder,
    /// The body ended, or the data was found corrupt: nothing more comes.
    ended: bool,
    /// The upstream's body ended: what the decoder still holds is handed out.
    finishing: bool,
}

impl Decoded {
    pub fn new(upstream: UpstreamBody, decoder: StreamDecoder) -> Self {
        Self {
            upstream,
            decoder,
            ended: false,
            finishing: false,
        }
    }

    fn end_with(
        &mut self,
        item: Result<Option<Bytes>, crate::content_coding::DecodeError>,
    ) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        self.ended = true;
        Poll::Ready(match item {
            Ok(piece) => piece.map(Ok),
            Err(error) => Some(Err(UpstreamError::undecodable(&error))),
        })
    }
}

impl Stream for Decoded {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if this.finishing {
                // Piece by piece, as before the end: in stacked codings the last chunk of
                // the outer one may decode to any size in the inner ones.
                return match this.decoder.finish() {
                    Ok(Some(piece)) => Poll::Ready(Some(Ok(piece))),
                    tail => this.end_with(tail),
                };
            }
            // What the last chunk decoded to goes on before the next chunk is awaited.
            match this.decoder.next_piece() {
                Ok(Some(piece)) => return Poll::Ready(Some(Ok(piece))),
                Ok(None) => {}
                Err(error) => return this.end_with(Err(error)),
            }
            match ready!(this.upstream.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => this.decoder.push(chunk),
                Some(Err(error)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
                None => this.finishing = true,
            }
        }
    }
}
