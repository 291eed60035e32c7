//! A catalog of plans and tenants, loaded from TOML or JSON.
//!
//! The file format (see `examples/plans.toml`):
//!
//! ```toml
//! [[plans]]
//! name = "free"
//! features = ["webhooks"]
//! limits = { workflows = 5 }
//! rates = { api_calls_per_minute = { limit = 60, window = "1m" } }
//! # algorithm = "sliding_window" (default: never above the limit in any window),
//! # "gcra" (a rate with bursts; optional burst = 10), "sliding_log" (exact),
//! # "sliding_window_approx" (the former two-counter window)
//! quotas = { executions_per_day = { limit = 100, period = "day" } }
//! concurrency = { concurrent_executions = { limit = 2 } }
//!
//! [[tenants]]
//! id = "acme"
//! plan = "free"
//! status = "active"                       # optional, default active
//! overrides = { limits = { workflows = 10 } }  # optional
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::plan::{Overrides, Plan};
use crate::tenant::{Tenant, TenantId, TenantStatus};

/// A catalog file could not be loaded. The message starts with the path of
/// the offending entry, e.g. `plans[1].limits.workflows: limit must not be
/// negative (got -5)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CatalogError {
    /// Where in the document the problem is (`plans[0].name`, `tenants[2].plan`, …),
    /// or the file name for I/O and syntax errors.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl CatalogError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A tenant entry of a catalog file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// The tenant id.
    pub id: TenantId,
    /// The name of its plan.
    pub plan: String,
    /// Its status (default: active).
    #[serde(default)]
    pub status: TenantStatus,
    /// Its overrides.
    #[serde(default)]
    pub overrides: Overrides,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    plans: Vec<Plan>,
    #[serde(default)]
    tenants: Vec<TenantSpec>,
}

/// Validated plans and tenants.
///
/// ```
/// use tower_tenancy::Catalog;
///
/// let catalog = Catalog::from_toml_str(r#"
///     [[plans]]
///     name = "free"
///     limits = { workflows = 5 }
///
///     [[tenants]]
///     id = "acme"
///     plan = "free"
/// "#).unwrap();
/// assert_eq!(catalog.tenants().len(), 1);
///
/// let err = Catalog::from_toml_str(r#"
///     [[plans]]
///     name = "free"
///     [[tenants]]
///     id = "acme"
///     plan = "gold"
/// "#).unwrap_err();
/// assert_eq!(err.path, "tenants[0].plan");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    plans: BTreeMap<String, Arc<Plan>>,
    tenants: Vec<Tenant>,
}

impl Catalog {
    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, CatalogError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| CatalogError::new("(toml)", e.message().to_string()))?;
        let file: CatalogFile = serde_path_to_error::deserialize(de).map_err(|e| {
            CatalogError::new(e.path().to_string(), e.inner().message().to_string())
        })?;
        Self::build(file)
    }

    /// Parses and validates a JSON document.
    pub fn from_json_str(text: &str) -> Result<Self, CatalogError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let file: CatalogFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            CatalogError::new(path, inner.to_string())
        })?;
        Self::build(file)
    }

    /// Reads a `.toml` or `.json` file (by extension).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| CatalogError::new(&name, e.to_string()))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Self::from_json_str(&text),
            Some("toml") => Self::from_toml_str(&text),
            _ => Err(CatalogError::new(
                "(file)",
                "expected a .toml or .json file",
            )),
        }
        .map_err(|e| CatalogError::new(format!("{name}: {}", e.path), e.message))
    }

    fn build(file: CatalogFile) -> Result<Self, CatalogError> {
        let mut plans = BTreeMap::new();
        for (i, plan) in file.plans.into_iter().enumerate() {
            validate_name(&plan.name)
                .map_err(|m| CatalogError::new(format!("plans[{i}].name"), m))?;
            validate_rules(&plan, &format!("plans[{i}]"))?;
            if plans.contains_key(&plan.name) {
                return Err(CatalogError::new(
                    format!("plans[{i}].name"),
                    format!("duplicate plan {:?}", plan.name),
                ));
            }
            plans.insert(plan.name.clone(), Arc::new(plan));
        }
        let mut seen = HashSet::new();
        let mut tenants = Vec::with_capacity(file.tenants.len());
        for (i, spec) in file.tenants.into_iter().enumerate() {
            if !seen.insert(spec.id.clone()) {
                return Err(CatalogError::new(
                    format!("tenants[{i}].id"),
                    format!("duplicate tenant {:?}", spec.id.as_str()),
                ));
            }
            let plan = plans.get(&spec.plan).ok_or_else(|| {
                CatalogError::new(
                    format!("tenants[{i}].plan"),
                    format!("unknown plan {:?}", spec.plan),
                )
            })?;
            let tenant = Tenant::with_overrides(spec.id, plan.clone(), spec.status, spec.overrides);
            validate_rules(tenant.plan(), &format!("tenants[{i}].overrides"))?;
            tenants.push(tenant);
        }
        Ok(Self { plans, tenants })
    }

    /// The plan named `name`.
    pub fn plan(&self, name: &str) -> Option<&Arc<Plan>> {
        self.plans.get(name)
    }

    /// All plans, by name.
    pub fn plans(&self) -> &BTreeMap<String, Arc<Plan>> {
        &self.plans
    }

    /// All tenants, in file order.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    /// Builds a tenant on one of this catalog's plans.
    pub fn tenant(&self, spec: TenantSpec) -> Result<Tenant, CatalogError> {
        let plan = self
            .plan(&spec.plan)
            .ok_or_else(|| CatalogError::new("plan", format!("unknown plan {:?}", spec.plan)))?;
        let tenant = Tenant::with_overrides(spec.id, plan.clone(), spec.status, spec.overrides);
        validate_rules(tenant.plan(), "overrides")?;
        Ok(tenant)
    }
}

/// Plan and rule names appear in store keys and headers: same characters as
/// tenant ids.
fn validate_name(name: &str) -> Result<(), String> {
    crate::tenant::TenantIdRules::default()
        .parse(name)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "invalid name {name:?}: {}",
                e.to_string().replace("tenant id", "name")
            )
        })
}

fn validate_rules(plan: &Plan, at: &str) -> Result<(), CatalogError> {
    let names = plan
        .limits
        .keys()
        .map(|n| ("limits", n))
        .chain(plan.rates.keys().map(|n| ("rates", n)))
        .chain(plan.quotas.keys().map(|n| ("quotas", n)))
        .chain(plan.concurrency.keys().map(|n| ("concurrency", n)));
    for (section, name) in names {
        validate_name(name).map_err(|m| CatalogError::new(format!("{at}.{section}.{name}"), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_entry() {
        let bad_limit = r#"
            [[plans]]
            name = "free"
            limits = { workflows = -5 }
        "#;
        let e = Catalog::from_toml_str(bad_limit).unwrap_err();
        assert_eq!(e.path, "plans[0].limits.workflows", "{e}");
        assert!(e.message.contains("negative"), "{e}");

        let dup = r#"{"plans":[{"name":"free"},{"name":"free"}]}"#;
        let e = Catalog::from_json_str(dup).unwrap_err();
        assert_eq!(e.path, "plans[1].name");

        let dup_tenant = r#"{"plans":[{"name":"free"}],"tenants":[{"id":"a","plan":"free"},{"id":"a","plan":"free"}]}"#;
        let e = Catalog::from_json_str(dup_tenant).unwrap_err();
        assert_eq!(e.path, "tenants[1].id");

        let bad_id = r#"{"plans":[{"name":"free"}],"tenants":[{"id":"a/b","plan":"free"}]}"#;
        let e = Catalog::from_json_str(bad_id).unwrap_err();
        assert_eq!(e.path, "tenants[0].id");

        let bad_json = r#"{"plans":[{"name":"free","rates":{"x":{"limit":1,"window":"1y"}}}]}"#;
        let e = Catalog::from_json_str(bad_json).unwrap_err();
        assert_eq!(e.path, "plans[0].rates.x.window");

        let bad_rule_name = r#"{"plans":[{"name":"free","limits":{"a b":1}}]}"#;
        let e = Catalog::from_json_str(bad_rule_name).unwrap_err();
        assert_eq!(e.path, "plans[0].limits.a b");
    }
}
