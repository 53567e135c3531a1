"""The generation pyfunc a registered version serves: a list of prompts → a list of continuations.

MLflow loads it through ``pyfunc_model.py`` ("models from code": nothing is unpickled), with the checkpoint and
GPT-2's BPE file as artifacts and the gptlab package that registered it as code.

A request is checked before any token is generated: its params by the ``generate`` section's rules, its size by
the ``serve`` limits (``max_new_tokens``, prompt tokens, prompts per request); unknown params are refused. A
refusal is an :class:`~mlflow.exceptions.MlflowException` with ``INVALID_PARAMETER_VALUE``, which MLflow's
scoring server answers with HTTP 400 and the message (the param, its value, the allowed range).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
from typing import Any

import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.context import get_prediction_context

PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")
LIMITS_ENV = "GPTLAB_SERVE_LIMITS"  # JSON of the serve section; `gptlab serve` sets it from its resolved config
# Models registered before the serve section existed carry no limits in their meta: params.yaml's values then.
LEGACY_LIMITS = {"max_new_tokens": 512, "max_prompt_tokens": 2048, "max_prompts": 16}

# MLflow drops params its ParamSchema does not declare, with only this warning, before ``predict`` sees the
# request (mlflow.models.utils._enforce_params_schema). A filter on that logger hears the warning inside the same
# prediction (MLflow's per-call prediction context), and ``predict`` refuses the request instead of answering as
# if the param had not been sent. A warning from a request MLflow refused itself belongs to another context.
_UNRECOGNIZED = re.compile(r"Unrecognized params (\[.*?\]) are ignored")
_SCHEMA_LOGGER = "mlflow.models.utils"


class _UnknownParams(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        match = _UNRECOGNIZED.search(record.getMessage())
        if match:
            self.seen.heard = (get_prediction_context(), match.group(1))
        return True

    def take(self) -> str | None:
        """The unknown params of the prediction running now, if MLflow dropped any."""
        heard, self.seen.heard = getattr(self.seen, "heard", None), None
        return heard[1] if heard is not None and heard[0] is get_prediction_context() else None


def _refuse(problems: list[str]) -> MlflowException:
    return MlflowException(f"request refused: {'; '.join(problems)}", error_code=INVALID_PARAMETER_VALUE)


class GenerationModel(mlflow.pyfunc.PythonModel):
    """pyfunc: a list of prompts → a list of continuations (the prompt is not repeated).

    Sampling settings are optional inference params (max_new_tokens, temperature, top_k, top_p, seed), declared
    in the signature's ParamSchema; their defaults are the ``generate`` section the model was trained with.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import torch

        from gptlab.core.checkpoint import load_model
        from gptlab.data.tokenizer import encoding_from_file
        from gptlab.settings import GenerateConfig, ModelConfig, ServeConfig

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, ckpt = load_model(context.artifacts["checkpoint"], device=device)
        self.encoding = encoding_from_file(context.artifacts["tokenizer"])
        config = ckpt.meta["config"]
        self.generate = GenerateConfig(**{**config["generate"], "prompts": tuple(config["generate"]["prompts"])})
        self.model_config = ModelConfig(**config["model"])
        limits = json.loads(os.environ[LIMITS_ENV]) if os.environ.get(LIMITS_ENV) else config.get("serve")
        self.limits = ServeConfig(**(limits or LEGACY_LIMITS))
        self.defaults = {k: getattr(self.generate, k) for k in PARAMS}
        self.unknown = _UnknownParams()
        schema_logger = logging.getLogger(_SCHEMA_LOGGER)
        schema_logger.addFilter(self.unknown)
        if not schema_logger.isEnabledFor(logging.WARNING):
            schema_logger.setLevel(logging.WARNING)  # the filter hears only records that are made

    def check(self, prompts: list[str], params: dict[str, Any]) -> tuple[Any, list[list[int]]]:
        """The sampling settings and token ids of a request, or the :class:`MlflowException` that refuses it."""
        from gptlab.settings import sampling_problems

        problems: list[str] = []
        unknown = self.unknown.take()
        if unknown:
            problems.append(f"unknown param(s) {unknown}: this model takes {', '.join(PARAMS)}")
        g = dataclasses.replace(self.generate, **{k: v for k, v in params.items() if k in PARAMS})
        problems += sampling_problems(g, self.model_config, self.limits)
        if len(prompts) > self.limits.max_prompts:
            problems.append(f"{len(prompts)} prompts in one request: at most {self.limits.max_prompts} "
                            "(serve.max_prompts); send several requests")
        ids = [self.encoding.encode_ordinary(prompt) for prompt in prompts]
        long = [(i, len(x)) for i, x in enumerate(ids) if len(x) > self.limits.max_prompt_tokens]
        problems += [f"prompt {i} is {n} tokens long: at most {self.limits.max_prompt_tokens} "
                     "(serve.max_prompt_tokens)" for i, n in long]
        if problems:
            raise _refuse(problems)
        return g, ids

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        from gptlab.core.generate import Sampling, sample

        g, ids = self.check(list(model_input), {**self.defaults, **(params or {})})
        sampling = Sampling(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k,
                            top_p=g.top_p)
        return [self.encoding.decode(sample(self.model, x, num_samples=1, sampling=sampling, seed=g.seed + i)[0])
                for i, x in enumerate(ids)]
