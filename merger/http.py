"""How the REST routes answer (shared by merger.api and merger.lora.api): an AlloyError becomes
400 (409 when Alloy is busy or the merge was interrupted) with its one sentence as `detail`; anything
unexpected is logged with its traceback and answered 500 with a sentence, never a bare server error."""
from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import HTTPException

from .errors import AlloyError, Interrupted

log = logging.getLogger("alloy")


def _http_error(e: AlloyError) -> HTTPException:
    from .session import Busy
    code = 409 if isinstance(e, (Busy, Interrupted)) else 400
    return HTTPException(status_code=code, detail=str(e))


def answer(action: str, fn: Callable[[], Any]) -> Any:
    """Run a route's work: AlloyError → 400/409 with its sentence; anything unexpected → logged
    with its traceback and answered 500 with a sentence (never a bare server error)."""
    try:
        return fn()
    except AlloyError as e:
        raise _http_error(e) from None
    except HTTPException:
        raise
    except Exception as e:  # noqa: BLE001 - the route's last line of defence
        log.exception("Alloy: %s failed", action)
        raise HTTPException(status_code=500, detail=f"Alloy's {action} failed with an unexpected "
                                                    f"{type(e).__name__}; the server log has the details.") from None
