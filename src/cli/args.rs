//! Value parsers for the binaries' flags, so that a malformed value is a usage error (clap's
//! message, exit 64) before anything runs.

/// A share such as `--invalid-ratio 0.05`: a number within `0.0..=1.0`.
///
/// # Errors
/// The value is not a number or lies outside `0.0..=1.0`.
pub fn share(value: &str) -> Result<f64, String> {
    let share: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("must be within 0.0..=1.0, got {share}"))
    }
}

/// A positive, finite number of seconds such as `--interval 2.5`.
///
/// # Errors
/// The value is not a number or is not positive and finite.
pub fn seconds(value: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if seconds.is_finite() && seconds > 0.0 {
        Ok(std::time::Duration::from_secs_f64(seconds))
    } else {
        Err(format!(
            "must be a positive number of seconds, got {seconds}"
        ))
    }
}

/// A positive, finite rate such as `--rate 50`.
///
/// # Errors
/// The value is not a number or is not positive and finite.
pub fn positive(value: &str) -> Result<f64, String> {
    let rate: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(format!("must be a positive number, got {rate}"))
    }
}

/// A finite number of seconds, 0 included (`--outage 0`: none).
///
/// # Errors
/// The value is not a number or is negative or infinite.
pub fn seconds_or_zero(value: &str) -> Result<std::time::Duration, String> {
    if value.parse::<f64>() == Ok(0.0) {
        return Ok(std::time::Duration::ZERO);
    }
    seconds(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_lie_within_zero_and_one() {
        assert_eq!(share("0.25"), Ok(0.25));
        assert_eq!(share("1"), Ok(1.0));
        assert!(share("1.5").is_err());
        assert!(share("-0.1").is_err());
        assert!(share("NaN").is_err());
        assert!(share("x").is_err());
    }

    #[test]
    fn seconds_are_positive_and_finite() {
        assert_eq!(seconds("2.5"), Ok(std::time::Duration::from_millis(2500)));
        assert!(seconds("0").is_err());
        assert!(seconds("inf").is_err());
        assert!(seconds("-1").is_err());
    }

    #[test]
    fn rates_are_positive_and_outages_may_be_zero() {
        assert_eq!(positive("50"), Ok(50.0));
        assert!(positive("0").is_err());
        assert!(positive("NaN").is_err());
        assert_eq!(seconds_or_zero("0"), Ok(std::time::Duration::ZERO));
        assert_eq!(seconds_or_zero("5"), Ok(std::time::Duration::from_secs(5)));
        assert!(seconds_or_zero("-1").is_err());
    }
}
