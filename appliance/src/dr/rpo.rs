//! Recovery point objective: how old the last recovery point may be.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An RPO in seconds, parsed from `30s`, `15m`, `1h`, `2d` (one number and
/// one unit; 1 s to 7 days).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rpo(u64);

/// Why an RPO text was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("RPO {text:?} {why}: give a number and a unit, e.g. 30s, 15m, 1h or 1d")]
pub struct RpoError {
    text: String,
    why: &'static str,
}

/// Longest RPO accepted (a week: longer is not protection).
const MAX_S: u64 = 7 * 86_400;

impl Rpo {
    /// The RPO in seconds.
    pub fn secs(self) -> u64 {
        self.0
    }

    /// How often the daemon refreshes the replica so that the RPO is met
    /// while a round itself takes time: half the RPO, at least 10 s.
    pub fn refresh_every_s(self) -> u64 {
        (self.0 / 2).max(10)
    }
}

impl FromStr for Rpo {
    type Err = RpoError;

    fn from_str(text: &str) -> Result<Rpo, RpoError> {
        let err = |why| RpoError { text: text.into(), why };
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| err("has no unit"))?;
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err("does not start with a number"));
        }
        let n: u64 = num.parse().map_err(|_| err("is too large"))?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(err("has an unknown unit (use s, m, h or d)")),
        };
        let secs = n.checked_mul(mult).ok_or_else(|| err("is too large"))?;
        if secs == 0 {
            return Err(err("is zero"));
        }
        if secs > MAX_S {
            return Err(err("is longer than 7 days"));
        }
        Ok(Rpo(secs))
    }
}

impl TryFrom<String> for Rpo {
    type Error = RpoError;
    fn try_from(s: String) -> Result<Rpo, RpoError> {
        s.parse()
    }
}

impl From<Rpo> for String {
    fn from(r: Rpo) -> String {
        r.to_string()
    }
}

impl fmt::Display for Rpo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if s.is_multiple_of(n) {
                return write!(f, "{}{unit}", s / n);
            }
        }
        write!(f, "{s}s")
    }
}

/// Whether the RPO is met: the last recovery point is at most `rpo` old.
/// No point yet: missed.
pub fn met(rpo: Rpo, age_s: Option<f64>) -> bool {
    age_s.is_some_and(|a| a <= rpo.secs() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_bad_text() {
        let ok = [
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("2d", 172_800),
            (" 90s ", 90),
            ("7d", 604_800),
        ];
        for (t, s) in ok {
            assert_eq!(t.parse::<Rpo>().map(Rpo::secs), Ok(s), "{t}");
        }
        for t in [
            "",
            "15",
            "m",
            "15x",
            "15 m",
            "-5m",
            "1.5h",
            "0m",
            "8d",
            "99999999999999999999s",
            "15mm",
            "h1",
        ] {
            let e = t.parse::<Rpo>().unwrap_err();
            assert!(e.to_string().contains("e.g. 30s, 15m"), "{t}: {e}");
        }
    }

    #[test]
    fn displays_in_the_largest_whole_unit_and_round_trips() {
        for (t, shown) in [("900s", "15m"), ("60m", "1h"), ("90s", "90s"), ("24h", "1d"), ("15m", "15m")] {
            let r: Rpo = t.parse().unwrap();
            assert_eq!(r.to_string(), shown);
            assert_eq!(shown.parse::<Rpo>().unwrap(), r);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Rpo>(&json).unwrap(), r);
        }
        assert!(serde_json::from_str::<Rpo>("\"0s\"").is_err());
    }

    #[test]
    fn met_compares_the_age_with_the_rpo() {
        let r: Rpo = "15m".parse().unwrap();
        assert!(met(r, Some(0.0)));
        assert!(met(r, Some(900.0)));
        assert!(!met(r, Some(900.5)));
        assert!(!met(r, None));
        assert_eq!(r.refresh_every_s(), 450);
        assert_eq!("5s".parse::<Rpo>().unwrap().refresh_every_s(), 10);
    }
}
