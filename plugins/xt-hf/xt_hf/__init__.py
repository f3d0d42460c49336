"""xt-hf: Hugging Face transformers models, tokenizers and datasets as an xt-training plugin."""

__version__ = "0.1.0"
