"""The generation pyfunc a registered version serves: a list of prompts → a list of continuations.

MLflow loads it through ``pyfunc_model.py`` ("models from code": nothing is unpickled), with the checkpoint and
GPT-2's BPE file as artifacts and the gptlab package that registered it as code.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc


class GenerationModel(mlflow.pyfunc.PythonModel):
    """pyfunc: a list of prompts → a list of continuations (the prompt is not repeated).

    Sampling settings are optional inference params (max_new_tokens, temperature, top_k, top_p, seed);
    their defaults are the ``generate`` section the model was trained with.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import torch

        from gptlab.core.checkpoint import load_model
        from gptlab.data.tokenizer import encoding_from_file

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, ckpt = load_model(context.artifacts["checkpoint"], device=device)
        self.encoding = encoding_from_file(context.artifacts["tokenizer"])
        g = ckpt.meta["config"]["generate"]
        self.defaults = {k: g[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        from gptlab.core.generate import Sampling, generate_text

        p = {**self.defaults, **(params or {})}
        sampling = Sampling(
            max_new_tokens=int(p["max_new_tokens"]),
            temperature=float(p["temperature"]),
            top_k=int(p["top_k"]),
            top_p=float(p["top_p"]),
        )
        seed = int(p["seed"])
        return [
            generate_text(self.model, self.encoding, prompt, num_samples=1, sampling=sampling, seed=seed + i)[0]
            for i, prompt in enumerate(model_input)
        ]
