"""An independent OPC UA event source (asyncua's event generator) for the events tests.

Usage: opcua_events_server.py
Serves security None on 127.0.0.1 (a free port). Registers namespace
`urn:tagbridge:test:events` and a custom event type `BatchEventType` (a BaseEventType subtype)
with the fields `BatchId` (String) and `Quantity` (Double). Prints `NS <idx>`,
`TYPE <node id of the type>` and `READY <endpoint>`, then, every 100 ms until stdin closes,
emits event n = 1, 2, 3, … from the Server object: Message `Batch n`, Severity 100 + n % 900,
SourceName `Dosing`, BatchId `B-n`, Quantity n * 1.5. Every tenth event is a plain
BaseEventType (Message `Tick n`), which a subscription to BatchEventType must not receive.
"""

import asyncio
import socket
import sys

from asyncua import Server, ua

NS_URI = "urn:tagbridge:test:events"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main():
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/"
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(NS_URI)
    batch_type = await server.create_custom_event_type(
        idx,
        "BatchEventType",
        ua.ObjectIds.BaseEventType,
        [("BatchId", ua.VariantType.String), ("Quantity", ua.VariantType.Double)],
    )
    batches = await server.get_event_generator(batch_type, ua.ObjectIds.Server)
    ticks = await server.get_event_generator(ua.ObjectIds.BaseEventType, ua.ObjectIds.Server)
    async with server:
        print(f"NS {idx}", flush=True)
        print(f"TYPE {batch_type.nodeid.to_string()}", flush=True)
        print(f"READY {endpoint}", flush=True)
        stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        n = 0
        while not stdin_closed.done():
            n += 1
            if n % 10 == 0:
                ticks.event.Message = ua.LocalizedText(f"Tick {n}")
                ticks.event.Severity = 1
                await ticks.trigger()
            else:
                batches.event.Message = ua.LocalizedText(f"Batch {n}")
                batches.event.Severity = 100 + n % 900
                batches.event.SourceName = "Dosing"
                batches.event.BatchId = f"B-{n}"
                batches.event.Quantity = n * 1.5
                await batches.trigger()
            await asyncio.sleep(0.1)


if __name__ == "__main__":
    asyncio.run(main())
