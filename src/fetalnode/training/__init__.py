"""The model creation end: datasets, training loops and evaluation reports."""
