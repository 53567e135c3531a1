"""The pipeline: config loading, paths, comparisons, the report, the promotion gate, reproduce.

``stages/`` holds the DVC stages, each reading its inputs, calling the core, writing its outs and recording.
"""
