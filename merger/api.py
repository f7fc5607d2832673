"""REST API under /alloy/v1/: merge, restore, save, status, presets, models, lora/*.

Bodies are plain JSON objects checked by merger.schema (one validator for requests, recipe files,
history and PNG info; no pydantic models, so the same code runs on the WebUI's FastAPI 0.94 /
pydantic 1 and on Forge's pydantic 2). Bad input answers 400 with the AlloyError sentence as
`detail` and changes nothing; a merge while another runs (or an interrupted one) answers 409; an
unexpected internal error is logged with its traceback and answered 500 with a sentence. Names in
bodies resolve only inside the host's model list and configured folders (merger.paths). Actions
run as a host job (Session.job): in the WebUI they wait for a running generation first.
`create_router(session, dependencies)` puts every route behind `dependencies` (the WebUI's
--api-auth check, see merger.webui.api_dependencies)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from .errors import AlloyError
from .http import answer
from .recipe import DTYPES, Recipe
from .schema import Custom, Flag, Text, check_object

PREFIX = "/alloy/v1"

_NAME = Text(1024, optional=True)
MERGE_SCHEMA = {
    "recipe": Custom(lambda v, label: Recipe.from_dict(v)),
    "target": Text(16, choices=("live", "file"), default="live"),
    "name": _NAME,
    "dtype": Text(16, optional=True, choices=DTYPES),
    "overwrite": Flag(),
}
SAVE_SCHEMA = {
    "name": Text(1024, nonempty=True),
    "dtype": Text(16, optional=True, choices=DTYPES),
    "prune": Flag(),
    "bake_vae": _NAME,
    "overwrite": Flag(),
}


def _refuse_overwrite(session, name: str | None, overwrite: bool) -> None:
    """An existing output file is kept unless the request says `"overwrite": true` (named so)."""
    if overwrite or not (name or "").strip():
        return
    import os
    path = session.output_path(name)
    if os.path.exists(path):
        raise AlloyError(f'{path} exists; send "overwrite": true to replace it.')


def _report(report) -> dict:
    recipe = getattr(report, "recipe", None)
    return {
        "message": report.message(),
        "path": report.path,
        "seconds": round(report.seconds, 3),
        "keys_merged": report.keys_merged,
        "keys_copied": report.keys_copied,
        "keys_from_cache": report.keys_from_cache,
        "recipe": recipe.to_dict() if recipe is not None else None,
        "hash": recipe.short_hash() if recipe is not None else None,
        "warnings": list(getattr(report, "warnings", []) or []),
    }


def parse_merge_request(body: Any) -> tuple[dict, Recipe]:
    """(the checked request, its recipe); no file access."""
    req = check_object(body, MERGE_SCHEMA, "The request", required=("recipe",))
    recipe = req["recipe"]
    if req["dtype"]:
        recipe = recipe.replace(dtype=req["dtype"])
    recipe.validate()
    if req["target"] == "file" and not (req["name"] or "").strip():
        raise AlloyError('A file merge needs a "name" for the output file.')
    return req, recipe


def create_router(session, dependencies: list | None = None) -> APIRouter:
    """Routes bound to `session` (the WebUI mounts it at app start; the standalone app too)."""
    router = APIRouter(prefix=PREFIX, dependencies=list(dependencies or []))

    @router.post("/merge")
    def merge(body: Any = Body(None)):
        def run():
            req, recipe = parse_merge_request(body)
            if req["target"] == "file":
                _refuse_overwrite(session, req["name"], req["overwrite"])
            with session.job("Alloy merge"):
                if req["target"] == "live":
                    return _report(session.merge_live(recipe))
                return _report(session.merge_to_file(recipe, req["name"], overwrite=req["overwrite"]))
        return answer("merge", run)

    @router.post("/restore")
    def restore():
        def run():
            with session.job("Alloy restore"):
                return {"message": session.restore()}
        return answer("restore", run)

    @router.post("/save")
    def save(body: Any = Body(None)):
        def run():
            req = check_object(body, SAVE_SCHEMA, "The request", required=("name",))
            _refuse_overwrite(session, req["name"], req["overwrite"])
            with session.job("Alloy save"):
                return _report(session.save_live(req["name"], dtype=req["dtype"], prune=req["prune"],
                                                 bake_vae=req["bake_vae"], overwrite=req["overwrite"]))
        return answer("save", run)

    @router.get("/status")
    def status():
        return answer("status", session.status)

    @router.get("/models")
    def models():
        return answer("model list", lambda: {"models": session.models()})

    @router.get("/presets")
    def presets():
        def run():
            from .presets import Presets
            p = Presets()
            return {"presets": {name: list(p.raw(name)) for name in p.names()}}
        return answer("preset list", run)

    from .lora.api import create_lora_router, session_resolver
    router.include_router(create_lora_router(session_resolver(session), prefix="/lora"))
    return router
