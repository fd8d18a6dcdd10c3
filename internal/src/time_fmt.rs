//! RFC 3339 UTC time stamps, the contract's format.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `2026-11-23T12:00:00.123Z`-style text for `t` (converted to UTC).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses RFC 3339 text; `None` if it is not.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Milliseconds since the Unix epoch, by the server's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 text for Unix milliseconds.
pub fn from_unix_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    rfc3339(t)
}
