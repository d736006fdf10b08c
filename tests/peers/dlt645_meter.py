"""A transparent DTU in front of a DL/T 645-2007 meter served by the `dlt645` package (PyPI,
Chen Dongyu's implementation: `MeterServerService`, its TCP meter server).

The DTU side is this script: it dials the server's transparent port, registers with its
number as ASCII text, heartbeats `www.usr.cn` every second, and passes bytes both ways
between the server and the meter, untouched. The meter answers reads of its address (to the
broadcast address AA..AA), reads of the identifiers it knows (with the four FE of the
preamble), and an error answer (D1, "no such data") for those it does not: the server's
requests are answered by somebody else's reading of the standard, not by our simulator.

Usage: dlt645_meter.py HOST PORT NUMBER ADDRESS DI=VALUE ...
e.g. `dlt645_meter.py 127.0.0.1 4001 860000000001001 000000000001 00010000=123456.78
02010100=220.1`: the meter printed 000000000001 with those two values.

The package's `set_address("...")` puts the digits on the wire in printed order, where the
standard sends the lowest byte first; the address is therefore given to it as the wire bytes
(`A0` first), so that the meter is the one printed ADDRESS. It prints `registered` once it
sent the registration. A line `set DI VALUE` on stdin changes a value (printing `set`).
"""

import asyncio
import socket
import sys

from dlt645 import MeterServerService


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_value(meter, di, value):
    di = int(di, 16)
    ok = meter.set_00(di, value) if di >> 24 == 0 else meter.set_02(di, value)
    if not ok:
        raise SystemExit(f"the meter does not take {di:08X}={value}")


async def pipe(reader, writer):
    while True:
        data = await reader.read(1024)
        if not data:
            return
        writer.write(data)
        await writer.drain()


async def heartbeat(writer):
    while True:
        await asyncio.sleep(1)
        writer.write(b"www.usr.cn")
        await writer.drain()


async def steer(meter):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        words = line.split()
        if len(words) == 3 and words[0] == "set":
            set_value(meter, words[1], float(words[2]))
            print("set", flush=True)


async def main():
    host, port, number, address = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    meter_port = free_port()
    meter = MeterServerService.new_tcp_server("127.0.0.1", meter_port, 30.0)
    meter.set_address(bytes(reversed(bytes.fromhex(address))))
    for preset in sys.argv[5:]:
        di, value = preset.split("=")
        set_value(meter, di, float(value))
    meter.server.start()
    for _ in range(100):
        try:
            meter_r, meter_w = await asyncio.open_connection("127.0.0.1", meter_port)
            break
        except OSError:
            await asyncio.sleep(0.05)
    else:
        raise SystemExit("the dlt645 meter server did not start")

    dtu_r, dtu_w = await asyncio.open_connection(host, port)
    dtu_w.write(number.encode())
    await dtu_w.drain()
    print("registered", flush=True)
    asyncio.create_task(heartbeat(dtu_w))
    asyncio.create_task(steer(meter))
    await asyncio.gather(pipe(dtu_r, meter_w), pipe(meter_r, dtu_w))


asyncio.run(main())
