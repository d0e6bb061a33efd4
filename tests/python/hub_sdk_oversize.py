"""Makes Microsoft's azure-eventhub SDK send a batch larger than the link's max message size
(by lifting the SDK's own client-side check), to see the emulator refuse it with
amqp:link:message-size-exceeded.

usage: hub_sdk_oversize.py CONNECTION_STRING PORT CA_PEM
Prints "refused: <error>" and exits 0 when the SDK reports the refusal; exits 1 if it was sent.
"""

import sys

from azure.eventhub import EventData, EventHubProducerClient
from azure.eventhub.exceptions import EventHubError


def main():
    conn_str, port, ca = sys.argv[1:4]
    producer = EventHubProducerClient.from_connection_string(
        conn_str, custom_endpoint_address=f"sb://localhost:{port}", connection_verify=ca, retry_total=0
    )
    with producer:
        batch = producer.create_batch()
        limit = batch.max_size_in_bytes
        # The SDK refuses to build an over-size batch; lift its limit to test the service's.
        batch.max_size_in_bytes = limit * 4
        batch.add(EventData(b"x" * (limit + 1024)))
        try:
            producer.send_batch(batch)
        except EventHubError as e:
            print(f"refused: {e}")
            return 0
        except Exception as e:  # the SDK may also raise a plain ValueError-like error
            print(f"refused ({type(e).__name__}): {e}")
            return 0
    print(f"sent {limit + 1024} bytes without an error")
    return 1


if __name__ == "__main__":
    sys.exit(main())
