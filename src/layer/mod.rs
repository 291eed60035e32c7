//! The middleware of this crate, one module each (tower-http style).

pub mod tenancy;
