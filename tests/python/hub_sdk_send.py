"""Sends to the tagbridge Event Hub emulator with Microsoft's azure-eventhub SDK, unchanged but
for pointing it at the emulator (custom_endpoint_address) and trusting its CA (connection_verify).

usage: hub_sdk_send.py MODE CONNECTION_STRING PORT CA_PEM [TRANSPORT]
  MODE send       send_event x3 (with partition keys and properties) and a create_batch() of 10;
                  prints one JSON line per event sent, then "done"
  MODE wrong-key  expects the SDK to raise its authentication error; prints the class name
  MODE props      prints the hub's and partition 0's properties (exercises $management)
  TRANSPORT       amqp (default) or websocket
"""

import json
import os
import sys

from azure.eventhub import EventData, EventHubProducerClient, TransportType
from azure.eventhub.exceptions import AuthenticationError, EventHubError


def client(conn_str, port, ca, transport):
    kwargs = dict(
        custom_endpoint_address=f"sb://localhost:{port}",
        connection_verify=ca,
        retry_total=0,
        # HUB_TRACE=1 logs every AMQP frame (with logging at DEBUG), for debugging.
        logging_enable=os.environ.get("HUB_TRACE") == "1",
    )
    if transport == "websocket":
        kwargs["transport_type"] = TransportType.AmqpOverWebsocket
    return EventHubProducerClient.from_connection_string(conn_str, **kwargs)


def send(producer):
    sent = []
    for i in range(3):
        e = EventData(f"single-{i}")
        e.properties = {"kind": "single", "n": i}
        e.content_type = "text/plain"
        producer.send_event(e, partition_key=f"pk-{i}")
        sent.append({"body": f"single-{i}", "partition_key": f"pk-{i}"})
    batch = producer.create_batch(partition_key="batch-key")
    for i in range(10):
        e = EventData(json.dumps({"sensor_id": f"s{i}", "value": i * 1.5}))
        e.properties = {"kind": "batched", "n": i}
        e.message_id = f"batch-{i}"
        batch.add(e)
        sent.append({"body": json.dumps({"sensor_id": f"s{i}", "value": i * 1.5}),
                     "partition_key": "batch-key"})
    producer.send_batch(batch)
    for s in sent:
        print(json.dumps(s))
    print("done")


def main():
    mode, conn_str, port, ca = sys.argv[1:5]
    transport = sys.argv[5] if len(sys.argv) > 5 else "amqp"
    producer = client(conn_str, port, ca, transport)
    try:
        if mode == "send":
            with producer:
                send(producer)
        elif mode == "props":
            with producer:
                props = producer.get_eventhub_properties()
                props["partition_0"] = producer.get_partition_properties("0")
                print(json.dumps(props, default=str))
        elif mode == "wrong-key":
            try:
                with producer:
                    producer.send_event(EventData("must not arrive"))
            except AuthenticationError as e:
                print(f"AuthenticationError: {e}")
                return 0
            except EventHubError as e:
                print(f"wrong error class {type(e).__name__}: {e}")
                return 1
            print("sent without an error")
            return 1
        else:
            print(f"unknown mode {mode}")
            return 2
    finally:
        producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
