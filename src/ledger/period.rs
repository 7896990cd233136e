//! Budget periods: which calendar window an instant falls in, aligned in the policy's time zone.
//!
//! Pure: the caller passes the instant. Calendar units go through jiff's zoned arithmetic, so a
//! day is 23 or 25 hours across a daylight-saving change and a month starts at local midnight on
//! the 1st whatever the UTC offset was at the end of the previous month.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

use super::Window;
use crate::crd::policy::Period;

/// Why no window could be computed.
#[derive(Debug, thiserror::Error)]
pub enum PeriodError {
    /// The policy names a time zone the bundled tz database does not know.
    #[error("unknown time zone '{zone}': {source}")]
    UnknownTimeZone {
        zone: String,
        #[source]
        source: jiff::Error,
    },
    /// The window would start or end outside the range jiff represents (year ±9999).
    #[error("budget window out of range: {0}")]
    OutOfRange(#[from] jiff::Error),
}

/// Longer than any window but `Never`'s (a month of 31 days, plus a time zone's offset): a
/// window that started this long before an instant had ended by then.
pub const LONGEST_WINDOW: std::time::Duration = std::time::Duration::from_secs(32 * 24 * 3_600);

/// The window of `period` that contains `now`, calendar-aligned in the IANA zone `tz`.
///
/// - `Hourly`: from the top of the local hour, one hour long; a change of the zone's offset
///   inside the hour (Lord Howe's half-hour daylight saving) ends one window and starts the next.
/// - `Daily`: from local midnight (or the first instant of the day where midnight is skipped)
///   to the next one.
/// - `Weekly`: from local midnight on Monday.
/// - `Monthly`: from local midnight on the 1st.
/// - `Never`: from the Unix epoch, without end.
pub fn window(period: Period, tz: &str, now: Timestamp) -> Result<Window, PeriodError> {
    let zone = TimeZone::get(tz).map_err(|source| PeriodError::UnknownTimeZone {
        zone: tz.to_string(),
        source,
    })?;
    let local = now.to_zoned(zone.clone());
    let today = local.date();
    let (start, end) = match period {
        Period::Never => {
            return Ok(Window {
                start: Timestamp::UNIX_EPOCH,
                end: None,
            });
        }
        Period::Hourly => {
            // Step back by the local minutes and seconds rather than rebuilding a wall-clock
            // time: in the repeated hour of a fall-back change, 02:30 (second time) belongs to
            // the second 02:00, which a wall-clock "02:00" would resolve to the first one.
            let into_hour = SignedDuration::from_secs(
                i64::from(local.minute()) * 60 + i64::from(local.second()),
            ) + SignedDuration::from_nanos(i64::from(local.subsec_nanosecond()));
            let top = now.checked_sub(into_hour)?;
            let end = top.checked_add(SignedDuration::from_hours(1))?;
            // Where the offset changes by half an hour, the local hours before and after the
            // change would overlap (a second budget) or leave a gap: the change bounds both.
            let changed = zone
                .preceding(now.checked_add(SignedDuration::from_nanos(1))?)
                .next()
                .map(|t| t.timestamp());
            let changes = zone.following(now).next().map(|t| t.timestamp());
            (
                changed.filter(|&at| at > top).unwrap_or(top),
                changes.filter(|&at| at < end).unwrap_or(end),
            )
        }
        Period::Daily => (midnight(today, &zone)?, midnight(today.tomorrow()?, &zone)?),
        Period::Weekly => {
            let monday =
                today.checked_sub(i64::from(today.weekday().to_monday_zero_offset()).days())?;
            (
                midnight(monday, &zone)?,
                midnight(monday.checked_add(1.week())?, &zone)?,
            )
        }
        Period::Monthly => {
            let first = today.first_of_month();
            (
                midnight(first, &zone)?,
                midnight(first.checked_add(1.month())?, &zone)?,
            )
        }
    };
    Ok(Window {
        start,
        end: Some(end),
    })
}

/// The first instant of `date` in `zone`: local midnight, or the end of the gap where a
/// daylight-saving change skips midnight.
fn midnight(date: Date, zone: &TimeZone) -> Result<Timestamp, jiff::Error> {
    Ok(date.to_zoned(zone.clone())?.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn win(period: Period, tz: &str, now: &str) -> Window {
        window(period, tz, ts(now)).expect("window")
    }

    #[test]
    fn monthly_in_berlin_turns_at_local_midnight_after_the_october_dst_change() {
        // 2026-10-25 Berlin leaves summer time, so November starts at 23:00Z (CET, +01:00).
        let october = win(Period::Monthly, "Europe/Berlin", "2026-10-31T22:59:59Z");
        assert_eq!(
            october.start,
            ts("2026-09-30T22:00:00Z"),
            "Oct 1st 00:00 CEST"
        );
        assert_eq!(october.end, Some(ts("2026-10-31T23:00:00Z")));

        let november = win(Period::Monthly, "Europe/Berlin", "2026-10-31T23:00:00Z");
        assert_eq!(
            november.start,
            ts("2026-10-31T23:00:00Z"),
            "Nov 1st 00:00 CET"
        );
        assert_eq!(november.end, Some(ts("2026-11-30T23:00:00Z")));
    }

    #[test]
    fn daily_windows_are_23_and_25_hours_on_dst_days() {
        let spring = win(Period::Daily, "Europe/Berlin", "2026-03-29T12:00:00Z");
        assert_eq!(spring.start, ts("2026-03-28T23:00:00Z"));
        assert_eq!(spring.end, Some(ts("2026-03-29T22:00:00Z")), "23 hours");

        let autumn = win(Period::Daily, "Europe/Berlin", "2026-10-25T12:00:00Z");
        assert_eq!(autumn.start, ts("2026-10-24T22:00:00Z"));
        assert_eq!(autumn.end, Some(ts("2026-10-25T23:00:00Z")), "25 hours");
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_after_the_gap() {
        // Sao Paulo sprang forward at midnight on 2015-10-18: the day began at 01:00 -02:00.
        let day = win(Period::Daily, "America/Sao_Paulo", "2015-10-18T15:00:00Z");
        assert_eq!(day.start, ts("2015-10-18T03:00:00Z"));
        assert_eq!(day.end, Some(ts("2015-10-19T02:00:00Z")));
    }

    #[test]
    fn hourly_is_the_top_of_the_local_hour_also_in_the_repeated_hour() {
        let plain = win(Period::Hourly, "UTC", "2026-05-04T10:59:59.999Z");
        assert_eq!(plain.start, ts("2026-05-04T10:00:00Z"));
        assert_eq!(plain.end, Some(ts("2026-05-04T11:00:00Z")));

        // India is UTC+05:30: the local hour starts at half past in UTC.
        let india = win(Period::Hourly, "Asia/Kolkata", "2026-05-04T10:10:00Z");
        assert_eq!(india.start, ts("2026-05-04T09:30:00Z"));

        // Berlin 2026-10-25: 02:00-03:00 local happens twice (00:00Z CEST and 01:00Z CET).
        let first = win(Period::Hourly, "Europe/Berlin", "2026-10-25T00:30:00Z");
        let second = win(Period::Hourly, "Europe/Berlin", "2026-10-25T01:30:00Z");
        assert_eq!(first.start, ts("2026-10-25T00:00:00Z"));
        assert_eq!(second.start, ts("2026-10-25T01:00:00Z"));
    }

    #[test]
    fn weekly_starts_on_monday_local_midnight() {
        // 2026-05-03 is a Sunday; at 23:30Z it is already Monday in Berlin.
        let sunday = win(Period::Weekly, "UTC", "2026-05-03T23:30:00Z");
        assert_eq!(sunday.start, ts("2026-04-27T00:00:00Z"));
        assert_eq!(sunday.end, Some(ts("2026-05-04T00:00:00Z")));

        let berlin = win(Period::Weekly, "Europe/Berlin", "2026-05-03T23:30:00Z");
        assert_eq!(berlin.start, ts("2026-05-03T22:00:00Z"));
        assert_eq!(berlin.end, Some(ts("2026-05-10T22:00:00Z")));
    }

    /// Retention deletes a bucket once its window started `LONGEST_WINDOW` before the cutoff, so
    /// every period with an end must be shorter. A new period does not compile here until it
    /// is sorted into the check.
    #[test]
    fn every_window_but_never_is_shorter_than_the_longest() {
        let ends = |period: Period| match period {
            Period::Hourly | Period::Daily | Period::Weekly | Period::Monthly => true,
            Period::Never => false,
        };
        let periods = [
            Period::Hourly,
            Period::Daily,
            Period::Weekly,
            Period::Monthly,
            Period::Never,
        ];
        for zone in ["UTC", "Europe/Berlin", "Pacific/Kiritimati", "America/Adak"] {
            for month in 1..=12 {
                let at = format!("2026-{month:02}-15T12:00:00Z");
                for period in periods.into_iter().filter(|p| ends(*p)) {
                    let w = win(period, zone, &at);
                    let end = w.end.expect("ends");
                    let length = end.duration_since(w.start).unsigned_abs();
                    assert!(length < LONGEST_WINDOW, "{period:?} in {zone} at {at}");
                }
            }
        }
    }

    #[test]
    fn never_is_one_window_from_the_epoch() {
        let never = win(Period::Never, "Europe/Berlin", "2026-05-04T10:00:00Z");
        assert_eq!(never.start, Timestamp::UNIX_EPOCH);
        assert_eq!(never.end, None);
    }

    #[test]
    fn hourly_windows_neither_overlap_nor_leave_a_gap_where_the_offset_moves_half_an_hour() {
        // Lord Howe Island: 2026-04-05 02:00 (+11:00) falls back to 01:30 (+10:30) at 15:00Z
        // on 04-04; 2026-10-04 02:00 (+10:30) springs to 02:30 (+11:00) at 15:30Z on 10-03.
        let zone = "Australia/Lord_Howe";
        let before = win(Period::Hourly, zone, "2026-04-04T14:45:00Z");
        assert_eq!(before.start, ts("2026-04-04T14:00:00Z"));
        assert_eq!(before.end, Some(ts("2026-04-04T15:00:00Z")));
        let after = win(Period::Hourly, zone, "2026-04-04T15:10:00Z");
        assert_eq!(
            after.start,
            ts("2026-04-04T15:00:00Z"),
            "not 14:30Z: no overlap"
        );
        assert_eq!(after.end, Some(ts("2026-04-04T15:30:00Z")));
        let spring = win(Period::Hourly, zone, "2026-10-03T15:40:00Z");
        assert_eq!(
            spring.start,
            ts("2026-10-03T15:30:00Z"),
            "not 15:00Z, a time that was not"
        );
        assert_eq!(spring.end, Some(ts("2026-10-03T16:00:00Z")));
        // A change inside a local hour ends its window there: Newfoundland (-03:30) sprang
        // forward at 00:01 local until 2011, 00:01 becoming 01:01 (-02:30) at 03:31Z.
        let st_johns = win(Period::Hourly, "America/St_Johns", "2010-03-14T03:30:30Z");
        assert_eq!(st_johns.start, ts("2010-03-14T03:30:00Z"));
        assert_eq!(st_johns.end, Some(ts("2010-03-14T03:31:00Z")));
        // Every window of those days runs into the next, whatever instant asks.
        for (zone, day) in [
            (zone, "2026-04-04T10:00:00Z"),
            (zone, "2026-10-03T10:00:00Z"),
            ("America/St_Johns", "2010-03-13T22:00:00Z"),
        ] {
            let mut at = ts(day);
            let stop = at.checked_add(SignedDuration::from_hours(12)).expect("t");
            while at < stop {
                let w = window(Period::Hourly, zone, at).expect("window");
                let end = w.end.expect("end");
                assert!(w.start <= at && at < end, "{at}: {w:?}");
                let next = window(Period::Hourly, zone, end).expect("next");
                assert_eq!(next.start, end, "{at}");
                at = at.checked_add(SignedDuration::from_mins(5)).expect("t");
            }
        }
    }

    #[test]
    fn consecutive_windows_touch() {
        for period in [
            Period::Hourly,
            Period::Daily,
            Period::Weekly,
            Period::Monthly,
        ] {
            let current = win(period, "America/New_York", "2026-03-08T06:30:00Z");
            let end = current.end.expect("periodic windows end");
            let next = window(period, "America/New_York", end).expect("next window");
            assert_eq!(next.start, end, "{period:?}");
            let last_instant = end.checked_sub(SignedDuration::from_nanos(1)).expect("t");
            let same = window(period, "America/New_York", last_instant).expect("window");
            assert_eq!(same, current, "{period:?}");
        }
    }

    #[test]
    fn an_unknown_zone_is_an_error() {
        let err = window(
            Period::Daily,
            "Mars/Olympus_Mons",
            ts("2026-05-04T10:00:00Z"),
        )
        .expect_err("unknown zone");
        assert!(matches!(err, PeriodError::UnknownTimeZone { .. }), "{err}");
        assert!(err.to_string().contains("Mars/Olympus_Mons"));
    }
}
