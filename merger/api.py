"""REST API under /alloy/v1/ (FastAPI 0.94, pydantic 1): merge, restore, save, status, presets.

Bad input answers 4xx with the AlloyError sentence as `detail` and changes nothing;
a merge while another runs answers 409. Actions run as a host job (Session.job): in the WebUI they
wait for a running generation first."""
import os
from typing import Optional

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from .errors import AlloyError, Interrupted
from .recipe import Recipe

PREFIX = "/alloy/v1"


class MergeRequest(BaseModel):
    recipe: dict
    target: str = "live"            # "live" | "file"
    name: Optional[str] = None      # output file name (target "file")
    dtype: Optional[str] = None     # output precision override (target "file")
    overwrite: bool = False


class SaveRequest(BaseModel):
    name: str
    dtype: Optional[str] = None
    prune: bool = False
    bake_vae: Optional[str] = None
    overwrite: bool = False


def _http_error(e: AlloyError) -> HTTPException:
    from .session import Busy
    code = 409 if isinstance(e, (Busy, Interrupted)) else 400
    return HTTPException(status_code=code, detail=str(e))


def _refuse_overwrite(session, name: str | None, overwrite: bool) -> None:
    """An existing output file is kept unless the request says `"overwrite": true` (named so)."""
    if overwrite or not (name or "").strip():
        return
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
    }


def parse_merge_request(req: MergeRequest) -> Recipe:
    """The request's recipe, validated (no file access)."""
    if req.target not in ("live", "file"):
        raise AlloyError(f"Unknown target '{req.target}'; use \"live\" or \"file\".")
    recipe = Recipe.from_dict(req.recipe)
    if req.dtype:
        recipe = recipe.replace(dtype=req.dtype)
    recipe.validate()
    if req.target == "file" and not (req.name or "").strip():
        raise AlloyError("A file merge needs a \"name\" for the output file.")
    return recipe


def create_router(session) -> APIRouter:
    """Routes bound to `session` (the WebUI mounts it at app start; the standalone app too)."""
    router = APIRouter(prefix=PREFIX)

    @router.post("/merge")
    def merge(req: MergeRequest):
        try:
            recipe = parse_merge_request(req)
            if req.target == "file":
                _refuse_overwrite(session, req.name, req.overwrite)
            with session.job("Alloy merge"):
                if req.target == "live":
                    report = session.merge_live(recipe)
                else:
                    report = session.merge_to_file(recipe, req.name, overwrite=req.overwrite)
        except AlloyError as e:
            raise _http_error(e) from None
        return _report(report)

    @router.post("/restore")
    def restore():
        try:
            with session.job("Alloy restore"):
                return {"message": session.restore()}
        except AlloyError as e:
            raise _http_error(e) from None

    @router.post("/save")
    def save(req: SaveRequest):
        try:
            _refuse_overwrite(session, req.name, req.overwrite)
            with session.job("Alloy save"):
                report = session.save_live(req.name, dtype=req.dtype, prune=req.prune, bake_vae=req.bake_vae,
                                           overwrite=req.overwrite)
        except AlloyError as e:
            raise _http_error(e) from None
        return _report(report)

    @router.get("/status")
    def status():
        return session.status()

    @router.get("/presets")
    def presets():
        from .presets import Presets
        p = Presets()
        return {"presets": {name: list(p.raw(name)) for name in p.names()}}

    from .lora.api import create_lora_router, session_resolver
    router.include_router(create_lora_router(session_resolver(session), prefix="/lora"))
    return router
