#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from the byte vectors
of the unit tests beside each codec, in each target's input layout (documented at the top of
fuzz/fuzz_targets/<target>.rs and in fuzz/src/lib.rs).

Run from anywhere: python3 fuzz/seeds.py. It rewrites the seed directories whole; the files
are named by the hash of their contents, as libFuzzer names what it adds.
"""

import hashlib
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"


def h(text):
    return bytes.fromhex(text.replace(" ", ""))


# --- Modbus RTU -----------------------------------------------------------------------------


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame):
    return frame + struct.pack("<H", crc16(frame))


def registers(slave, function, regs):
    return with_crc(bytes([slave, function, 2 * len(regs)]) + b"".join(struct.pack(">H", r) for r in regs))


def bits(slave, function, values):
    packed = bytearray((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v:
            packed[i // 8] |= 1 << (i % 8)
    return with_crc(bytes([slave, function, len(packed)]) + bytes(packed))


def exception(slave, function, code):
    return with_crc(bytes([slave, function | 0x80, code]))


def read_request(slave, function, start, count):
    return with_crc(struct.pack(">BBHH", slave, function, start, count))


# --- Modbus TCP -----------------------------------------------------------------------------


def mbap(transaction, unit, pdu):
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


# --- DL/T 645 -------------------------------------------------------------------------------


def dlt_frame(address, control, data, preamble=0):
    body = b"\x68" + address + b"\x68" + bytes([control, len(data)]) + bytes((b + 0x33) & 0xFF for b in data)
    return b"\xFE" * preamble + body + bytes([sum(body) & 0xFF, 0x16])


METER = h("01 00 00 00 00 00")
BROADCAST = b"\xAA" * 6

# --- $TTMS ----------------------------------------------------------------------------------


def ttms(addr, cmd, body, header=b"$TTMS"):
    frame = header + struct.pack(">HIB", 13 + len(body), addr, cmd) + body
    x = 0
    for b in frame:
        x ^= b
    return frame + bytes([x])


# --- DDP ------------------------------------------------------------------------------------

DDP_ID = b"13912345678"


def ddp(kind, data, ident=DDP_ID):
    return bytes([0x7B, kind]) + struct.pack(">H", 16 + len(data)) + ident + data + b"\x7B"


VENDOR_REGISTER = h("7B 01 00 16 31 33 39 31 32 33 34 35 36 37 38 0A 66 9A 00 0F A2 7B")

# --- Layouts of the targets -----------------------------------------------------------------

WHOLE = bytes([0xFF] * 4)  # one read
BYTEWISE = bytes(4)  # one byte per read
MIXED = bytes([2, 0, 6, 0xFF])


def req(kind, a, b, n=0):
    """fuzz_support::request: kind, a u16, b u16, n."""
    return bytes([kind]) + struct.pack(">HHB", a, b, n)


def rtu_expect(slave, function, length=None):
    if length is None:
        return bytes([1, slave, function, 0, 0])
    return bytes([1, slave, function, 1 | (2 if length >= 0x100 else 0), length & 0xFF])


def tcp_expect(transaction, unit, function):
    return bytes([2]) + struct.pack(">HBB", transaction, unit, function)


def dlt_request(di=None):
    return b"\x00" if di is None else b"\x01" + struct.pack(">I", di)


def dlt_expect(address, di=None):
    flag = b"\x00" if address is None else b"\x01"
    return b"\x03" + flag + (address or bytes(6)) + dlt_request(di)


IMEI = b"866123456789012"
OTHER_IMEI = b"866999999999999"
HB = b"www.usr.cn"


def transparent(stream, *, mode=0, hex_ids=False, length=None, pattern=0, heartbeat=HB,
                answers=(), passive=(), cuts=MIXED):
    flags = mode | (4 if hex_ids else 0) | (8 if length is not None else 0)
    if heartbeat is None:
        flags |= 0x10
        heartbeat = b""
    head = cuts + bytes([flags, length if length is not None else pattern, len(heartbeat)]) + heartbeat
    head += bytes([len(answers)]) + b"".join(answers)
    head += bytes([len(passive)]) + b"".join(passive)
    return head + stream


def transparent_simulator(stream, framing):
    return MIXED + bytes([0x20 | (framing << 6), 0, 0, 0, 0]) + stream


def seeds():
    out = {name: [] for name in
           ["framed", "transparent", "ttms", "ddp", "modbus_tcp", "dlt645", "rtu", "points", "settings"]}

    # framed.rs tests
    response = registers(1, 3, [0x1234, 0x5678])
    exc = exception(1, 3, 2)
    session = h("00 00 03 E9 02 00 03 03 AA BB CC 03 00") + bytes([4, len(response)]) + response
    session += h("02 00") + bytes([4, len(exc)]) + exc + h("02 01 FF 04 03 01 02 03 02 00")
    largest = h("00 00 00 05 03 FF") + b"\xAB" * 255 + h("04 FF") + b"\xCD" * 255
    for cuts in (WHOLE, BYTEWISE, MIXED):
        out["framed"].append(cuts + b"\x00" + session)
    out["framed"] += [
        MIXED + b"\x00" + h("00 00 03 E9 02 00 07 00"),
        WHOLE + b"\x00" + largest,
        MIXED + b"\x00" + h("00 00 03 E9 02"),
        # The simulator's side: acks and a request.
        MIXED + b"\x01" + h("01 02 04 03 AA BB CC 04 05"),
        MIXED + b"\x01" + h("01 02 04 08") + read_request(1, 3, 2000, 1),
    ]

    # transparent_tests.rs
    r1 = registers(1, 3, [0x0102, 0x0304])
    r2 = exception(1, 3, 2)
    rtu13 = rtu_expect(1, 3)
    t = out["transparent"]
    t.append(transparent(IMEI + HB + r1 + HB + b"hello ww!" + r2 + HB + r1, answers=[rtu13] * 4))
    t.append(transparent(IMEI + HB + r1 + HB + b"hello ww!" + r2 + HB + r1, answers=[rtu13], cuts=BYTEWISE))
    binary = dict(hex_ids=True, length=4, heartbeat=b"\xFE")
    r94a, r94b = registers(9, 4, [7]), registers(9, 4, [8])
    t.append(transparent(h("00 00 00 09") + r94a + r94b + b"\xFE" + r94a, answers=[rtu_expect(9, 4)] * 3, **binary))
    good = registers(1, 3, [0x2A2A])
    bad = good[:-1] + bytes([good[-1] ^ 0x55])
    t.append(transparent(IMEI + bad + good, answers=[rtu13]))
    t.append(transparent(IMEI + h("01 03 FF 00") + HB, answers=[rtu13]))
    fc41 = with_crc(h("01 41 10 20 30"))
    t.append(transparent(IMEI + fc41 + HB, answers=[rtu_expect(1, 0x41)]))
    t.append(transparent(IMEI + h("01 03 02 AA") + HB, passive=[rtu13]))
    t.append(transparent(IMEI + r1 + HB + r1 + registers(2, 3, [1]) + b"zz", passive=[rtu13]))
    t.append(transparent(h("00 00 00 09") + h("02 02 02") + exception(2, 2, 1),
                         hex_ids=True, length=4, heartbeat=b"\x02", answers=[rtu_expect(2, 2, 6)]))
    t.append(transparent(h("00 00 00 09") + r1 + b"\x01\x01" + r1 + b"\x01",
                         hex_ids=True, length=4, heartbeat=b"\x01", answers=[rtu13, rtu13]))
    hb4 = h("01 03 02 AA")
    t.append(transparent(h("00 00 00 09") + hb4 + registers(1, 3, [7]) + hb4,
                         hex_ids=True, length=4, heartbeat=hb4, answers=[rtu13]))
    t.append(transparent(b"12345abc" + b"z" * 40, pattern=1, heartbeat=None))
    t.append(transparent(h("A5 01 02 0B") + b"data", pattern=2, hex_ids=True, heartbeat=None))
    t.append(transparent(h("41 42 C3 28"), length=4, heartbeat=None))
    # Prefix and both modes.
    t.append(transparent(IMEI + HB + IMEI + r1 + HB + HB + IMEI + r2 + HB + IMEI + b"hello" + IMEI + HB + IMEI + r1,
                         mode=1, answers=[rtu13] * 3))
    t.append(transparent(IMEI + HB + IMEI + r1 + IMEI + HB + IMEI + r1, mode=2, answers=[rtu13] * 2))
    t.append(transparent(IMEI + HB + OTHER_IMEI + r1 + IMEI + r1 + OTHER_IMEI + HB, mode=1, answers=[rtu13]))
    ident, other = h("00 00 03 E9"), h("00 00 04 00")
    r94 = registers(9, 4, [1])
    t.append(transparent(ident + b"\xFE" + ident + r94 + b"\xFE" + other + r94 + ident + r94,
                         mode=1, answers=[rtu_expect(9, 4)] * 3, **binary))
    # Modbus TCP and DL/T 645 answers through a transparent DTU.
    tcp_answer = mbap(1, 17, h("03 06 02 2B 00 00 00 64"))
    t.append(transparent(IMEI + HB + tcp_answer + HB, answers=[tcp_expect(1, 17, 3)]))
    energy = h("FE FE FE FE 68 01 00 00 00 00 00 68 91 08 33 33 34 33 AB 89 67 45 17 16")
    address_answer = h("FE FE FE FE 68 01 00 00 00 00 00 68 93 06 34 33 33 33 33 33 9D 16")
    t.append(transparent(IMEI + address_answer + HB + energy,
                         answers=[dlt_expect(None), dlt_expect(METER, 0x00010000)]))
    # The simulator's side.
    t.append(transparent_simulator(b"AA" + read_request(1, 3, 0, 2) + b"x", 0))
    t.append(transparent_simulator(b"\x01" + mbap(1, 17, h("03 00 6B 00 03")), 1))
    t.append(transparent_simulator(b"\xAA\x55" + h("FE FE FE FE 68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16"), 2))

    # ttms.rs
    frames = ttms(0x11223344, 0x01, b"") + ttms(0x11223344, 0xAA, b"hello") + ttms(1, 0xAA, bytes(300))
    bad_xor = bytearray(ttms(5, 0xAA, b"x"))
    bad_xor[-1] ^= 1
    out["ttms"] += [
        MIXED + b"\x00" + frames,
        BYTEWISE + b"\x00" + frames[:40],
        WHOLE + b"\x00" + bytes(bad_xor) + ttms(5, 0x01, b""),
        WHOLE + b"\x00" + b"$TTMS\x00\x05",
        MIXED + b"\x00" + b"$TTMS\x20\x01",
        MIXED + b"\x01" + ttms(7, 0xAA, b"fwd", header=b"$TTMX") + ttms(7, 0x01, b"\x00\x00\x00\x01"),
    ]

    # ddp.rs
    user = ddp(0x09, registers(1, 3, [1, 2]))
    session = VENDOR_REGISTER + VENDOR_REGISTER + user + ddp(0x05, b"") + ddp(0x02, b"")
    out["ddp"] += [
        MIXED + b"\x00" + session,
        BYTEWISE + b"\x00" + VENDOR_REGISTER + user,
        WHOLE + b"\x00" + h("7B 77 00 10") + VENDOR_REGISTER + h("7B 09 00 09") + user,
        WHOLE + b"\x00" + VENDOR_REGISTER + h("7B 09 00 13 31 33 39 31 32 33 34 35 36 37 38 61 62 63 7B"),
        WHOLE + b"\x00" + VENDOR_REGISTER + h("7B 09 00 10 31 33 39 31 32 33 34 35 36 37 38 7B 61 62 63"),
        MIXED + b"\x00" + VENDOR_REGISTER + ddp(0x09, b"\x01" * 1024) + ddp(0x09, b"\x01", b"13900000000"),
        MIXED + b"\x00" + ddp(0x09, b"abcde") + ddp(0x01, b"", b"\x00" * 11) + VENDOR_REGISTER,
        MIXED + b"\x01" + h("7B 81 00 10 31 33 39 31 32 33 34 35 36 37 38 7B")
        + h("7B 89 00 18 31 33 39 31 32 33 34 35 36 37 38 01 03 07 D0 00 28 45 59 7B"),
    ]

    # rtu_tests.rs: responses to their requests (op 0), requests (op 1), lengths (op 2),
    # what a transparent link waits for (op 3).
    rtu = out["rtu"]
    for request, adu in [
        (req(0, 0x13, 0x25), h("11 01 05 CD 6B B2 0E 1B 45 E6")),
        (req(2, 0x6B, 3), h("11 03 06 AE 41 56 52 43 40 49 AD")),
        (req(3, 8, 1), h("11 04 02 00 0A F8 F4")),
        (req(4, 0xAC, 1), h("11 05 00 AC FF 00 4E 8B")),
        (req(6, 0x13, 10), h("11 0F 00 13 00 0A 26 99")),
        (req(7, 1, 10, 2), h("11 10 00 01 00 02 12 98")),
        (req(2, 0x6B, 3), exception(0x11, 3, 2)),
        (req(2, 0, 2), with_crc(h("11 03 04 00 01 00 02 00 03"))),
    ]:
        rtu.append(b"\x00\x11" + request + adu)
    rtu.append(b"\x80\x11" + req(2, 0x6B, 3) + h("11 03 06 AE 41 56 52 43 40 00 00"))
    for adu in [read_request(1, 3, 0, 10), with_crc(h("01 2B 0E 01 00 00")), with_crc(h("01 05 00 01 12 34")),
                with_crc(h("01 10 00 01 00 02 04 00 0A 01 02")), with_crc(h("01 0F 00 01 00 09 02 FF 01")),
                with_crc(h("01 10 00 01 00 02 02 00 0A"))]:
        rtu.append(b"\x01" + adu)
    rtu.append(b"\x81" + h("01 06 00 01 00 03 00 00"))
    for stream in [b"AA" + read_request(1, 3, 0, 2) + b"x", with_crc(h("01 08 00 00 12 34")),
                   h("01 41") + bytes((i % 7) + 0x10 for i in range(254)), h("01 18 00 04 01 02 03 04")]:
        rtu.append(b"\x02" + stream)
    for expect, stream in [
        (bytes([1, 3, 1]) + struct.pack(">H", 9), registers(1, 3, [1, 2]) + HB),
        (bytes([1, 3, 0, 0, 0]), h("01 03 FF 00")),
        (bytes([2, 2, 3]) + struct.pack(">H", 6), h("02 02 02") + exception(2, 2, 1)),
        (bytes([1, 0x41, 2, 0, 0]), fc41),
    ]:
        rtu.append(b"\x03" + expect + stream)

    # tcp_tests.rs
    tcp = out["modbus_tcp"]
    read_answer = mbap(1, 17, h("03 06 02 2B 00 00 00 64"))
    tcp.append(b"\x00" + struct.pack(">HB", 1, 17) + req(2, 0x6B, 3) + read_answer)
    tcp.append(b"\x00" + struct.pack(">HB", 0x1234, 1) + req(5, 1, 3) + mbap(0x1234, 1, h("06 00 01 00 03")))
    tcp.append(b"\x00" + struct.pack(">HB", 1, 17) + req(2, 0x6B, 3) + mbap(1, 17, h("83 02")))
    tcp.append(b"\x00" + struct.pack(">HB", 1, 17) + req(2, 0x6B, 3) + h("00 01 00 00 00 07 11 03 04 02 2B 00 00"))
    tcp.append(b"\x01" + b"\x01\x02" + mbap(1, 17, h("03 00 6B 00 03")) + mbap(2, 1, h("10 00 01 00 02 04 00 0A 01 02")))
    tcp.append(b"\x02" + mbap(7, 1, h("06 00 01 00 03")))
    tcp.append(b"\x03" + struct.pack(">HBB", 1, 17, 3) + b"\x01" + read_answer + HB)
    tcp.append(b"\x03" + struct.pack(">HBB", 1, 17, 3) + b"\x01" + h("00 01 00 00 00 06 11 03 06 02 2B 00"))

    # dlt645/tests.rs
    d = out["dlt645"]
    answers = {
        0x00010000: "FE FE FE FE 68 01 00 00 00 00 00 68 91 08 33 33 34 33 AB 89 67 45 17 16",
        0x02010100: "FE FE FE FE 68 01 00 00 00 00 00 68 91 06 33 34 34 35 34 55 C1 16",
        0x02020100: "68 01 00 00 00 00 00 68 91 07 33 34 35 35 67 45 B3 99 16",
        0x02030000: "68 01 00 00 00 00 00 68 91 07 33 33 36 35 89 67 C5 EF 16",
        0x02060000: "68 01 00 00 00 00 00 68 91 06 33 33 39 35 BA 3C 32 16",
        0x02800002: "68 01 00 00 00 00 00 68 91 06 35 33 B3 35 CB 7C FF 16",
        0x04000101: "68 01 00 00 00 00 00 68 91 08 34 34 33 37 34 35 44 58 41 16",
        0x04000102: "68 01 00 00 00 00 00 68 91 07 35 34 33 37 63 78 46 5D 16",
    }
    for di, frame in answers.items():
        d.append(b"\x01" + dlt_request(di) + b"\x01" + METER + h(frame))
    d.append(b"\x01" + dlt_request() + b"\x00" + bytes(6) + address_answer)
    d.append(b"\x01" + dlt_request(0x00010000) + b"\x01" + METER + h("68 01 00 00 00 00 00 68 D1 01 35 D8 16"))
    d.append(b"\x81" + dlt_request(0x00010000) + b"\x01" + METER + dlt_frame(METER, 0xB1, b"\x00\x00\x01\x00\x12\x34\x56\x78"))
    d.append(b"\x00" + h("68 AA AA AA AA AA AA 68 13 00 DF 16"))
    d.append(b"\x00" + energy)
    d.append(b"\x02" + b"\x55\xFE\x68" + energy + h("FE FE FE FE FE 68"))
    d.append(b"\x02" + h("68 01 00 00 00 00 00 69") + h("68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16"))
    d.append(b"\x03" + b"\x01" + METER + dlt_request(0x00010000) + b"\x01" + energy)
    d.append(b"\x03" + b"\x00" + bytes(6) + dlt_request() + b"\x00" + address_answer)
    for text, value in [("XXXXXX.XX", h("78 56 34 12")), ("-XX.XXXX", h("56 34 92")), ("YYMMDDWW", h("01 02 11 25")),
                        ("hhmmss", h("30 45 13")), ("XXXXXXXXXXXXXXXX", h("99 99 99 99 99 99 99 99")),
                        ("X.XXX", h("87 89")), ("000000000001", b""), ("00010000", b"")]:
        d.append(b"\x04" + text.encode() + b"\x00" + value)

    # points.rs tests: every type and order over the same registers.
    p = out["points"]
    regs = struct.pack(">8H", 0x4148, 0xF5C3, 0x0102, 0x0304, 0xFFFF, 0x8000, 0x0001, 0x00FF)
    for ty in range(9):
        for order in range(4):
            if ty in (0, 1, 8) and order:
                continue
            point = struct.pack(">HBBBBB", 100, ty, order, 0xFF, 1, 0)
            p.append(bytes([1]) + point + struct.pack(">H", 100) + b"\x00" + regs)
    several = b"".join([
        struct.pack(">HBBBBB", 2000, 1, 0, 0xFF, 1, 0),  # i16, scale 0.1
        struct.pack(">HBBBBB", 2010, 4, 0, 0xFF, 0, 0),  # f32
        struct.pack(">HBBBBB", 2020, 2, 1, 0xFF, 0, 0),  # u32 CDAB
        struct.pack(">HBBBBB", 2031, 8, 0, 0, 0, 0),  # bool bit 0
        struct.pack(">HBBBBB", 2031, 8, 0, 15, 0, 0),  # bool bit 15
    ])
    p.append(bytes([5]) + several + struct.pack(">H", 2000) + b"\x00" + bytes(range(64)))
    p.append(bytes([2]) + struct.pack(">HBBBBB", 5, 8, 0, 0xFF, 0, 0) + struct.pack(">HBBBBB", 9, 8, 0, 0xFF, 0, 0)
             + struct.pack(">H", 0) + b"\x01" + h("A5 01"))
    p.append(bytes([1]) + struct.pack(">HBBBBB", 0, 7, 3, 0xFF, 7, 9) + struct.pack(">H", 0) + b"\x00" + h("7F F0 00 00 00 00 00 00"))

    # settings: the shipped files, and each alone.
    settings = ROOT.parent / "settings"
    server = (settings / "server.toml").read_bytes()
    data = (settings / "data.toml").read_bytes()
    out["settings"] += [server + b"\x00" + data, data, b"\x00" + data]
    out["settings"].append(b"[web]\nbind = \"127.0.0.1:9\"\n[[listeners]]\nname = \"relay\"\nbind = \"0.0.0.0:1\"\n"
                           b"protocol = \"ttms\"\n\x00")
    out["settings"].append(b"[[listeners]]\nname = \"t\"\nbind = \"0.0.0.0:2\"\nprotocol = \"transparent\"\nprofile = \"m\"\n\x00"
                           b"[profiles.m]\nmeter = \"dlt645\"\naddress = \"auto\"\n[profiles.m.registration]\nlength = 4\nformat = \"hex\"\n"
                           b"mode = \"both\"\n[profiles.m.heartbeat]\nhex = \"FE\"\n[[profiles.m.polls]]\nname = \"energy\"\n"
                           b"di = \"00010000\"\nevery = \"1m\"\n")
    return out


def main():
    for target, inputs in seeds().items():
        directory = CORPUS / target
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for data in inputs:
            (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
        print(f"{target}: {len(inputs)} seeds")


if __name__ == "__main__":
    main()
