"""What every handler of the tab needs: the session, its host, the preset table, live or file mode."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

PRESETS_FILE = "mbwpresets.txt"


@dataclass
class TabContext:
    """session: merger.session.Session (or anything with the same API).
    live: True in the WebUI (merge into the loaded model), False in the standalone app."""

    session: object
    live: bool = True
    _presets: object = field(default=None, repr=False)

    @property
    def host(self):
        return self.session.host

    def model_names(self) -> list[str]:
        return list(self.host.list_models())

    @property
    def presets(self):
        """The session's preset table, else builtins + `<data_dir>/mbwpresets.txt`; None if absent."""
        if self._presets is None:
            self._presets = getattr(self.session, "presets", None) or _load_presets(self.session)
        return self._presets


def _load_presets(session):
    try:
        from ..presets import Presets
    except ImportError:
        return None
    data_dir = getattr(session, "data_dir", None)
    user_file = os.path.join(str(data_dir), PRESETS_FILE) if data_dir else None
    return Presets(user_file if user_file and os.path.isfile(user_file) else None)
