"""The code MLflow stores for a registered tokenizer (models from code: no pickled Python object anywhere in a
version); which tokenizer it serves comes from the version's model_config, its weights from the safetensors
artifact. See `serving`."""
import mlflow

from unisid_pipeline.serving import TokenizerModel

mlflow.models.set_model(TokenizerModel())
