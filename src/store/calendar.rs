//! UTC civil-date arithmetic for calendar quotas: the start and end of the
//! hour, day, ISO week (Monday to Monday) or month containing an instant.
//!
//! Times are milliseconds since the Unix epoch. Every store uses these
//! functions so that they agree on period boundaries (the Redis store uses
//! [`period_bounds`] for key names and TTLs). The date conversions are Howard
//! Hinnant's `days_from_civil` / `civil_from_days` (proleptic Gregorian
//! calendar), exact for every `u64` instant.

use crate::plan::Period;

/// Milliseconds per hour.
pub(crate) const MS_PER_HOUR: u64 = 3_600_000;
/// Milliseconds per day.
pub(crate) const MS_PER_DAY: u64 = 86_400_000;

/// `[start, end)` of the UTC period containing `now_ms`, in milliseconds
/// since the epoch. `start <= now_ms < end`, except that `end` saturates at
/// `u64::MAX` for instants some 584 million years from now.
pub(crate) fn period_bounds(period: Period, now_ms: u64) -> (u64, u64) {
    match period {
        Period::Hour => fixed(now_ms, MS_PER_HOUR),
        Period::Day => fixed(now_ms, MS_PER_DAY),
        Period::Week => {
            let days = now_ms / MS_PER_DAY;
            // 1970-01-01 was a Thursday: day 0 is weekday 3 counting from
            // Monday = 0. The first days of 1970 clamp their week start to 0.
            let since_monday = (days + 3) % 7;
            let start_day = days.saturating_sub(since_monday);
            (day_ms(start_day), day_ms(days + 7 - since_monday))
        }
        Period::Month => {
            let days = now_ms / MS_PER_DAY;
            // `days` < 2^48, so it fits an i64 and the civil arithmetic cannot overflow.
            let (y, m, d) = civil_from_days(days as i64);
            let start_day = days - u64::from(d - 1);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let end_day = days_from_civil(ny, nm, 1) as u64;
            (day_ms(start_day), day_ms(end_day))
        }
    }
}

/// The start of the UTC period containing `now_ms`.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn period_start(period: Period, now_ms: u64) -> u64 {
    period_bounds(period, now_ms).0
}

/// The end of the UTC period containing `now_ms` (the start of the next one).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn period_end(period: Period, now_ms: u64) -> u64 {
    period_bounds(period, now_ms).1
}

fn fixed(now_ms: u64, len: u64) -> (u64, u64) {
    let start = now_ms - now_ms % len;
    (start, start.saturating_add(len))
}

fn day_ms(day: u64) -> u64 {
    day.saturating_mul(MS_PER_DAY)
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d`
/// (`m` in 1..=12, `d` in 1..=31).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of the day
/// `z` days after 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000;

    fn at(y: i64, m: u32, d: u32, h: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * MS_PER_DAY + h * MS_PER_HOUR
    }

    #[test]
    fn civil_round_trip_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // Cross-checked with `date -u -d 2026-11-23 +%s` = 1795392000.
        assert_eq!(
            days_from_civil(2026, 11, 23) as u64 * MS_PER_DAY,
            1_795_392_000 * S
        );
        assert_eq!(
            days_from_civil(2024, 3, 1) as u64 * MS_PER_DAY,
            1_709_251_200 * S
        );
        assert_eq!(
            days_from_civil(2000, 2, 29) + 1,
            days_from_civil(2000, 3, 1)
        );
        assert_eq!(
            days_from_civil(1900, 2, 28) + 1,
            days_from_civil(1900, 3, 1)
        );
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn boundaries() {
        let now = 1_795_392_000 * S + 10 * MS_PER_HOUR + 1_234; // Mon 2026-11-23 10:00:01.234
        assert_eq!(
            period_bounds(Period::Hour, now),
            (at(2026, 11, 23, 10), at(2026, 11, 23, 11))
        );
        assert_eq!(
            period_bounds(Period::Day, now),
            (at(2026, 11, 23, 0), at(2026, 11, 24, 0))
        );
        assert_eq!(
            period_bounds(Period::Week, now),
            (at(2026, 11, 23, 0), at(2026, 11, 30, 0))
        );
        assert_eq!(
            period_bounds(Period::Month, now),
            (at(2026, 11, 1, 0), at(2026, 12, 1, 0))
        );
        // Sunday 23:59:59.999 belongs to the week that started the Monday before.
        let sunday = at(2026, 11, 23, 0) - 1;
        assert_eq!(
            period_bounds(Period::Week, sunday),
            (at(2026, 11, 16, 0), at(2026, 11, 23, 0))
        );
        // The epoch is a Thursday: its week started on Monday 1969-12-29, clamped to 0.
        assert_eq!(period_bounds(Period::Week, 0).1, at(1970, 1, 5, 0));
        // Month ends.
        assert_eq!(
            period_end(Period::Month, at(2024, 1, 31, 23)),
            at(2024, 2, 1, 0)
        );
        assert_eq!(
            period_end(Period::Month, at(2024, 2, 29, 23)),
            at(2024, 3, 1, 0)
        );
        assert_eq!(
            period_end(Period::Month, at(2026, 2, 28, 23)),
            at(2026, 3, 1, 0)
        );
        assert_eq!(
            period_bounds(Period::Month, at(2025, 12, 31, 23)),
            (at(2025, 12, 1, 0), at(2026, 1, 1, 0))
        );
        assert_eq!(
            period_start(Period::Month, at(2026, 1, 1, 0)),
            at(2026, 1, 1, 0)
        );
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        for period in [Period::Hour, Period::Day, Period::Week, Period::Month] {
            for now in [
                0,
                1,
                u64::MAX / 2,
                u64::MAX - MS_PER_DAY * 40,
                u64::MAX - 1,
                u64::MAX,
            ] {
                let (start, end) = period_bounds(period, now);
                assert!(start <= now && now <= end, "{period:?} {now}");
            }
        }
    }

    fn any_period() -> impl Strategy<Value = Period> {
        prop_oneof![
            Just(Period::Hour),
            Just(Period::Day),
            Just(Period::Week),
            Just(Period::Month)
        ]
    }

    proptest! {
        #[test]
        fn bounds_contain_now_and_chain(period in any_period(), now in 0u64..(1u64 << 50)) {
            let (start, end) = period_bounds(period, now);
            prop_assert!(start <= now && now < end);
            // Aligned: starts at midnight UTC (or the hour), on a Monday for
            // weeks, on the 1st for months.
            prop_assert_eq!(start % MS_PER_HOUR, 0);
            let day = (start / MS_PER_DAY) as i64;
            match period {
                Period::Hour => prop_assert_eq!(end - start, MS_PER_HOUR),
                Period::Day => {
                    prop_assert_eq!(start % MS_PER_DAY, 0);
                    prop_assert_eq!(end - start, MS_PER_DAY);
                }
                Period::Week => {
                    prop_assert_eq!(start % MS_PER_DAY, 0);
                    if start > 0 {
                        prop_assert_eq!((day + 3) % 7, 0);
                        prop_assert_eq!(end - start, 7 * MS_PER_DAY);
                    }
                }
                Period::Month => {
                    prop_assert_eq!(start % MS_PER_DAY, 0);
                    prop_assert_eq!(civil_from_days(day).2, 1);
                    let len = (end - start) / MS_PER_DAY;
                    prop_assert!((28..=31).contains(&len));
                }
            }
            // The next period starts at `end`, and the instant before `end` is
            // still in this one.
            prop_assert_eq!(period_start(period, end), end);
            prop_assert_eq!(period_bounds(period, end - 1), (start, end));
            if start > 0 {
                prop_assert_eq!(period_end(period, start - 1), start);
            }
        }

        #[test]
        fn civil_round_trip(z in -1_000_000_000i64..1_000_000_000) {
            let (y, m, d) = civil_from_days(z);
            prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            prop_assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
