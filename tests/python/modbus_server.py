"""A Modbus TCP server built with pymodbus, holding values laid out by pymodbus's own encoder,
so the gateway's decoder is checked against an independent implementation.

Usage: modbus_server.py POINTS_JSON_FILE

Each point: {"unit", "table", "address", "type", "order", "value"} plus "length" for strings and
"bit" for a bool packed in a register. Listens on 127.0.0.1 on a free port, prints
"PORT <n>" on one line, then serves until killed or stdin closes.
"""

import asyncio
import json
import sys

from pymodbus.client import ModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

DT = ModbusTcpClient.DATATYPE
TYPES = {
    "int16": DT.INT16,
    "uint16": DT.UINT16,
    "int32": DT.INT32,
    "uint32": DT.UINT32,
    "int64": DT.INT64,
    "uint64": DT.UINT64,
    "float32": DT.FLOAT32,
    "float64": DT.FLOAT64,
}
TABLES = ["coil", "discrete_input", "holding_register", "input_register"]


def swap_bytes(regs):
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


def encode(p):
    """Registers for one point: pymodbus's encoder, then the documented order rules
    (CDAB/DCBA reverse the words = pymodbus word_order="little", BADC/DCBA swap bytes)."""
    kind = p["type"]
    if kind == "string":
        text = p["value"].encode("ascii")
        text = text + b"\0" * (2 * p["length"] - len(text))
        return [(text[i] << 8) | text[i + 1] for i in range(0, len(text), 2)]
    order = p.get("order", "ABCD")
    word_order = "little" if order in ("CDAB", "DCBA") else "big"
    regs = ModbusTcpClient.convert_to_registers(p["value"], TYPES[kind], word_order=word_order)
    if order in ("BADC", "DCBA"):
        regs = swap_bytes(regs)
    return regs


def device(unit, points):
    words = {t: {} for t in TABLES}
    for p in points:
        table = p["table"]
        if table in ("coil", "discrete_input"):
            words[table][p["address"]] = bool(p["value"])
        elif p["type"] == "bool":
            old = words[table].get(p["address"], 0)
            words[table][p["address"]] = old | (int(bool(p["value"])) << p["bit"])
        else:
            for i, r in enumerate(encode(p)):
                words[table][p["address"] + i] = r
    blocks = []
    for table in TABLES:
        cells = words[table]
        bits = table in ("coil", "discrete_input")
        if not cells:
            blocks.append([SimData(0, values=False if bits else 0, datatype=DataType.BITS if bits else DataType.REGISTERS)])
            continue
        lo, hi = min(cells), max(cells)
        if bits:
            values = [bool(cells.get(a, False)) for a in range(lo, hi + 1)]
            blocks.append([SimData(lo, values=values, datatype=DataType.BITS)])
        else:
            values = [cells.get(a, 0) for a in range(lo, hi + 1)]
            blocks.append([SimData(lo, values=values, datatype=DataType.REGISTERS)])
    return SimDevice(id=unit, simdata=tuple(blocks))


async def main():
    with open(sys.argv[1]) as f:
        points = json.load(f)
    units = sorted({p["unit"] for p in points})
    devices = [device(u, [p for p in points if p["unit"] == u]) for u in units]
    server = ModbusTcpServer(devices, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    # Serve until stdin closes (the test process ended) or we are killed.
    await loop.run_in_executor(None, sys.stdin.read)
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
