//! The rate-limit header fields: `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers) and, on request, the legacy
//! `X-RateLimit-Limit/Remaining/Reset`.
//!
//! They are written on every metered response, so they are built without
//! `format!`: each value is written into a buffer on the stack and copied
//! once into the header value (for `RateLimit`, into a per-thread arena
//! block shared by many values: no allocation per response), and the
//! `RateLimit-Policy` value, which changes only with the plan, is rendered
//! once per plan by the admission layer and shared.

use std::cell::RefCell;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::ceil_secs;

pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Which rate-limit header fields to send, and (for the two
/// `MostRestrictive` styles) which shape of 429 body.
///
/// [`Ietf`](Self::Ietf), the default, follows
/// draft-ietf-httpapi-ratelimit-headers-11: `RateLimit-Policy` lists every
/// policy of the route that the request counts against (rate limits with
/// `w`; calendar quotas with `w` where the period is a fixed number of
/// seconds, i.e. not for months; concurrency limits with
/// `qu="concurrent-requests"` and no `w`), and `RateLimit` gives `r` and `t`
/// for each. Resource limits kept as gauges are not reported (they are not
/// rate limits).
///
/// ```text
/// RateLimit-Policy: "api";q=60;w=60, "daily";q=1000;w=86400, "jobs";q=2;qu="concurrent-requests"
/// RateLimit: "api";r=59;t=60, "daily";r=999;t=3600, "jobs";r=1;t=0
/// ```
///
/// The `MostRestrictive` styles keep the output of tower-tenancy 0.1 for
/// clients that depend on it: only the rate or quota rule with the least
/// room left, and 429 bodies of type `urn:tower-tenancy:problem:<code>`
/// (instead of the IANA `quota-exceeded` type).
///
/// ```
/// use tower_tenancy::reject::HeaderStyle;
/// assert_eq!(HeaderStyle::default(), HeaderStyle::Ietf);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` with every policy (draft-11).
    #[default]
    Ietf,
    /// [`Ietf`](Self::Ietf) and the legacy `X-RateLimit-Limit/Remaining/Reset`
    /// of the rate or quota rule with the least room left.
    IetfAndLegacy,
    /// The 0.1 output: the IETF fields of the rate or quota rule with the
    /// least room left only; 429 bodies keep their `urn:` type.
    MostRestrictive,
    /// [`MostRestrictive`](Self::MostRestrictive) and the legacy
    /// `X-RateLimit-*` fields (the 0.1 `IetfAndLegacy`).
    MostRestrictiveAndLegacy,
    /// No rate-limit fields (`Retry-After` is still sent on 429).
    None,
}

impl HeaderStyle {
    /// Whether the `X-RateLimit-*` fields are sent.
    pub(crate) fn legacy(self) -> bool {
        matches!(
            self,
            HeaderStyle::IetfAndLegacy | HeaderStyle::MostRestrictiveAndLegacy
        )
    }

    /// Whether this is one of the 0.1 styles.
    pub(crate) fn most_restrictive(self) -> bool {
        matches!(
            self,
            HeaderStyle::MostRestrictive | HeaderStyle::MostRestrictiveAndLegacy
        )
    }
}

/// The rate-limit state of one policy, rendered as
/// `RateLimit-Policy: "name";q=60;w=60` and `RateLimit: "name";r=12;t=30`.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderMap;
/// use tower_tenancy::reject::{HeaderStyle, RateLimitFields};
///
/// let fields = RateLimitFields {
///     policy: "api_calls_per_minute".into(),
///     limit: 60,
///     remaining: 12,
///     reset: Duration::from_secs(30),
///     window: Some(Duration::from_secs(60)),
///     style: HeaderStyle::Ietf,
/// };
/// let mut headers = HeaderMap::new();
/// fields.apply(&mut headers);
/// assert_eq!(headers["ratelimit-policy"], "\"api_calls_per_minute\";q=60;w=60");
/// assert_eq!(headers["ratelimit"], "\"api_calls_per_minute\";r=12;t=30");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitFields {
    /// Policy name (printable ASCII; `"` and `\` are escaped).
    pub policy: String,
    /// Quota units per window.
    pub limit: u64,
    /// Units left.
    pub remaining: u64,
    /// Time until the quota resets.
    pub reset: Duration,
    /// Window length, when the policy has one.
    pub window: Option<Duration>,
    /// Which fields to render.
    pub style: HeaderStyle,
}

impl RateLimitFields {
    /// Writes the fields into `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        RateLimitHeaders::from(self).apply(headers);
    }
}

impl From<&RateLimitFields> for RateLimitHeaders {
    fn from(fields: &RateLimitFields) -> Self {
        if fields.style == HeaderStyle::None {
            return RateLimitHeaders::default();
        }
        let reset = ceil_secs(fields.reset);
        let legacy = (fields.style == HeaderStyle::IetfAndLegacy).then_some([
            fields.limit,
            fields.remaining,
            reset,
        ]);
        let Some(name) = sf_string(&fields.policy) else {
            return RateLimitHeaders::new(None, None, legacy);
        };
        let prefix = state_prefix(&name);
        let policy = render_policy(&[PolicyItem {
            name: &name,
            quota: fields.limit,
            unit: None,
            window: fields.window.map(ceil_secs),
        }]);
        let state = render_state(&[StateItem {
            prefix: &prefix,
            remaining: fields.remaining,
            reset: Some(reset),
        }]);
        RateLimitHeaders::new(policy, state, legacy)
    }
}

impl From<RateLimitFields> for RateLimitHeaders {
    fn from(fields: RateLimitFields) -> Self {
        RateLimitHeaders::from(&fields)
    }
}

/// The rate-limit header fields of one response, rendered and ready to be
/// written; built by the admission layer, or from [`RateLimitFields`].
///
/// ```
/// use std::time::Duration;
/// use http::HeaderMap;
/// use tower_tenancy::reject::{HeaderStyle, RateLimitFields, RateLimitHeaders};
///
/// let headers = RateLimitHeaders::from(RateLimitFields {
///     policy: "daily".into(),
///     limit: 1000,
///     remaining: 0,
///     reset: Duration::from_secs(3600),
///     window: None,
///     style: HeaderStyle::Ietf,
/// });
/// assert_eq!(headers.ratelimit().unwrap(), "\"daily\";r=0;t=3600");
/// let mut map = HeaderMap::new();
/// headers.apply(&mut map);
/// assert_eq!(map["ratelimit-policy"], "\"daily\";q=1000");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    policy: Option<HeaderValue>,
    state: Option<HeaderValue>,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    legacy: Option<[u64; 3]>,
}

impl RateLimitHeaders {
    pub(crate) fn new(
        policy: Option<HeaderValue>,
        state: Option<HeaderValue>,
        legacy: Option<[u64; 3]>,
    ) -> Self {
        Self {
            policy,
            state,
            legacy,
        }
    }

    /// The `RateLimit-Policy` value, if any.
    pub fn ratelimit_policy(&self) -> Option<&HeaderValue> {
        self.policy.as_ref()
    }

    /// The `RateLimit` value, if any.
    pub fn ratelimit(&self) -> Option<&HeaderValue> {
        self.state.as_ref()
    }

    /// Writes the fields into `headers` (replacing earlier values).
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.clone().write(headers);
    }

    /// [`apply`](Self::apply), moving the values (a clone of a fresh value
    /// would allocate).
    #[inline(always)]
    pub(crate) fn write(self, headers: &mut HeaderMap) {
        // The two IETF fields go together: a policy without its state (or
        // the reverse) would only confuse a client.
        if let (Some(policy), Some(state)) = (self.policy, self.state) {
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, state);
        }
        if let Some([limit, remaining, reset]) = self.legacy {
            headers.insert(X_LIMIT, HeaderValue::from(limit));
            headers.insert(X_REMAINING, HeaderValue::from(remaining));
            headers.insert(X_RESET, HeaderValue::from(reset));
        }
    }
}

/// The policy name as an RFC 8941 sf-string (`"name"`, with `"` and `\`
/// escaped), or `None` when it has a byte outside printable ASCII (which an
/// sf-string cannot carry).
pub(crate) fn sf_string(name: &str) -> Option<Bytes> {
    if !name.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return None;
    }
    let escapes = name.bytes().filter(|b| matches!(b, b'"' | b'\\')).count();
    let mut out = Vec::with_capacity(name.len() + escapes + 2);
    out.push(b'"');
    for b in name.bytes() {
        if matches!(b, b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    Some(Bytes::from(out))
}

/// One member of `RateLimit-Policy`: `"name";q=10;qu="unit";w=60`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PolicyItem<'a> {
    /// The name as an sf-string ([`sf_string`]).
    pub name: &'a [u8],
    /// `q`.
    pub quota: u64,
    /// `qu`, when not the default ("requests").
    pub unit: Option<&'static str>,
    /// `w`, in seconds.
    pub window: Option<u64>,
}

impl PolicyItem<'_> {
    /// At most this many bytes.
    fn max_len(&self) -> usize {
        self.name.len()
            + 3
            + U64_DIGITS
            + self.unit.map_or(0, |u| 6 + u.len())
            + self.window.map_or(0, |_| 3 + U64_DIGITS)
    }

    fn write(&self, out: &mut Cursor<'_>) {
        out.push(self.name);
        out.push(b";q=");
        out.push_u64(self.quota);
        if let Some(unit) = self.unit {
            out.push(b";qu=\"");
            out.push(unit.as_bytes());
            out.push(b"\"");
        }
        if let Some(w) = self.window {
            out.push(b";w=");
            out.push_u64(w);
        }
    }
}

/// One member of `RateLimit`: `"name";r=5;t=30`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateItem<'a> {
    /// The name as an sf-string followed by `;r=` ([`state_prefix`]).
    pub prefix: &'a [u8],
    /// `r`.
    pub remaining: u64,
    /// `t`, in seconds.
    pub reset: Option<u64>,
}

impl StateItem<'_> {
    /// At most this many bytes.
    fn max_len(&self) -> usize {
        self.prefix.len() + U64_DIGITS + self.reset.map_or(0, |_| 3 + U64_DIGITS)
    }

    fn write(&self, out: &mut Cursor<'_>) {
        out.push(self.prefix);
        out.push_u64(self.remaining);
        if let Some(t) = self.reset {
            out.push(b";t=");
            out.push_u64(t);
        }
    }

    /// [`write`](Self::write), appending to `out` (which has room).
    #[inline(always)]
    fn append(&self, out: &mut BytesMut) {
        out.extend_from_slice(self.prefix);
        out.extend_from_slice(itoa::Buffer::new().format(self.remaining).as_bytes());
        if let Some(t) = self.reset {
            out.extend_from_slice(b";t=");
            out.extend_from_slice(itoa::Buffer::new().format(t).as_bytes());
        }
    }
}

/// The start of a policy's member of `RateLimit`: its name as an sf-string
/// ([`sf_string`]) and `;r=`, rendered once per rule.
pub(crate) fn state_prefix(name: &[u8]) -> Bytes {
    let mut prefix = Vec::with_capacity(name.len() + 3);
    prefix.extend_from_slice(name);
    prefix.extend_from_slice(b";r=");
    Bytes::from(prefix)
}

/// The most decimal digits of a `u64`.
const U64_DIGITS: usize = 20;

/// Values up to this long are written on the stack (three policies with
/// names of 30 bytes and 20-digit numbers fit); longer ones on the heap.
const ON_STACK: usize = 256;

/// A buffer being filled from the front; the caller sized it for the
/// longest value it may receive.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Cursor<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn push_u64(&mut self, n: u64) {
        self.push(itoa::Buffer::new().format(n).as_bytes());
    }

    fn filled(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// An sf-list of `items`, written into a buffer on the stack (on the heap
/// when it could be longer than [`ON_STACK`]) and copied once into the
/// header value by `value`, without a pass to measure the value first.
fn render<T>(
    items: &[T],
    max_len: impl Fn(&T) -> usize,
    write: impl Fn(&T, &mut Cursor<'_>),
    value: impl FnOnce(&[u8]) -> Option<HeaderValue>,
) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    let max = items.iter().map(max_len).sum::<usize>() + 2 * (items.len() - 1);
    let mut stack = [0u8; ON_STACK];
    let mut heap = Vec::new();
    let buf = if max <= ON_STACK {
        &mut stack[..]
    } else {
        heap.resize(max, 0);
        &mut heap[..]
    };
    let mut out = Cursor { buf, len: 0 };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b", ");
        }
        write(item, &mut out);
    }
    value(out.filled())
}

/// The `RateLimit-Policy` value of `items` (`None` when empty), in its own
/// allocation: it lives as long as the plan.
pub(crate) fn render_policy(items: &[PolicyItem<'_>]) -> Option<HeaderValue> {
    render(items, PolicyItem::max_len, PolicyItem::write, |bytes| {
        HeaderValue::from_bytes(bytes).ok()
    })
}

/// The `RateLimit` value of `items` (`None` when empty), carved from this
/// thread's [`ARENA`].
///
/// Written straight into the arena (no buffer to fill and copy): the
/// block is replaced first when the longest value `items` can make does
/// not fit in what is left of it.
#[inline(always)]
pub(crate) fn render_state(items: &[StateItem<'_>]) -> Option<HeaderValue> {
    let (first, rest) = items.split_first()?;
    let max = items.iter().map(StateItem::max_len).sum::<usize>() + 2 * rest.len();
    let shared = ARENA.with(|arena| {
        let mut arena = arena.try_borrow_mut().ok()?;
        if arena.capacity() - arena.len() < max {
            *arena = BytesMut::with_capacity(ARENA_BLOCK.max(max));
        }
        first.append(&mut arena);
        for item in rest {
            arena.extend_from_slice(b", ");
            item.append(&mut arena);
        }
        Some(arena.split().freeze())
    });
    match shared {
        Some(shared) => HeaderValue::from_maybe_shared(shared).ok(),
        // The arena is in use further up this thread's stack (it never is).
        None => render(items, StateItem::max_len, StateItem::write, |bytes| {
            HeaderValue::from_bytes(bytes).ok()
        }),
    }
}

/// Bytes of one arena block: about 60 `RateLimit` values of one policy. A
/// value kept alive keeps its whole block: at most this many bytes per
/// response that is held (hyper drops the header values once the head is
/// written).
const ARENA_BLOCK: usize = 2048;

thread_local! {
    /// Where this thread's `RateLimit` values are written: each value is a
    /// slice of a shared block (one reference count), so a response costs
    /// no allocation of its own; a new block is allocated when the current
    /// one is full. A block is freed when the last value cut from it is
    /// dropped, so a response kept for long keeps at most one block
    /// ([`ARENA_BLOCK`] bytes) alive, and nothing outlives its values and
    /// the thread.
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits() {
        for n in [
            0,
            7,
            10,
            99,
            100,
            101,
            1_000,
            12_345,
            1_234_567_890,
            u64::MAX,
        ] {
            let mut buf = [0u8; U64_DIGITS];
            let mut out = Cursor {
                buf: &mut buf,
                len: 0,
            };
            out.push_u64(n);
            assert_eq!(out.filled(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn values_longer_than_the_stack_buffer() {
        values_of_names_of(60);
    }

    #[test]
    fn values_longer_than_an_arena_block() {
        values_of_names_of(ARENA_BLOCK / 2);
    }

    /// Four policies with names of `len + 1` bytes, the largest numbers.
    fn values_of_names_of(len: usize) {
        let names: Vec<Bytes> = (0..4)
            .map(|i| sf_string(&format!("{i}{}", "p".repeat(len))).unwrap())
            .collect();
        let prefixes: Vec<Bytes> = names.iter().map(|name| state_prefix(name)).collect();
        let items: Vec<StateItem<'_>> = prefixes
            .iter()
            .map(|prefix| StateItem {
                prefix,
                remaining: u64::MAX,
                reset: Some(u64::MAX),
            })
            .collect();
        assert!(items.iter().map(StateItem::max_len).sum::<usize>() > ON_STACK);
        let expected: Vec<String> = (0..4)
            .map(|i| format!("\"{i}{}\";r={};t={}", "p".repeat(len), u64::MAX, u64::MAX))
            .collect();
        assert_eq!(render_state(&items).unwrap(), expected.join(", ").as_str());
    }

    #[test]
    fn values_from_the_arena_outlive_their_block() {
        let name = state_prefix(&sf_string("api").unwrap());
        // Enough values to fill several blocks; each keeps its own bytes.
        let values: Vec<HeaderValue> = (0..1000u64)
            .map(|r| {
                render_state(&[StateItem {
                    prefix: &name,
                    remaining: r,
                    reset: Some(60),
                }])
                .unwrap()
            })
            .collect();
        for (r, value) in values.iter().enumerate() {
            assert_eq!(value, format!("\"api\";r={r};t=60").as_str());
        }
    }

    #[test]
    fn sf_strings_escape() {
        assert_eq!(sf_string("api").unwrap(), "\"api\"");
        assert_eq!(sf_string("a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"");
        assert_eq!(sf_string("é"), None);
        assert_eq!(sf_string("a\nb"), None);
    }

    #[test]
    fn lists_of_members() {
        let a = sf_string("a").unwrap();
        let b = sf_string("bb").unwrap();
        let v = render_policy(&[
            PolicyItem {
                name: &a,
                quota: 10,
                unit: None,
                window: Some(60),
            },
            PolicyItem {
                name: &b,
                quota: 2,
                unit: Some("concurrent-requests"),
                window: None,
            },
        ])
        .unwrap();
        assert_eq!(v, "\"a\";q=10;w=60, \"bb\";q=2;qu=\"concurrent-requests\"");
        let (pa, pb) = (state_prefix(&a), state_prefix(&b));
        let v = render_state(&[
            StateItem {
                prefix: &pa,
                remaining: 0,
                reset: Some(5),
            },
            StateItem {
                prefix: &pb,
                remaining: 1,
                reset: None,
            },
        ])
        .unwrap();
        assert_eq!(v, "\"a\";r=0;t=5, \"bb\";r=1");
        assert_eq!(render_state(&[]), None);
    }
}
