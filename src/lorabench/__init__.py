"""lorabench: LoRA fine-tuning of pretrained language models for text classification."""

__version__ = "0.1.0"
