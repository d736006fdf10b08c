//! Data points: how a profile's named values are laid out in Modbus registers, and how a polled
//! block of registers or bits turns into decoded, scaled values.
//!
//! # Word and byte order
//!
//! A value of N registers (N = 2 for 32-bit types, 4 for 64-bit types) is first written as its
//! big-endian bytes `A B C D …` (A most significant). The four orders say how those bytes sit
//! in the registers, each register being sent high byte first as Modbus always does:
//!
//! | order  | registers, 32-bit      | meaning                                                   |
//! |--------|------------------------|-----------------------------------------------------------|
//! | `ABCD` | `[AB, CD]`             | big-endian: first register holds the most significant word |
//! | `CDAB` | `[CD, AB]`             | "word swap": register order reversed, bytes kept           |
//! | `BADC` | `[BA, DC]`             | "byte swap": register order kept, bytes in each swapped    |
//! | `DCBA` | `[DC, BA]`             | fully little-endian: both of the above                     |
//!
//! For 64-bit types the same rule applies over four registers (`CDAB` turns
//! `[AB, CD, EF, GH]` into `[GH, EF, CD, AB]`). The contract defines the order for 32/64-bit
//! types only, so single-register types (`u16`, `i16`, `bool`) ignore it.

use std::fmt;
use std::str::FromStr;

/// The type of a data point, which fixes how many registers it spans and how they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointType {
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
    Bool,
}

impl PointType {
    /// Every type, in the order the contract lists them (used for messages and tests).
    pub const ALL: [PointType; 9] = [
        PointType::U16,
        PointType::I16,
        PointType::U32,
        PointType::I32,
        PointType::F32,
        PointType::U64,
        PointType::I64,
        PointType::F64,
        PointType::Bool,
    ];

    /// Number of 16-bit registers a value of this type occupies.
    pub fn registers(self) -> u16 {
        match self {
            PointType::U16 | PointType::I16 | PointType::Bool => 1,
            PointType::U32 | PointType::I32 | PointType::F32 => 2,
            PointType::U64 | PointType::I64 | PointType::F64 => 4,
        }
    }

    /// The lowercase name used in data.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            PointType::U16 => "u16",
            PointType::I16 => "i16",
            PointType::U32 => "u32",
            PointType::I32 => "i32",
            PointType::F32 => "f32",
            PointType::U64 => "u64",
            PointType::I64 => "i64",
            PointType::F64 => "f64",
            PointType::Bool => "bool",
        }
    }
}

impl FromStr for PointType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PointType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("unknown point type {s:?} (expected one of u16 i16 u32 i32 f32 u64 i64 f64 bool)")
            })
    }
}

impl fmt::Display for PointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Word/byte order of multi-register values; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WordOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl WordOrder {
    /// Every order (used for tests).
    pub const ALL: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    /// The uppercase name used in data.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            WordOrder::Abcd => "ABCD",
            WordOrder::Cdab => "CDAB",
            WordOrder::Badc => "BADC",
            WordOrder::Dcba => "DCBA",
        }
    }

    /// Whether the registers come in reverse (least significant word first).
    fn reversed_words(self) -> bool {
        matches!(self, WordOrder::Cdab | WordOrder::Dcba)
    }

    /// Whether the two bytes inside each register are swapped.
    fn swapped_bytes(self) -> bool {
        matches!(self, WordOrder::Badc | WordOrder::Dcba)
    }
}

impl FromStr for WordOrder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WordOrder::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown order {s:?} (expected one of ABCD CDAB BADC DCBA)"))
    }
}

impl fmt::Display for WordOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named value of a profile: where it lives, how to read it and how to scale it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: String,
    /// First register (or coil/input) address.
    pub address: u16,
    pub ty: PointType,
    /// Only meaningful for 32/64-bit types.
    pub order: WordOrder,
    /// `value = raw * scale + offset`.
    pub scale: f64,
    pub offset: f64,
    pub unit: String,
    /// For `bool` points read from a register: which bit (0 = least significant).
    pub bit: Option<u8>,
}

/// Puts `regs` (as they arrived) into most-significant-first order with bytes unswapped,
/// i.e. undoes `order`. Single registers are never reordered (see module docs).
fn to_canonical(order: WordOrder, regs: &[u16]) -> impl Iterator<Item = u16> + '_ {
    let multi = regs.len() > 1;
    let reverse = multi && order.reversed_words();
    let swap = multi && order.swapped_bytes();
    let n = regs.len();
    (0..n).map(move |i| {
        let w = if reverse { regs[n - 1 - i] } else { regs[i] };
        if swap {
            w.swap_bytes()
        } else {
            w
        }
    })
}

/// Raw numeric value of `ty` from `regs` (regs.len() >= ty.registers(), else None).
/// Bool: `regs[0] != 0`, or bit `bit` of `regs[0]` (None for a bit past 15).
pub fn decode_registers(
    ty: PointType,
    order: WordOrder,
    bit: Option<u8>,
    regs: &[u16],
) -> Option<f64> {
    let n = usize::from(ty.registers());
    let regs = regs.get(..n)?;
    if ty == PointType::Bool {
        let r = regs[0];
        let on = match bit {
            None => r != 0,
            Some(b) if b < 16 => (r >> b) & 1 == 1,
            Some(_) => return None,
        };
        return Some(if on { 1.0 } else { 0.0 });
    }
    let bits = to_canonical(order, regs).fold(0u64, |acc, w| (acc << 16) | u64::from(w));
    // Truncating casts below are intended: `bits` holds exactly `n` registers' worth.
    let v = match ty {
        PointType::U16 => f64::from(bits as u16),
        PointType::I16 => f64::from(bits as u16 as i16),
        PointType::U32 => f64::from(bits as u32),
        PointType::I32 => f64::from(bits as u32 as i32),
        PointType::F32 => f64::from(f32::from_bits(bits as u32)),
        PointType::U64 => bits as f64,
        PointType::I64 => bits as i64 as f64,
        PointType::F64 => f64::from_bits(bits),
        PointType::Bool => return None, // handled above
    };
    Some(v)
}

/// Inverse of [`decode_registers`] for tests and the simulator: the registers that hold raw
/// value `raw`. Integer types round to nearest and saturate at their range (NaN gives 0);
/// bool gives 1 for any non-zero value.
pub fn encode_registers(ty: PointType, order: WordOrder, raw: f64) -> Vec<u16> {
    // Float-to-int `as` casts saturate and map NaN to 0, which is exactly what we want.
    let bits: u64 = match ty {
        PointType::U16 => u64::from(raw.round() as u16),
        PointType::I16 => u64::from(raw.round() as i16 as u16),
        PointType::U32 => u64::from(raw.round() as u32),
        PointType::I32 => u64::from(raw.round() as i32 as u32),
        PointType::F32 => u64::from((raw as f32).to_bits()),
        PointType::U64 => raw.round() as u64,
        PointType::I64 => raw.round() as i64 as u64,
        PointType::F64 => raw.to_bits(),
        PointType::Bool => u64::from(raw != 0.0 && !raw.is_nan()),
    };
    let n = usize::from(ty.registers());
    let canonical: Vec<u16> = (0..n)
        .map(|i| (bits >> (16 * (n - 1 - i))) as u16)
        .collect();
    // Reordering is its own inverse (a reversal and/or a byte swap), so the same helper encodes.
    to_canonical(order, &canonical).collect()
}

/// One decoded point of a polled block.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub name: String,
    pub raw: f64,
    pub value: f64,
    pub unit: String,
}

/// The data of one polled block: bits for functions 1/2, registers for functions 3/4.
#[derive(Debug, Clone, Copy)]
pub enum BlockData<'a> {
    Bits(&'a [bool]),
    Registers(&'a [u16]),
}

/// Every point that this polled block covers, decoded (value = raw*scale+offset).
///
/// Registers blocks (functions 3/4) decode all types (bool = register != 0 or its `bit`);
/// Bits blocks (functions 1/2) decode only bool points without a `bit` (a `bit` names a bit of
/// a register, which a coil block does not have). A point only partly inside the block is
/// skipped; a NaN/inf result is skipped (JSON cannot carry it).
pub fn decode_block(points: &[Point], start: u16, data: &BlockData<'_>) -> Vec<Decoded> {
    points
        .iter()
        .filter_map(|p| {
            let offset = usize::from(p.address.checked_sub(start)?);
            let raw = match data {
                BlockData::Registers(regs) => {
                    let end = offset + usize::from(p.ty.registers());
                    decode_registers(p.ty, p.order, p.bit, regs.get(offset..end)?)?
                }
                BlockData::Bits(bits) => {
                    if p.ty != PointType::Bool || p.bit.is_some() {
                        return None;
                    }
                    if *bits.get(offset)? {
                        1.0
                    } else {
                        0.0
                    }
                }
            };
            let value = raw * p.scale + p.offset;
            if !raw.is_finite() || !value.is_finite() {
                return None;
            }
            Some(Decoded {
                name: p.name.clone(),
                raw,
                value,
                unit: p.unit.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn point(name: &str, address: u16, ty: PointType) -> Point {
        Point {
            name: name.into(),
            address,
            ty,
            order: WordOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: String::new(),
            bit: None,
        }
    }

    #[test]
    fn names_round_trip() {
        for t in PointType::ALL {
            assert_eq!(t.to_string().parse::<PointType>(), Ok(t));
        }
        for o in WordOrder::ALL {
            assert_eq!(o.to_string().parse::<WordOrder>(), Ok(o));
        }
        assert!("U16".parse::<PointType>().is_err());
        assert!("float".parse::<PointType>().is_err());
        assert!("abcd".parse::<WordOrder>().is_err());
        assert_eq!(WordOrder::default(), WordOrder::Abcd);
    }

    #[test]
    fn register_counts() {
        let counts: Vec<u16> = PointType::ALL.iter().map(|t| t.registers()).collect();
        assert_eq!(counts, [1, 1, 2, 2, 2, 4, 4, 4, 1]);
    }

    #[test]
    fn f32_known_vectors() {
        // 23.5f32 = 0x41BC0000
        let cases = [
            (WordOrder::Abcd, [0x41BC, 0x0000]),
            (WordOrder::Cdab, [0x0000, 0x41BC]),
            (WordOrder::Badc, [0xBC41, 0x0000]),
            (WordOrder::Dcba, [0x0000, 0xBC41]),
        ];
        for (order, regs) in cases {
            assert_eq!(
                decode_registers(PointType::F32, order, None, &regs),
                Some(23.5),
                "{order}"
            );
            assert_eq!(
                encode_registers(PointType::F32, order, 23.5),
                regs,
                "{order}"
            );
        }
    }

    #[test]
    fn u32_and_64_bit_known_vectors() {
        // 0x11223344 as bytes A=11 B=22 C=33 D=44
        let v = f64::from(0x1122_3344u32);
        let cases = [
            (WordOrder::Abcd, [0x1122, 0x3344]),
            (WordOrder::Cdab, [0x3344, 0x1122]),
            (WordOrder::Badc, [0x2211, 0x4433]),
            (WordOrder::Dcba, [0x4433, 0x2211]),
        ];
        for (order, regs) in cases {
            assert_eq!(
                decode_registers(PointType::U32, order, None, &regs),
                Some(v),
                "{order}"
            );
            assert_eq!(encode_registers(PointType::U32, order, v), regs, "{order}");
        }
        // 64-bit: 0x0001_0002_0003_0004
        let v = 0x0001_0002_0003_0004u64 as f64;
        assert_eq!(
            encode_registers(PointType::U64, WordOrder::Abcd, v),
            [0x0001, 0x0002, 0x0003, 0x0004]
        );
        assert_eq!(
            encode_registers(PointType::U64, WordOrder::Cdab, v),
            [0x0004, 0x0003, 0x0002, 0x0001]
        );
        assert_eq!(
            encode_registers(PointType::U64, WordOrder::Badc, v),
            [0x0100, 0x0200, 0x0300, 0x0400]
        );
        assert_eq!(
            encode_registers(PointType::U64, WordOrder::Dcba, v),
            [0x0400, 0x0300, 0x0200, 0x0100]
        );
        // f64 1.0 = 0x3FF0_0000_0000_0000
        assert_eq!(
            decode_registers(PointType::F64, WordOrder::Abcd, None, &[0x3FF0, 0, 0, 0]),
            Some(1.0)
        );
        assert_eq!(
            decode_registers(PointType::I64, WordOrder::Abcd, None, &[0xFFFF; 4]),
            Some(-1.0)
        );
        assert_eq!(
            decode_registers(PointType::I32, WordOrder::Cdab, None, &[0xFFFE, 0xFFFF]),
            Some(-2.0)
        );
    }

    #[test]
    fn sixteen_bit_and_bool() {
        assert_eq!(
            decode_registers(PointType::I16, WordOrder::Abcd, None, &[0xFF9C]),
            Some(-100.0)
        );
        assert_eq!(
            decode_registers(PointType::U16, WordOrder::Abcd, None, &[0xFF9C]),
            Some(65436.0)
        );
        // Order does not apply to single registers.
        assert_eq!(
            decode_registers(PointType::U16, WordOrder::Dcba, None, &[0x0102]),
            Some(258.0)
        );
        assert_eq!(
            decode_registers(PointType::Bool, WordOrder::Abcd, None, &[0]),
            Some(0.0)
        );
        assert_eq!(
            decode_registers(PointType::Bool, WordOrder::Abcd, None, &[7]),
            Some(1.0)
        );
        assert_eq!(
            decode_registers(PointType::Bool, WordOrder::Abcd, Some(0), &[6]),
            Some(0.0)
        );
        assert_eq!(
            decode_registers(PointType::Bool, WordOrder::Abcd, Some(2), &[6]),
            Some(1.0)
        );
        assert_eq!(
            decode_registers(PointType::Bool, WordOrder::Abcd, Some(15), &[0x8000]),
            Some(1.0)
        );
        assert_eq!(
            decode_registers(PointType::Bool, WordOrder::Abcd, Some(16), &[0xFFFF]),
            None
        );
    }

    #[test]
    fn too_few_registers() {
        assert_eq!(
            decode_registers(PointType::F32, WordOrder::Abcd, None, &[1]),
            None
        );
        assert_eq!(
            decode_registers(PointType::F64, WordOrder::Abcd, None, &[1, 2, 3]),
            None
        );
        assert_eq!(
            decode_registers(PointType::U16, WordOrder::Abcd, None, &[]),
            None
        );
        // Extra registers are ignored.
        assert_eq!(
            decode_registers(PointType::U16, WordOrder::Abcd, None, &[5, 6]),
            Some(5.0)
        );
    }

    #[test]
    fn encode_saturates_and_rounds() {
        assert_eq!(
            encode_registers(PointType::U16, WordOrder::Abcd, 70000.0),
            [0xFFFF]
        );
        assert_eq!(encode_registers(PointType::U16, WordOrder::Abcd, -3.0), [0]);
        assert_eq!(encode_registers(PointType::U16, WordOrder::Abcd, 2.5), [3]);
        assert_eq!(
            encode_registers(PointType::I16, WordOrder::Abcd, -100.0),
            [0xFF9C]
        );
        assert_eq!(
            encode_registers(PointType::I16, WordOrder::Abcd, -1e9),
            [0x8000]
        );
        assert_eq!(
            encode_registers(PointType::U32, WordOrder::Abcd, f64::NAN),
            [0, 0]
        );
        assert_eq!(encode_registers(PointType::Bool, WordOrder::Abcd, 0.0), [0]);
        assert_eq!(
            encode_registers(PointType::Bool, WordOrder::Abcd, -2.0),
            [1]
        );
    }

    #[test]
    fn block_decodes_scaled_values() {
        let mut temp = point("temperature", 2000, PointType::I16);
        temp.scale = 0.1;
        temp.unit = "°C".into();
        let mut hum = point("humidity", 2010, PointType::F32);
        hum.offset = 1.0;
        let mut energy = point("energy", 2020, PointType::U32);
        energy.order = WordOrder::Cdab;
        let mut alarm = point("alarm", 2031, PointType::Bool);
        alarm.bit = Some(0);
        let mut regs = vec![0u16; 40];
        regs[0] = 0xFF9C;
        regs[10] = 0x41BC;
        regs[20] = 0x0001; // CDAB: low word first
        regs[21] = 0x0002;
        regs[31] = 0b11;
        let out = decode_block(
            &[temp, hum, energy, alarm],
            2000,
            &BlockData::Registers(&regs),
        );
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].name, "temperature");
        assert_eq!(out[0].raw, -100.0);
        assert!((out[0].value - -10.0).abs() < 1e-9);
        assert_eq!(out[0].unit, "°C");
        assert_eq!(out[1].value, 24.5);
        assert_eq!(out[2].raw, f64::from(0x0002_0001u32));
        assert_eq!(out[3].value, 1.0);
    }

    #[test]
    fn block_skips_points_outside_or_partly_outside() {
        let points = [
            point("before", 99, PointType::U16),
            point("first", 100, PointType::U16),
            point("last", 109, PointType::U16),
            point("crosses", 109, PointType::F32),
            point("after", 110, PointType::U16),
        ];
        let regs = [1u16; 10];
        let out = decode_block(&points, 100, &BlockData::Registers(&regs));
        let names: Vec<&str> = out.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["first", "last"]);
    }

    #[test]
    fn block_skips_non_finite() {
        let points = [
            point("nan", 0, PointType::F32),
            point("inf", 2, PointType::F32),
            point("ok", 4, PointType::F32),
        ];
        let mut regs = encode_registers(PointType::F32, WordOrder::Abcd, f64::NAN);
        regs.extend(encode_registers(
            PointType::F32,
            WordOrder::Abcd,
            f64::INFINITY,
        ));
        regs.extend(encode_registers(PointType::F32, WordOrder::Abcd, 2.0));
        let out = decode_block(&points, 0, &BlockData::Registers(&regs));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "ok");
        // Scaling into infinity is skipped as well.
        let mut huge = point("huge", 0, PointType::F64);
        huge.scale = f64::MAX;
        let regs = encode_registers(PointType::F64, WordOrder::Abcd, 10.0);
        assert!(decode_block(&[huge], 0, &BlockData::Registers(&regs)).is_empty());
    }

    #[test]
    fn bits_block_decodes_only_plain_bools() {
        let mut with_bit = point("with_bit", 11, PointType::Bool);
        with_bit.bit = Some(1);
        let mut inverted = point("inverted", 12, PointType::Bool);
        inverted.scale = -1.0;
        inverted.offset = 1.0;
        let points = [
            point("coil0", 10, PointType::Bool),
            with_bit,
            inverted,
            point("number", 10, PointType::U16),
            point("outside", 13, PointType::Bool),
        ];
        let bits = [true, false, true];
        let out = decode_block(&points, 10, &BlockData::Bits(&bits));
        let got: Vec<(&str, f64)> = out.iter().map(|d| (d.name.as_str(), d.value)).collect();
        assert_eq!(got, [("coil0", 1.0), ("inverted", 0.0)]);
    }

    #[test]
    fn block_at_top_of_address_space() {
        let points = [
            point("top", 65535, PointType::U16),
            point("wide", 65534, PointType::U32),
        ];
        let out = decode_block(&points, 65534, &BlockData::Registers(&[1, 2]));
        let names: Vec<&str> = out.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["top", "wide"]);
    }

    fn any_order() -> impl Strategy<Value = WordOrder> {
        prop::sample::select(WordOrder::ALL.to_vec())
    }

    /// A raw value that `ty` can hold exactly, so encode→decode must give it back.
    fn exact_raw(ty: PointType) -> BoxedStrategy<f64> {
        match ty {
            PointType::U16 => any::<u16>().prop_map(f64::from).boxed(),
            PointType::I16 => any::<i16>().prop_map(f64::from).boxed(),
            PointType::U32 => any::<u32>().prop_map(f64::from).boxed(),
            PointType::I32 => any::<i32>().prop_map(f64::from).boxed(),
            PointType::F32 => any::<f32>()
                .prop_filter("not NaN", |f| !f.is_nan())
                .prop_map(f64::from)
                .boxed(),
            // Values beyond 2^53 are not exact in f64; any f64 converted from a u64/i64 is.
            PointType::U64 => any::<u64>().prop_map(|v| v as f64).boxed(),
            PointType::I64 => any::<i64>().prop_map(|v| v as f64).boxed(),
            PointType::F64 => any::<f64>().prop_filter("not NaN", |f| !f.is_nan()).boxed(),
            PointType::Bool => prop::bool::ANY
                .prop_map(|b| if b { 1.0 } else { 0.0 })
                .boxed(),
        }
    }

    fn any_type_and_raw() -> impl Strategy<Value = (PointType, f64)> {
        prop::sample::select(PointType::ALL.to_vec()).prop_flat_map(|t| (Just(t), exact_raw(t)))
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips((ty, raw) in any_type_and_raw(), order in any_order()) {
            let regs = encode_registers(ty, order, raw);
            prop_assert_eq!(regs.len(), usize::from(ty.registers()));
            let back = decode_registers(ty, order, None, &regs);
            // Bit-level comparison also distinguishes -0.0 from 0.0 for floats.
            prop_assert_eq!(back.map(f64::to_bits), Some(raw.to_bits()));
        }

        #[test]
        fn decode_then_encode_round_trips(
            ty in prop::sample::select(vec![PointType::U16, PointType::I16, PointType::U32,
                                            PointType::I32, PointType::F32, PointType::F64]),
            order in any_order(),
            regs in prop::collection::vec(any::<u16>(), 4),
        ) {
            let regs = &regs[..usize::from(ty.registers())];
            let raw = decode_registers(ty, order, None, regs);
            prop_assume!(raw.is_some_and(|r| !r.is_nan()));
            let raw = raw.unwrap_or_default();
            prop_assert_eq!(encode_registers(ty, order, raw), regs.to_vec());
        }

        #[test]
        fn orders_differ_only_by_permutation(v in any::<u32>()) {
            let abcd = encode_registers(PointType::U32, WordOrder::Abcd, f64::from(v));
            let cdab = encode_registers(PointType::U32, WordOrder::Cdab, f64::from(v));
            let badc = encode_registers(PointType::U32, WordOrder::Badc, f64::from(v));
            let dcba = encode_registers(PointType::U32, WordOrder::Dcba, f64::from(v));
            prop_assert_eq!(&cdab, &vec![abcd[1], abcd[0]]);
            prop_assert_eq!(&badc, &vec![abcd[0].swap_bytes(), abcd[1].swap_bytes()]);
            prop_assert_eq!(&dcba, &vec![abcd[1].swap_bytes(), abcd[0].swap_bytes()]);
            // DCBA is the value's little-endian bytes.
            let le: Vec<u8> = dcba.iter().flat_map(|r| r.to_be_bytes()).collect();
            prop_assert_eq!(le, v.to_le_bytes().to_vec());
        }
    }
}
