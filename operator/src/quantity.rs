//! Kubernetes quantities (`1Gi`, `512M`, `1.5Gi`, `1e9`) as byte counts, for the node flags the
//! operator derives from `storage.size`.
//!
//! The API server does not check a custom resource's quantity, so a size that does not parse is
//! refused by the CRD's CEL rule (`isQuantity`) before it gets here; `None` is for the rest.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The quantity's value in bytes, rounded down; `None` for anything that is not a non-negative
/// quantity of whole bytes' magnitude.
pub fn bytes(quantity: &Quantity) -> Option<u64> {
    let text = quantity.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let power = exponent.strip_prefix(['e', 'E'])?.parse::<i32>().ok()?;
            10f64.powi(power)
        }
    };
    if number.is_empty() || number.matches('.').count() > 1 {
        return None;
    }
    let value = number.parse::<f64>().ok()? * multiplier;
    (value.is_finite() && value < u64::MAX as f64).then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &str) -> Option<u64> {
        bytes(&Quantity(text.into()))
    }

    #[test]
    fn binary_decimal_and_exponent_forms_parse() {
        assert_eq!(of("1Gi"), Some(1 << 30));
        assert_eq!(of("512Mi"), Some(512 << 20));
        assert_eq!(of("1.5Gi"), Some(3 << 29));
        assert_eq!(of("2G"), Some(2_000_000_000));
        assert_eq!(of("100k"), Some(100_000));
        assert_eq!(of("1e9"), Some(1_000_000_000));
        assert_eq!(of("4096"), Some(4096));
    }

    #[test]
    fn anything_else_is_none() {
        for text in [
            "",
            "Gi",
            "-1Gi",
            "1.2.3Gi",
            "1gi",
            "1 Gi extra",
            "lots",
            "1e999",
        ] {
            assert_eq!(of(text), None, "{text:?}");
        }
    }
}
