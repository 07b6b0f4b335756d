"""The chat channel over HTTP: a JSON API with Server-Sent Events per thread, the web chat page, and an
OpenAI-compatible endpoint, served by the agent process (starlette on uvicorn, on the agent's event loop).

    GET    /api/config                          agent, room, threading mode, Temporal UI base URL
    GET    /api/threads                         the agent's threads (name, status, modified), newest first
    POST   /api/threads                         a new thread (threading mode default-new) or the `main` thread
    GET    /api/threads/{id}                    one thread, with its workflow status (running, queued turns)
    PATCH  /api/threads/{id}                    rename: {"name": ...}
    DELETE /api/threads/{id}                    archive (hidden from the list; items stay)
    GET    /api/threads/{id}/items              items, newest page first: ?limit=50&before=SEQ
    POST   /api/threads/{id}/turns              {"text": ...} → 202 accepted with the turn id; ?wait=true → the reply
    POST   /api/threads/{id}/steer              {"text": ...}: input for the running turn (a new turn when none runs)
    POST   /api/threads/{id}/interrupt          cancels the running turn
    GET    /api/threads/{id}/events             SSE: turn, item, delta, retry, tool, status, error (see chat_feed)
    GET    /v1/models, POST /v1/chat/completions  OpenAI-compatible (thread from / in the X-Thread-Id header)

`{id}` is the thread's id (`room/.threads/agent/name`, slashes as they are) or its short name. With a token, every
request but the page itself (`/`, `/static/...`) needs `Authorization: Bearer TOKEN`.
"""

