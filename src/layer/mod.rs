//! The middleware of this crate, one module each (tower-http style).

pub mod admission;
pub mod feature;
pub mod limit;
pub mod soft_limit;
pub mod tenancy;
