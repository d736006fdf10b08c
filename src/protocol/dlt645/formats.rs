//! How a DL/T 645-2007 value is written: BCD digits, lowest byte first, with the decimals
//! fixed by the data identifier's format (Appendix A of the standard), and for currents,
//! powers and the power factor the top bit of the top byte as the sign. [`known`] is the
//! table of the common identifiers; any other needs a format of its own (`format =
//! "XXXXXX.XX"` on the point).

use std::fmt;
use std::str::FromStr;

use super::Di;

/// How one value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `digits` BCD digits (even, 2..=16), the last `decimals` of them after the point; with
    /// `signed`, the top bit of the top byte is the sign (1: negative).
    Number {
        digits: u8,
        decimals: u8,
        signed: bool,
    },
    /// `YYMMDDWW`: year, month, day, day of the week (0 = Sunday).
    Date,
    /// `hhmmss`.
    Time,
}

/// A decoded value: a number, and for dates and times their text.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The number; a date or time is its digits as printed (`YYMMDDWW`, `hhmmss`).
    pub value: f64,
    pub text: Option<String>,
}

impl Format {
    /// Bytes on the wire.
    pub fn bytes(self) -> usize {
        match self {
            Format::Number { digits, .. } => usize::from(digits) / 2,
            Format::Date => 4,
            Format::Time => 3,
        }
    }

    /// The value `data` carries (the data of an answer, identifier removed): exactly
    /// [`Format::bytes`] bytes, every nibble a decimal digit (the sign bit aside).
    pub fn decode(self, data: &[u8]) -> Result<Reading, String> {
        if data.len() != self.bytes() {
            return Err(format!(
                "{} data bytes for format {self} ({} bytes): {}",
                data.len(),
                self.bytes(),
                crate::protocol::hex::to_hex(data)
            ));
        }
        let mut digits: Vec<u8> = data.iter().rev().copied().collect();
        let negative = match (self, digits.first_mut()) {
            (Format::Number { signed: true, .. }, Some(top)) => {
                let sign = *top & 0x80 != 0;
                *top &= 0x7F;
                sign
            }
            _ => false,
        };
        let mut number: u64 = 0;
        for byte in &digits {
            let (hi, lo) = (byte >> 4, byte & 0x0F);
            if hi > 9 || lo > 9 {
                return Err(format!(
                    "not BCD: {} (format {self})",
                    crate::protocol::hex::to_hex(data)
                ));
            }
            number = number * 100 + u64::from(hi * 10 + lo);
        }
        let text = |parts: &[u64; 4], date: bool| {
            if date {
                format!(
                    "20{:02}-{:02}-{:02}, weekday {}",
                    parts[0], parts[1], parts[2], parts[3]
                )
            } else {
                format!("{:02}:{:02}:{:02}", parts[0], parts[1], parts[2])
            }
        };
        digits.truncate(4);
        let mut parts = [0u64; 4];
        for (slot, byte) in parts.iter_mut().zip(&digits) {
            *slot = u64::from((byte >> 4) * 10 + (byte & 0x0F));
        }
        Ok(match self {
            Format::Number { decimals, .. } => {
                let value = number as f64 / 10f64.powi(i32::from(decimals));
                Reading {
                    value: if negative { -value } else { value },
                    text: None,
                }
            }
            Format::Date => Reading {
                value: number as f64,
                text: Some(text(&parts, true)),
            },
            Format::Time => Reading {
                value: number as f64,
                text: Some(text(&parts, false)),
            },
        })
    }

    /// The simulator's side: `value` as this format writes it (a date or time: its digits as
    /// printed). Rounded to the decimals; saturates at the largest value the digits hold
    /// (with a sign bit, a top digit of 7).
    pub fn encode(self, value: f64) -> Vec<u8> {
        let (digits, decimals, signed) = match self {
            Format::Number {
                digits,
                decimals,
                signed,
            } => (digits, decimals, signed),
            Format::Date => (8, 0, false),
            Format::Time => (6, 0, false),
        };
        // With a sign bit the top digit is at most 7 (its byte's top bit is the sign).
        let top = if signed { 8 } else { 10 };
        let max = top * 10u64.saturating_pow(u32::from(digits).saturating_sub(1)) - 1;
        let scaled = (value.abs() * 10f64.powi(i32::from(decimals))).round();
        // Saturating float-to-int cast; NaN becomes 0.
        let mut number = (scaled as u64).min(max);
        let mut out = Vec::with_capacity(usize::from(digits / 2));
        for _ in 0..digits / 2 {
            let pair = (number % 100) as u8;
            number /= 100;
            out.push(((pair / 10) << 4) | (pair % 10));
        }
        if signed && value < 0.0 {
            if let Some(top) = out.last_mut() {
                *top |= 0x80;
            }
        }
        out
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Format::Number {
                digits,
                decimals,
                signed,
            } => {
                if signed {
                    f.write_str("-")?;
                }
                let whole = usize::from(digits - decimals);
                f.write_str(&"X".repeat(whole))?;
                if decimals > 0 {
                    write!(f, ".{}", "X".repeat(usize::from(decimals)))?;
                }
                Ok(())
            }
            Format::Date => f.write_str("YYMMDDWW"),
            Format::Time => f.write_str("hhmmss"),
        }
    }
}

impl FromStr for Format {
    type Err = String;

    /// `XXXXXX.XX` (X a digit, at most one point, 2..=16 digits in all, an even count), a
    /// leading `-` for a sign bit; or `YYMMDDWW`, `hhmmss`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "YYMMDDWW" => return Ok(Format::Date),
            "hhmmss" => return Ok(Format::Time),
            _ => {}
        }
        let usage = || {
            format!(
                "{s:?} is not a format: X for each digit, one optional point, an even number \
                 of 2..=16 digits (e.g. \"XXXXXX.XX\", \"-XX.XXXX\" with a sign bit), or \
                 YYMMDDWW or hhmmss"
            )
        };
        let (signed, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, decimals) = body.split_once('.').unwrap_or((body, ""));
        let all_x = |part: &str| part.bytes().all(|b| b == b'X');
        if !all_x(whole) || !all_x(decimals) || (body.contains('.') && decimals.is_empty()) {
            return Err(usage());
        }
        let digits = whole.len() + decimals.len();
        if !(2..=16).contains(&digits) || digits % 2 != 0 {
            return Err(usage());
        }
        Ok(Format::Number {
            digits: u8::try_from(digits).map_err(|_| usage())?,
            decimals: u8::try_from(decimals.len()).map_err(|_| usage())?,
            signed,
        })
    }
}

/// A data identifier of the table: its format, its unit and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub format: Format,
    pub unit: &'static str,
    pub what: &'static str,
}

const fn number(digits: u8, decimals: u8, signed: bool) -> Format {
    Format::Number {
        digits,
        decimals,
        signed,
    }
}

/// The common data identifiers (DL/T 645-2007 Appendix A, tables A.1, A.3 and A.5): energy
/// `0000xxyy` (combined active, with a sign), `0001xxyy` (forward active), `0002xxyy`
/// (reverse active) for tariff `xx` 00..=3F (00: total) and settlement day `yy` 00..=0C
/// (00: now), `XXXXXX.XX` kWh; voltages `0201xx00` (phase 1..=3) `XXX.X` V; currents
/// `0202xx00` `XXX.XXX` A; active / reactive power `0203xx00` / `0204xx00` (xx 00 total,
/// 1..=3 phases) `XX.XXXX` kW / kvar; power factor `0206xx00` `X.XXX`; frequency `02800002`
/// `XX.XX` Hz; date `04000101` `YYMMDDWW`, time `04000102` `hhmmss`. Currents, powers and
/// the power factor carry a sign bit. Blocks (`FF` in a byte) are not single values.
pub fn known(di: Di) -> Option<Known> {
    let [di3, di2, di1, di0] = di.bytes();
    let k = |format, unit, what| Some(Known { format, unit, what });
    match (di3, di2, di1, di0) {
        (0x00, 0x00..=0x02, 0x00..=0x3F, 0x00..=0x0C) => k(
            number(8, 2, di2 == 0),
            "kWh",
            [
                "combined active energy",
                "forward active energy",
                "reverse active energy",
            ][usize::from(di2)],
        ),
        (0x02, 0x01, 0x01..=0x03, 0x00) => k(number(4, 1, false), "V", "phase voltage"),
        (0x02, 0x02, 0x01..=0x03, 0x00) => k(number(6, 3, true), "A", "phase current"),
        (0x02, 0x03, 0x00..=0x03, 0x00) => k(number(6, 4, true), "kW", "active power"),
        (0x02, 0x04, 0x00..=0x03, 0x00) => k(number(6, 4, true), "kvar", "reactive power"),
        (0x02, 0x06, 0x00..=0x03, 0x00) => k(number(4, 3, true), "", "power factor"),
        (0x02, 0x80, 0x00, 0x02) => k(number(4, 2, false), "Hz", "grid frequency"),
        (0x04, 0x00, 0x01, 0x01) => k(Format::Date, "", "date and day of the week"),
        (0x04, 0x00, 0x01, 0x02) => k(Format::Time, "", "time"),
        _ => None,
    }
}
