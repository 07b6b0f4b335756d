"""The domain: pydantic models for every message that crosses a boundary, and the limits and names they share.

`limits` (sizes, name rules, `ErrorType`), `thread` (turns, replies, items, workflow state and activity messages),
`jobs` (queue and mail jobs), `toolkit` (an agent as a room tool), `spec` (`AgentSpec` and channel settings).
Field names are a durable contract: they end up in Temporal histories, so fields are only ever added (with defaults).
"""
