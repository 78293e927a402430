//! Phone number normalisation to E.164 digits (no leading `+`).
//!
//! The rules are the ones the clients apply before uploading numbers, so that a
//! number typed in any of its usual forms finds the same account:
//!
//! 1. spaces, dashes, dots and parentheses are dropped;
//! 2. a leading `+` or `00` (international prefix) is stripped;
//! 3. a leading `011` (the North American international prefix) is stripped, for
//!    every user, as the deployment's rules say. The known cost: in a country whose
//!    national numbers can begin `011` after the trunk `0` (Leeds is `0113` in the
//!    UK), such a number must be entered as `+44 113...`; rule 4 never sees it;
//! 4. a single leading `0` (trunk prefix) is replaced by the user's country code;
//! 5. a number with none of these prefixes is local: the country code goes in front.
//!
//! The result must be 6 to 15 digits (E.164 allows at most 15) and must not start
//! with `0`. This is hand-written: the rules are the deployment's own, not a
//! numbering-plan library's (which would need per-country metadata we do not want
//! to apply here).

use std::fmt;

/// Longest number E.164 allows, country code included.
pub const E164_MAX_DIGITS: usize = 15;
/// Shortest number accepted; shorter inputs are typos or service codes.
pub const MIN_DIGITS: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NumberError {
    #[error("phone number is empty")]
    Empty,
    #[error("phone number contains a character other than digits, '+', spaces, dashes, dots or parentheses")]
    InvalidCharacter,
    #[error("phone number has a '+' that is not at the start")]
    MisplacedPlus,
    #[error("phone number has {0} digits after normalisation; E.164 allows at most 15")]
    TooLong(usize),
    #[error("phone number has {0} digits after normalisation; at least 6 are needed")]
    TooShort(usize),
    #[error("phone number starts with 0 after removing the international prefix")]
    LeadingZero,
    #[error("country code must be 1 to 3 digits not starting with 0")]
    InvalidCountryCode,
}

/// Checks a country calling code (`48`, `1`, `44`): 1-3 digits, no leading zero.
pub fn validate_country_code(cc: &str) -> Result<(), NumberError> {
    let ok = (1..=3).contains(&cc.len())
        && cc.bytes().all(|b| b.is_ascii_digit())
        && !cc.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(NumberError::InvalidCountryCode)
    }
}

/// Normalises `input` for a user whose country calling code is `country_code`.
///
/// ```
/// use tandem_signaling::number::normalize;
/// assert_eq!(normalize("+48 600-345-698", "48").unwrap(), "48600345698");
/// assert_eq!(normalize("0600345698", "48").unwrap(), "48600345698");
/// assert_eq!(normalize("600 456 789", "48").unwrap(), "48600456789");
/// ```
pub fn normalize(input: &str, country_code: &str) -> Result<String, NumberError> {
    validate_country_code(country_code)?;
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(NumberError::Empty);
    }
    let mut plus = false;
    let mut digits = String::with_capacity(trimmed.len());
    for (i, c) in trimmed.char_indices() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            '+' if i == 0 => plus = true,
            '+' => return Err(NumberError::MisplacedPlus),
            _ => return Err(NumberError::InvalidCharacter),
        }
        // Bound the work on hostile input: nothing valid is this long.
        if digits.len() > 64 {
            return Err(NumberError::TooLong(digits.len()));
        }
    }
    if digits.is_empty() {
        return Err(NumberError::Empty);
    }
    let e164 = if plus {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_owned()
    } else if let Some(rest) = digits.strip_prefix("011") {
        rest.to_owned()
    } else if let Some(rest) = digits.strip_prefix('0') {
        format!("{country_code}{rest}")
    } else {
        format!("{country_code}{digits}")
    };
    if e164.starts_with('0') {
        return Err(NumberError::LeadingZero);
    }
    if e164.len() > E164_MAX_DIGITS {
        return Err(NumberError::TooLong(e164.len()));
    }
    if e164.len() < MIN_DIGITS {
        return Err(NumberError::TooShort(e164.len()));
    }
    Ok(e164)
}

/// Shows a number with all but its last two digits masked, for logs.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if crate::log_pii() {
            return f.write_str(self.0);
        }
        let n = self.0.chars().count();
        let keep = if n > 6 { 2 } else { 0 };
        for _ in 0..n - keep {
            f.write_str("*")?;
        }
        for c in self.0.chars().skip(n - keep) {
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_examples() {
        // "+442085676789 will become 442085676789"
        assert_eq!(normalize("+442085676789", "48").unwrap(), "442085676789");
        assert_eq!(normalize("00442085676789", "48").unwrap(), "442085676789");
        // "0600345698 ... with country code 48 ... will be changed to 48600345698"
        assert_eq!(normalize("0600345698", "48").unwrap(), "48600345698");
        // "600456789 will be changed to 48600456789"
        assert_eq!(normalize("600456789", "48").unwrap(), "48600456789");
    }

    #[test]
    fn issue_forms_are_equal() {
        let forms = [
            "+48 600 345 698",
            "+48-600-345-698",
            "0048600345698",
            "0048 (600) 345.698",
            "0600345698",
            "600345698",
            " 600 345 698 ",
        ];
        for f in forms {
            assert_eq!(normalize(f, "48").unwrap(), "48600345698", "form {f:?}");
        }
    }

    #[test]
    fn nanp_international_prefix() {
        assert_eq!(
            normalize("011 44 20 8567 6789", "1").unwrap(),
            "442085676789"
        );
        assert_eq!(normalize("(212) 555-0100", "1").unwrap(), "12125550100");
        assert_eq!(normalize("+1 212 555 0100", "1").unwrap(), "12125550100");
    }

    #[test]
    fn international_prefix_011_is_stripped_for_every_country_code() {
        // The deployment's rule applies whatever the user's own country code is.
        assert_eq!(
            normalize("011 48 600 345 698", "48").unwrap(),
            "48600345698"
        );
        // The price of that rule: a UK national number in the Leeds area (0113) is
        // read as international, so it must be entered with its country code.
        assert_eq!(normalize("0113 496 0000", "44").unwrap(), "34960000");
        assert_eq!(normalize("+44 113 496 0000", "44").unwrap(), "441134960000");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(normalize("", "48"), Err(NumberError::Empty));
        assert_eq!(normalize("  - ", "48"), Err(NumberError::Empty));
        assert_eq!(normalize("+", "48"), Err(NumberError::Empty));
        assert_eq!(
            normalize("48a600", "48"),
            Err(NumberError::InvalidCharacter)
        );
        assert_eq!(normalize("48+600", "48"), Err(NumberError::MisplacedPlus));
        assert_eq!(
            normalize("+0123456789", "48"),
            Err(NumberError::LeadingZero)
        );
        assert_eq!(
            normalize("000123456789", "48"),
            Err(NumberError::LeadingZero)
        );
        assert_eq!(
            normalize("+1234567890123456", "48"),
            Err(NumberError::TooLong(16))
        );
        assert!(matches!(
            normalize(&"9".repeat(1000), "48"),
            Err(NumberError::TooLong(_))
        ));
        assert_eq!(normalize("+4812", "48"), Err(NumberError::TooShort(4)));
        assert_eq!(
            normalize("600", "048"),
            Err(NumberError::InvalidCountryCode)
        );
        assert_eq!(normalize("600", ""), Err(NumberError::InvalidCountryCode));
        assert_eq!(
            normalize("600", "4812"),
            Err(NumberError::InvalidCountryCode)
        );
        assert_eq!(
            normalize("١٢٣٤٥٦٧", "48"),
            Err(NumberError::InvalidCharacter)
        );
    }

    #[test]
    fn exactly_fifteen_digits_is_allowed() {
        assert_eq!(
            normalize("+123456789012345", "48").unwrap(),
            "123456789012345"
        );
    }

    /// Random and truncated input never panics; whatever is accepted is E.164 and a
    /// fixed point (`+` followed by the result normalises to the result).
    #[test]
    fn random_input_never_panics_and_results_are_e164() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let alphabet: Vec<char> = "0123456789+-.() #*aé\u{0}\u{663}".chars().collect();
        for _ in 0..50_000 {
            let len = rng.random_range(0..24);
            let s: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let cc = ["1", "44", "48", "358"][rng.random_range(0..4)];
            for end in [s.len(), s.len() / 2] {
                let Some(input) = s.get(..end) else { continue };
                if let Ok(n) = normalize(input, cc) {
                    assert!(
                        (MIN_DIGITS..=E164_MAX_DIGITS).contains(&n.len()),
                        "{input:?} -> {n}"
                    );
                    assert!(n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0'));
                    assert_eq!(normalize(&format!("+{n}"), cc).as_deref(), Ok(n.as_str()));
                }
            }
        }
    }

    #[test]
    fn redaction_masks_digits() {
        if !crate::log_pii() {
            assert_eq!(Redacted("48600345698").to_string(), "*********98");
            assert_eq!(Redacted("123").to_string(), "***");
        }
    }
}
