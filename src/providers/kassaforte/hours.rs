//! When a shop accepts orders, from its open hours: each interval of the day's row (0 = Monday
//! … 6 = Sunday, 7 on a configured holiday) widened by `acceptStart` and ended early by
//! `acceptEnd`, in the shop's own time zone (the API has none), across midnight and DST.

use super::wire::OpenHours;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::collections::HashSet;

/// A shop's week, placed in its time zone and holiday calendar.
#[derive(Debug, Clone)]
pub struct ShopCalendar {
    hours: OpenHours,
    time_zone: Tz,
    holidays: HashSet<NaiveDate>,
}

/// One accepting window: orders may be submitted from `start` until before `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl ShopCalendar {
    pub fn new(hours: OpenHours, time_zone: Tz, holidays: &[NaiveDate]) -> Self {
        ShopCalendar {
            hours,
            time_zone,
            holidays: holidays.iter().copied().collect(),
        }
    }

    /// Whether the shop accepts orders at `now` by its open hours.
    pub fn accepting_at(&self, now: DateTime<Utc>) -> bool {
        self.window_at(now).is_some()
    }

    /// The accepting window `now` falls in, if any.
    pub fn window_at(&self, now: DateTime<Utc>) -> Option<Window> {
        let today = now.with_timezone(&self.time_zone).date_naive();
        // A window can start the evening before (acceptStart) or run past midnight.
        [today.pred_opt(), Some(today), today.succ_opt()]
            .into_iter()
            .flatten()
            .flat_map(|date| self.windows_on(date))
            .find(|w| w.start <= now && now < w.end)
    }

    /// The accepting windows of the intervals that open on `date` (shop-local).
    pub fn windows_on(&self, date: NaiveDate) -> Vec<Window> {
        let row = if self.holidays.contains(&date) {
            7
        } else {
            date.weekday().num_days_from_monday() as usize
        };
        let accept_start = Duration::minutes(self.hours.accept_start);
        let accept_end = Duration::minutes(self.hours.accept_end);
        let Some(intervals) = self.hours.days.get(row) else {
            return Vec::new();
        };
        intervals
            .iter()
            .filter_map(|interval| {
                let opens = date.and_time(interval.start);
                // An end at or before the start is on the next day ("18:00"–"02:00", "24:00").
                let closes = match interval.end > interval.start {
                    true => date.and_time(interval.end),
                    false => date.succ_opt()?.and_time(interval.end),
                };
                let start = self.to_utc(opens - accept_start);
                let end = self.to_utc(closes - accept_end);
                (start < end).then_some(Window { start, end })
            })
            .collect()
    }

    /// A shop-local time as an instant: the earlier one when the clock is set back (the hour
    /// repeats), and the first minute after the gap when it is set forward.
    fn to_utc(&self, local: NaiveDateTime) -> DateTime<Utc> {
        let mut probe = local;
        // A DST gap is at most a few hours wide.
        for _ in 0..=240 {
            if let Some(at) = self.time_zone.from_local_datetime(&probe).earliest() {
                return at.with_timezone(&Utc);
            }
            probe += Duration::minutes(1);
        }
        Utc.from_utc_datetime(&local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::kassaforte::wire::Interval;
    use chrono::NaiveTime;

    fn t(text: &str) -> NaiveTime {
        NaiveTime::parse_from_str(text, "%H:%M").unwrap()
    }

    fn hours() -> OpenHours {
        let lunch = Interval {
            start: t("11:30"),
            end: t("14:00"),
        };
        let late = Interval {
            start: t("18:00"),
            end: t("02:00"),
        };
        let mut days = vec![vec![lunch.clone()]; 7];
        days[4] = vec![lunch.clone(), late]; // Friday into Saturday
        days.push(vec![Interval {
            start: t("16:00"),
            end: t("20:00"),
        }]);
        OpenHours {
            days,
            accept_start: 15,
            accept_end: 10,
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn calendar() -> ShopCalendar {
        let holiday = NaiveDate::from_ymd_opt(2026, 10, 28).unwrap();
        ShopCalendar::new(hours(), chrono_tz::Europe::Berlin, &[holiday])
    }

    #[test]
    fn windows_are_widened_by_accept_start_and_cut_by_accept_end() {
        let c = calendar();
        // Monday 2026-10-19, CEST (UTC+2): 11:15–13:50 local = 09:15–11:50 UTC.
        assert!(!c.accepting_at(utc("2026-10-19T09:14:59Z")));
        assert!(c.accepting_at(utc("2026-10-19T09:15:00Z")));
        assert!(c.accepting_at(utc("2026-10-19T11:49:59Z")));
        assert!(!c.accepting_at(utc("2026-10-19T11:50:00Z")));
    }

    #[test]
    fn an_interval_across_midnight_belongs_to_the_day_it_opens() {
        let c = calendar();
        // Friday 2026-10-23 18:00 – Saturday 02:00 local → 15:45 – 23:50 UTC (CEST).
        assert!(c.accepting_at(utc("2026-10-23T23:30:00Z")));
        assert!(!c.accepting_at(utc("2026-10-23T23:50:00Z")));
        // Saturday's own row has no late interval.
        assert!(!c.accepting_at(utc("2026-10-24T23:30:00Z")));
    }

    #[test]
    fn the_shop_clock_follows_dst() {
        let c = calendar();
        // Saturday 2026-10-24 (CEST, UTC+2): 09:15–11:50 UTC.
        assert!(c.accepting_at(utc("2026-10-24T09:20:00Z")));
        // Sunday 2026-10-25 after the change (CET, UTC+1): 10:15–12:50 UTC.
        assert!(!c.accepting_at(utc("2026-10-25T09:20:00Z")));
        assert!(c.accepting_at(utc("2026-10-25T10:20:00Z")));
        assert!(c.accepting_at(utc("2026-10-25T12:45:00Z")));
    }

    #[test]
    fn holidays_use_row_seven() {
        let c = calendar();
        // Wednesday 2026-10-28 is configured as a holiday: 15:45–19:50 local = 14:45–18:50 UTC.
        assert!(!c.accepting_at(utc("2026-10-28T10:30:00Z")));
        assert!(c.accepting_at(utc("2026-10-28T15:00:00Z")));
        assert!(c.accepting_at(utc("2026-10-29T10:30:00Z")));
    }

    #[test]
    fn a_window_edge_inside_the_spring_gap_moves_past_it() {
        let mut hours = hours();
        hours.days[6] = vec![Interval {
            start: t("02:30"),
            end: t("05:00"),
        }];
        hours.accept_start = 0;
        let c = ShopCalendar::new(hours, chrono_tz::Europe::Berlin, &[]);
        // Sunday 2026-03-29: 02:00 → 03:00 local. 02:30 does not exist; the window opens at
        // 03:00 CEST = 01:00 UTC.
        let windows = c.windows_on(NaiveDate::from_ymd_opt(2026, 3, 29).unwrap());
        assert_eq!(windows[0].start, utc("2026-03-29T01:00:00Z"));
        assert_eq!(windows[0].end, utc("2026-03-29T02:50:00Z"));
    }
}
