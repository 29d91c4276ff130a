//! Human units in the config file: durations such as `168h`, `5m`, `0`, sizes such as
//! `200GiB`, `4MiB`, and byte rates such as `5MB/s`. Parsed once at load time into
//! [`HumanDuration`], [`ByteSize`] and [`ByteRate`].

use std::fmt;
use std::time::Duration;

/// A duration written the human way (`168h`, `5m`, `1h 30m`, `0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(HumanDuration(Duration::ZERO));
        }
        humantime::parse_duration(t)
            .map(HumanDuration)
            .map_err(|e| {
                format!("expected a duration such as \"168h\", \"5m\" or \"0\", got {s:?} ({e})")
            })
    }

    pub fn get(self) -> Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"168h\", \"5m\" or \"0\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                if v == 0 {
                    Ok(HumanDuration(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "expected a duration with a unit such as \"{v}s\" or \"{v}m\", got the bare number {v}"
                    )))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "expected a duration, got negative number {v}"
                    )));
                }
                self.visit_u64(v as u64)
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte count written the human way (`200GiB`, `4MiB`, `1000000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|e| format!("expected a size such as \"200GiB\" or \"4MiB\", got {s:?} ({e})"))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: &[(u64, &str)] = &[
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for &(unit, name) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"200GiB\" or \"4MiB\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("expected a size, got negative number {v}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte rate written the human way: a size per second (`"5MB/s"`, `"40MiB/s"`), or a plain
/// number of bytes per second (`2000000`, `"2000000"`). Never zero: a setting that may be
/// off is an `Option<ByteRate>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteRate(u64);

impl ByteRate {
    const EXPECTED: &'static str =
        "expected a rate above 0 such as \"5MB/s\", \"40MiB/s\" or a number of bytes per second";

    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let size = t
            .strip_suffix("/s")
            .or_else(|| t.strip_suffix("/sec"))
            .unwrap_or(t)
            .trim();
        let bytes = ByteSize::parse(size)
            .map_err(|_| format!("{}, got {s:?}", Self::EXPECTED))?
            .get();
        Self::per_second(bytes).ok_or_else(|| format!("{}, got {s:?}", Self::EXPECTED))
    }

    /// `bytes` per second; `None` for 0.
    pub fn per_second(bytes: u64) -> Option<Self> {
        (bytes > 0).then_some(ByteRate(bytes))
    }

    /// Bytes per second.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", ByteSize(self.0))
    }
}

impl serde::Serialize for ByteRate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ByteRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteRate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate such as \"5MB/s\" or a number of bytes per second")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteRate, E> {
                ByteRate::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteRate, E> {
                ByteRate::per_second(v)
                    .ok_or_else(|| E::custom(format!("{}, got {v}", ByteRate::EXPECTED)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteRate, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("{}, got {v}", ByteRate::EXPECTED))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            HumanDuration::parse("168h").map(|d| d.0),
            Ok(Duration::from_secs(168 * 3600))
        );
        assert_eq!(
            HumanDuration::parse("5m").map(|d| d.0),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(HumanDuration::parse("0").map(|d| d.0), Ok(Duration::ZERO));
        assert!(HumanDuration::parse("5 parsecs").is_err());
        assert!(HumanDuration::parse("").is_err());
        assert_eq!(HumanDuration(Duration::from_secs(300)).to_string(), "5m");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("200GiB"), Ok(ByteSize(200 << 30)));
        assert_eq!(ByteSize::parse("4MiB"), Ok(ByteSize(4 << 20)));
        assert_eq!(ByteSize::parse("1000"), Ok(ByteSize(1000)));
        assert!(ByteSize::parse("lots").is_err());
        assert_eq!(ByteSize(200 << 30).to_string(), "200GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn rates() {
        assert_eq!(ByteRate::parse("5MB/s").map(ByteRate::get), Ok(5_000_000));
        assert_eq!(ByteRate::parse("40MiB/s").map(ByteRate::get), Ok(40 << 20));
        assert_eq!(
            ByteRate::parse(" 2000000 ").map(ByteRate::get),
            Ok(2_000_000)
        );
        assert_eq!(ByteRate::parse("1 KiB/sec").map(ByteRate::get), Ok(1024));
        for bad in ["0", "0MB/s", "fast", "5MB/h", ""] {
            let e = ByteRate::parse(bad).expect_err(bad);
            assert!(e.contains("5MB/s"), "{e}");
        }
        let rate = ByteRate::parse("4MiB/s").expect("valid");
        assert_eq!(rate.to_string(), "4MiB/s");
        assert_eq!(ByteRate::parse(&rate.to_string()), Ok(rate));
        assert_eq!(
            ByteRate::parse(&ByteRate(1000).to_string()).map(ByteRate::get),
            Ok(1000)
        );
    }
}
