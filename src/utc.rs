//! [`UtcTime`]: an instant in UTC with millisecond precision, written in
//! RFC 3339 (`2026-12-31T23:00:00Z`) in catalogs, admin APIs and reports.
//!
//! The parser is strict: `YYYY-MM-DDTHH:MM:SS`, an optional fraction of 1 to
//! 9 digits (truncated to the millisecond), and the UTC offset `Z` or
//! `+00:00` (RFC 3339 also allows `-00:00`, and lower-case `t` and `z`,
//! which are accepted). Anything else is refused with a message that says
//! what: a missing or extra character, a day that the month does not have,
//! a leap second (`:60`, not representable here), a year before 1970, or
//! an offset other than UTC (convert the time to UTC first). The property
//! tests of `tests/override_until.rs` compare it with the `time` crate's
//! RFC 3339 parser on random strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::calendar::{civil_from_days, days_from_civil};

/// An instant in UTC, milliseconds since the Unix epoch, written in RFC 3339.
///
/// ```
/// use tower_tenancy::UtcTime;
///
/// let t: UtcTime = "2026-12-31T23:00:00Z".parse().unwrap();
/// assert_eq!(t.unix_ms(), 1_798_758_000_000);
/// assert_eq!(t.to_string(), "2026-12-31T23:00:00Z");
/// assert_eq!("2026-12-31T23:00:00.250+00:00".parse::<UtcTime>().unwrap().unix_ms(), 1_798_758_000_250);
/// assert!("2026-12-31T23:00:00+01:00".parse::<UtcTime>().is_err()); // UTC only
/// assert!("2026-02-29T00:00:00Z".parse::<UtcTime>().is_err()); // not a leap year
/// assert!("2026-12-31 23:00:00Z".parse::<UtcTime>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(u64);

/// Latest instant accepted: 9999-12-31T23:59:59.999Z.
const MAX_MS: u64 = 253_402_300_799_999;

impl UtcTime {
    /// The instant `ms` milliseconds after the Unix epoch (clamped to the
    /// year 9999).
    pub fn from_unix_ms(ms: u64) -> Self {
        Self(ms.min(MAX_MS))
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(self) -> u64 {
        self.0
    }

    /// The current time of the system clock.
    pub fn now() -> Self {
        Self::from_unix_ms(now_ms())
    }

    /// Parses an RFC 3339 time in UTC; see the [module documentation](self).
    pub fn parse(s: &str) -> Result<Self, InvalidUtcTime> {
        parse(s.as_bytes()).map(Self).map_err(InvalidUtcTime)
    }
}

/// The system clock in milliseconds since the epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A string that is not an RFC 3339 time in UTC; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RFC 3339 UTC time: {0}")]
pub struct InvalidUtcTime(&'static str);

fn digits(s: &[u8], at: usize, n: usize) -> Result<u64, &'static str> {
    let part = s.get(at..at + n).ok_or("too short")?;
    part.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + u64::from(b - b'0'))
        } else {
            Err("expected a digit")
        }
    })
}

fn byte(s: &[u8], at: usize, want: &[u8], what: &'static str) -> Result<(), &'static str> {
    match s.get(at) {
        Some(b) if want.contains(b) => Ok(()),
        _ => Err(what),
    }
}

fn parse(s: &[u8]) -> Result<u64, &'static str> {
    if s.len() > 40 {
        return Err("too long");
    }
    let year = digits(s, 0, 4)?;
    byte(s, 4, b"-", "expected '-' after the year")?;
    let month = digits(s, 5, 2)?;
    byte(s, 7, b"-", "expected '-' after the month")?;
    let day = digits(s, 8, 2)?;
    byte(s, 10, b"Tt", "expected 'T' between date and time")?;
    let hour = digits(s, 11, 2)?;
    byte(s, 13, b":", "expected ':' after the hour")?;
    let minute = digits(s, 14, 2)?;
    byte(s, 16, b":", "expected ':' after the minutes")?;
    let second = digits(s, 17, 2)?;
    let mut at = 19;
    let mut ms = 0;
    if s.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while s.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let n = at - start;
        if n == 0 || n > 9 {
            return Err("a fraction of a second has 1 to 9 digits");
        }
        // Truncated to the millisecond.
        let fraction = digits(s, start, n.min(3))?;
        ms = fraction * 10u64.pow(3 - n.min(3) as u32);
    }
    match &s[at.min(s.len())..] {
        b"Z" | b"z" | b"+00:00" | b"-00:00" => {}
        [] => return Err("missing offset: end with 'Z'"),
        [b'+' | b'-', ..] => return Err("only UTC: end with 'Z' or '+00:00'"),
        _ => return Err("unexpected characters after the seconds"),
    }
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day == 0 || day > days_in_month {
        return Err("day out of range for the month");
    }
    if hour > 23 || minute > 59 {
        return Err("hour or minute out of range");
    }
    if second > 59 {
        return Err("seconds out of range (leap seconds are not supported)");
    }
    if year < 1970 {
        return Err("years before 1970 are not supported");
    }
    let days = days_from_civil(year as i64, month as u32, day as u32) as u64;
    Ok((((days * 24 + hour) * 60 + minute) * 60 + second) * 1000 + ms)
}

impl FromStr for UtcTime {
    type Err = InvalidUtcTime;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for UtcTime {
    /// `YYYY-MM-DDTHH:MM:SSZ`, with `.mmm` when the milliseconds are not 0.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, ms_of_day) = (self.0 / 86_400_000, self.0 % 86_400_000);
        let (y, m, d) = civil_from_days(days as i64);
        let secs = ms_of_day / 1000;
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )?;
        match ms_of_day % 1000 {
            0 => f.write_str("Z"),
            ms => write!(f, ".{ms:03}Z"),
        }
    }
}

impl Serialize for UtcTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UtcTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UtcTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time in UTC such as \"2026-12-31T23:00:00Z\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UtcTime, E> {
                UtcTime::parse(v).map_err(E::custom)
            }
            // An unquoted TOML datetime arrives as a one-entry map.
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UtcTime, A::Error> {
                use serde::de::Error;
                let Some((key, value)) = map.next_entry::<String, String>()? else {
                    return Err(A::Error::custom("expected an RFC 3339 time"));
                };
                if key != "$__toml_private_datetime" {
                    return Err(A::Error::custom("expected an RFC 3339 time"));
                }
                UtcTime::parse(&value).map_err(A::Error::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let p = |s: &str| UtcTime::parse(s).map(UtcTime::unix_ms);
        assert_eq!(p("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(p("1970-01-01T00:00:00.999999999Z"), Ok(999));
        assert_eq!(p("2000-02-29T12:34:56.7z"), Ok(951_827_696_700));
        assert_eq!(p("9999-12-31T23:59:59.999Z"), Ok(MAX_MS));
        for bad in [
            "",
            "2026-12-31",
            "2026-12-31T23:00:00",
            "2026-12-31T23:00Z",
            "2026-12-31T24:00:00Z",
            "2026-12-31T23:60:00Z",
            "2026-12-31T23:59:60Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-12-31T23:00:00.Z",
            "2026-12-31T23:00:00.1234567890Z",
            "2026-12-31T23:00:00+01:00",
            "2026-12-31T23:00:00ZZ",
            "+2026-12-31T23:00:00Z",
            "2026-12-31T23:00:00 Z",
            "٢٠٢٦-12-31T23:00:00Z",
        ] {
            assert!(p(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for ms in [0, 999, 951_827_696_700, 1_798_758_000_000, MAX_MS] {
            let t = UtcTime::from_unix_ms(ms);
            assert_eq!(UtcTime::parse(&t.to_string()), Ok(t));
        }
    }

    #[test]
    fn serde_forms() {
        let t: UtcTime = serde_json::from_str("\"2026-12-31T23:00:00Z\"").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-12-31T23:00:00Z\""
        );
        #[derive(Deserialize)]
        struct Doc {
            until: UtcTime,
        }
        let quoted: Doc = toml::from_str("until = \"2026-12-31T23:00:00Z\"").unwrap();
        let bare: Doc = toml::from_str("until = 2026-12-31T23:00:00Z").unwrap();
        assert_eq!(quoted.until, t);
        assert_eq!(bare.until, t);
        assert!(toml::from_str::<Doc>("until = 2026-12-31T23:00:00+01:00").is_err());
        assert!(toml::from_str::<Doc>("until = 2026-12-31").is_err());
    }
}
