//! [`TenancyBody`]: the response body of every layer of this crate — the
//! inner service's body, or a rejection's problem+json; it can hold a
//! concurrency [`Lease`] that is released when the body ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::store::Lease;

pin_project! {
    /// Response body of the layers of this crate.
    ///
    /// ```
    /// use http_body_util::{BodyExt, Empty};
    /// use bytes::Bytes;
    /// use tower_tenancy::body::TenancyBody;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let body: TenancyBody<Empty<Bytes>> = TenancyBody::full(Bytes::from_static(b"{}"));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
    /// # });
    /// ```
    pub struct TenancyBody<B> {
        #[pin]
        kind: Kind<B>,
        lease: Option<Lease>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> TenancyBody<B> {
    /// Wraps the inner service's body.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
            lease: None,
        }
    }

    /// Wraps the inner body and holds `lease` until the body ends or is dropped.
    pub fn with_lease(body: B, lease: Option<Lease>) -> Self {
        Self {
            kind: Kind::Inner { body },
            lease,
        }
    }

    /// A complete body (used for rejections).
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
            lease: None,
        }
    }
}

impl<B> Body for TenancyBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = match this.kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &polled {
            // The body is finished: free the concurrency slot now, not when
            // the connection gets around to dropping the body.
            this.lease.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for TenancyBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenancyBody")
            .field("holds_lease", &self.lease.is_some())
            .finish()
    }
}
