//! Currencies and denominations: exact decimal strings on the wire, integer minor units inside.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest number of digits before the decimal point in a denomination.
const MAX_INTEGER_DIGITS: usize = 10;
/// Largest number of digits after the decimal point (the largest ISO 4217 exponent).
const MAX_FRACTION_DIGITS: usize = 4;

/// Active ISO 4217 codes whose minor unit is not 2 decimal places, sorted by code.
const EXPONENT_EXCEPTIONS: &[(&str, u8)] = &[
    ("BHD", 3),
    ("BIF", 0),
    ("CLF", 4),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("IQD", 3),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("PYG", 0),
    ("RWF", 0),
    ("TND", 3),
    ("UGX", 0),
    ("UYI", 0),
    ("UYW", 4),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
];

/// Active ISO 4217 codes with a 2-decimal minor unit, sorted by code.
const TWO_DECIMAL_CODES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BMD", "BND", "BOB",
    "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF", "CHW", "CNY", "COP", "COU", "CRC",
    "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP",
    "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR",
    "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK", "PHP",
    "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD",
    "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "USN",
    "UYU", "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW", "ZWG",
];

/// An ISO 4217 currency with its minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

/// Why a currency code was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyError(String);

impl std::fmt::Display for CurrencyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CurrencyError {}

impl Currency {
    /// Parse an active ISO 4217 code such as `USD` (upper case, exactly three letters).
    pub fn parse(code: &str) -> Result<Self, CurrencyError> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyError("must be a three-letter upper-case ISO 4217 code".into()));
        }
        if let Ok(i) = EXPONENT_EXCEPTIONS.binary_search_by(|(c, _)| c.cmp(&code)) {
            let (code, exponent) = EXPONENT_EXCEPTIONS[i];
            Ok(Self { code, exponent })
        } else if let Ok(i) = TWO_DECIMAL_CODES.binary_search(&code) {
            Ok(Self { code: TWO_DECIMAL_CODES[i], exponent: 2 })
        } else {
            Err(CurrencyError(format!("{code} is not an active ISO 4217 currency")))
        }
    }

    /// The three-letter code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Decimal places of the minor unit (2 for USD, 0 for JPY, 3 for KWD).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    /// Format an amount in minor units as the exact decimal string used on the wire.
    pub fn format_minor(&self, minor: i64) -> String {
        format_minor(minor, self.exponent)
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

// On the wire a currency is its code, so its schema is a string, not the struct's fields.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[A-Z]{3}$"))
            .description(Some("An active ISO 4217 currency code"))
            .examples(["EUR"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Currency {}

/// Format minor units with `exponent` decimal places: `(2500, 2)` → `"25.00"`.
pub fn format_minor(minor: i64, exponent: u8) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs}");
    }
    let div = 10u64.pow(u32::from(exponent));
    format!("{sign}{}.{:0width$}", abs / div, abs % div, width = usize::from(exponent))
}

/// A positive denomination exactly as written on the wire (`"25"`, `"25.00"`, `"0.500"`).
///
/// The currency is not known until the product is, so this keeps the decimal exactly and
/// converts to minor units with [`Denomination::to_minor`] once the currency is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Denomination {
    mantissa: u64,
    scale: u8,
}

/// Why a denomination was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenominationError(String);

impl std::fmt::Display for DenominationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DenominationError {}

impl Denomination {
    /// Parse a positive plain decimal: digits, optionally `.` and 1–4 digits. No sign,
    /// exponent, spaces or leading zeros.
    pub fn parse(s: &str) -> Result<Self, DenominationError> {
        let bad = |why: &str| Err(DenominationError(why.to_owned()));
        if s.is_empty() {
            return bad("must not be empty");
        }
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return bad("must be a plain positive decimal such as \"25.00\"");
        }
        if int.len() > 1 && int.starts_with('0') {
            return bad("must not have leading zeros");
        }
        if int.len() > MAX_INTEGER_DIGITS {
            return bad("is too large");
        }
        let frac = frac.unwrap_or("");
        if s.contains('.') && frac.is_empty() {
            return bad("must have digits after the decimal point");
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return bad("must be a plain positive decimal such as \"25.00\"");
        }
        if frac.len() > MAX_FRACTION_DIGITS {
            return bad("has too many decimal places");
        }
        let mut mantissa: u64 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa * 10 + u64::from(b - b'0');
        }
        if mantissa == 0 {
            return bad("must be greater than zero");
        }
        Ok(Self { mantissa, scale: frac.len() as u8 })
    }

    /// A denomination from minor units of a currency.
    pub fn from_minor(minor: u64, currency: Currency) -> Self {
        Self { mantissa: minor, scale: currency.exponent() }
    }

    /// The amount in minor units of a currency with `exponent` decimal places.
    /// Fails when the value has more significant decimal places than the currency allows.
    pub fn to_minor(&self, exponent: u8) -> Result<i64, DenominationError> {
        let minor = if self.scale > exponent {
            let div = 10u64.pow(u32::from(self.scale - exponent));
            if !self.mantissa.is_multiple_of(div) {
                return Err(DenominationError(format!(
                    "has more decimal places than the currency allows ({exponent})"
                )));
            }
            self.mantissa / div
        } else {
            let mul = 10u64.pow(u32::from(exponent - self.scale));
            self.mantissa.checked_mul(mul).ok_or_else(|| DenominationError("is too large".into()))?
        };
        i64::try_from(minor).map_err(|_| DenominationError("is too large".into()))
    }

    /// The same value with trailing fractional zeros removed (`25.00` → `25`).
    pub fn normalized(&self) -> Self {
        let mut d = *self;
        while d.scale > 0 && d.mantissa.is_multiple_of(10) {
            d.mantissa /= 10;
            d.scale -= 1;
        }
        d
    }

    /// The denomination written with exactly `exponent` decimal places, if it fits.
    pub fn canonical(&self, exponent: u8) -> Result<String, DenominationError> {
        Ok(format_minor(self.to_minor(exponent)?, exponent))
    }
}

impl std::fmt::Display for Denomination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_minor(self.mantissa as i64, self.scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn currency_tables_are_sorted_for_binary_search() {
        assert!(TWO_DECIMAL_CODES.windows(2).all(|w| w[0] < w[1]));
        assert!(EXPONENT_EXCEPTIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn currencies() {
        assert_eq!(Currency::parse("USD").unwrap().exponent(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().exponent(), 3);
        for bad in ["usd", "US", "USDD", "ZZZ", "", "U$D", "ÜSD"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn denominations_parse_exactly() {
        let usd = Currency::parse("USD").unwrap();
        for (s, minor) in [("25", 2500), ("25.00", 2500), ("25.5", 2550), ("0.01", 1), ("10.000", 1000)] {
            assert_eq!(Denomination::parse(s).unwrap().to_minor(usd.exponent()).unwrap(), minor, "{s}");
        }
        for bad in
            ["", "-5", "+5", "1e3", "10.", ".5", "0", "0.00", "007", " 5", "5 ", "1,5", "NaN", "12345678901", "1.23456"]
        {
            assert!(Denomination::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let d = Denomination::parse("10.001").unwrap();
        assert!(d.to_minor(2).is_err());
        assert_eq!(d.to_minor(3).unwrap(), 10001);
        assert_eq!(Denomination::parse("25").unwrap().canonical(2).unwrap(), "25.00");
        assert_eq!(Denomination::parse("500").unwrap().canonical(0).unwrap(), "500");
    }

    #[test]
    fn formats_minor_units() {
        assert_eq!(format_minor(2500, 2), "25.00");
        assert_eq!(format_minor(5, 2), "0.05");
        assert_eq!(format_minor(-5, 2), "-0.05");
        assert_eq!(format_minor(10001, 3), "10.001");
        assert_eq!(format_minor(700, 0), "700");
    }

    proptest! {
        #[test]
        fn denomination_parse_never_panics(s in "\\PC*") {
            let _ = Denomination::parse(&s).map(|d| d.to_minor(2));
        }

        #[test]
        fn currency_parse_never_panics(s in "\\PC*") {
            let _ = Currency::parse(&s);
        }

        #[test]
        fn minor_units_round_trip(minor in 1i64..10_000_000_000, exp in 0u8..=4) {
            let text = format_minor(minor, exp);
            let parsed = Denomination::parse(&text).unwrap();
            prop_assert_eq!(parsed.to_minor(exp).unwrap(), minor);
            prop_assert_eq!(parsed.to_string(), text);
        }
    }
}
