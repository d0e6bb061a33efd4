"""Prints, for each JSON line on stdin {audience, key_name, key, expiry}, the SAS token that
Microsoft's azure-eventhub SDK builds for it. An independent implementation for tests."""
import json
import sys

from azure.eventhub._pyamqp.utils import generate_sas_token

for line in sys.stdin:
    case = json.loads(line)
    print(generate_sas_token(case["audience"], case["key_name"], case["key"], case["expiry"]))
