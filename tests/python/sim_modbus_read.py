"""Reads the simulated PLC's Modbus server with pymodbus and checks every value against what the
Rust test configured, decoding with pymodbus's own helpers (an independent implementation of
the register layout).

Usage: sim_modbus_read.py HOST PORT EXPECTATIONS_JSON_FILE

Each expectation: {"unit", "table", "address", "type", "order", "length", "bit", "expected"}
(`expected: null` accepts any value that reads without an exception)
or {"unit", "table", "address", "count", "exception"} for reads that must fail.
Prints every mismatch and exits 1 if there was one.
"""

import asyncio
import json
import math
import sys

from pymodbus.client import AsyncModbusTcpClient

DT = AsyncModbusTcpClient.DATATYPE
TYPES = {
    "int16": (DT.INT16, 1),
    "uint16": (DT.UINT16, 1),
    "int32": (DT.INT32, 2),
    "uint32": (DT.UINT32, 2),
    "int64": (DT.INT64, 4),
    "uint64": (DT.UINT64, 4),
    "float32": (DT.FLOAT32, 2),
    "float64": (DT.FLOAT64, 4),
}


async def read(client, table, unit, address, count):
    if table == "holding_register":
        return await client.read_holding_registers(address, count=count, device_id=unit)
    if table == "input_register":
        return await client.read_input_registers(address, count=count, device_id=unit)
    if table == "coil":
        return await client.read_coils(address, count=count, device_id=unit)
    if table == "discrete_input":
        return await client.read_discrete_inputs(address, count=count, device_id=unit)
    raise ValueError(table)


def swap_bytes(regs):
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


def decode(client, regs, kind, order):
    """The documented layout, via pymodbus: CDAB/DCBA reverse the words (pymodbus's
    word_order="little"), BADC/DCBA swap the bytes inside each register."""
    if order in ("BADC", "DCBA"):
        regs = swap_bytes(regs)
    word_order = "little" if order in ("CDAB", "DCBA") else "big"
    return client.convert_from_registers(regs, TYPES[kind][0], word_order=word_order)


async def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(path) as f:
        expectations = json.load(f)
    client = AsyncModbusTcpClient(host, port=port, timeout=5, retries=0)
    if not await client.connect():
        print(f"cannot connect to {host}:{port}")
        sys.exit(1)
    failures = []
    for e in expectations:
        where = f"unit {e['unit']} {e['table']} {e['address']} {e.get('type', '')} {e.get('order', '')}"
        if "exception" in e:
            rr = await read(client, e["table"], e["unit"], e["address"], e["count"])
            if not rr.isError() or rr.exception_code != e["exception"]:
                failures.append(f"{where}: expected exception {e['exception']}, got {rr}")
            continue
        kind = e["type"]
        if e["table"] in ("coil", "discrete_input"):
            rr = await read(client, e["table"], e["unit"], e["address"], 1)
            got = None if rr.isError() else bool(rr.bits[0])
        elif kind == "string":
            rr = await read(client, e["table"], e["unit"], e["address"], e["length"])
            got = None if rr.isError() else client.convert_from_registers(
                rr.registers, DT.STRING).rstrip("\x00")
        elif kind == "bool":
            rr = await read(client, e["table"], e["unit"], e["address"], 1)
            if rr.isError():
                got = None
            else:
                # Bit n counts from the least significant bit of the register. (pymodbus's
                # DATATYPE.BITS numbers bits per byte, high byte first, so it is not used.)
                reg = rr.registers[0]
                got = bool((reg >> e["bit"]) & 1) if e.get("bit") is not None else reg != 0
        else:
            rr = await read(client, e["table"], e["unit"], e["address"], TYPES[kind][1])
            got = None if rr.isError() else decode(client, rr.registers, kind, e["order"])
        want = e["expected"]
        if got is None:
            failures.append(f"{where}: read failed: {rr}")
        elif want is None:
            pass  # any value will do
        elif isinstance(want, float):
            if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
                failures.append(f"{where}: expected {want!r}, got {got!r} (registers {rr.registers})")
        elif got != want:
            detail = getattr(rr, "registers", None)
            failures.append(f"{where}: expected {want!r}, got {got!r} (registers {detail})")
    client.close()
    for f in failures:
        print(f)
    print(f"{len(expectations) - len(failures)}/{len(expectations)} reads as configured")
    sys.exit(1 if failures else 0)


asyncio.run(main())
