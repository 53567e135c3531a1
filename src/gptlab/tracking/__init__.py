"""The MLflow side: the store, the outbox every record passes through, runs, the registry, the pyfunc.

The only package that imports mlflow.
"""


def __getattr__(name: str):  # noqa: ANN202 - module __getattr__
    # Versions registered before the layered layout load `from gptlab.tracking import GenerationModel`; in a
    # process where this gptlab is already imported, that name must still resolve.
    if name == "GenerationModel":
        from gptlab.tracking.pyfunc import GenerationModel

        return GenerationModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
