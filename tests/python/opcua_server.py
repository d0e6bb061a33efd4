"""An independent OPC UA server (asyncua) for the OPC UA source tests.

Usage: opcua_server.py [--secure DIR [--reject-clients] [--user=NAME:PASSWORD] [--record-clients=FILE]]
Serves security None on 127.0.0.1 (a free port), or with --secure only Aes128Sha256RsaOaep
SignAndEncrypt and Aes256Sha256RsaPss Sign / SignAndEncrypt with a certificate created in DIR
(client certificates are accepted; with --reject-clients every client certificate is refused
with BadCertificateUntrusted at CreateSession; with --user only that user may log in, others
get BadUserAccessDenied; with --record-clients every client certificate's subject, subject
alternative names and the application URI the client sent are appended to FILE as JSON lines,
and a client whose URI is not in its certificate is refused with BadCertificateUriInvalid, as
strict servers do), prints `READY <endpoint>` on stdout, and runs
until stdin closes. Variables live in namespace `urn:tagbridge:test:asyncua` under
Objects/Plant; their node ids are string ids `ns=<idx>;s=Plant/<Name>` (idx is printed too:
`NS <idx>`; a decoy namespace registered before it holds `ns=<idx - 1>;s=Plant/Double` = -1.0,
so guessed namespace indexes are caught). `Plant/Counter` counts up every 100 ms; the rest are constant. `Plant/State` (2, "Fault") has
an enumeration data type defined only by its EnumDefinition (OPC UA 1.04, `new_enum`).
"""

import asyncio
import datetime
import json
import socket
import sys
import uuid
from pathlib import Path

from asyncua import Server, ua
from asyncua.common.structures104 import new_enum
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

NS_URI = "urn:tagbridge:test:asyncua"
DECOY_URI = "urn:tagbridge:test:decoy"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OneUser(UserManager):
    """Accepts one user name and password (BadUserAccessDenied for anything else)."""

    def __init__(self, name, password):
        self.name, self.password = name, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.name and password == self.password:
            return User(role=UserRole.User)
        return None


async def main():
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/"
    user = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--user=")), None)
    server = Server(user_manager=OneUser(*user.split(":", 1)) if user else None)
    await server.init()
    server.set_endpoint(endpoint)
    if len(sys.argv) > 2 and sys.argv[1] == "--secure":
        work = Path(sys.argv[2])
        key, cert = work / "server-key.pem", work / "server-cert.der"
        app_uri = "urn:tagbridge:test:asyncua-server"
        await server.set_application_uri(app_uri)
        await cert_gen.setup_self_signed_certificate(
            key, cert, app_uri, "127.0.0.1",
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            {"commonName": "tagbridge-test-asyncua"})
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        # X.509 user authentication only (any certificate is accepted, anonymous is not).
        await cert_gen.setup_self_signed_certificate(
            work / "user-key.pem", work / "user-cert.der", "urn:tagbridge:test:user", "127.0.0.1",
            [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "tagbridge-test-user"})
        server.set_identity_tokens([ua.X509IdentityToken])
        if "--reject-clients" in sys.argv:
            async def reject(_cert, _description):
                raise ua.uaerrors.BadCertificateUntrusted()
            server.set_certificate_validator(reject)
            # Anonymous too, so a client without a user certificate reaches CreateSession.
            server.set_identity_tokens([ua.AnonymousIdentityToken, ua.X509IdentityToken])
        if user:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        record = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--record-clients=")), None)
        if record:
            async def record_client(cert, description):
                try:
                    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                except x509.ExtensionNotFound:
                    san = x509.SubjectAlternativeName([])
                uris = san.get_values_for_type(x509.UniformResourceIdentifier)
                seen = {
                    "subject": cert.subject.rfc4514_string(),
                    "uris": uris,
                    "dns": san.get_values_for_type(x509.DNSName),
                    "ips": [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
                    "application_uri": description.ApplicationUri,
                }
                with open(record, "a", encoding="utf-8") as out:
                    out.write(json.dumps(seen) + "\n")
                if description.ApplicationUri not in uris:
                    raise ua.uaerrors.BadCertificateUriInvalid()
            server.set_certificate_validator(record_client)
            server.set_identity_tokens([ua.AnonymousIdentityToken])
        server.set_security_policy([
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
            ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
            ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
        ])
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    # A decoy namespace registered first, so NS_URI's index is not the usual 2 and a client
    # that guesses the index of an `nsu=` node id instead of looking it up reads the decoy's
    # `Plant/Double` (-1.0) instead of the real one (3.25).
    decoy = await server.register_namespace(DECOY_URI)
    idx = await server.register_namespace(NS_URI)
    decoys = await server.nodes.objects.add_folder(ua.NodeId("Decoy", decoy), ua.QualifiedName("Decoy", decoy))
    await decoys.add_variable(ua.NodeId("Plant/Double", decoy), ua.QualifiedName("DecoyDouble", decoy),
                              ua.Variant(-1.0, ua.VariantType.Double))
    plant = await server.nodes.objects.add_folder(ua.NodeId("Plant", idx), ua.QualifiedName("Plant", idx))

    async def add(name, value, vtype):
        return await plant.add_variable(ua.NodeId(f"Plant/{name}", idx), ua.QualifiedName(name, idx),
                                        ua.Variant(value, vtype))

    await add("Double", 3.25, ua.VariantType.Double)
    await add("Float", 0.5, ua.VariantType.Float)
    await add("Bool", False, ua.VariantType.Boolean)
    await add("SByte", -5, ua.VariantType.SByte)
    await add("Byte", 200, ua.VariantType.Byte)
    await add("Int16", -7, ua.VariantType.Int16)
    await add("UInt64", 18_000_000_000_000_000_000, ua.VariantType.UInt64)
    await add("Text", "Ärger ✓", ua.VariantType.String)
    await add("Localized", ua.LocalizedText("Open", "en"), ua.VariantType.LocalizedText)
    await add("When", datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc),
              ua.VariantType.DateTime)
    await add("Guid", uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63"), ua.VariantType.Guid)
    await add("Bytes", b"\x01\x02\x03", ua.VariantType.ByteString)
    await add("Array", [1, 2, 3], ua.VariantType.Int32)
    await add("Vector", [1.5, 2.5, 3.5], ua.VariantType.Double)
    await add("Range", ua.Range(Low=0.0, High=100.0), ua.VariantType.ExtensionObject)
    # An enumeration of namespace 0 (MessageSecurityMode, i=302): EnumStrings come from the
    # standard address space.
    mode = await add("Mode", 3, ua.VariantType.Int32)
    await mode.write_attribute(ua.AttributeIds.DataType, ua.DataValue(ua.Variant(ua.NodeId(302, 0))))
    # An OPC UA 1.04 enumeration: names only in the DataTypeDefinition (no EnumStrings).
    machine_state = await new_enum(server, idx, "MachineState", ["Idle", "Running", "Fault"])
    await plant.add_variable(ua.NodeId("Plant/State", idx), ua.QualifiedName("State", idx),
                             ua.Variant(2, ua.VariantType.Int32), datatype=machine_state.nodeid)
    bad = await add("Broken", 1.0, ua.VariantType.Double)
    uncertain = await add("Unsure", 2.0, ua.VariantType.Double)
    counter = await add("Counter", 0, ua.VariantType.Int32)

    async with server:
        await bad.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double),
                                           StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure)))
        await uncertain.write_value(ua.DataValue(ua.Variant(2.0, ua.VariantType.Double),
                                                 StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)))
        print(f"NS {idx}", flush=True)
        print(f"READY {endpoint}", flush=True)
        stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        n = 0
        while not stdin_closed.done():
            await asyncio.sleep(0.1)
            n += 1
            await counter.write_value(ua.Variant(n, ua.VariantType.Int32))


if __name__ == "__main__":
    asyncio.run(main())
