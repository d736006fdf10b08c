"""A framed DTU in front of an RS-485 bus of Modbus RTU slaves served by pymodbus.

The DTU side is this script: it dials the server's framed port, registers with its 4-byte
device number, heartbeats every second, and passes each request (`04 LL <RTU ADU>`) to the
bus and the bus's answer back (`04 LL <answer>`). The bus is pymodbus's own Modbus server
speaking RTU framing, with one slave context per unit: the server's requests are answered by
somebody else's implementation of Modbus, not by our simulator.

Usage: rtu_bus.py HOST PORT NUMBER UNIT=REG:VALUE,... [UNIT=...]
e.g. `rtu_bus.py 127.0.0.1 4000 1001 1=0:230 7=0:5`: units 1 and 7, holding register 0 of
unit 1 set to 230 and of unit 7 to 5.

Lines on stdin steer the bus: `mute N` (unit N stops answering), `unmute N`. It prints
`registered` once the server acknowledged the registration.
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


async def read_stdin(muted):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        words = line.split()
        if len(words) == 2 and words[0] in ("mute", "unmute"):
            unit = int(words[1])
            if words[0] == "mute":
                muted.add(unit)
            else:
                muted.discard(unit)
            print(f"{words[0]}d {unit}", flush=True)


async def heartbeat(writer):
    while True:
        await asyncio.sleep(1)
        writer.write(b"\x02\x00")
        await writer.drain()


async def main():
    host, port, number = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    units = {}
    for arg in sys.argv[4:]:
        unit, presets = arg.split("=", 1)
        units[int(unit)] = [tuple(int(x) for x in p.split(":")) for p in presets.split(",") if p]
    bus_port = free_port()
    asyncio.create_task(
        StartAsyncTcpServer(
            context=bus_context(units), address=("127.0.0.1", bus_port), framer=FramerType.RTU
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

    muted = set()
    asyncio.create_task(read_stdin(muted))
    dtu_r, dtu_w = await asyncio.open_connection(host, port)
    dtu_w.write(struct.pack(">I", number))
    await dtu_w.drain()
    while True:
        kind = await dtu_r.readexactly(1)
        if kind == b"\x01":
            print("registered", flush=True)
            asyncio.create_task(heartbeat(dtu_w))
        elif kind == b"\x04":
            length = (await dtu_r.readexactly(1))[0]
            adu = await dtu_r.readexactly(length)
            if adu[0] in muted:
                continue
            bus_w.write(adu)
            await bus_w.drain()
            try:
                answer = await asyncio.wait_for(bus_r.read(260), 0.5)
            except asyncio.TimeoutError:
                continue
            if answer:
                dtu_w.write(bytes([4, len(answer)]) + answer)
                await dtu_w.drain()
        # 02 and 03 acknowledge heartbeats and data: nothing to do.


asyncio.run(main())
