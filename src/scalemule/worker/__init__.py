"""The Python worker runtime: write async handlers by job kind, run them with ``scalemule worker``.

Example (``app/jobs.py``, run with ``scalemule worker --handlers app.jobs``)::

    from scalemule.worker import Handlers, JobContext, PermanentError

    handlers = Handlers()

    @handlers("describe_dishes")
    async def describe_dishes(payload, ctx: JobContext):
        await ctx.progress(0.5, "halfway")
        return {"dishes": []}
"""

from scalemule.worker.handlers import Handler, Handlers, JobContext, PermanentError, ToolError, load_handlers
from scalemule.worker.runner import Worker, WorkerOptions

__all__ = [
    "Handler",
    "Handlers",
    "JobContext",
    "PermanentError",
    "ToolError",
    "Worker",
    "WorkerOptions",
    "load_handlers",
]
