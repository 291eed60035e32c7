use std::sync::Arc;

use crate::tenant::TenantId;

/// The tenants the authenticated principal may act for. An authentication
/// layer (running before the [`TenancyLayer`](crate::TenancyLayer)) inserts
/// it into the request extensions; with
/// [`bind_to_principal`](crate::TenancyLayer::bind_to_principal) a resolved
/// tenant outside this set is refused with 403 `tenant_not_permitted`, and a
/// request without it is refused too.
///
/// ```
/// use tower_tenancy::AllowedTenants;
///
/// let allowed = AllowedTenants::only(["acme".parse().unwrap()]);
/// assert!(allowed.permits(&"acme".parse().unwrap()));
/// assert!(!allowed.permits(&"globex".parse().unwrap()));
/// assert!(AllowedTenants::Any.permits(&"globex".parse().unwrap()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedTenants {
    /// Any tenant (an operator or service account).
    Any,
    /// Only these tenants.
    Only(Arc<[TenantId]>),
}

impl AllowedTenants {
    /// Only the given tenants.
    pub fn only(ids: impl IntoIterator<Item = TenantId>) -> Self {
        AllowedTenants::Only(ids.into_iter().collect())
    }

    /// Whether the principal may act for `id` (exact, case-sensitive match).
    pub fn permits(&self, id: &TenantId) -> bool {
        self.permits_str(id.as_str())
    }

    /// [`permits`](Self::permits) for an id as a string.
    pub(crate) fn permits_str(&self, id: &str) -> bool {
        match self {
            AllowedTenants::Any => true,
            AllowedTenants::Only(ids) => ids.iter().any(|allowed| allowed.as_str() == id),
        }
    }
}
