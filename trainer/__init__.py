"""Trainer: ML4H_seg / ML4H_reg as a Vertex-AI-style package."""
