"""Samples holding registers 0-1 (uint32, ABCD) of unit 1 for about a second and prints each
value, one per line, so the Rust test can check them against the signal's clock.

Usage: sim_modbus_clock.py HOST PORT
"""

import asyncio
import sys

from pymodbus.client import AsyncModbusTcpClient


async def main():
    client = AsyncModbusTcpClient(sys.argv[1], port=int(sys.argv[2]), timeout=5, retries=0)
    if not await client.connect():
        print("cannot connect")
        sys.exit(1)
    for _ in range(12):
        rr = await client.read_holding_registers(0, count=2, device_id=1)
        if rr.isError():
            print(f"read failed: {rr}")
            sys.exit(1)
        print(client.convert_from_registers(rr.registers, client.DATATYPE.UINT32))
        await asyncio.sleep(0.1)
    client.close()


asyncio.run(main())
