"""One module per DVC stage: read inputs → call the core → write the DVC outs → record through the tracker.

Each runs alone as ``python -m gptlab.pipeline.stages.NAME`` (what dvc.yaml calls, or the flow in ``flows/``
that calls its functions) and imports only what its stage needs, so its DVC ``deps`` can list exactly that.
"""
