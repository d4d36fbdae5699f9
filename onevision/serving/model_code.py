"""MLflow "models from code" entry point: the file MLflow copies into the model and runs at load time."""

import mlflow

from onevision.serving.pyfunc import OneVisionModel

mlflow.models.set_model(OneVisionModel())
