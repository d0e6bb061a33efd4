"""Reads and subscribes to the simulated PLC's OPC UA server with asyncua (an independent
implementation) and checks types and values against what the Rust test configured.

Usage: sim_opcua_client.py SPEC_JSON_FILE

SPEC: {
  "endpoint": "opc.tcp://127.0.0.1:PORT/",
  "security": "none" | "sign" | "sign_encrypt",      # Basic256Sha256 for the latter two
  "user": null | {"username": ..., "password": ...},
  "workdir": "<dir for the client certificate>",
  "expect": [{"node": "ns=2;s=...", "type": "Double", "value": 1.5, "enum_strings": [...]}],
  "subscribe": {"node": "ns=2;s=...", "seconds": 1.5}  # optional
}
Prints one JSON line per data change: {"value": ..., "source_timestamp": "<ISO 8601 UTC>"}.
Problems go to stderr; exits 1 if there was any.
"""

import asyncio
import json
import math
import sys
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.x509.oid import ExtendedKeyUsageOID

APP_URI = "urn:tagbridge:test:asyncua"


class Collector:
    def __init__(self):
        self.changes = []

    def datachange_notification(self, node, val, data):
        ts = data.monitored_item.Value.SourceTimestamp
        self.changes.append({"value": val, "source_timestamp": ts.isoformat()})


async def secure(client, spec):
    work = Path(spec["workdir"])
    key, cert = work / "client-key.pem", work / "client-cert.der"
    if not cert.exists():
        await cert_gen.setup_self_signed_certificate(
            key, cert, APP_URI, "localhost",
            [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "tagbridge-test"})
    client.application_uri = APP_URI
    mode = ua.MessageSecurityMode.Sign if spec["security"] == "sign" else ua.MessageSecurityMode.SignAndEncrypt
    await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key), mode=mode)


async def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    problems = []
    client = Client(spec["endpoint"], timeout=10)
    if spec.get("user"):
        client.set_user(spec["user"]["username"])
        client.set_password(spec["user"]["password"])
    if spec.get("security", "none") != "none":
        await secure(client, spec)
    async with client:
        for e in spec.get("expect", []):
            node = client.get_node(e["node"])
            dv = await node.read_data_value()
            got_type = dv.Value.VariantType.name
            got = dv.Value.Value
            if got_type != e["type"]:
                problems.append(f"{e['node']}: type {got_type}, expected {e['type']}")
            want = e.get("value")
            if want is not None:
                if isinstance(want, float) and isinstance(got, float):
                    if not math.isclose(got, want, rel_tol=1e-6):
                        problems.append(f"{e['node']}: value {got!r}, expected {want!r}")
                elif got != want:
                    problems.append(f"{e['node']}: value {got!r}, expected {want!r}")
            if "enum_strings" in e:
                dtype = client.get_node(await node.read_data_type())
                prop = await dtype.get_child(["0:EnumStrings"])
                names = [t.Text for t in await prop.read_value()]
                if names != e["enum_strings"]:
                    problems.append(f"{e['node']}: EnumStrings {names}, expected {e['enum_strings']}")
        sub_spec = spec.get("subscribe")
        if sub_spec:
            collector = Collector()
            sub = await client.create_subscription(100, collector)
            await sub.subscribe_data_change(client.get_node(sub_spec["node"]), queuesize=10)
            await asyncio.sleep(sub_spec["seconds"])
            await sub.delete()
            for c in collector.changes:
                print(json.dumps(c))
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


asyncio.run(main())
