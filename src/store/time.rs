//! Timestamps: microseconds since the Unix epoch, rendered like Python's `isoformat()`.

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, in µs since the epoch.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, microseconds omitted when zero (records).
pub fn iso(us: i64) -> String {
    let t = at(us);
    if us.rem_euclid(1_000_000) == 0 {
        t.to_rfc3339_opts(SecondsFormat::Secs, false)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Micros, false)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (DLQ entries).
pub fn iso_z(us: i64) -> String {
    let t = at(us);
    if us.rem_euclid(1_000_000) == 0 {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

/// HTTP date (`Last-Modified`).
pub fn http_date(t: std::time::SystemTime) -> String {
    let t: DateTime<Utc> = t.into();
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_isoformat() {
        assert_eq!(
            iso(1_795_799_103_532_014),
            "2026-11-27T17:05:03.532014+00:00"
        );
        assert_eq!(iso(1_795_799_103_000_000), "2026-11-27T17:05:03+00:00");
        assert_eq!(iso_z(1_795_799_103_094_337), "2026-11-27T17:05:03.094337Z");
    }
}
