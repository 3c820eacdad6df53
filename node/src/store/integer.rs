//! What kvs counts as an integer: decimal text as Redis's `string2ll` accepts it. Increment
//! applies the rule to stored values and the RESP face to integer arguments and frame headers,
//! so a value is an integer to kvs exactly when it is one to Redis, wherever it is read.

/// Parses `text` as Redis's `string2ll` does: an optional `-`, then decimal digits without
/// leading zeros ("0" alone is fine, "-0" is not), no sign `+`, no spaces, within i64.
pub(crate) fn parse_i64(text: &[u8]) -> Option<i64> {
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text {
        [b'-', digits @ ..] => (true, digits),
        digits => (false, digits),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    // Accumulated as a negative number, which reaches i64::MIN.
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_sub(i64::from(digit - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn decimal_parsing_matches_redis_string2ll() {
        for (text, expected) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("-1", Some(-1)),
            ("-12", Some(-12)),
            ("1234567890", Some(1_234_567_890)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("", None),
            ("-", None),
            ("-0", None),
            ("00", None),
            ("01", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("1a", None),
            ("1.0", None),
            ("0x10", None),
            ("99999999999999999999999", None),
        ] {
            assert_eq!(parse_i64(text.as_bytes()), expected, "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn every_i64_parses_from_its_decimal_text(n in any::<i64>()) {
            prop_assert_eq!(parse_i64(n.to_string().as_bytes()), Some(n));
        }

        #[test]
        fn only_the_decimal_text_of_an_i64_parses(text in "[-+ 0-9a]{0,21}") {
            let canonical = text.parse::<i64>().ok().filter(|n| n.to_string() == text);
            prop_assert_eq!(parse_i64(text.as_bytes()), canonical);
        }
    }
}
