"""MLflow "models from code" entry point for gptlab's generation pyfunc (see `gptlab.tracking.pyfunc`).

MLflow copies this file into each logged model and runs it at load time; nothing is unpickled.
"""

from mlflow.models import set_model

from gptlab.tracking.pyfunc import GenerationModel

set_model(GenerationModel())
