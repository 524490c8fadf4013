"""The code MLflow stores for a registered recommender (models from code: no pickled Python object anywhere in a
version); its weights, config and SID table come from the safetensors + JSON artifact. See `serving`."""
import mlflow

from unisid_pipeline.serving import RecommenderModel

mlflow.models.set_model(RecommenderModel())
