"""A workflow that is not deterministic, in a module of its own so the replay sandbox can re-import it alone."""

from datetime import datetime

from temporalio import workflow


@workflow.defn
class WallClockWorkflow:
    """Reads the wall clock instead of `workflow.now()`."""

    @workflow.run
    async def run(self) -> str:
        return datetime.now().isoformat()
