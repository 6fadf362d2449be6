//! A migration's version: any string of up to 38 digits, ordered as a number. Teams use timestamps with sequence
//! suffixes (`20240115093000000001`, 20 digits) that no 64-bit integer holds; 38 digits always fit in a `u128`.
//!
//! In JSON a version is a number while it fits in 64 bits (what every tool reads) and a string of digits beyond;
//! both are read back. Databases hold it as a decimal (`NUMERIC(38)`, `DECIMAL(38,0)`) or as text (SQLite).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(u128);

impl Version {
    pub const ZERO: Version = Version(0);
    /// The most digits a version may have.
    pub const MAX_DIGITS: usize = 38;

    pub fn new(value: u128) -> Option<Version> {
        (value < 10u128.pow(Self::MAX_DIGITS as u32)).then_some(Version(value))
    }

    pub fn get(self) -> u128 {
        self.0
    }

    /// The version after this one (a new migration's, when a directory counts 1, 2, 3 …).
    pub fn next(self) -> Version {
        Version::new(self.0 + 1).unwrap_or(self)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The version as a 64-bit integer, where it fits (what older records and engines without decimals hold).
    pub fn to_i64(self) -> Option<i64> {
        i64::try_from(self.0).ok()
    }
}

impl From<u32> for Version {
    fn from(value: u32) -> Self {
        Version(u128::from(value))
    }
}

impl From<u64> for Version {
    fn from(value: u64) -> Self {
        Version(u128::from(value))
    }
}

impl TryFrom<i64> for Version {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, String> {
        u64::try_from(value).map(Version::from).map_err(|_| format!("version {value} is negative"))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Version {
    type Err = String;

    /// Digits only (leading zeros allowed, `000042` is 42), at most 38 of them once leading zeros are dropped.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("version `{s}` is not a string of digits"));
        }
        let significant = s.trim_start_matches('0');
        if significant.len() > Self::MAX_DIGITS {
            return Err(format!(
                "version `{s}` has {} digits; versions have at most {}",
                significant.len(),
                Self::MAX_DIGITS
            ));
        }
        Ok(Version(if significant.is_empty() { 0 } else { significant.parse().map_err(|e| format!("{e}"))? }))
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match u64::try_from(self.0) {
            Ok(small) => serializer.serialize_u64(small),
            Err(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Digits;
        impl Visitor<'_> for Digits {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a version: a number, or a string of up to 38 digits")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Version, E> {
                Ok(Version::from(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Version, E> {
                Version::try_from(v).map_err(E::custom)
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Version, E> {
                Version::new(v).ok_or_else(|| E::custom(format!("version {v} has more than 38 digits")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Version, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Digits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_digits_ordered_as_numbers() {
        let long: Version = "20240115093000000001".parse().unwrap();
        let longer: Version = "20240115093000000010".parse().unwrap();
        assert!(long < longer);
        assert!("9".parse::<Version>().unwrap() < "10".parse().unwrap(), "numbers, not text");
        assert_eq!("000042".parse::<Version>().unwrap(), Version::from(42u32));
        assert_eq!(long.to_string(), "20240115093000000001");
        let max = "9".repeat(38);
        assert_eq!(max.parse::<Version>().unwrap().to_string(), max);
        assert_eq!(format!("0{max}").parse::<Version>().unwrap().to_string(), max, "leading zeros do not count");
        assert!(format!("1{max}").parse::<Version>().unwrap_err().contains("39 digits"));
        for bad in ["", "1.2", "-1", "1a", " 1"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert_eq!(long.to_i64(), None);
        assert_eq!(Version::from(7u32).to_i64(), Some(7));
    }

    #[test]
    fn json_has_numbers_while_they_fit_and_strings_beyond() {
        let small = Version::from(20240101u32);
        assert_eq!(serde_json::to_value(small).unwrap(), serde_json::json!(20240101));
        let long: Version = "20240115093000000001".parse().unwrap();
        assert_eq!(serde_json::to_value(long).unwrap(), serde_json::json!("20240115093000000001"));
        for v in [small, long, Version::ZERO] {
            let back: Version = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            assert_eq!(back, v);
        }
        assert!(serde_json::from_str::<Version>("-3").is_err());
        assert!(serde_json::from_str::<Version>("\"x\"").is_err());
    }
}
