"""Stand-in of backend/utils.py: dotted attribute access used by the patchers and the LoRA loader."""


def set_attr_raw(obj, attr, value):
    *parents, last = attr.split(".")
    for name in parents:
        obj = getattr(obj, name)
    setattr(obj, last, value)


def get_attr(obj, attr):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def get_attr_with_parent(obj, attr):
    parent, name = obj, None
    for name in attr.split("."):
        parent, obj = obj, getattr(obj, name)
    return parent, name, obj
