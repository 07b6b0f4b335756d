"""The codec server of the Temporal UI (and `temporal workflow show --codec-endpoint`): `POST /decode` and
`POST /encode` with the payload keys of this process, for callers with the bearer token; CORS for the UI's origin.

Without it the UI shows encrypted payloads as `binary/encrypted`; with it an authorised operator reads them.
"""

from __future__ import annotations

import hmac
from typing import Any

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads
from threadline.channels.http_auth import json_error
from threadline.channels.payload_codec import EncryptionCodec, PayloadKeyError

ALLOWED_HEADERS = "authorization, content-type, x-namespace"


def codec_app(codec: EncryptionCodec, token: str, origins: list[str]) -> Starlette:
    def cors(request: Request) -> dict[str, str]:
        origin = request.headers.get("origin", "")
        if origin not in origins:
            return {}
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": ALLOWED_HEADERS, "Access-Control-Allow-Credentials": "true",
                "Vary": "Origin"}

    async def handle(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=cors(request))
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            response: Response = json_error(401, "a codec request needs the codec server's bearer token",
                                            "unauthorized")
            response.headers.update(cors(request))
            return response
        try:
            payloads = json_format.Parse(await request.body() or b"{}", Payloads())
            change = codec.decode if request.url.path.endswith("/decode") else codec.encode
            result = Payloads(payloads=await change(list(payloads.payloads)))
        except json_format.ParseError as e:
            return json_error(400, f"the body is not a Payloads JSON object: {e}", "invalid")
        except PayloadKeyError as e:
            return json_error(422, str(e), "undecryptable")
        body: Any = json_format.MessageToDict(result)
        return JSONResponse(body if body else {"payloads": []}, headers=cors(request))

    return Starlette(routes=[Route("/decode", handle, methods=["POST", "OPTIONS"]),
                             Route("/encode", handle, methods=["POST", "OPTIONS"])])
