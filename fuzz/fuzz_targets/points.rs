//! The point decoder (protocol/points.rs): the values of every type, word order, bit and
//! scale a profile may give its points, from the registers or bits of a polled block, as
//! the connection decodes an answer.
//!
//! Input:
//! ```text
//! n                  points (n % 9)
//! point * n          address u16, type (% 9), order (% 4), bit (0xFF: none), scale, offset
//!                    (indexes into SCALES)
//! start u16          the block's first address
//! kind               bit 0: a block of bits (functions 1/2), else of registers (3/4)
//! data ...           registers as u16 big-endian, or bits, 8 to a byte, LSB first
//! ```
#![no_main]

use dtu_supervisor::protocol::points::{
    decode_block, decode_registers, encode_registers, BlockData, Point, PointType, WordOrder,
};
use fuzz_support::Input;
use libfuzzer_sys::fuzz_target;

/// Scales and offsets of real profiles, and the extremes of f64.
const SCALES: &[f64] = &[
    1.0,
    0.1,
    0.01,
    0.001,
    10.0,
    -1.0,
    0.0,
    1e300,
    -1e300,
    f64::MAX,
    f64::MIN_POSITIVE,
    1e-300,
    0.5,
    100.0,
    -0.001,
    f64::EPSILON,
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let points: Vec<Point> = (0..input.u8() % 9)
        .map(|i| Point {
            name: format!("p{i}"),
            address: input.u16(),
            ty: PointType::ALL[usize::from(input.u8()) % PointType::ALL.len()],
            order: WordOrder::ALL[usize::from(input.u8()) % WordOrder::ALL.len()],
            bit: match input.u8() {
                0xFF => None,
                b => Some(b),
            },
            scale: SCALES[usize::from(input.u8()) % SCALES.len()],
            offset: SCALES[usize::from(input.u8()) % SCALES.len()],
            unit: String::new(),
        })
        .collect();
    let start = input.u16();
    let bits_block = input.u8() & 1 != 0;
    let bytes = input.rest();

    let decoded = if bits_block {
        let bits: Vec<bool> = bytes
            .iter()
            .flat_map(|b| (0..8).map(move |i| b & (1 << i) != 0))
            .collect();
        decode_block(&points, start, &BlockData::Bits(&bits))
    } else {
        let regs: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .collect();
        for point in &points {
            round_trip(point, &regs);
        }
        decode_block(&points, start, &BlockData::Registers(&regs))
    };
    // Only the block's points come out, once at most, with values JSON can carry.
    assert!(decoded.len() <= points.len());
    for d in &decoded {
        assert!(d.raw.is_finite() && d.value.is_finite(), "{d:?}");
        let point = points.iter().find(|p| p.name == d.name).expect("a point");
        assert!(point.address >= start);
    }
});

/// A value decoded from registers encodes back to them, where f64 holds it exactly.
fn round_trip(point: &Point, regs: &[u16]) {
    let n = usize::from(point.ty.registers());
    let Some(raw) = decode_registers(point.ty, point.order, point.bit, regs) else {
        return;
    };
    let exact = match point.ty {
        PointType::U16 | PointType::I16 | PointType::U32 | PointType::I32 => true,
        PointType::F32 | PointType::F64 => !raw.is_nan(),
        PointType::U64 | PointType::I64 => raw.abs() < 2f64.powi(53),
        PointType::Bool => false,
    };
    if exact {
        assert_eq!(
            encode_registers(point.ty, point.order, raw),
            regs[..n],
            "{point:?}"
        );
    }
}
