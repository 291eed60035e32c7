//! [`MaybeReady`]: the future returned by directories and stores, which are
//! often synchronous (in memory) and sometimes not (a database, Redis).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A value that is either available now or computed by a boxed future.
///
/// Synchronous implementations (the in-memory directory and store) answer
/// with [`MaybeReady::ready`] and cost no allocation; asynchronous ones box
/// their future with [`MaybeReady::boxed`].
///
/// ```
/// use tower_tenancy::future::MaybeReady;
///
/// # tokio_test_block_on(async {
/// assert_eq!(MaybeReady::ready(1).await, 1);
/// assert_eq!(MaybeReady::boxed(async { 2 }).await, 2);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct MaybeReady<T>(State<T>);

enum State<T> {
    Ready(Option<T>),
    Boxed(Pin<Box<dyn Future<Output = T> + Send + 'static>>),
}

impl<T> MaybeReady<T> {
    /// An immediately available value.
    pub fn ready(value: T) -> Self {
        Self(State::Ready(Some(value)))
    }

    /// A value computed by `future`.
    pub fn boxed(future: impl Future<Output = T> + Send + 'static) -> Self {
        Self(State::Boxed(Box::pin(future)))
    }

    /// Takes the value if it is available without waiting.
    pub fn try_take(&mut self) -> Option<T> {
        match &mut self.0 {
            State::Ready(value) => value.take(),
            State::Boxed(_) => None,
        }
    }

    /// The value, borrowed in place, if it is available without waiting
    /// (for large values: no move).
    ///
    /// ```
    /// use tower_tenancy::future::MaybeReady;
    ///
    /// let mut ready = MaybeReady::ready(vec![1, 2]);
    /// ready.ready_mut().unwrap().push(3);
    /// assert_eq!(ready.try_take(), Some(vec![1, 2, 3]));
    /// assert!(MaybeReady::boxed(async { 1 }).ready_mut().is_none());
    /// ```
    pub fn ready_mut(&mut self) -> Option<&mut T> {
        match &mut self.0 {
            State::Ready(value) => value.as_mut(),
            State::Boxed(_) => None,
        }
    }
}

impl<T> Unpin for MaybeReady<T> {}

impl<T> Future for MaybeReady<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.0 {
            State::Ready(value) => {
                Poll::Ready(value.take().expect("MaybeReady polled after completion"))
            }
            State::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for MaybeReady<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            State::Ready(_) => f.write_str("MaybeReady::Ready"),
            State::Boxed(_) => f.write_str("MaybeReady::Boxed"),
        }
    }
}
