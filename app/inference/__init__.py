"""Model-side inference: tokenisation, encoders and the dynamic batcher."""
