//! Tenant identity and state: [`TenantId`], [`TenantIdRef`], [`TenantIdRules`],
//! [`Tenant`] and [`TenantStatus`].

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::plan::{Overrides, Plan};
use crate::utc::{now_ms, UtcTime};

/// A validated tenant identifier.
///
/// Cloning is cheap (a reference-count increment). The default rules
/// ([`TenantIdRules::default`]) accept 1 to 64 ASCII characters from
/// `[A-Za-z0-9._-]` whose first character is a letter or a digit. These rules
/// keep an id safe in a header, a path segment, a DNS label, a log line and a
/// Redis Cluster hash tag (no `{`, `}`, `/`, whitespace or control bytes).
/// Ids are case-sensitive; a resolver may lowercase (the host resolver does,
/// since host names are case-insensitive).
///
/// ```
/// use tower_tenancy::TenantId;
///
/// let id: TenantId = "acme".parse().unwrap();
/// assert_eq!(id.as_str(), "acme");
/// assert!("../etc".parse::<TenantId>().is_err());
/// assert!("".parse::<TenantId>().is_err());
/// ```
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

/// Equal ids: the same allocation (one comparison: the counter stores key
/// their tables by a clone of the directory's id) or the same text.
impl PartialEq for TenantId {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

/// The text's hash (as `str`'s: ids are looked up by `&str` too).
impl Hash for TenantId {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl TenantId {
    /// Parses `value` with the default [`TenantIdRules`].
    pub fn new(value: &str) -> Result<Self, InvalidTenantId> {
        TenantIdRules::default().parse(value)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for TenantId {
    type Err = InvalidTenantId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for TenantId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        TenantId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated tenant id that borrows from the request when it can.
///
/// Resolvers return it from [`Resolver::resolve_ref`](crate::resolve::Resolver::resolve_ref)
/// and directories look it up with
/// [`TenantDirectory::lookup_ref`](crate::TenantDirectory::lookup_ref): a
/// request whose id is found costs no allocation for the id, since the
/// directory's [`Tenant`] owns its [`TenantId`]. It is built only by
/// [`TenantIdRules::validate`] (and friends) or from a [`TenantId`], so it
/// always holds a valid id.
///
/// ```
/// use tower_tenancy::{TenantId, TenantIdRef, TenantIdRules};
///
/// let header = String::from("acme");
/// let id: TenantIdRef<'_> = TenantIdRules::default().validate(&header).unwrap();
/// assert_eq!(id.as_str(), "acme");
/// let owned: TenantId = id.into_owned(); // allocates only now
/// assert_eq!(owned.as_str(), "acme");
/// assert!(TenantIdRules::default().validate("../etc").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantIdRef<'a>(IdRepr<'a>);

#[derive(Clone, PartialEq, Eq, Hash)]
enum IdRepr<'a> {
    Borrowed(&'a str),
    Owned(TenantId),
}

impl<'a> TenantIdRef<'a> {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            IdRepr::Borrowed(s) => s,
            IdRepr::Owned(id) => id.as_str(),
        }
    }

    /// An owned [`TenantId`] (allocates when the id is borrowed).
    pub fn to_owned_id(&self) -> TenantId {
        match &self.0 {
            IdRepr::Borrowed(s) => TenantId(Arc::from(*s)),
            IdRepr::Owned(id) => id.clone(),
        }
    }

    /// Converts into an owned [`TenantId`] (allocates when the id is borrowed).
    pub fn into_owned(self) -> TenantId {
        match self.0 {
            IdRepr::Borrowed(s) => TenantId(Arc::from(s)),
            IdRepr::Owned(id) => id,
        }
    }
}

impl From<TenantId> for TenantIdRef<'_> {
    fn from(id: TenantId) -> Self {
        TenantIdRef(IdRepr::Owned(id))
    }
}

impl<'a> From<&'a TenantId> for TenantIdRef<'a> {
    fn from(id: &'a TenantId) -> Self {
        TenantIdRef(IdRepr::Owned(id.clone()))
    }
}

impl PartialEq<TenantId> for TenantIdRef<'_> {
    fn eq(&self, other: &TenantId) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<str> for TenantIdRef<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl AsRef<str> for TenantIdRef<'_> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for TenantIdRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TenantIdRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Why a value is not a valid [`TenantId`]. Never echoes the rejected input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTenantId {
    /// The value is empty.
    #[error("tenant id is empty")]
    Empty,
    /// The value is longer than the configured maximum.
    #[error("tenant id is longer than {max} bytes")]
    TooLong {
        /// The configured maximum length.
        max: usize,
    },
    /// The value contains a character outside the allowed set.
    #[error("tenant id contains a character outside [A-Za-z0-9._-] at byte {position}")]
    BadCharacter {
        /// Byte offset of the first offending character.
        position: usize,
    },
    /// The value does not start with a letter or a digit.
    #[error("tenant id must start with a letter or a digit")]
    BadStart,
}

/// The bytes of an id: `[A-Za-z0-9._-]`, as a table (one load per byte).
const ID_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-';
        b += 1;
    }
    table
};

/// The validation rules for tenant ids: maximum length and letter case.
///
/// The character set is fixed to `[A-Za-z0-9._-]` with an alphanumeric first
/// character, so that every id is safe as a Redis hash tag and a path segment.
///
/// ```
/// use tower_tenancy::TenantIdRules;
///
/// let rules = TenantIdRules::default().max_len(16).lowercase(true);
/// assert_eq!(rules.parse("ACME").unwrap().as_str(), "acme");
/// assert!(rules.parse("a-very-long-tenant-name").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantIdRules {
    max_len: usize,
    lowercase: bool,
}

impl Default for TenantIdRules {
    fn default() -> Self {
        Self {
            max_len: Self::DEFAULT_MAX_LEN,
            lowercase: false,
        }
    }
}

impl TenantIdRules {
    /// The default maximum length of an id, in bytes.
    pub const DEFAULT_MAX_LEN: usize = 64;

    /// Sets the maximum length in bytes (clamped to 1..=255).
    #[must_use]
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.clamp(1, 255);
        self
    }

    /// The maximum length in bytes (for resolvers that bound their work).
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_len
    }

    /// Lowercases ASCII letters before storing, making ids case-insensitive.
    #[must_use]
    pub fn lowercase(mut self, lowercase: bool) -> Self {
        self.lowercase = lowercase;
        self
    }

    /// Validates `value` and builds a [`TenantId`]. Work is bounded by
    /// `max_len`: longer input is refused before it is scanned.
    pub fn parse(&self, value: &str) -> Result<TenantId, InvalidTenantId> {
        self.validate(value).map(TenantIdRef::into_owned)
    }

    /// Validates raw bytes (for example a header value) and builds a
    /// [`TenantId`]; non-ASCII bytes are refused.
    pub fn parse_bytes(&self, value: &[u8]) -> Result<TenantId, InvalidTenantId> {
        self.validate_bytes(value).map(TenantIdRef::into_owned)
    }

    /// Validates `value` in place, without allocating: the result borrows
    /// `value` (it owns a lowercased copy only when these rules lowercase
    /// and `value` has an uppercase letter). Same rules as [`parse`](Self::parse).
    ///
    /// ```
    /// use tower_tenancy::TenantIdRules;
    ///
    /// let rules = TenantIdRules::default().lowercase(true);
    /// assert_eq!(rules.validate("acme").unwrap().as_str(), "acme");
    /// assert_eq!(rules.validate("ACME").unwrap().as_str(), "acme");
    /// assert!(rules.validate("").is_err());
    /// ```
    pub fn validate<'a>(&self, value: &'a str) -> Result<TenantIdRef<'a>, InvalidTenantId> {
        self.check(value.as_bytes())?;
        if self.lowercase && value.bytes().any(|b| b.is_ascii_uppercase()) {
            Ok(TenantIdRef(IdRepr::Owned(TenantId(Arc::from(
                value.to_ascii_lowercase(),
            )))))
        } else {
            Ok(TenantIdRef(IdRepr::Borrowed(value)))
        }
    }

    /// Validates raw bytes (for example a header value) in place, like
    /// [`validate`](Self::validate); non-ASCII bytes are refused.
    ///
    /// ```
    /// use tower_tenancy::TenantIdRules;
    ///
    /// assert_eq!(TenantIdRules::default().validate_bytes(b"acme").unwrap().as_str(), "acme");
    /// assert!(TenantIdRules::default().validate_bytes(&[0x61, 0xff]).is_err());
    /// ```
    pub fn validate_bytes<'a>(&self, value: &'a [u8]) -> Result<TenantIdRef<'a>, InvalidTenantId> {
        self.check(value)?;
        // check() admits only ASCII, so this cannot fail.
        let s = std::str::from_utf8(value)
            .map_err(|_| InvalidTenantId::BadCharacter { position: 0 })?;
        self.validate(s)
    }

    fn check(&self, value: &[u8]) -> Result<(), InvalidTenantId> {
        if value.is_empty() {
            return Err(InvalidTenantId::Empty);
        }
        if value.len() > self.max_len {
            return Err(InvalidTenantId::TooLong { max: self.max_len });
        }
        if let Some(position) = value.iter().position(|&b| !ID_BYTE[usize::from(b)]) {
            return Err(InvalidTenantId::BadCharacter { position });
        }
        if !value[0].is_ascii_alphanumeric() {
            return Err(InvalidTenantId::BadStart);
        }
        Ok(())
    }
}

/// Lifecycle state of a tenant. Only [`TenantStatus::Active`] tenants are
/// admitted; the others are refused with 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TenantStatus {
    /// In good standing.
    #[default]
    Active,
    /// Temporarily blocked (for example unpaid invoice).
    Suspended,
    /// Subscription or trial ended.
    Expired,
    /// Deleted; kept only so that requests get a clear refusal.
    Deleted,
}

impl TenantStatus {
    /// Whether requests of a tenant in this state are admitted.
    pub fn is_active(self) -> bool {
        self == TenantStatus::Active
    }

    /// The lowercase name used in catalogs and problem bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Expired => "expired",
            TenantStatus::Deleted => "deleted",
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant: id, status, plan and per-tenant overrides, with the effective
/// plan (plan with overrides applied) computed once at construction (a
/// tenant without overrides shares its base plan).
///
/// Overrides with an [`until`](Overrides::until) end by themselves: from
/// that instant on, [`plan`](Self::plan) returns the base plan (the check
/// is one comparison with the system clock, made only for such tenants).
///
/// The [`TenancyLayer`](crate::TenancyLayer) inserts an `Arc<Tenant>` (as
/// [`CurrentTenant`](crate::CurrentTenant)) into the request extensions.
///
/// ```
/// use std::sync::Arc;
/// use tower_tenancy::{Plan, Tenant, TenantStatus};
///
/// let plan = Arc::new(Plan::new("free").feature("export").limit("workflows", 5));
/// let tenant = Tenant::new("acme".parse().unwrap(), plan);
/// assert_eq!(tenant.status(), TenantStatus::Active);
/// assert!(tenant.plan().has_feature("export"));
/// ```
#[derive(Debug, Clone)]
pub struct Tenant {
    id: TenantId,
    status: TenantStatus,
    base_plan: Arc<Plan>,
    overrides: Overrides,
    effective: Arc<Plan>,
    /// `overrides.until` in ms since the epoch.
    until: Option<u64>,
}

impl Tenant {
    /// An active tenant on `plan` without overrides.
    pub fn new(id: TenantId, plan: Arc<Plan>) -> Self {
        Self::with_overrides(id, plan, TenantStatus::Active, Overrides::default())
    }

    /// A tenant with an explicit status and overrides.
    pub fn with_overrides(
        id: TenantId,
        plan: Arc<Plan>,
        status: TenantStatus,
        overrides: Overrides,
    ) -> Self {
        // Tenants without overrides share their plan: less memory, and the
        // admission layer's per-plan precomputation serves them all.
        let effective = if overrides == Overrides::default() {
            plan.clone()
        } else {
            Arc::new(plan.merged(&overrides))
        };
        Self {
            id,
            status,
            base_plan: plan,
            until: overrides.until.map(UtcTime::unix_ms),
            overrides,
            effective,
        }
    }

    /// The same tenant with another status.
    pub fn set_status(&self, status: TenantStatus) -> Self {
        Self {
            status,
            ..self.clone()
        }
    }

    /// The same tenant moved to another plan (overrides are kept).
    pub fn set_plan(&self, plan: Arc<Plan>) -> Self {
        Self::with_overrides(self.id.clone(), plan, self.status, self.overrides.clone())
    }

    /// The same tenant with other overrides.
    pub fn set_overrides(&self, overrides: Overrides) -> Self {
        Self::with_overrides(
            self.id.clone(),
            self.base_plan.clone(),
            self.status,
            overrides,
        )
    }

    /// The tenant id.
    #[inline]
    pub fn id(&self) -> &TenantId {
        &self.id
    }

    /// The lifecycle state.
    #[inline]
    pub fn status(&self) -> TenantStatus {
        self.status
    }

    /// The effective plan: the base plan with this tenant's overrides
    /// applied, or the base plan alone once the overrides' `until` has
    /// passed (system clock).
    #[inline]
    pub fn plan(&self) -> &Arc<Plan> {
        match self.until {
            Some(until) if now_ms() >= until => &self.base_plan,
            _ => &self.effective,
        }
    }

    /// The effective plan at `now`: [`plan`](Self::plan) for a given instant.
    pub fn plan_at(&self, now: UtcTime) -> &Arc<Plan> {
        match self.until {
            Some(until) if now.unix_ms() >= until => &self.base_plan,
            _ => &self.effective,
        }
    }

    /// The overrides in force at `now`: `None` when there are none or their
    /// `until` has passed.
    pub fn overrides_at(&self, now: UtcTime) -> Option<&Overrides> {
        let ended = self.until.is_some_and(|until| now.unix_ms() >= until);
        (!ended && self.overrides != Overrides::default()).then_some(&self.overrides)
    }

    /// The base plan, without overrides.
    pub fn base_plan(&self) -> &Arc<Plan> {
        &self.base_plan
    }

    /// This tenant's overrides.
    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let r = TenantIdRules::default();
        assert!(r.parse("a").is_ok());
        assert!(r.parse("Acme-Corp_1.eu").is_ok());
        assert_eq!(r.parse(""), Err(InvalidTenantId::Empty));
        assert_eq!(r.parse(".."), Err(InvalidTenantId::BadStart));
        assert_eq!(r.parse("-a"), Err(InvalidTenantId::BadStart));
        assert_eq!(
            r.parse("a{b}"),
            Err(InvalidTenantId::BadCharacter { position: 1 })
        );
        assert!(r.parse("a b").is_err());
        assert!(r.parse("a\0").is_err());
        assert!(r.parse("é").is_err());
        assert_eq!(
            r.parse(&"a".repeat(65)),
            Err(InvalidTenantId::TooLong { max: 64 })
        );
        assert!(r.parse(&"a".repeat(64)).is_ok());
        assert!(r.parse_bytes(&[0x61, 0xff]).is_err());
    }

    #[test]
    fn serde_roundtrip() {
        let id: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"acme\"");
        assert!(serde_json::from_str::<TenantId>("\"a/b\"").is_err());
    }
}
