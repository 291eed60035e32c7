//! A reference model of `PathResolver`, written from its documentation
//! alone (no code shared with `src/resolve/sources.rs`): the path without
//! its leading `/`, split on every `/`; the segment at an index, or the one
//! right after the first segment equal to a literal; percent-decoded
//! byte by byte (`%` + two hex digits is a byte, anything else stands for
//! itself); the bytes must be UTF-8; the result validated by the id rules.
//!
//! Used as an oracle by `tests/resolve_props.rs` (property test),
//! `tests/spoofing_wire.rs` and `fuzz/fuzz_targets/resolvers.rs`:
//!
//! ```ignore
//! #[path = "common/path_reference.rs"]
//! mod path_reference;
//! ```
#![allow(dead_code)]

use tower_tenancy::TenantIdRules;

/// Which segment the resolver reads.
#[derive(Debug, Clone, Copy)]
pub enum Segment<'a> {
    /// `PathResolver::segment(i)`.
    Index(usize),
    /// `PathResolver::after(literal)`.
    After(&'a str),
}

/// What the path resolver must answer for `path`: `Ok(None)` when there is
/// no such segment, `Ok(Some(id))`, or `Err(())` (a 400).
pub fn expected(
    path: &str,
    segment: Segment<'_>,
    rules: &TenantIdRules,
) -> Result<Option<String>, ()> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let raw = match segment {
        Segment::Index(i) => segments.get(i).copied(),
        Segment::After(literal) => segments
            .iter()
            .position(|s| *s == literal)
            .and_then(|at| segments.get(at + 1).copied()),
    };
    let Some(raw) = raw else { return Ok(None) };
    let decoded = String::from_utf8(percent_decode(raw.as_bytes())).map_err(|_| ())?;
    rules
        .parse(&decoded)
        .map(|id| Some(id.as_str().to_owned()))
        .map_err(|_| ())
}

/// `%XX` (two hex digits, either case) is one byte; every other byte,
/// including a `%` not followed by two hex digits, stands for itself.
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}
