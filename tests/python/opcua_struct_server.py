"""An independent OPC UA server (asyncua) serving one custom structure, for the structure tests.

Usage: opcua_struct_server.py
Serves security None on 127.0.0.1 (a free port), prints `NS <idx>` and `READY <endpoint>` on
stdout, and runs until stdin closes. The structure type `PyRecipe` is made with asyncua's
`new_struct` helpers (OPC UA 1.04 DataTypeDefinition), with a nested structure `PyInner`, an
enumeration `PyMode` (`new_enum`), an array and an optional field (so the type is a
StructureWithOptionalFields). `Plant/Recipe` holds one; its `count` goes up every 100 ms,
`inner.x` is -7 - count // 10 (a change every tenth write), the other fields stay: temperature
21.625, mode Running (2), mode_number 2, label "hidden", limits [1.5, 2.5], inner.flag true,
note absent. `Plant/Recipes` holds an array of two: element i is the same with count + 1000 i.
"""

import asyncio
import socket
import sys

from asyncua import Server, ua
from asyncua.common.structures104 import new_enum, new_struct, new_struct_field

NS_URI = "urn:tagbridge:test:asyncua-structs"


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
    mode = await new_enum(server, idx, "PyMode", ["Stopped", "Idle", "Running"])
    inner, _ = await new_struct(server, idx, "PyInner", [
        new_struct_field("x", ua.VariantType.Double),
        new_struct_field("flag", ua.VariantType.Boolean),
    ])
    recipe, _ = await new_struct(server, idx, "PyRecipe", [
        new_struct_field("temperature", ua.VariantType.Double),
        new_struct_field("count", ua.VariantType.UInt32),
        new_struct_field("mode", mode),
        new_struct_field("mode_number", ua.VariantType.Int32),
        new_struct_field("label", ua.VariantType.String),
        new_struct_field("limits", ua.VariantType.Double, array=True),
        new_struct_field("inner", inner),
        new_struct_field("note", ua.VariantType.String, optional=True),
    ])
    await server.load_data_type_definitions()

    def value(count):
        return ua.PyRecipe(
            temperature=21.625,
            count=count,
            mode=ua.PyMode.Running,
            mode_number=2,
            label="hidden",
            limits=[1.5, 2.5],
            inner=ua.PyInner(x=-7.0 - count // 10, flag=True),
            note=None,
        )

    plant = await server.nodes.objects.add_folder(ua.NodeId("Plant", idx), ua.QualifiedName("Plant", idx))
    var = await plant.add_variable(
        ua.NodeId("Plant/Recipe", idx), ua.QualifiedName("Recipe", idx),
        ua.Variant(value(0), ua.VariantType.ExtensionObject), datatype=recipe.nodeid)
    recipes = await plant.add_variable(
        ua.NodeId("Plant/Recipes", idx), ua.QualifiedName("Recipes", idx),
        ua.Variant([value(0), value(1000)], ua.VariantType.ExtensionObject), datatype=recipe.nodeid)
    await recipes.write_value_rank(1)
    await recipes.write_array_dimensions([2])
    async with server:
        print(f"NS {idx}", flush=True)
        print(f"READY {endpoint}", flush=True)
        stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        n = 0
        while not stdin_closed.done():
            await asyncio.sleep(0.1)
            n += 1
            await var.write_value(ua.Variant(value(n), ua.VariantType.ExtensionObject))
            await recipes.write_value(
                ua.Variant([value(n), value(n + 1000)], ua.VariantType.ExtensionObject))


if __name__ == "__main__":
    asyncio.run(main())
