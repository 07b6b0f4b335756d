"""The floor of a job-sending command: a Python process that imports the Temporal SDK's client and the pydantic data
converter, connects, starts one workflow and asks whether its task queue has pollers, which is what `threadline
room queue send` does, without Threadline. `bench.cli_startup` times it beside the real command.

    python bench/client_floor.py HOST:PORT
"""

import asyncio
import os
import secrets
import sys

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter


async def send(address: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    await client.start_workflow("QueueJobWorkflow", {"prompt": "hi"}, id=f"floor-{secrets.token_hex(6)}",
                                task_queue="floor-jobs")
    await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name="floor-jobs"),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))


if __name__ == "__main__":
    asyncio.run(send(sys.argv[1]))
    sys.stdout.flush()
    os._exit(0)  # as `threadline` ends: no wait for the SDK's native threads
