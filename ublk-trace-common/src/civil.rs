//! Calendar dates from Unix time without a date crate (the bundle's names, the .deb's
//! changelog): proleptic Gregorian, UTC.

/// (year, month 1-12, day 1-31) of the day `days` after 1970-01-01 (Howard Hinnant's
/// civil_from_days, the year shifted to start in March).
pub fn from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // month is 1..=12 and day 1..=31 by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::from_days;

    #[test]
    fn known_dates() {
        assert_eq!(from_days(0), (1970, 1, 1));
        assert_eq!(from_days(59), (1970, 3, 1));
        assert_eq!(from_days(11_016), (2000, 2, 29));
        assert_eq!(from_days(20_789), (2026, 12, 2));
        assert_eq!(from_days(-1), (1969, 12, 31));
    }
}
