"""Plain torch modules and `build_model`; no Ray imports here."""

from rayline.models.build import build_model
from rayline.models.cnn import ConvNet
from rayline.models.embed import EmbeddedInputs, WithEmbeddings
from rayline.models.mlp import MLP
from rayline.models.transformer import Transformer

__all__ = ["MLP", "ConvNet", "EmbeddedInputs", "Transformer", "WithEmbeddings", "build_model"]
