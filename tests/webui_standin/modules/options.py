"""Stand-in of modules.options: OptionInfo and an Options store with attribute access."""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None,
                 section=None, refresh=None, comment_before="", comment_after="", infotext=None):
        self.default, self.label, self.component = default, label, component
        self.component_args, self.onchange, self.section = component_args, onchange, section
        self.refresh, self.infotext = refresh, infotext

    def info(self, text):
        return self

    def needs_reload_ui(self):
        return self


class Options:
    def __init__(self, templates):
        object.__setattr__(self, "data_labels", dict(templates))
        object.__setattr__(self, "data", {k: v.default for k, v in templates.items()})

    def __getattr__(self, key):
        data = object.__getattribute__(self, "data")
        if key in data:
            return data[key]
        labels = object.__getattribute__(self, "data_labels")
        if key in labels:
            return labels[key].default
        raise AttributeError(key)

    def __setattr__(self, key, value):
        if key in ("data", "data_labels"):
            return object.__setattr__(self, key, value)
        self.data[key] = value

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def set(self, key, value, is_api=False, run_callbacks=True):
        self.data[key] = value
        return True
