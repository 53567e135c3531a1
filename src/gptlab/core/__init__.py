"""The torch core: the model, the training loop, checkpoints, evaluation, sampling.

It imports torch, numpy and the layers below it (settings, errors, fileio, data); never yaml, mlflow,
prefect, dvc or the pipeline, so it runs on a bare GPU image.
"""
