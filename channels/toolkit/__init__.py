"""The toolkit channel (modules: `schema`, `channel`, `room`, `calls`): an agent exposed to its room as a callable tool, and agents that call agents.

Serving. `--channel toolkit:NAME` runs `ToolkitChannel("NAME")`: it hosts the room's registry workflows (see
`workflows/toolkit.py`) and registers toolkit NAME with one tool, `run_<name>_task`, whose arguments are a strict
JSON schema (`TOOLKIT_SCHEMA`). A toolkit is *online* when one of the processes that registered it (and did not
stop gracefully) polls its agent's task queue; Temporal reports pollers for minutes after they stop, so a poll
counts only when it polled within `channels.delivery.ONLINE_WINDOW` (idle workers re-poll at least once a minute).

Invoking. `Room(client, room).invoke_tool(toolkit, tool, arguments)` validates the arguments, waits (up to
`timeout`) for the toolkit to be registered and online, then runs one turn on the serving agent's thread through
`channels.delivery.submit_turn`: a durable update-with-start, so a restart of the serving agent mid-turn still
returns the one result. The thread is a new one under the agent's thread dir unless `path` or `thread_id` names one.

Calling from an agent. `--use-toolkit NAME[?timeout=SECONDS&max-depth=N]` adds the tool `run_<name>_task` to the
agent's toolbox (`toolkit_tools`). Its call runs inside the caller's `run_tool` activity: the callee's turn id is
derived from the caller's workflow id, run id and activity id, which stay the same across the activity's retries, so
a caller killed mid-call re-attaches to the same callee turn when Temporal retries the activity, instead of running
the task twice. The activity heartbeats while it waits (`run_tool` does it for every tool). Each callee turn
carries `toolkit_depth` in its metadata; a call that would go deeper than `max-depth` (default 4) returns an error to
the model instead, so A→B→A loops end with an error reply.
"""

