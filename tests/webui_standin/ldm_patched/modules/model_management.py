"""Stand-in of ldm_patched/modules/model_management.py (reForge 3b56b268): the list of loaded
ModelPatchers, load_models_gpu (drops a loaded clone of the same model from the list without
un-patching it, then loads the new one) and unload_all_models (un-patches and drops every one)."""
current_loaded_models = []


def load_models_gpu(models):
    for patcher in models:
        for other in [m for m in current_loaded_models if patcher.is_clone(m)]:
            current_loaded_models.remove(other)           # detach(unpatch_all=False)
        patcher.load()
        current_loaded_models.insert(0, patcher)


def unload_all_models():
    while current_loaded_models:
        current_loaded_models.pop().unpatch_model()
