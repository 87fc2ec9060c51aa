//! Human units on the command line: rates like `500k`, `1M`, `2.5M`;
//! durations like `30s`, `500ms`, `2m`.

use std::time::Duration;

/// Parses a rate in messages per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 1e3),
        Some((i, 'm' | 'M')) => (&text[..i], 1e6),
        Some((i, 'g' | 'G')) => (&text[..i], 1e9),
        _ => (text, 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid rate {text:?}: expected e.g. 500k, 1M, 2.5M"))?;
    let rate = value * scale;
    if !(rate.is_finite() && rate >= 1.0) {
        return Err(format!(
            "invalid rate {text:?}: at least 1 message per second"
        ));
    }
    Ok(rate)
}

/// Parses a duration: a number with `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit in {text:?}: ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500k"), Ok(500_000.0));
        assert_eq!(parse_rate("1M"), Ok(1_000_000.0));
        assert_eq!(parse_rate("2.5M"), Ok(2_500_000.0));
        assert_eq!(parse_rate("1200"), Ok(1200.0));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-1M").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
