//! Catalog::from_json_str on arbitrary text: never panics; whatever loads
//! is consistent (tenants on known plans, valid names).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_tenancy::{Catalog, TenantId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(catalog) = Catalog::from_json_str(text) {
        for tenant in catalog.tenants() {
            assert!(catalog.plan(&tenant.base_plan().name).is_some());
        }
        for name in catalog.plans().keys() {
            assert!(TenantId::new(name).is_ok());
        }
    }
});
