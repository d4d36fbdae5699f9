"""Aligned image encoder (stage ``align_encoder``): see ``onevision.encoder.api``."""
