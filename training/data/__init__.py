"""Dataset readers for the formats training and evaluation accept."""
