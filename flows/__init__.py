"""Prefect flows: the orchestration around gptlab's stages. The only place that imports prefect.

Run one with `python -m flows.train` (what `dvc repro` does); `-S KEY=VALUE` overrides as in `gptlab`.
"""
