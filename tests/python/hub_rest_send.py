"""Posts events to the tagbridge Event Hub emulator's REST endpoint with urllib, authorised by a
SAS token from Microsoft's SDK helper (azure.eventhub._pyamqp.utils.generate_sas_token).

usage: hub_rest_send.py HTTPS_PORT CA_PEM HUB KEY_NAME KEY
Prints one JSON line per request: {"case": ..., "status": ...}.
"""

import json
import ssl
import sys
import time
import urllib.error
import urllib.request

from azure.eventhub._pyamqp.utils import generate_sas_token


def post(url, body, headers, ctx):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    port, ca, hub, key_name, key = sys.argv[1:6]
    ctx = ssl.create_default_context(cafile=ca)
    base = f"https://localhost:{port}/{hub}/messages"
    token = generate_sas_token(f"https://localhost:{port}/{hub}", key_name, key, int(time.time()) + 600)
    wrong = generate_sas_token(f"https://localhost:{port}/{hub}", key_name, "d3Jvbmc=", int(time.time()) + 600)
    single = {
        "Authorization": token,
        "Content-Type": "application/atom+xml;type=entry;charset=utf-8",
        "BrokerProperties": json.dumps({"PartitionKey": "rest-key", "MessageId": "rest-1"}),
    }
    batch_headers = {"Authorization": token, "Content-Type": "application/vnd.microsoft.servicebus.json"}
    batch = [
        {"Body": f"rest-batch-{i}", "UserProperties": {"n": i}, "BrokerProperties": {"PartitionKey": "rb"}}
        for i in range(5)
    ]
    cases = [
        ("single", base, b"rest-single", single),
        ("batch", base, json.dumps(batch).encode(), batch_headers),
        ("wrong-key", base, b"must not arrive", dict(single, Authorization=wrong)),
        ("no-token", base, b"must not arrive", {"Content-Type": "text/plain"}),
        ("too-large", base, b"x" * (2 * 1024 * 1024), single),
    ]
    for name, url, body, headers in cases:
        print(json.dumps({"case": name, "status": post(url, body, headers, ctx)}), flush=True)


if __name__ == "__main__":
    main()
