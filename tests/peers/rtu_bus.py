"""A DTU in front of an RS-485 bus of Modbus RTU slaves served by pymodbus.

The DTU side is this script. Framed (the default): it dials the server's framed port,
registers with its 4-byte device number, heartbeats `02 00` every second, and passes each
request (`04 LL <RTU ADU>`) to the bus and the bus's answer back (`04 LL <answer>`).
Transparent (`--transparent`): it registers with its number as ASCII text, heartbeats
`www.usr.cn`, and passes raw bytes both ways. The bus is pymodbus's own Modbus server speaking
RTU framing, with one slave context per unit: the server's requests are answered by somebody
else's implementation of Modbus, not by our simulator. With `--tcp` (transparent too) the
slaves behind the DTU speak Modbus TCP instead: pymodbus serves the MBAP framing (its socket
framer), unit ids for slave addresses.

Usage: rtu_bus.py [--transparent | --tcp] HOST PORT NUMBER UNIT=REG:VALUE,... [UNIT=...]
e.g. `rtu_bus.py 127.0.0.1 4000 1001 1=0:230 7=0:5`: units 1 and 7, holding register 0 of
unit 1 set to 230 and of unit 7 to 5.

Lines on stdin steer it: `mute N` (unit N stops answering), `unmute N`, and
`query UNIT FUNCTION START COUNT` (the DTU asks the bus itself and sends the answer up
unasked, as DTUs with a "serial heartbeat" or auto-query do). It prints `registered` once
the server acknowledged the registration (transparent: once it sent it).
"""

import asyncio
import socket
import struct
import sys

from pymodbus import FramerType
from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import StartAsyncTcpServer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bus_context(units):
    slaves = {}
    for unit, preset in units.items():
        block = ModbusSequentialDataBlock(0, [0] * 1000)
        ctx = ModbusSlaveContext(hr=block, ir=block, co=ModbusSequentialDataBlock(0, [0] * 1000))
        for reg, value in preset:
            # Protocol addresses: the context shifts them into its data blocks itself.
            ctx.setValues(3, reg, [value])
        slaves[unit] = ctx
    return ModbusServerContext(slaves=slaves, single=False)


def crc16(data):
    """CRC-16/MODBUS, low byte first on the wire (pymodbus rejects a request whose CRC is
    wrong, so a mistake here cannot pass unnoticed)."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes([crc & 0xFF, crc >> 8])


class Dtu:
    def __init__(self, transparent, tcp, writer, bus_r, bus_w):
        self.transparent = transparent
        self.tcp = tcp
        self.writer = writer
        self.bus_r = bus_r
        self.bus_w = bus_w
        self.muted = set()
        self.lock = asyncio.Lock()

    async def ask_bus(self, adu):
        """The bus's answer to `adu`, or None (a muted or absent slave)."""
        unit = adu[6] if self.tcp and len(adu) > 6 else adu[0]
        if unit in self.muted:
            return None
        async with self.lock:
            self.bus_w.write(adu)
            await self.bus_w.drain()
            try:
                answer = await asyncio.wait_for(self.bus_r.read(260), 0.5)
            except asyncio.TimeoutError:
                return None
        return answer or None

    async def send_up(self, answer):
        if self.transparent:
            self.writer.write(answer)
        else:
            self.writer.write(bytes([4, len(answer)]) + answer)
        await self.writer.drain()


async def read_stdin(dtu):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        words = line.split()
        if len(words) == 2 and words[0] in ("mute", "unmute"):
            unit = int(words[1])
            if words[0] == "mute":
                dtu.muted.add(unit)
            else:
                dtu.muted.discard(unit)
            print(f"{words[0]}d {unit}", flush=True)
        elif len(words) == 5 and words[0] == "query":
            unit, function, start, count = (int(w) for w in words[1:])
            request = bytes([unit, function]) + struct.pack(">HH", start, count)
            answer = await dtu.ask_bus(request + crc16(request))
            if answer:
                await dtu.send_up(answer)
            print("queried" if answer else "no answer", flush=True)


async def heartbeat(writer, beat):
    while True:
        await asyncio.sleep(1)
        writer.write(beat)
        await writer.drain()


async def main():
    args = sys.argv[1:]
    tcp = args[:1] == ["--tcp"]
    transparent = tcp or args[:1] == ["--transparent"]
    if transparent:
        args = args[1:]
    host, port, number = args[0], int(args[1]), int(args[2])
    units = {}
    for arg in args[3:]:
        unit, presets = arg.split("=", 1)
        units[int(unit)] = [tuple(int(x) for x in p.split(":")) for p in presets.split(",") if p]
    bus_port = free_port()
    asyncio.create_task(
        StartAsyncTcpServer(
            context=bus_context(units),
            address=("127.0.0.1", bus_port),
            framer=FramerType.SOCKET if tcp else FramerType.RTU,
            # On an RS-485 bus a slave that is not there stays silent.
            ignore_missing_slaves=True,
        )
    )
    for _ in range(100):
        try:
            bus_r, bus_w = await asyncio.open_connection("127.0.0.1", bus_port)
            break
        except OSError:
            await asyncio.sleep(0.05)
    else:
        raise SystemExit("the pymodbus bus did not start")

    dtu_r, dtu_w = await asyncio.open_connection(host, port)
    dtu = Dtu(transparent, tcp, dtu_w, bus_r, bus_w)
    asyncio.create_task(read_stdin(dtu))
    if transparent:
        dtu_w.write(str(number).encode())
        await dtu_w.drain()
        print("registered", flush=True)
        asyncio.create_task(heartbeat(dtu_w, b"www.usr.cn"))
        while True:
            # The server writes one request at a time: what one read brings is one request.
            adu = await dtu_r.read(260)
            if not adu:
                return
            answer = await dtu.ask_bus(adu)
            if answer:
                await dtu.send_up(answer)
    dtu_w.write(struct.pack(">I", number))
    await dtu_w.drain()
    while True:
        kind = await dtu_r.readexactly(1)
        if kind == b"\x01":
            print("registered", flush=True)
            asyncio.create_task(heartbeat(dtu_w, b"\x02\x00"))
        elif kind == b"\x04":
            length = (await dtu_r.readexactly(1))[0]
            adu = await dtu_r.readexactly(length)
            answer = await dtu.ask_bus(adu)
            if answer:
                await dtu.send_up(answer)
        # 02 and 03 acknowledge heartbeats and data: nothing to do.


asyncio.run(main())
