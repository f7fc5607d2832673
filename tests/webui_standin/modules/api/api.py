"""Stand-in of modules.api.api (v1.10.1): the `Api` object webui.py's create_api() builds before the
app_started callbacks run. With --api-auth every /sdapi route carries `Depends(self.auth)`: HTTP
basic credentials checked against the `user:password` pairs of the flag with compare_digest, 401
"Incorrect username or password" otherwise. One route of the real set is kept (sd-models)."""
from secrets import compare_digest

from fastapi import Depends, FastAPI
from fastapi.exceptions import HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from modules import shared


class Api:
    def __init__(self, app: FastAPI, queue_lock):
        if shared.cmd_opts.api_auth:
            self.credentials = {}
            for auth in shared.cmd_opts.api_auth.split(","):
                user, password = auth.split(":")
                self.credentials[user] = password
        self.app = app
        self.queue_lock = queue_lock
        self.add_api_route("/sdapi/v1/sd-models", self.get_sd_models, methods=["GET"])

    def add_api_route(self, path: str, endpoint, **kwargs):
        if shared.cmd_opts.api_auth:
            return self.app.add_api_route(path, endpoint, dependencies=[Depends(self.auth)], **kwargs)
        return self.app.add_api_route(path, endpoint, **kwargs)

    def auth(self, credentials: HTTPBasicCredentials = Depends(HTTPBasic())):
        if credentials.username in self.credentials:
            if compare_digest(credentials.password, self.credentials[credentials.username]):
                return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    def get_sd_models(self):
        from modules import sd_models
        return [{"title": x.title, "model_name": x.model_name, "hash": x.shorthash, "sha256": x.sha256,
                 "filename": x.filename, "config": None} for x in sd_models.checkpoints_list.values()]
