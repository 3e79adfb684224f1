"""A typed Python client of the gateway, over REST or gRPC, sync and async.

    from gateway.client import Client

    with Client("https://gw.example.com:8080", token=API_KEY, ca_file="ca.pem") as gw:
        task = gw.execute("make", ["test"], workspace="build-1")
        for chunk in gw.output(task.task_id):   # live; a broken stream resumes at its offset
            if chunk.kind == "stdout":
                sys.stdout.buffer.write(chunk.data)
        print(gw.final_task(task.task_id).result.exit_code)

``AsyncClient`` is the same API with ``async def`` and async iterators. ``grpc://`` /
``grpcs://`` URLs speak gRPC. It ships inside the gateway's distribution (one version, one
error table and one wire contract with the server it talks to), and needs nothing the
gateway does not already install.

Errors are ``gateway.errors`` classes, one per project error code, chosen by the code the
wire carried (:data:`gateway.errors.BY_CODE`); :class:`TransportError` is every failure to
reach the gateway or read its answer.
"""

from gateway.client._client import AsyncClient, Client
from gateway.client._errors import TransportError
from gateway.client._models import FINAL_STATUSES, OutputChunk, ResourceUsage, Task, TaskPage, TaskResult
from gateway.errors import BY_CODE, GatewayError

__all__ = [
    "BY_CODE",
    "FINAL_STATUSES",
    "AsyncClient",
    "Client",
    "GatewayError",
    "OutputChunk",
    "ResourceUsage",
    "Task",
    "TaskPage",
    "TaskResult",
    "TransportError",
]
