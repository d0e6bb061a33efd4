"""The script a user would write to stream OPC UA changes to Azure Event Hubs in Python, for a
fair comparison with tagbridge (`cargo run --release --example e2e_bench -- python 10000`).

It is asyncua's subscription example (a handler whose datachange_notification receives each
change) joined to Microsoft's "Send events to Event Hubs with Python" quick start (the async
EventHubProducerClient, create_batch / add / send_batch), one event per reading, with the JSON
tagbridge sends: {"sensor_id", "timestamp" (the source timestamp, RFC 3339 with milliseconds),
"value"}. The only changes for the benchmark: the emulator's address and CA certificate
(custom_endpoint_address, connection_verify), items created 1 000 per call (the simulator's
per-call limit), and a queue size of 2 per item as tagbridge uses.

usage: opcua_to_eventhub.py ENDPOINT NODES_FILE CONNECTION_STRING CA_PEM
  NODES_FILE: one "sensor_id node_id" per line
Prints "READY" once every item is subscribed.
"""

import asyncio
import json
import re
import sys

from asyncua import Client, ua
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubProducerClient


class SubHandler:
    def __init__(self, queue, names):
        self.queue = queue
        self.names = names

    def datachange_notification(self, node, val, data):
        ts = data.monitored_item.Value.SourceTimestamp
        self.queue.put_nowait({
            "sensor_id": self.names[node.nodeid.to_string()],
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "value": val,
        })


async def send_forever(producer, queue):
    while True:
        reading = await queue.get()
        batch = await producer.create_batch()
        batch.add(EventData(json.dumps(reading)))
        while not queue.empty():
            event = EventData(json.dumps(queue.get_nowait()))
            try:
                batch.add(event)
            except ValueError:  # the batch is full: send it, start another
                await producer.send_batch(batch)
                batch = await producer.create_batch()
                batch.add(event)
        await producer.send_batch(batch)


async def main():
    endpoint, nodes_file, conn_str, ca = sys.argv[1:5]
    pairs = [line.split(" ", 1) for line in open(nodes_file).read().splitlines() if line]
    port = re.search(r"sb://[^:/]+:(\d+)", conn_str).group(1)
    producer = EventHubProducerClient.from_connection_string(
        conn_str,
        custom_endpoint_address=f"sb://localhost:{port}",
        connection_verify=ca,
    )
    queue = asyncio.Queue()
    async with producer, Client(url=endpoint) as client:
        names = {}
        nodes = []
        for sensor_id, node_id in pairs:
            node = client.get_node(node_id)
            names[node.nodeid.to_string()] = sensor_id
            nodes.append(node)
        subscription = await client.create_subscription(1000, SubHandler(queue, names))
        for i in range(0, len(nodes), 1000):
            await subscription.subscribe_data_change(nodes[i:i + 1000], queuesize=2)
        print("READY", flush=True)
        await send_forever(producer, queue)


if __name__ == "__main__":
    asyncio.run(main())
