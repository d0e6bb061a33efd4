"""Receives from the tagbridge Event Hub emulator with Microsoft's azure-eventhub SDK
(EventHubConsumerClient, consumer group $Default), unchanged but for pointing it at the emulator
(custom_endpoint_address) and trusting its CA (connection_verify).

usage: hub_sdk_receive.py CONNECTION_STRING PORT CA_PEM WANTED TIMEOUT_S [STARTING_POSITION]
  Reads every partition from STARTING_POSITION (default "-1", the start; an integer is a
  sequence number) until WANTED readings were found or TIMEOUT_S passed. A body whose
  content-encoding (AMQP property, or the application property) is gzip is gunzipped; a JSON
  array counts as its elements. Prints one JSON line per event:
    {"event": {partition, sequence_number, offset, enqueued_ms, partition_key, message_id,
               content_encoding, properties, wire_bytes, readings}}
  then {"partitions": {id: get_partition_properties(id)}} and "done".
"""

import gzip
import json
import os
import sys
import threading
import time

from azure.eventhub import EventHubConsumerClient


def text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else v


def main():
    conn_str, port, ca, wanted, timeout = sys.argv[1:6]
    start = sys.argv[6] if len(sys.argv) > 6 else "-1"
    starting_position = int(start) if start.lstrip("-").isdigit() and start != "-1" else start
    wanted, timeout = int(wanted), float(timeout)
    client = EventHubConsumerClient.from_connection_string(
        conn_str,
        consumer_group="$Default",
        custom_endpoint_address=f"sb://localhost:{port}",
        connection_verify=ca,
        load_balancing_strategy="greedy",
        load_balancing_interval=1,
        logging_enable=os.environ.get("HUB_TRACE") == "1",
    )
    lock = threading.Lock()
    found = [0]
    done = threading.Event()

    def on_event(partition_context, event):
        if event is None:
            return
        raw = event.raw_amqp_message
        body = b"".join(event.body)
        props = {text(k): text(v) for k, v in (event.properties or {}).items()}
        amqp_encoding = text(raw.properties.content_encoding) if raw.properties else None
        encoding = amqp_encoding or props.get("content-encoding")
        wire_bytes = len(body)
        if encoding == "gzip":
            body = gzip.decompress(body)
        value = json.loads(body)
        readings = value if isinstance(value, list) else [value]
        line = {
            "partition": partition_context.partition_id,
            "sequence_number": event.sequence_number,
            "offset": event.offset,
            "enqueued_ms": int(event.enqueued_time.timestamp() * 1000),
            "partition_key": text(event.partition_key),
            "message_id": text(raw.properties.message_id) if raw.properties else None,
            "content_encoding": amqp_encoding,
            "properties": props,
            "wire_bytes": wire_bytes,
            "readings": readings,
        }
        with lock:
            print(json.dumps({"event": line}), flush=True)
            found[0] += len(readings)
            if found[0] >= wanted:
                done.set()

    worker = threading.Thread(
        target=client.receive,
        kwargs=dict(on_event=on_event, starting_position=starting_position,
                    max_wait_time=1),
        daemon=True,
    )
    worker.start()
    done.wait(timeout)
    # Let a few more arrive: a duplicate would show up now.
    time.sleep(1.0)
    client.close()
    worker.join(10)
    props_client = EventHubConsumerClient.from_connection_string(
        conn_str,
        consumer_group="$Default",
        custom_endpoint_address=f"sb://localhost:{port}",
        connection_verify=ca,
    )
    with props_client:
        partitions = {}
        for pid in props_client.get_partition_ids():
            p = props_client.get_partition_properties(pid)
            p["last_enqueued_time_utc"] = str(p["last_enqueued_time_utc"])
            partitions[pid] = p
    print(json.dumps({"partitions": partitions}), flush=True)
    print(f"found {found[0]} of {wanted} readings")
    print("done")


if __name__ == "__main__":
    main()
